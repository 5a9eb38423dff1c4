"""Every plot of a results folder, drawn again from its results files (never from a
model): ``fairseq-headprune report DIR --redraw``. One function per kind of results,
each taking the folder and returning the PNG paths it wrote (none where the folder
holds no such results); the commands call the same functions after writing their
files, so a redrawn plot is the plot the command drew.

==================  ============================  ==========================================
function            results file(s)               plots
==================  ============================  ==========================================
``importance``      importance.json               importance_E.png, _A.png, _D.png
``curve``           curve.json                    curve.png
``ablation``        ablation*.json                STEM_E.png ... (+ STEM.csv, STEM.md)
                    cross_domain*.json            STEM.png
``dynamics``        dynamics.json and/or          dynamics_by_epoch.png, dynamics_by_level.png
                    head_dynamics.jsonl           (+ dynamics.csv)
``bench``           bench.json (report/bench.py)  bench.png
``budgets``         budgets.json                  budgets.png (+ budgets.csv, budgets.md)
``redraw_all``      all of the above
==================  ============================  ==========================================

A results file that is not what its name says (valid JSON of another shape) is a
HeadPruneError naming the file.
"""

import contextlib
import glob
import os
from typing import Dict, List

from ..analysis.scoring import METRIC_LABELS
from ..errors import HeadPruneError
from ..heads import KIND_NAMES, KINDS
from ..results import read_json
from . import dynamics as _dynamics
from . import plots

CURVE_LABELS = {"all": "all kinds", **{k: f"{KIND_NAMES[k]} ({k})" for k in KINDS}}


@contextlib.contextmanager
def _drawing(path: str, what: str):
    """Any slip on a malformed file while drawing -> one HeadPruneError naming it."""
    try:
        yield
    except HeadPruneError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise HeadPruneError(f"{what} {path!r} does not have the expected shape "
                             f"({type(e).__name__}: {e})")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_grid(v) -> bool:
    return isinstance(v, list) and all(
        isinstance(row, list) and all(x is None or _number(x) for x in row) for row in v)


# ---- importance ------------------------------------------------------------------

def check_importance(obj, path: str) -> None:
    if not isinstance(obj, dict) or not any(k in obj for k in KINDS):
        raise HeadPruneError(f"importance file {path!r} is not one (expected "
                             f"{{\"E\": [[...]], \"A\": ..., \"D\": ...}})")
    for k in KINDS:
        if k in obj and obj[k] is not None and not _is_grid(obj[k]):
            raise HeadPruneError(f"importance file {path!r}: {k} is not a list of layers of "
                                 f"numbers per head")


def importance(results_dir: str) -> List[str]:
    """importance_{E,A,D}.png heatmaps (layers x heads) from importance.json."""
    path = os.path.join(results_dir, "importance.json")
    if not os.path.isfile(path):
        return []
    obj = read_json(path, "importance file")
    check_importance(obj, path)
    out = []
    with _drawing(path, "importance file"):
        for kind in KINDS:
            if obj.get(kind):
                out.append(plots.heatmap(
                    obj[kind], os.path.join(results_dir, f"importance_{kind}.png"),
                    f"head importance, {kind} ({obj.get('granularity', '?')}"
                    f"{', l2-normalised per layer' if obj.get('normalize') else ''})",
                    "importance"))
    return out


# ---- pruning curve ---------------------------------------------------------------

def check_curve(obj, path: str) -> None:
    def bad(problem):
        return HeadPruneError(f"curve file {path!r} {problem}")

    if not isinstance(obj, dict) or not isinstance(obj.get("curves"), dict):
        raise bad("is not one (expected {\"settings\": {...}, \"curves\": {NAME: [points]}})")
    if not isinstance(obj.get("settings", {}), dict):
        raise bad("has settings that are not an object")
    for name, pts in obj["curves"].items():
        if not isinstance(pts, list):
            raise bad(f"curve {name!r} is not a list of points")
        metric = curve_metric(obj.get("settings") or {})
        for p in pts:
            if not (isinstance(p, dict) and _number(p.get("fraction")) and _number(p.get(metric))
                    and (p.get("share_masked") is None or _number(p["share_masked"]))):
                raise bad(f"curve {name!r} has a point without a number fraction and {metric}")


def curve_metric(settings: dict) -> str:
    """The metric a curve file plots: 'bleu', or the classifier's ('accuracy')."""
    metric = settings.get("metric", "bleu")
    return metric if isinstance(metric, str) else "bleu"


def metric_axis(metric: str) -> str:
    return {"bleu": "BLEU (tokenized)", "accuracy": "accuracy (%)"}.get(
        metric, METRIC_LABELS.get(metric, metric))


def curve_title(settings: dict) -> str:
    order = settings.get("order", "?")
    seed = settings.get("order_seed", "?")
    seeds = (f"seeds {', '.join(map(str, seed))}" if isinstance(seed, list) else f"seed {seed}")
    how = {"importance": "least important first", "ablation": "by single-head ablation",
           "random": f"in random order ({seeds})"}.get(order, order)
    if settings.get("reestimate"):
        how += ", re-estimated each step"
    return (f"Pruning heads {how}\n{METRIC_LABELS.get(curve_metric(settings), '?')} on "
            f"{curve_data(settings)}")


def curve_data(settings: dict) -> str:
    """'valid (40 of 120 sentences)': the evaluation data of a curve file's settings
    (``eval_data``; older files: ``subset``, ``max_eval_sentences``)."""
    data = settings.get("eval_data")
    if isinstance(data, dict):
        n, of = data.get("sentences"), data.get("of")
        count = (f" ({n} of {of} sentences)" if n is not None and of is not None and n < of
                 else f" ({n} sentences)" if n is not None else "")
        return f"{data.get('subset', '?')}{count}"
    n = settings.get("max_eval_sentences")
    return f"{settings.get('subset', '?')}{f' (first {n} sentences)' if n else ''}"


def curve(results_dir: str) -> List[str]:
    """curve.png from curve.json: tokenized BLEU against % of heads masked, one line per
    curve (in the order the settings list them), the unpruned model's BLEU dashed."""
    path = os.path.join(results_dir, "curve.json")
    if not os.path.isfile(path):
        return []
    obj = read_json(path, "curve file")
    check_curve(obj, path)
    settings = obj.get("settings") or {}
    curves = obj["curves"]
    names = [n for n in settings.get("curves") or [] if n in curves]
    names += [n for n in curves if n not in names]
    metric = curve_metric(settings)
    unit = METRIC_LABELS.get(metric, metric)
    with _drawing(path, "curve file"):
        points = {n: [(100 * (p["share_masked"] if p.get("share_masked") is not None
                              else p["fraction"]), p[metric]) for p in curves[n]] for n in names}
        series, bands, labels = seed_bands(points)
        base = next((p[metric] for n in names for p in curves[n] if p["fraction"] == 0), None)
        return [plots.lines(series, os.path.join(results_dir, "curve.png"), curve_title(settings),
                            "% of heads masked", metric_axis(metric), hline=base,
                            hline_label=None if base is None else f"unpruned: {base:.2f} {unit}",
                            labels=labels, bands=bands)]


def seed_bands(points: Dict[str, list]):
    """Curves named NAME@seedS (one per random seed) -> one series NAME: the mean at each
    x over the seeds, and a band from their min to their max; other curves as they are.
    Returns (series, bands, legend labels)."""
    import statistics

    groups: Dict[str, List[str]] = {}
    for n in points:
        groups.setdefault(n.split("@seed")[0], []).append(n)
    series, bands, labels = {}, {}, {}
    for base, members in groups.items():
        label = CURVE_LABELS.get(base, base)
        if members == [base]:
            series[base], labels[base] = points[base], label
            continue
        at: Dict[float, list] = {}
        for n in members:
            for x, y in points[n]:
                if y is not None:
                    at.setdefault(x, []).append(y)
        xs = sorted(at)
        series[base] = [(x, statistics.fmean(at[x])) for x in xs]
        bands[base] = [(x, min(at[x]), max(at[x])) for x in xs]
        labels[base] = f"{label}: mean of {len(members)} random orders (band: min-max)"
    return series, bands, labels


# ---- ablation and cross-domain ---------------------------------------------------

def _json_files(results_dir: str, pattern: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(results_dir, pattern)) if os.path.isfile(p))


def check_ablation(obj, path: str) -> None:
    if not (isinstance(obj, dict) and isinstance(obj.get("heads"), list)
            and isinstance(obj.get("shape"), dict) and isinstance(obj.get("settings"), dict)
            and all(isinstance(r, dict) for r in obj["heads"])):
        raise HeadPruneError(f"ablation results file {path!r} is not one (expected settings, "
                             f"shape and a list of heads)")


def check_cross_domain(obj, path: str) -> None:
    if not (isinstance(obj, dict) and isinstance(obj.get("delta_a"), list)
            and isinstance(obj.get("delta_b"), list) and len(obj["delta_a"]) == len(obj["delta_b"])
            and all(_number(x) for x in obj["delta_a"] + obj["delta_b"])):
        raise HeadPruneError(f"cross-domain file {path!r} is not one (expected delta_a and "
                             f"delta_b, two lists of numbers of one length)")


def ablation(results_dir: str) -> List[str]:
    """Heatmaps of every ablation*.json (with its CSV and Markdown table) and the scatter
    of every cross_domain*.json (report/ablation_report.py)."""
    from .ablation_report import write_ablation_reports, write_cross_domain_plot

    out = []
    for path in _json_files(results_dir, "ablation*.json"):
        check_ablation(read_json(path, "ablation results file"), path)
        with _drawing(path, "ablation results file"):
            out += [p for p in write_ablation_reports(path) if p.endswith(".png")]
    for path in _json_files(results_dir, "cross_domain*.json"):
        check_cross_domain(read_json(path, "cross-domain file"), path)
        with _drawing(path, "cross-domain file"):
            out.append(write_cross_domain_plot(path))
    return out


# ---- training dynamics, speed ----------------------------------------------------

def dynamics(results_dir: str) -> List[str]:
    """dynamics_by_epoch.png, dynamics_by_level.png (and dynamics.csv) from
    dynamics.json / head_dynamics.jsonl (report/dynamics.py)."""
    path = os.path.join(results_dir, _dynamics.PLOT_FILE)
    with _drawing(path if os.path.isfile(path) else os.path.join(results_dir, _dynamics.JSONL_FILE),
                  "dynamics file"):
        return _dynamics.redraw(results_dir)


def bench(results_dir: str) -> List[str]:
    """bench.png, by report/bench.py's ``redraw`` (nothing while that module is absent)."""
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.bench") is None:
        return []
    from . import bench as _bench

    return list(_bench.redraw(results_dir))


def budgets(results_dir: str) -> List[str]:
    """budgets.png (and budgets.csv, budgets.md) from budgets.json (report/budgets.py)."""
    from . import budgets as _budgets

    with _drawing(os.path.join(results_dir, _budgets.FILE), "budgets file"):
        return _budgets.redraw(results_dir)


KINDS_OF_RESULTS = (importance, curve, ablation, dynamics, bench, budgets)


def redraw_all(results_dir: str) -> List[str]:
    """Every plot of ``results_dir`` from its results files; the PNG paths written."""
    if not os.path.isdir(results_dir):
        raise HeadPruneError(f"results folder {results_dir!r} does not exist")
    out = []
    for draw in KINDS_OF_RESULTS:
        out += draw(results_dir)
    return out
