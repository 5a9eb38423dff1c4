"""Pruning curves (paper §4.2, Fig. 3-4): mask the least important heads in steps and
score the model at each step.

``pruning_curve`` is independent of how a model is scored: it takes an ``evaluate``
callable (HeadSet of masked heads -> dict of scores), so the same code serves the
``curve`` command, per-epoch curves during training and the tests.
"""

from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..errors import HeadPruneError
from ..heads import Head, HeadSet, HeadSpec, Shape, share_count
from .ranking import Scores, order_by_scores, take_with_floor

FORMAT = "fairseq-headprune/curve-v1"


def fractions(step: float = 0.1) -> List[float]:
    """0, step, 2*step, ..., 1 (rounded, endpoints included)."""
    if not 0 < step <= 1:
        raise HeadPruneError(f"pruning step {step} is outside (0, 1]")
    n = int(round(1 / step))
    out = [round(i * step, 6) for i in range(n + 1) if i * step < 1 - 1e-9]
    return out + [1.0]


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
    for frac in steps:
        target = share_count(frac, total)
        if any(abs(p["fraction"] - frac) < 1e-9 for p in points):
            continue
        if reestimate is not None and target > len(masked):
            ranking = order_by_scores(reestimate(masked), kinds, exclude=exclude | masked)
        else:
            ranking = [h for h in order or [] if h[0] in kinds and h not in exclude]
        masked = take_with_floor(ranking, target, kept_shape, min_heads_per_layer, masked)
        point = {"fraction": frac, "target": target, "masked": len(masked),
                 "share_masked": len(masked) / total if total else 0.0,
                 "spec": masked.to_spec()}
        point.update(evaluate(masked))
        points.append(point)
        if on_point:
            on_point(point)
    return points


def importance_order(scores: Scores, kinds: Sequence[str], exclude: HeadSet = HeadSet()) -> List[Head]:
    return order_by_scores(scores, kinds, exclude)


def ablation_order(ablation: Dict, kinds: Sequence[str], exclude: HeadSet = HeadSet()) -> List[Head]:
    """From an ablation file: the heads whose removal hurts least first. A head hurts
    when masking it lowers a decoding metric (negative delta) or raises the loss
    (positive delta), so the importance read off an ablation is -delta for bleu,
    sacrebleu and chrf, and +delta for loss."""
    from .ablation import FORMAT as ABLATION_FORMAT, METRICS

    if not isinstance(ablation, dict) or ablation.get("format") != ABLATION_FORMAT:
        raise HeadPruneError(f"--ablation file is not a {ABLATION_FORMAT} file "
                             f"(written by fairseq-headprune ablate)")
    metric = (ablation.get("settings") or {}).get("metric")
    if metric not in METRICS:
        raise HeadPruneError(f"--ablation file has metric {metric!r} (allowed: {', '.join(METRICS)})")
    sign = 1.0 if metric == "loss" else -1.0
    scored = {}
    for r in ablation.get("heads") or []:
        head = (r["kind"], int(r["layer"]), int(r["head"]))
        if r["kind"] in kinds and head not in exclude:
            scored[head] = sign * float(r["delta"])
    return order_by_scores(_as_scores(scored), kinds, exclude)


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
