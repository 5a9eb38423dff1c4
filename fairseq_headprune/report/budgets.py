"""budgets.csv, budgets.png and budgets.md from budgets.json (compare-budgets): one
plot panel per repair, BLEU (a classifier's: accuracy) against the share of heads
removed, one line per order (random orders: their mean, with a min-max band), the
unpruned model dashed; the Markdown table has one row per budget and order, one BLEU
column per repair."""

import os
import statistics
from typing import Dict, List

from ..analysis.scoring import METRIC_LABELS
from ..errors import HeadPruneError
from ..results import read_json, write_csv, write_text
from . import plots

FILE = "budgets.json"
REPAIR_NAMES = {"none": "no repair", "bias": "bias compensation",
                "lstsq": "bias + least-squares rescaling",
                "layerwise": "layer-wise reconstruction",
                "refit": "layer-wise refit of out_proj"}


def metrics(settings: dict) -> List[str]:
    """The scores of a budgets file's rows, the first the main one (files of translation
    models, and those written before classifiers, hold BLEU and sacreBLEU)."""
    m = settings.get("metrics") if isinstance(settings, dict) else None
    return list(m) if isinstance(m, list) and m else ["bleu", "sacrebleu"]


def columns(settings: dict) -> List[str]:
    return (["budget", "order", "seed", "repair", "removed", "parameters",
             "parameters_removed_share", "predicted_speedup"] + metrics(settings)
            + ["loss", "seconds_to_choose", "seconds_to_repair", "spec"])


def check_budgets(obj, path):
    cols = columns(obj.get("settings")) if isinstance(obj, dict) else []
    if not (isinstance(obj, dict) and isinstance(obj.get("rows"), list)
            and isinstance(obj.get("settings"), dict) and isinstance(obj.get("baseline"), dict)
            and "heads" in obj["baseline"]
            and all(isinstance(r, dict) and all(k in r for k in cols) for r in obj["rows"])):
        raise HeadPruneError(f"budgets file {path!r} is not one (expected settings, baseline and "
                             f"rows with {', '.join(cols)})")


def _mean(rows: List[dict], key: str):
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.fmean(vals) if vals else None


def grouped(rows: List[dict]) -> Dict[tuple, List[dict]]:
    """Rows by (budget, order, repair): random orders' seeds together."""
    out: Dict[tuple, List[dict]] = {}
    for r in rows:
        out.setdefault((r["budget"], r["order"], r["repair"]), []).append(r)
    return out


def markdown(obj: dict) -> str:
    s, base = obj["settings"], obj["baseline"]
    groups = grouped(obj["rows"])
    repairs = [r for r in s["repairs"] if any(k[2] == r for k in groups)]
    speed = any(r["predicted_speedup"] is not None for r in obj["rows"])
    lat = s.get("latency") or {}
    m = metrics(s)[0]
    name = METRIC_LABELS.get(m, m)
    what = "BLEU (tokenized)" if m == "bleu" else name
    lines = [f"## Heads removed without retraining: {name} by budget, order and repair", "",
             f"Unpruned model: {base[m]:.2f} {what}, {base['parameters']:,} parameters; "
             f"evaluated on {s['eval_data'].get('sentences')} sentences of "
             f"{s['eval_data'].get('subset')}" + (f", beam {s['beam']}." if m == "bleu" else ".")
             + (f" Repairs use {s['calibration']['sentences']} {s['calibration']['subset']} "
                f"sentences." if s.get("calibration") else ""),
             "", "| budget | order | heads removed | parameters removed |"
             + (f" predicted speed-up (beam {lat.get('beam')}, batch {lat.get('batch_size')}) |"
                if speed else "")
             + "".join(f" {name}, {REPAIR_NAMES.get(r, r)} (change) |" for r in repairs),
             "|---|---|---:|---:|" + ("---:|" if speed else "") + "---:|" * len(repairs)]
    for budget in s["budgets"]:
        for order in s["orders"]:
            rows = [groups.get((budget, order, r)) for r in repairs]
            if not any(rows):
                continue
            first = next(g for g in rows if g)
            n = len(first)
            label = order + (f" (mean of {n} seeds)" if order == "random" and n > 1 else "")
            cells = [budget, label, f"{_mean(first, 'removed'):g}",
                     f"{100 * _mean(first, 'parameters_removed_share'):.1f}%"]
            if speed:
                sp = _mean(first, "predicted_speedup")
                cells.append("" if sp is None else f"{sp:.2f}x")
            for g in rows:
                b = _mean(g, m) if g else None
                cells.append("" if b is None else f"{b:.2f} ({b - base[m]:+.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    secs = [r["seconds_to_choose"] + r["seconds_to_repair"] for r in obj["rows"]]
    if secs:
        lines += ["", f"Choosing and repairing took {min(secs):.2f}-{max(secs):.2f} s per row"
                  + (f", after {obj['calibration_seconds']:.1f} s of calibration (once)."
                     if obj.get("calibration_seconds") is not None else ".")]
    return "\n".join(lines) + "\n"


def plot(obj: dict, path: str) -> str:
    plt = plots._plt()
    s, base = obj["settings"], obj["baseline"]
    m = metrics(s)[0]
    groups = grouped(obj["rows"])
    repairs = [r for r in s["repairs"] if any(k[2] == r for k in groups)]
    fig, axes = plt.subplots(1, max(1, len(repairs)), figsize=(4.2 * max(1, len(repairs)), 3.8),
                             sharey=True, squeeze=False)
    for ax, repair in zip(axes[0], repairs):
        for order in s["orders"]:
            pts = []
            for budget in s["budgets"]:
                g = groups.get((budget, order, repair))
                if g:
                    x = 100 * _mean(g, "removed") / max(1, base["heads"])
                    ys = [r[m] for r in g]
                    pts.append((x, statistics.fmean(ys), min(ys), max(ys)))
            if not pts:
                continue
            pts.sort()
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                            label=order + (" (mean, band: min-max)" if order == "random" else ""))
            if any(p[2] != p[3] for p in pts):
                ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(base[m], color="grey", linestyle="--", linewidth=0.8,
                   label=f"unpruned: {base[m]:.2f}")
        ax.set_title(REPAIR_NAMES.get(repair, repair))
        ax.set_xlabel(f"% of the {base['heads']} heads removed")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("BLEU (tokenized)" if m == "bleu" else f"{METRIC_LABELS.get(m, m)} (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Heads removed without retraining, by order and repair "
                 f"({s['eval_data'].get('subset')}" + (f", beam {s['beam']})" if m == "bleu" else ")"))
    return plots._save(fig, path)


def redraw(results_dir: str) -> List[str]:
    """budgets.csv, budgets.png, budgets.md of ``results_dir`` (none without budgets.json)."""
    path = os.path.join(results_dir, FILE)
    if not os.path.isfile(path):
        return []
    obj = read_json(path, "budgets file")
    check_budgets(obj, path)
    cols = columns(obj["settings"])
    write_csv(os.path.join(results_dir, "budgets.csv"), cols,
              ([r[c] for c in cols] for r in obj["rows"]))
    write_text(os.path.join(results_dir, "budgets.md"), markdown(obj))
    if not obj["rows"]:
        return []
    return [plot(obj, os.path.join(results_dir, "budgets.png"))]
