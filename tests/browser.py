"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
open a local page, run JavaScript in it, take screenshots and record every request it makes,
with no driver and no package beyond the standard library. The browser is Debian's `chromium`
(scripts/test.sh installs it when it is missing)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page of `width` x `height` CSS pixels (device scale 1)."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900, timeout: float = 30.0):
        self.timeout, self.width, self.height = timeout, width, height
        self.profile = tempfile.mkdtemp(prefix="onedc-chromium-")
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def pipes_as_fd_3_and_4():  # where --remote-debugging-pipe expects them
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        flags = ["--headless", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--hide-scrollbars", f"--user-data-dir={self.profile}", "about:blank"]
        if os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.process = subprocess.Popen([executable, *flags], pass_fds=(3, 4), preexec_fn=pipes_as_fd_3_and_4,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer, self.next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable"):
            self.call(method, session=True)
        self.resize(height)

    # -------------------------------------------------------------- protocol
    def call(self, method: str, session: bool = False, **params) -> dict:
        """Send one command (to the page when `session`) and return its result."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            if not select.select([self.from_browser], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str) -> dict:
        """The first event `method` not yet consumed (waiting for it)."""
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    return self.events.pop(i)["params"]
            self._read()

    # -------------------------------------------------------------- page
    def open(self, path: Path) -> None:
        """Load a local file and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def resize(self, height: int) -> None:
        self.height = height
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def screenshot(self) -> bytes:
        """PNG of the viewport (call `resize` with the page's height for all of it), once the
        page has painted two frames since the call (a resize or decoded images show only then)."""
        self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def screenshot_until(self, check, timeout: float = 20.0) -> bytes:
        """A screenshot for which `check(png)` holds, retaken every 0.2 s; the last one after
        `timeout` s. Chromium rasters a tall page tile by tile, and under load tiles can still be
        black two frames after the page painted (seen twice in CI)."""
        deadline = time.monotonic() + timeout
        shot = self.screenshot()
        while not check(shot) and time.monotonic() < deadline:
            time.sleep(0.2)
            shot = self.screenshot()
        return shot

    def requests(self) -> list[str]:
        """URLs of every request the page has made since it was opened."""
        while True:  # drain what has arrived
            if not select.select([self.from_browser], [], [], 0.2)[0] and b"\0" not in self.buffer:
                break
            self._read()
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)
