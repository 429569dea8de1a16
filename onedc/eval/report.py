"""Reports of an evaluation: Markdown tables in the layout of the supplementary's Tables C to H,
RD plots (matplotlib, PNG and PDF, one panel per metric, our curves over the baselines) and a
self-contained HTML page (plots, tables and side-by-side crops embedded as base64) that opens
offline in a browser.

A curve is a results dict in CompressAI's schema: {"name", "description", "meta", "results":
{"bpp": [...], metric: [...]}}, the form of the shipped baselines and of our results.json.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file

# column order, label, printed decimals, whether lower is better
COLUMNS = {
    "bpp": ("BPP", 4, True),
    "psnr": ("PSNR", 3, False),
    "ms-ssim": ("MS-SSIM", 3, False),
    "lpips": ("LPIPS", 3, True),
    "dists": ("DISTS", 3, True),
    "fid": ("FID", 3, True),
    "kid": ("KID", 4, True),
}


@dataclass
class Comparison:
    """One side-by-side panel of the HTML report: PNG bytes of original and reconstruction."""

    title: str
    original_png: bytes
    reconstruction_png: bytes
    caption: str


def table_rows(curves: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the Tables C-H layout: one row per rate point, the method named on its
    first row; only the columns some curve has, in COLUMNS order."""
    present = [k for k in COLUMNS if any(k in c["results"] for c in curves.values())]
    header = ["Method"] + [COLUMNS[k][0] for k in present]
    rows = []
    for name, curve in curves.items():
        results = curve["results"]
        order = sorted(range(len(results["bpp"])), key=lambda i: results["bpp"][i])
        for rank, i in enumerate(order):
            cells = [name if rank == 0 else ""]
            for key in present:
                values = results.get(key)
                value = values[i] if values is not None else None
                cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{COLUMNS[key][1]}f}")
            rows.append(cells)
    return header, rows


def markdown_table(curves: dict[str, dict]) -> str:
    header, rows = table_rows(curves)
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def rd_plot(curves: dict[str, dict], ours: list[str], title: str, stem: Path) -> list[Path]:
    """One panel per metric (bpp on x); our curves drawn bold on top of the baselines. Writes
    `stem`.png and `stem`.pdf; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [k for k in COLUMNS if k != "bpp" and any(_has(c, k) for c in curves.values())]
    if not metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    # same colour in every panel; ours in strong colours of their own, baselines in tab10 without red
    ours_colors = iter(["black", "crimson", "darkorchid", "sienna", "teal", "olive"] * 10)
    baseline_colors = iter([f"C{i}" for i in (0, 1, 2, 4, 6, 7, 8, 9)] * 10)
    colors = {name: next(ours_colors) if name in ours else next(baseline_colors) for name in curves}
    for ax, key in zip(axes[0], metrics):
        for name, curve in curves.items():
            if not _has(curve, key):
                continue
            points = sorted((b, v) for b, v in zip(curve["results"]["bpp"], curve["results"][key]) if v is not None)
            mine = name in ours
            ax.plot(*zip(*points), marker="s" if mine else "o", markersize=5 if mine else 3, linewidth=2.4 if mine else 1.1,
                    zorder=3 if mine else 2, label=name, color=colors[name])
        label, _, lower = COLUMNS[key]
        ax.set_xlabel("bpp")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_ylabel(f"{label} {'(lower is better)' if lower else '(higher is better)'}")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = []
    for suffix in (".png", ".pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix[1:], dpi=130)
        path = stem.with_suffix(suffix)
        with atomic_file(path) as tmp:
            Path(tmp).write_bytes(buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def _has(curve: dict, key: str) -> bool:
    values = curve["results"].get(key)
    return values is not None and any(v is not None for v in values)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


STYLE = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
.pair{display:flex;gap:8px;margin:1.5em 0}.pair figure{margin:0;flex:1}figcaption{font-size:90%}
pre{background:#f6f6f6;padding:8px;overflow-x:auto}"""


def html_report(path: Path, title: str, plot_png: Path | None, curves: dict[str, dict],
                sections: dict[str, str], comparisons: list[Comparison]) -> None:
    """A single self-contained HTML file: the RD plot, the results table, extra sections
    (title -> preformatted text, e.g. BD-rate tables, metric settings) and the crops."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if plot_png is not None:
        parts.append(_img(plot_png.read_bytes(), "rate-distortion curves"))
    parts.append("<h2>Results</h2>" + html_table(*table_rows(curves)))
    for heading, text in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
    if comparisons:
        parts.append("<h2>Original / reconstruction</h2>")
    for c in comparisons:
        parts.append(f"<h3>{html.escape(c.title)}</h3><div class='pair'>"
                     f"<figure>{_img(c.original_png, 'original')}<figcaption>original</figcaption></figure>"
                     f"<figure>{_img(c.reconstruction_png, 'reconstruction')}<figcaption>{html.escape(c.caption)}</figcaption></figure></div>")
    parts.append("</body></html>")
    with atomic_file(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
