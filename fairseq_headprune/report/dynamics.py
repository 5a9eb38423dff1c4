"""Plots and table of training dynamics (paper §6, Fig. 6), drawn from the lines of
``head_dynamics.jsonl`` (written by ``fairseq-train --task translation_headprune
--prune-curve-every-epoch``) only.

``write_dynamics`` writes, into one folder:

* ``dynamics_by_epoch.png``: for each epoch, the metric relative to that epoch's
  unpruned score against % of heads pruned (Fig. 6 left);
* ``dynamics_by_level.png``: relative metric against epoch (log axis), one line per
  pruning level (Fig. 6 right); against updates when interval lines are included;
* ``dynamics.csv``: epoch, updates, fraction, masked heads, BLEU, relative metric,
  sacreBLEU, loss for every point (relative is empty where the unpruned score is 0);
* ``dynamics.json``: the lines drawn and the settings, so that ``fairseq-headprune
  report DIR --redraw`` redraws the plots even where the .jsonl is not in DIR.
"""

import os
from typing import Dict, List, Optional, Sequence

from ..analysis.scoring import METRIC_LABELS
from ..errors import HeadPruneError
from ..results import read_json, write_csv, write_json
from . import plots

JSONL_FILE = "head_dynamics.jsonl"  # analysis.dynamics.DEFAULT_FILE (kept free of torch here)
PLOT_FILE = "dynamics.json"
PLOT_FORMAT = "fairseq-headprune/dynamics-plot-v1"
METRICS = ("bleu", "sacrebleu")
DEFAULT_LEVELS = tuple(x / 10 for x in range(1, 10))
PNGS = ("dynamics_by_epoch.png", "dynamics_by_level.png")


def _end_of_epoch(line) -> bool:
    return line.get("end_of_epoch", True)


def select(lines: Sequence[dict], include_interval: bool = False) -> List[dict]:
    """The lines to draw: end-of-epoch lines, plus interval lines if asked."""
    return [l for l in lines if include_interval or _end_of_epoch(l)]


def check_lines(lines, metric: str, source: str) -> None:
    """HeadPruneError naming ``source`` unless ``lines`` are dynamics lines."""
    def bad(problem):
        return HeadPruneError(f"dynamics file {source!r} {problem}")

    if metric not in METRICS:
        raise bad(f"names metric {metric!r} (allowed: {', '.join(METRICS)})")
    if not isinstance(lines, list):
        raise bad("does not hold a list of dynamics lines")
    for n, line in enumerate(lines, 1):
        if not (isinstance(line, dict) and isinstance(line.get("epoch"), int)
                and isinstance(line.get("updates"), int) and isinstance(line.get("unpruned"), dict)
                and _number(line["unpruned"].get(metric)) and isinstance(line.get("curve"), list)):
            raise bad(f"line {n} is not a dynamics line (epoch, updates, unpruned, curve)")
        for p in line["curve"]:
            if not (isinstance(p, dict) and all(_number(p.get(k)) for k in ("fraction", metric))):
                raise bad(f"line {n}: a curve point lacks fraction or {metric}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _loss_key(lines) -> Optional[str]:
    """The points' loss field, whatever its unit suffix ('loss', 'loss_bits', ...)."""
    for line in lines:
        for p in line["curve"]:
            keys = sorted(k for k in p if k == "loss" or k.startswith("loss_"))
            if keys:
                return keys[0]
    return None


def _rel(line, p, metric):
    base = line["unpruned"][metric]
    return p[metric] / base if base > 0 else None


def rows_of(lines, metric: str, loss_key: Optional[str] = None):
    rows = []
    for line in lines:
        for p in line["curve"]:
            rows.append((line["epoch"], line["updates"], p["fraction"], p.get("masked", ""),
                         p.get("bleu", ""), _rel(line, p, metric), p.get("sacrebleu", ""),
                         p.get(loss_key, "") if loss_key else ""))
    return rows


def write_dynamics(lines: Sequence[dict], out_dir: str, metric: str = "bleu",
                   levels: Sequence[float] = DEFAULT_LEVELS, source: str = "",
                   include_interval: bool = False, record: bool = True) -> List[str]:
    """Draw ``lines`` (already selected) into ``out_dir``: the two PNGs, dynamics.csv
    and (``record``) dynamics.json. Returns the PNG paths."""
    lines = list(lines)
    check_lines(lines, metric, source)
    if not lines:
        raise HeadPruneError(f"{source!r} has no end-of-epoch lines")
    by_level = {}
    by_updates = not all(_end_of_epoch(l) for l in lines)
    for lev in levels:
        pts = []
        for l in lines:
            p = next((p for p in l["curve"] if abs(p["fraction"] - lev) < 1e-6), None)
            if p is not None:
                pts.append((l["updates"] if by_updates else l["epoch"], _rel(l, p, metric)))
        if pts:
            by_level[f"{round(100 * lev)}% pruned"] = pts
    if not by_level:
        raise HeadPruneError(f"levels {','.join(f'{100 * x:g}' for x in levels)}: no such points "
                             f"in {source!r}")
    os.makedirs(out_dir, exist_ok=True)
    loss_key = _loss_key(lines)
    # lines name their loss unit (bits per target token since head-dynamics lines have it)
    units = {l.get("loss_unit") for l in lines}
    loss_col = "loss_bits_per_token" if loss_key == "loss" and units and None not in units else (
        loss_key or "loss")
    write_csv(os.path.join(out_dir, "dynamics.csv"),
              ["epoch", "updates", "fraction", "masked", "bleu", f"relative_{metric}", "sacrebleu",
               loss_col], rows_of(lines, metric, loss_key))
    if record:
        write_json(os.path.join(out_dir, PLOT_FILE), {
            "format": PLOT_FORMAT, "source": os.path.abspath(source) if source else None,
            "metric": metric, "levels": list(levels), "include_interval": include_interval,
            "lines": [{k: l[k] for k in ("epoch", "updates", "end_of_epoch", "unpruned", "curve")
                       if k in l} for l in lines]})

    def label(l):
        return f"epoch {l['epoch']}" if _end_of_epoch(l) else f"update {l['updates']}"

    name = METRIC_LABELS[metric]
    by_epoch = {label(l): [(100 * p.get("share_masked", p["fraction"]), _rel(l, p, metric))
                           for p in l["curve"]] for l in lines}
    out = [plots.lines(by_epoch, os.path.join(out_dir, PNGS[0]),
                       f"{name} relative to the unpruned model, per epoch",
                       "% of heads pruned", f"relative {name} (unpruned = 1)", hline=1.0,
                       hline_label="unpruned model")]
    out.append(plots.lines(by_level, os.path.join(out_dir, PNGS[1]),
                           f"relative {name} during training, per share of heads pruned",
                           "updates (log scale)" if by_updates else "epoch (log scale)",
                           f"relative {name} (unpruned = 1)", logx=True, hline=1.0,
                           hline_label="unpruned model"))
    return out


def draw_from_jsonl(path: str, out_dir: str, metric: str = "bleu",
                    levels: Sequence[float] = DEFAULT_LEVELS,
                    include_interval: bool = False) -> List[str]:
    """``fairseq-headprune plot-dynamics``: read the .jsonl and write everything."""
    from ..analysis.dynamics import read_lines

    if not os.path.isfile(path):
        raise HeadPruneError(f"{path!r} does not exist (train with --prune-curve-every-epoch)")
    lines = select(read_lines(path), include_interval)
    if not lines:
        raise HeadPruneError(f"{path!r} has no end-of-epoch lines")
    return write_dynamics(lines, out_dir, metric, levels, path, include_interval)


def redraw(results_dir: str) -> List[str]:
    """The dynamics PNGs of ``results_dir`` again. Settings (metric, levels, interval
    lines) come from its dynamics.json, lines from its head_dynamics.jsonl if there
    (training may have gone on), else from dynamics.json; with neither, nothing."""
    from ..analysis.dynamics import read_lines

    record_path = os.path.join(results_dir, PLOT_FILE)
    jsonl = os.path.join(results_dir, JSONL_FILE)
    settings: Dict = {}
    if os.path.isfile(record_path):
        settings = read_json(record_path, "dynamics plot file")
        if not (isinstance(settings, dict) and isinstance(settings.get("lines"), list)
                and isinstance(settings.get("levels", []), list)
                and all(_number(x) for x in settings.get("levels", []))):
            raise HeadPruneError(f"dynamics plot file {record_path!r} is not one "
                                 f"(expected {{\"metric\", \"levels\", \"lines\": [...]}})")
    elif not os.path.isfile(jsonl):
        return []
    metric = settings.get("metric", "bleu")
    levels = settings.get("levels", DEFAULT_LEVELS)
    interval = bool(settings.get("include_interval", False))
    if os.path.isfile(jsonl):
        source, lines = jsonl, select(read_lines(jsonl), interval)
    else:
        source, lines = record_path, settings["lines"]
    return write_dynamics(lines, results_dir, metric, levels, source, interval,
                          record=os.path.isfile(record_path) and source == jsonl)
