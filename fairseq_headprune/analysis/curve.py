"""Pruning curves (paper §4.2, Fig. 3-4): mask the least important heads in steps and
score the model at each step.

``pruning_curve`` is independent of how a model is scored: it takes an ``evaluate``
callable (HeadSet of masked heads -> dict of scores), so the same code serves the
``curve`` command, per-epoch curves during training and the tests.
"""

import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..errors import HeadPruneError
from ..heads import KINDS, Head, HeadSet, HeadSpec, Shape, _brief, _cut, _json_type, share_count
from .ranking import Scores, order_by_scores, take_with_floor

FORMAT = "fairseq-headprune/curve-v1"


MIN_STEP = 0.01  # each point has a spec file named by its whole percent


def percent(fraction: float) -> int:
    """The whole percent that names a point (specs/curve_all_040.json)."""
    return int(round(fraction * 100))


def fractions(step: float = 0.1, option: str = "--prune-step") -> List[float]:
    """0, step, 2*step, ..., 1 (rounded, endpoints included). Refuses a step whose
    points do not have distinct whole-percent names (``percent``): 0.01 <= step <= 1,
    and no two points rounding to the same percent (0.333 gives 0.999 and 1.0)."""
    allowed = (f"allowed: a step from {MIN_STEP} to 1 whose points fall on distinct whole "
               f"percents, e.g. 0.01, 0.05, 0.1, 0.2, 0.25")
    if (type(step) not in (int, float) or not math.isfinite(step)
            or not MIN_STEP <= step <= 1):
        raise HeadPruneError(f"{option} {step} is not allowed ({allowed})")
    n = int(round(1 / step))
    out = [round(i * step, 6) for i in range(n + 1) if i * step < 1 - 1e-9] + [1.0]
    seen = {}
    for frac in out:
        pct = percent(frac)
        if pct in seen:
            raise HeadPruneError(
                f"{option} {step} is not allowed: its points {seen[pct]:g} and {frac:g} "
                f"would both be the {pct}% point ({allowed})")
        seen[pct] = frac
    return out


def pruning_curve(
    shape: Shape,
    kinds: Sequence[str],
    steps: Iterable[float],
    evaluate: Callable[[HeadSet], Dict],
    order: Optional[Sequence[Head]] = None,
    reestimate: Optional[Callable[[HeadSet], Scores]] = None,
    min_heads_per_layer: int = 0,
    exclude: HeadSet = HeadSet(),
    done: Sequence[Dict] = (),
    on_point: Optional[Callable[[Dict], None]] = None,
) -> List[Dict]:
    """Points {fraction, target, masked, spec, **evaluate(masked)} for each step.

    ``order``: heads from least to most important (fixed ranking), or ``reestimate``:
    called with the heads masked so far, returns fresh scores to rank the rest.
    ``exclude``: heads that are not candidates (e.g. already removed). ``done``: points
    of an interrupted run to keep (resume); their masks are rebuilt from their specs."""
    candidates = [h for h in HeadSet.all_heads(shape, kinds) if h not in exclude]
    total = len(candidates)
    kept_shape = {k: list(v) for k, v in shape.items()}
    for k, l, _ in exclude:
        kept_shape[k][l - 1] -= 1
    points = list(done)
    masked = HeadSet()
    if points:
        masked = HeadSpec.parse(points[-1]["spec"]).resolve(shape)
    todo = [f for f in steps if not any(abs(p["fraction"] - f) < 1e-9 for p in points)]

    def next_mask(frac, masked):
        target = share_count(frac, total)
        if reestimate is not None and target > len(masked):
            ranking = order_by_scores(reestimate(masked), kinds, exclude=exclude | masked)
        else:
            ranking = [h for h in order or [] if h[0] in kinds and h not in exclude]
        return target, take_with_floor(ranking, target, kept_shape, min_heads_per_layer, masked)

    if reestimate is None and hasattr(evaluate, "prefetch"):
        # a fixed order: the points' masks are known now, so they are evaluated several
        # to a decode (points, order and results unchanged; each written when done)
        plan, m = [], masked
        for frac in todo:
            target, m = next_mask(frac, m)
            plan.append((frac, target, m))
        k = max(1, int(getattr(evaluate, "masks_per_batch", 1)))
        chunks = [plan[i:i + k] for i in range(0, len(plan), k)]
    else:
        chunks = [[(frac, None, None)] for frac in todo]
    for chunk in chunks:
        if chunk[0][2] is not None:
            evaluate.prefetch([m for _, _, m in chunk])
        for frac, target, planned in chunk:
            if planned is None:
                target, masked = next_mask(frac, masked)
            else:
                masked = planned
            point = {"fraction": frac, "target": target, "masked": len(masked),
                     "share_masked": len(masked) / total if total else 0.0,
                     "spec": masked.to_spec()}
            point.update(evaluate(masked))
            points.append(point)
            if on_point:
                on_point(point)
    return points


def ablation_order(ablation: Dict, kinds: Sequence[str], exclude: HeadSet = HeadSet(),
                   shape: Optional[Shape] = None, what: str = "--ablation file") -> List[Head]:
    """From an ablation file: the heads whose removal hurts least first. A head hurts
    when masking it lowers a decoding metric (negative delta) or raises the loss
    (positive delta), so the importance read off an ablation is -delta for bleu,
    sacrebleu and chrf, and +delta for loss.

    Every record must name a head of the model (``shape``; without it, the shape the
    file records, or for a file without one the heads its records name) with a finite
    delta, once; and the file must cover every head to be ranked (the heads of
    ``kinds`` not in ``exclude``): a file that covers other heads is refused, naming
    the heads it lacks, rather than giving a flat or partial curve. ``what`` names the
    file in messages (e.g. "--ablation file 'res/ablation.json'")."""
    from .ablation import FORMAT as ABLATION_FORMAT, METRICS

    if not isinstance(ablation, dict) or ablation.get("format") != ABLATION_FORMAT:
        got = ablation.get("format") if isinstance(ablation, dict) else None
        kind = f" (it is a {_cut(_brief(got), 60)} file)" if got is not None else ""
        raise HeadPruneError(f"{what} is not a {ABLATION_FORMAT} file{kind} "
                             f"(allowed: the ablation.json of fairseq-headprune ablate)")
    settings = ablation.get("settings")
    metric = settings.get("metric") if isinstance(settings, dict) else None
    if type(metric) is not str or metric not in METRICS:
        raise HeadPruneError(f"{what} has metric {_cut(_brief(metric), 40)} "
                             f"(allowed: {', '.join(METRICS)})")
    records = ablation.get("heads")
    if not isinstance(records, list):
        raise HeadPruneError(f"{what} has no list of heads (allowed: the ablation.json of "
                             f"fairseq-headprune ablate)")
    if shape is None and "shape" not in ablation:  # a hand-made file: the heads it names
        shape = _records_shape(records)
    if shape is None:
        shape = ablation.get("shape")
        if not (isinstance(shape, dict) and all(
                k in KINDS and isinstance(v, list) and all(type(n) is int and n >= 0 for n in v)
                for k, v in shape.items())):
            raise HeadPruneError(f"{what} has a bad shape {_cut(_brief(shape), 60)} (allowed: "
                                 f"{{KIND: [heads per layer]}}, as fairseq-headprune ablate writes it)")
    sign = 1.0 if metric == "loss" else -1.0
    deltas = {}
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise HeadPruneError(f"{what}: record {i} is a {_json_type(r)}, not an object "
                                 f"with kind, layer, head and delta")
        kind, layer, head, delta = (r.get(k) for k in ("kind", "layer", "head", "delta"))
        name = "record {} ({})".format(i, ":".join(
            _cut(v if isinstance(v, str) else _brief(v), 24) for v in (kind, layer, head)))
        counts = shape.get(kind) or [] if type(kind) is str else []
        if not counts:
            raise HeadPruneError(f"{what}: {name} has kind {_cut(_brief(kind), 24)} (allowed: "
                                 f"{', '.join(k for k in KINDS if shape.get(k))}, the kinds of this model)")
        if type(layer) is not int or not 1 <= layer <= len(counts):
            raise HeadPruneError(f"{what}: {name} has layer {_cut(_brief(layer), 24)} (allowed: "
                                 f"a whole number from 1 to {len(counts)}, this model's {kind} layers)")
        if type(head) is not int or not 1 <= head <= counts[layer - 1]:
            raise HeadPruneError(f"{what}: {name} has head {_cut(_brief(head), 24)} (allowed: a "
                                 f"whole number from 1 to {counts[layer - 1]}, the heads of "
                                 f"this model's {kind} layer {layer})")
        if type(delta) not in (int, float) or not _finite(delta):
            raise HeadPruneError(f"{what}: {name} has delta {_cut(_brief(delta), 24)} "
                                 f"(allowed: a finite number)")
        if (kind, layer, head) in deltas:
            raise HeadPruneError(f"{what}: {name} names head {kind}:{layer}:{head} a second time "
                                 f"(allowed: one record per head)")
        deltas[(kind, layer, head)] = float(delta)
    wanted = [h for h in HeadSet.all_heads(shape, kinds) if h not in exclude]
    missing = HeadSet(h for h in wanted if h not in deltas)
    if missing:
        raise HeadPruneError(
            f"{what} does not cover the heads to rank: it has no record for {len(missing)} of "
            f"{len(wanted)}: {_cut(missing.to_spec(), 120)} (allowed: a file with a record for "
            f"every head of --kinds {','.join(kinds)}; fairseq-headprune ablate --heads with "
            f"the missing heads adds them to it)")
    scored = {h: sign * d for h, d in deltas.items() if h[0] in kinds and h not in exclude}
    return order_by_scores(_as_scores(scored), kinds, exclude)


def _records_shape(records) -> Shape:
    """The smallest shape holding every well-typed record (for files without one)."""
    shape: Shape = {}
    for r in records:
        if not isinstance(r, dict):
            continue
        k, l, h = r.get("kind"), r.get("layer"), r.get("head")
        if k in KINDS and type(l) is int and type(h) is int and 1 <= l <= 10**6 and h >= 1:
            layers = shape.setdefault(k, [])
            layers.extend([0] * (l - len(layers)))
            layers[l - 1] = max(layers[l - 1], min(h, 10**6))
    return shape


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _as_scores(values: Dict[Head, float]) -> Scores:
    out: Scores = {}
    for (k, l, h), v in values.items():
        layers = out.setdefault(k, [])
        while len(layers) < l:
            layers.append([])
        row = layers[l - 1]
        while len(row) < h:
            row.append(None)
        row[h - 1] = v
    return out
