"""Reports of an evaluation: Markdown tables in the layout of the supplementary's Tables C to H,
RD plots (matplotlib, PNG and PDF, one panel per metric, our curves over the baselines) and a
self-contained HTML page that opens offline in a browser: one RD panel per metric, the results
table, BD-rate, and a paginated gallery of crops (original beside every rate point, with bpp and
metrics; click to zoom). Images are embedded as base64 PNG; the gallery's pages are <template>s,
so a page's images are decoded only when it is shown.

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
from .bd_rate import format_table

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


def curve_colors(curves: dict[str, dict], ours: list[str]) -> dict[str, str]:
    """One colour per curve (hex), the same in every panel and the legend: ours in strong
    colours of their own, the baselines in tab10 without its red."""
    from matplotlib.colors import to_hex

    ours_colors = iter(["black", "crimson", "darkorchid", "sienna", "teal", "olive"] * 10)
    baseline_colors = iter([f"C{i}" for i in (0, 1, 2, 4, 6, 7, 8, 9)] * 10)
    return {name: to_hex(next(ours_colors) if name in ours else next(baseline_colors)) for name in curves}


def plotted_metrics(curves: dict[str, dict]) -> list[str]:
    """The quality metrics (COLUMNS order) that some curve has values for."""
    return [k for k in COLUMNS if k != "bpp" and any(_has(c, k) for c in curves.values())]


def _draw_panel(ax, curves: dict[str, dict], ours: list[str], colors: dict[str, str], key: str) -> None:
    """One metric against bpp: our curves bold on top of the baselines."""
    from matplotlib.ticker import MaxNLocator

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


def _figure_bytes(fig, fmt: str, dpi: int = 130) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    return buffer.getvalue()


def rd_plot(curves: dict[str, dict], ours: list[str], title: str, stem: Path) -> list[Path]:
    """All metrics side by side (bpp on x), one panel each, with a shared legend: `stem`.png and
    `stem`.pdf (for papers and slides); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = plotted_metrics(curves)
    if not metrics:
        return []
    colors = curve_colors(curves, ours)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        _draw_panel(ax, curves, ours, colors, key)
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    paths = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        with atomic_file(path) as tmp:
            Path(tmp).write_bytes(_figure_bytes(fig, suffix[1:]))
        paths.append(path)
    plt.close(fig)
    return paths


def rd_panels(curves: dict[str, dict], ours: list[str], size: tuple[float, float] = (4.4, 3.4), dpi: int = 150) -> dict[str, bytes]:
    """One PNG per metric (the HTML report's panels; the legend is the page's): metric -> bytes,
    `size` inches at `dpi`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors, panels = curve_colors(curves, ours), {}
    for key in plotted_metrics(curves):
        fig, ax = plt.subplots(figsize=size)
        _draw_panel(ax, curves, ours, colors, key)
        fig.tight_layout()
        panels[key] = _figure_bytes(fig, "png", dpi)
        plt.close(fig)
    return panels


def _has(curve: dict, key: str) -> bool:
    values = curve["results"].get(key)
    return values is not None and any(v is not None for v in values)


@dataclass
class Panel:
    """One image of a comparison row: a crop (PNG bytes), a label and a caption."""

    label: str
    png: bytes
    caption: str = ""


@dataclass
class Comparison:
    """One row of the report's gallery: the original's crop, then reconstructions of it."""

    title: str
    panels: list[Panel]


@dataclass
class BDRateSection:
    """`bd_rate_table` rows against `anchor`, interpolated with `method`."""

    anchor: str
    method: str
    rows: list[dict]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


STYLE = """
:root{--ink:#1d1f23;--muted:#5f6670;--line:#dfe3e8;--ours:#fff6d6;--accent:#b3123b}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);margin:0;background:#fff}
header{padding:28px 40px 12px;border-bottom:1px solid var(--line)}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 10px}
.sub{color:var(--muted);margin:0}
nav{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid var(--line);padding:8px 40px;z-index:5}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-weight:600}
main{padding:0 40px 60px;max-width:1700px}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin:6px 0 12px;font-size:14px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend i{display:inline-block;width:22px;height:4px;border-radius:2px}
.legend .ours{font-weight:700}.legend .ours i{height:6px}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
.panels figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:6px;background:#fff}
.panels img{width:100%;height:auto;display:block}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:14px}
th,td{padding:4px 12px;text-align:right;border-bottom:1px solid var(--line)}
th{background:#f3f5f7;position:sticky;top:41px}
td:first-child,th:first-child{text-align:left;font-weight:600}
tr.first td{border-top:2px solid #c4cad2}tr.ours td{background:var(--ours)}
td.good{color:#0b7a3b;font-weight:600}td.bad{color:var(--accent)}
.note{color:var(--muted);font-size:13px}
.pager[hidden]{display:none}.pager{display:flex;align-items:center;gap:10px;margin:8px 0 14px}
.pager button{font:inherit;padding:4px 14px;border:1px solid #b9c0c8;border-radius:6px;background:#f7f8fa;cursor:pointer}
.pager button:disabled{opacity:.4;cursor:default}
.row{margin:0 0 26px}.row h3{font-size:16px;margin:0 0 6px}
.crops{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(150px,320px);gap:10px;overflow-x:auto}
.crops figure{margin:0}
.crops img{width:100%;height:auto;display:block;image-rendering:pixelated;cursor:zoom-in;border-radius:4px;background:#eee}
.crops figcaption{font-size:12.5px;line-height:1.3;margin-top:4px;font-variant-numeric:tabular-nums}
.crops figcaption b{display:block;font-size:13px}
#zoom{position:fixed;inset:0;background:#000000e6;display:flex;flex-direction:column;align-items:center;justify-content:center;z-index:10;cursor:zoom-out}
#zoom[hidden]{display:none}
#zoom img{max-width:96vw;max-height:86vh;min-height:60vh;object-fit:contain;image-rendering:pixelated}
#zoom p{color:#eee;margin:10px;font-size:15px}
pre{background:#f6f7f9;padding:10px;overflow-x:auto;font-size:12px}
"""

SCRIPT = """
const pages = Array.from(document.querySelectorAll('template.page'));
const shown = document.getElementById('page'), label = document.getElementById('page-label');
const prev = document.getElementById('prev'), next = document.getElementById('next');
let current = 0;
function show(k) {
  current = Math.max(0, Math.min(pages.length - 1, k));
  shown.replaceChildren(pages[current].content.cloneNode(true));
  label.textContent = 'page ' + (current + 1) + ' of ' + pages.length;
  prev.disabled = current === 0; next.disabled = current === pages.length - 1;
}
if (pages.length) { prev.onclick = () => show(current - 1); next.onclick = () => show(current + 1); show(0); }
const zoom = document.getElementById('zoom'), zoomed = zoom.querySelector('img'), caption = zoom.querySelector('p');
let row = [], at = 0;
function open(k) {
  at = (k + row.length) % row.length;
  const img = row[at];
  zoomed.src = img.src; caption.textContent = img.dataset.caption + '   (\u2190 \u2192 to compare, Esc to close)';
  zoom.hidden = false;
}
document.addEventListener('click', e => {
  const img = e.target.closest('img.zoomable');
  if (img) { row = Array.from(img.closest('.crops').querySelectorAll('img.zoomable')); open(row.indexOf(img)); }
  else if (e.target.closest('#zoom')) zoom.hidden = true;
});
document.addEventListener('keydown', e => {
  if (zoom.hidden) return;
  if (e.key === 'Escape') zoom.hidden = true;
  if (e.key === 'ArrowRight') open(at + 1);
  if (e.key === 'ArrowLeft') open(at - 1);
});
"""


def _results_table(curves: dict[str, dict], ours: list[str]) -> str:
    """Tables C-H layout: one row per rate point, the method named on its first row, ours shaded."""
    header, rows = table_rows(curves)
    names = [name for name, curve in curves.items() for _ in curve["results"]["bpp"]]
    body = []
    for name, row in zip(names, rows):
        classes = " ".join(c for c in ("first" if row[0] else "", "ours" if name in ours else "") if c)
        body.append(f"<tr class='{classes}'>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    return f"<table class='results'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _bd_rate_table(section: BDRateSection, ours: list[str]) -> str:
    """The BD-rate table as `format_table` writes it (Markdown: a table, then its footnotes),
    as HTML: savings green, losses red, ours shaded."""
    lines = format_table(section.rows).splitlines()
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|") and "---" not in line]
    notes = [line for line in lines if line and not line.startswith("|")]
    head = "".join(f"<th>{_esc(h)}</th>" for h in table[0])
    body = []
    for row in table[1:]:
        cells = [f"<td>{_esc(row[0])}</td>"]
        for cell in row[1:]:
            tone = "" if row[0] == section.anchor or not cell.endswith("%") else (" class='good'" if cell.startswith("-") else " class='bad'")
            cells.append(f"<td{tone}>{_esc(cell)}</td>")
        shade = " class='ours'" if row[0] in ours else ""
        body.append(f"<tr{shade}>{''.join(cells)}</tr>")
    footnotes = "".join(f"<br>{_esc(n)}" for n in notes)
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p class='note'>Bits saved at equal quality against {_esc(section.anchor)} ({_esc(section.method)} interpolation "
            f"of log-rate over the overlapping quality range): negative = fewer bits.{footnotes}</p>")


def _gallery(comparisons: list[Comparison], per_page: int) -> str:
    """Rows of crops, `per_page` rows per page; each page in a <template>, so only the shown
    page's images are decoded."""
    pages = []
    for first in range(0, len(comparisons), per_page):
        rows = []
        for c in comparisons[first:first + per_page]:
            figures = "".join(
                f"<figure><img class='zoomable' loading='lazy' decoding='async' alt='{_esc(p.label)}' "
                f"data-caption='{_esc(c.title + ': ' + p.label + (' - ' + p.caption if p.caption else ''))}' src='{_data_uri(p.png)}'>"
                f"<figcaption><b>{_esc(p.label)}</b>{_esc(p.caption)}</figcaption></figure>" for p in c.panels)
            rows.append(f"<div class='row'><h3>{_esc(c.title)}</h3><div class='crops'>{figures}</div></div>")
        pages.append(f"<template class='page'>{''.join(rows)}</template>")
    hidden = " hidden" if len(pages) < 2 else ""
    pager = (f"<div class='pager'{hidden}><button id='prev'>&larr; previous</button><span id='page-label'></span>"
             "<button id='next'>next &rarr;</button></div>")
    return pager + "<div id='page'></div>" + "".join(pages)


def html_report(path: Path, title: str, subtitle: str, curves: dict[str, dict], ours: list[str],
                panels: dict[str, bytes], comparisons: list[Comparison], bd_rate: BDRateSection | None = None,
                details: dict[str, str] | None = None, per_page: int = 6) -> None:
    """A single self-contained HTML file (nothing fetched; opens offline): the legend and one RD
    panel per metric (`panels`: metric -> PNG, see `rd_panels`), the results in the Tables C-H
    layout, the BD-rate table, the gallery of crops (`per_page` rows a page; click a crop to
    zoom, arrow keys to flip through its row) and collapsed `details` (title -> text)."""
    colors = curve_colors(curves, ours)
    legend = "".join(f"<span class='{'ours' if n in ours else ''}'><i style='background:{colors[n]}'></i>{_esc(n)}</span>"
                     for n in [*ours, *[n for n in curves if n not in ours]])
    sections = [("rd", "Rate-distortion", f"<div class='legend'>{legend}</div><div class='panels'>" + "".join(
        f"<figure><img class='rd' alt='{_esc(COLUMNS[k][0])} against bpp' src='{_data_uri(png)}'></figure>"
        for k, png in panels.items()) + "</div>")]
    sections.append(("results", "Results", _results_table(curves, ours)))
    if bd_rate is not None:
        sections.append(("bdrate", f"BD-rate against {bd_rate.anchor}", _bd_rate_table(bd_rate, ours)))
    if comparisons:
        sections.append(("crops", "Reconstructions", _gallery(comparisons, per_page)))
    if details:
        sections.append(("details", "Settings", "".join(f"<details><summary>{_esc(k)}</summary><pre>{_esc(v)}</pre></details>"
                                                        for k, v in details.items())))
    nav = "".join(f"<a href='#{key}'>{_esc(heading)}</a>" for key, heading, _ in sections)
    body = "".join(f"<section id='{key}'><h2>{_esc(heading)}</h2>{content}</section>" for key, heading, content in sections)
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{_esc(title)}</h1><p class='sub'>{_esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main><div id='zoom' hidden><img alt='zoomed crop'><p></p></div>"
            f"<script>{SCRIPT}</script></body></html>")
    with atomic_file(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
