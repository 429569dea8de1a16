"""Bjontegaard delta rate (BD-rate) between two rate-quality curves, and BD-rate tables.

BD-rate is the mean horizontal gap between two curves at equal quality. For the anchor and
the test curve, log-rate (natural log of bpp) is fitted as a function of the metric; both fits
are integrated over the metric interval the two curves share (the overlap), and the mean
difference d of the fits gives BD-rate = (exp(d) - 1) * 100 %. Negative means the test curve
needs fewer bits than the anchor for the same quality.

Methods:

- ``"cubic"`` (default): Bjontegaard's VCEG-M33, a least-squares cubic polynomial per curve,
  integrated exactly; runs on curves that are not monotonic (FID at very low rates often is
  not). A cubic needs 4 points with distinct metric values; a curve with only 3 (PerCo (SD) in
  the supplementary's Table E) gets the minimum-norm least-squares cubic that the classic
  script's ``numpy.polyfit`` returns for it, and the result is flagged ``degenerate`` (the
  supplementary's Table A was evidently computed this way: it matches to 0.5%).
- ``"pchip"`` / ``"akima"``: scipy's PchipInterpolator / Akima1DInterpolator through the
  points, integrated exactly with the interpolator's own ``integrate`` (no sampling). Need at
  least 3 points on a curve whose metric improves at every step up in rate; otherwise a
  `BDRateError` tells you to use ``"cubic"``.

Lower-is-better metrics (LPIPS, DISTS, FID, KID, ...) are negated before fitting, so every
curve is "higher is better"; overlaps are reported in the metric's own units. Points are sorted
by metric together with their rates (pairs are kept). Every curve must improve from its lowest
to its highest rate, which catches a wrong ``lower_is_better``. Curves that do not overlap
raise `BDRateError`; no NaN is ever returned.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

from onedc.atomic import atomic_file
from onedc.errors import OneDCError
from onedc.eval.baselines import ResultsError, load_all, load_results

METHODS = ("cubic", "pchip", "akima")
MIN_POINTS = {"cubic": 3, "pchip": 3, "akima": 3}
CUBIC_POINTS = 4  # fewer distinct points make the cubic fit degenerate (minimum-norm)
LOWER_IS_BETTER = frozenset({"lpips", "dists", "fid", "kid", "fid-swav", "mse"})
DEFAULT_METRICS = ("lpips", "dists", "fid")


class BDRateError(OneDCError, ValueError):
    """Two curves have no BD-rate: too few points, no overlap, a curve the method cannot fit."""


@dataclass(frozen=True)
class BDRate:
    """BD-rate of a test curve against an anchor.

    percent: rate difference in % (negative = bits saved); overlap: (lo, hi) metric interval
    integrated over, in the metric's units; method: "cubic", "pchip" or "akima";
    points: (anchor, test) point counts; degenerate: a cubic fitted through fewer than 4 distinct
    metric values (its minimum-norm least-squares solution).
    """

    percent: float
    overlap: tuple[float, float]
    method: str
    points: tuple[int, int]
    degenerate: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"percent": self.percent, "overlap": list(self.overlap), "method": self.method,
                "points": list(self.points), "degenerate": self.degenerate}


def bd_rate(anchor_bpp: Sequence[float], anchor_metric: Sequence[float], test_bpp: Sequence[float],
            test_metric: Sequence[float], *, lower_is_better: bool = False, method: str = "cubic") -> BDRate:
    """BD-rate in % of the test curve against the anchor; rates in bpp (any unit works, as long
    as both curves use the same), metric in its own units."""
    if method not in METHODS:
        raise ValueError(f"unknown BD-rate method {method!r}; choose one of {', '.join(METHODS)}")
    sign = -1.0 if lower_is_better else 1.0
    anchor = _curve("anchor", anchor_bpp, anchor_metric, sign, method)
    test = _curve("test", test_bpp, test_metric, sign, method)
    lo, hi = max(anchor[0][0], test[0][0]), min(anchor[0][-1], test[0][-1])
    if hi <= lo:
        raise BDRateError(
            f"the curves do not overlap in the metric: anchor spans {_span(anchor[0], sign)}, "
            f"test spans {_span(test[0], sign)}"
        )
    mean_gap = (_integral(*test, method, lo, hi) - _integral(*anchor, method, lo, hi)) / (hi - lo)
    overlap = (float(min(sign * lo, sign * hi)), float(max(sign * lo, sign * hi)))
    degenerate = method == "cubic" and min(np.unique(anchor[0]).size, np.unique(test[0]).size) < CUBIC_POINTS
    return BDRate(float(np.expm1(mean_gap) * 100.0), overlap, method, (len(anchor[0]), len(test[0])), degenerate)


def bd_rate_for(metric_name: str, anchor_curve: Mapping[str, Sequence], test_curve: Mapping[str, Sequence],
                method: str = "cubic") -> BDRate:
    """BD-rate on `metric_name` between two results dicts ({"bpp": [...], metric: [...]});
    the direction comes from the name (`LOWER_IS_BETTER`)."""
    columns = [_column(label, curve, key)
               for label, curve in (("anchor", anchor_curve), ("test", test_curve)) for key in ("bpp", metric_name)]
    return bd_rate(*columns, lower_is_better=metric_name.lower() in LOWER_IS_BETTER, method=method)


def bd_rate_table(curves: Mapping[str, Mapping[str, Sequence]], anchor: str,
                  metrics: Sequence[str] | None = None, method: str = "cubic") -> list[dict]:
    """One row per curve (in the given order): BD-rate against `anchor` on each metric.

    `curves` maps a method name to its results dict. `metrics` defaults to those of
    `DEFAULT_METRICS` the anchor has. A row is {"name", "anchor", "bd_rate": {metric: cell}};
    a cell is `BDRate.to_dict()`, or {"percent": None, "reason": str} when there is none.
    """
    if anchor not in curves:
        raise BDRateError(f"unknown anchor {anchor!r}; available: {', '.join(curves)}")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in curves[anchor]]
    rows = []
    for name, curve in curves.items():
        cells = {}
        for metric in metrics:
            try:
                cells[metric] = bd_rate_for(metric, curves[anchor], curve, method).to_dict()
            except BDRateError as error:
                cells[metric] = {"percent": None, "reason": str(error)}
        rows.append({"name": name, "anchor": anchor, "bd_rate": cells})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of `bd_rate_table` rows: method, then BD-rate in % per metric; "n/a [k]"
    points to footnote k, which gives the reason, and "x% [k]" to a footnote on a degenerate fit."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    metrics = list(rows[0]["bd_rate"])
    lines = ["| Method | " + " | ".join(m.upper() for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    notes = []
    for row in rows:
        cells = []
        for metric in metrics:
            cell = row["bd_rate"][metric]
            value = None if cell["percent"] is None else f"{round(cell['percent'], 1) + 0.0:.1f}%"
            if cell["percent"] is None:
                notes.append(f"{row['name']}, {metric.upper()}: {cell['reason']}")
                cells.append(f"n/a [{len(notes)}]")
            elif cell.get("degenerate"):
                notes.append(f"{row['name']}, {metric.upper()}: degenerate fit: a curve has fewer than {CUBIC_POINTS} distinct "
                             "metric values, so its cubic is the minimum-norm least-squares one (classic Bjontegaard script)")
                cells.append(f"{value} [{len(notes)}]")
            else:
                cells.append(value)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[{k}] {note}" for k, note in enumerate(notes, 1)]
    return "\n".join(lines)


def bdrate_command(dataset: str, anchor: str, results_paths: Sequence[str | Path] = (), method: str = "cubic",
                   json_path: str | Path | None = None, metrics: Sequence[str] | None = None) -> str:
    """The text of `onedc-eval bdrate`: BD-rate of the shipped baselines of `dataset` and of our
    results files against `anchor`, anchor first; writes the rows as JSON to `json_path` if given."""
    baselines = load_all(dataset)
    curves = {name: data["results"] for name, data in baselines.items()}
    for path in results_paths:
        data = load_results(path)
        if data["name"] in curves:
            raise ResultsError(f"results file {path} is named {data['name']!r}, which {dataset} already has; "
                               "rename it in the file's 'name' field")
        curves[data["name"]] = data["results"]
    if anchor in curves:
        curves = {anchor: curves[anchor], **curves}
    rows = bd_rate_table(curves, anchor, metrics, method)
    meta = next(iter(baselines.values()))["meta"]
    title = (f"BD-rate against {anchor} on {dataset} ({meta['setting']}, {meta['source']}), method {method}; "
             "negative = fewer bits than the anchor")
    if json_path is not None:
        report = {"dataset": dataset, "setting": meta["setting"], "anchor": anchor, "method": method, "rows": rows}
        with atomic_file(json_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return f"{title}\n\n{format_table(rows)}"


def _column(label: str, curve: Mapping[str, Sequence], key: str) -> Sequence[float]:
    values = curve.get(key)
    if values is None:
        raise BDRateError(f"the {label} curve has no {key!r} values")
    if any(v is None for v in values):
        raise BDRateError(f"the {label} curve has missing (null) {key!r} values")
    return values


def _curve(label: str, bpp: Sequence[float], metric: Sequence[float], sign: float, method: str):
    """Validated (oriented metric, log-rate) arrays of one curve, sorted by metric."""
    rate, quality = np.asarray(bpp, dtype=float), sign * np.asarray(metric, dtype=float)
    if rate.ndim != 1 or rate.shape != quality.shape:
        raise BDRateError(f"the {label} curve has {rate.size} bpp values but {quality.size} metric values")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality)) and np.all(rate > 0)):
        raise BDRateError(f"the {label} curve needs finite metric values and bpp > 0")
    if np.unique(quality).size < MIN_POINTS[method]:
        raise BDRateError(f"the {label} curve has {np.unique(quality).size} distinct metric values; "
                          f"method {method!r} needs at least {MIN_POINTS[method]}")
    by_rate = np.argsort(rate, kind="stable")
    if quality[by_rate[-1]] <= quality[by_rate[0]]:
        raise BDRateError(f"the {label} curve's metric does not improve from its lowest to its highest bpp; "
                          "is lower_is_better set right?")
    if method != "cubic" and not np.all(np.diff(quality[by_rate]) > 0):
        raise BDRateError(f"the {label} curve is not monotonic (its metric does not improve at every "
                          f"step up in bpp); method {method!r} needs a monotonic curve, use method='cubic'")
    by_quality = np.argsort(quality, kind="stable")
    return quality[by_quality], np.log(rate[by_quality])


def _integral(quality: np.ndarray, log_rate: np.ndarray, method: str, lo: float, hi: float) -> float:
    """Integral of the fitted log-rate over [lo, hi] (oriented metric units)."""
    if method == "cubic":
        with warnings.catch_warnings():  # 3 points: the minimum-norm fit, flagged `degenerate` by the caller
            warnings.simplefilter("ignore")  # numpy's RankWarning (its module moved in numpy 2)
            antiderivative = np.polyint(np.polyfit(quality, log_rate, 3))
        return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    interpolator = PchipInterpolator if method == "pchip" else Akima1DInterpolator
    return float(interpolator(quality, log_rate).integrate(lo, hi))


def _span(quality: np.ndarray, sign: float) -> str:
    lo, hi = sorted((sign * quality[0], sign * quality[-1]))
    return f"[{lo:g}, {hi:g}]"
