"""Orders in which to prune heads, and importance files read back.

An importance file is ``{"E": [[float|null per head] per layer], "A": ..., "D": ...,
"meta": {...}}`` (layer 1 and head 1 first; null marks a head already removed), as
``fairseq-headprune importance`` writes it; it has no ``format`` field, so a file that
has one (an ablation, curve or spec file given by mistake) is refused. Scores are
absolute gradients: finite numbers >= 0. A file must fit the model head for head, hold
at least one score, and, when the caller passes the model's removed heads, hold null
for those heads only."""

import math
import random
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import HeadPruneError
from ..heads import KINDS, Head, HeadSet, Shape, _brief, _cut, _json_type
from ..results import read_json

Scores = Dict[str, List[List[Optional[float]]]]

EXPECTED = ('(expected an importance file as fairseq-headprune importance writes it: '
            '{"E": [[score per head] per layer], "A": ..., "D": ...})')


def load_importance(path: str, shape: Shape, removed: Optional[HeadSet] = None) -> Scores:
    """Read an importance file and check it fits a model of ``shape`` (see
    ``check_fits``; ``removed``: the model's removed heads, the only ones that may be
    null)."""
    what = f"importance file {path!r}"
    try:
        obj = read_json(path, "importance file")
    except RecursionError:
        raise HeadPruneError(f"{what} is nested too deeply to be one {EXPECTED}")
    except OSError as e:
        raise HeadPruneError(f"{what} cannot be read: {_cut(e, 120)}")
    if not isinstance(obj, dict):
        raise HeadPruneError(f"{what} holds a JSON {_json_type(obj)}, not an object {EXPECTED}")
    if "format" in obj and not str(obj["format"]).startswith("fairseq-headprune/importance"):
        raise HeadPruneError(f"{what} is a {_cut(_brief(obj['format']), 60)} file, not an importance file "
                             f"{EXPECTED}")
    if not any(k in obj for k in KINDS):
        raise HeadPruneError(f"{what} has no E, A or D scores {EXPECTED}")
    scores = {k: obj[k] for k in KINDS if k in obj}
    check_fits(scores, shape, what, removed)
    return scores


def check_fits(scores: Scores, shape: Shape, what: str, removed: Optional[HeadSet] = None):
    """Refuse scores that do not fit a model of ``shape`` head for head, a score that is
    not a finite number >= 0 (or null), all-null scores (nothing to rank), and, when
    ``removed`` (the model's removed heads) is given, a null for a head the model has."""
    for kind in KINDS:
        got = scores.get(kind)
        if got is None:
            got = []
        if not isinstance(got, list) or not all(isinstance(row, list) for row in got):
            raise HeadPruneError(f"{what}: {kind} is not a list of layers, each a list of "
                                 f"scores per head {EXPECTED}")
    for kind in KINDS:
        want = shape.get(kind) or []
        got = scores.get(kind) or []
        if [len(layer) for layer in got] != list(want):
            raise HeadPruneError(
                f"{what} does not fit this model: {kind} has "
                f"{[len(l) for l in got]} heads per layer there, the model has {list(want)}"
            )
    n_scores = 0
    for kind in KINDS:
        for layer, row in enumerate(scores.get(kind) or [], 1):
            for head, value in enumerate(row, 1):
                name = f"{kind}:{layer}:{head}"
                if value is None:
                    if removed is not None and (kind, layer, head) not in removed:
                        raise HeadPruneError(
                            f"{what}: head {name} has no score (null), but this model has "
                            f"that head (allowed: null only for heads removed from the model"
                            f"{': ' + removed.to_spec() if removed else ', and it has none'})")
                    continue
                if not _score(value):
                    raise HeadPruneError(
                        f"{what}: head {name} has score {_cut(_brief(value))} (allowed: a "
                        f"finite number >= 0, or null for a head removed from the model)")
                n_scores += 1
    if not n_scores:
        raise HeadPruneError(f"{what} has no scores: every head is null, so there is "
                             f"nothing to rank (allowed: a score for every head the model has)")


def _score(value) -> bool:
    """A finite number >= 0 (not a boolean, not a string)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:  # an integer beyond any float
        return False


def order_by_scores(scores: Scores, kinds: Iterable[str] = KINDS,
                    exclude: HeadSet = HeadSet()) -> List[Head]:
    """Heads of ``kinds`` from least to most important (ties: kind, layer, head order);
    heads with a null score (removed) and heads in ``exclude`` are left out."""
    heads = []
    for kind in kinds:
        for layer, row in enumerate(scores.get(kind) or [], 1):
            for head, value in enumerate(row, 1):
                if value is not None and (kind, layer, head) not in exclude:
                    heads.append((float(value), KINDS.index(kind), layer, head, kind))
    heads.sort()
    return [(k, l, h) for _, _, l, h, k in heads]


def random_order(shape: Shape, kinds: Iterable[str], seed: int,
                 exclude: HeadSet = HeadSet()) -> List[Head]:
    heads = [h for h in HeadSet.all_heads(shape, kinds) if h not in exclude]
    random.Random(seed).shuffle(heads)
    return heads


def take_with_floor(order: Sequence[Head], count: int, shape: Shape, min_per_layer: int,
                    already: HeadSet = HeadSet()) -> HeadSet:
    """The first ``count`` heads of ``order`` (on top of ``already``) such that every
    module keeps at least ``min_per_layer`` heads; fewer if the floor forbids more."""
    left = {(k, l + 1): n for k, ns in shape.items() for l, n in enumerate(ns)}
    for k, l, _ in already:
        left[(k, l)] -= 1
    chosen = list(already)
    for head in order:
        if len(chosen) >= count:
            break
        if head in already:
            continue
        key = head[:2]
        if left[key] - 1 < min_per_layer:
            continue
        left[key] -= 1
        chosen.append(head)
    return HeadSet(chosen)


def rank_agreement(a: Scores, b: Scores) -> Optional[float]:
    """Spearman's rank correlation (scipy) between two score tables over the heads that
    both score; None with fewer than two such heads or a constant table."""
    from scipy.stats import spearmanr

    pairs = [(float(x), float(y)) for kind in KINDS
             for ra, rb in zip(a.get(kind) or [], b.get(kind) or [])
             for x, y in zip(ra, rb) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if rho != rho else float(rho)


def weight_norm_scores(model) -> Scores:
    """fairseq's own head-pruning rule (``MultiheadAttention._get_reserve_head_index``,
    fairseq 0.12.3): a head scores Σ|W| + Σ|b| over its rows of q_proj, k_proj and
    v_proj; removed heads score None."""
    from ..models.head_model import attention_modules, model_head_shape

    shape = model_head_shape(model)
    out: Scores = {k: [[None] * n for n in shape[k]] for k in shape}
    for (kind, layer), m in attention_modules(model).items():
        d = m.head_dim
        for pos, head in enumerate(m.kept_heads):
            rows = slice(pos * d, (pos + 1) * d)
            total = 0.0
            for proj in (m.q_proj, m.k_proj, m.v_proj):
                total += float(proj.weight.detach()[rows].abs().sum())
                if proj.bias is not None:
                    total += float(proj.bias.detach()[rows].abs().sum())
            out[kind][layer - 1][head] = total
    return out


def fisher_scores(obj: dict, what: str) -> Scores:
    """The Fisher table (``means.fisher``) of an importance file's content."""
    fisher = (obj.get("means") or {}).get("fisher") if isinstance(obj, dict) else None
    if not isinstance(fisher, dict):
        raise HeadPruneError(f"{what} has no Fisher scores (means.fisher); it was written before "
                             f"they existed: run fairseq-headprune importance again")
    return {k: fisher[k] for k in KINDS if k in fisher}


ORDERS = ("importance", "fisher", "weight-norm", "ablation", "random")


def order_heads(model, order: str, importance: Optional[str] = None, seed: int = 1,
                kinds: Iterable[str] = KINDS, ablation: Optional[str] = None,
                exclude: HeadSet = HeadSet()) -> List[Head]:
    """The present heads of ``kinds`` not in ``exclude``, least important first, by
    ``order``: an importance file's (per-layer normalised) scores or its Fisher scores,
    fairseq's weight-norm rule on the model, an ablation file's deltas (masking them
    alone hurts least first), or a seeded random order."""
    from ..models.head_model import model_head_shape, removed_heads

    shape, removed = model_head_shape(model), removed_heads(model)
    exclude = removed | exclude
    if order == "random":
        return random_order(shape, kinds, seed, exclude=exclude)
    if order == "weight-norm":
        return order_by_scores(weight_norm_scores(model), kinds, exclude=exclude)
    if order == "ablation":
        from .curve import ablation_order

        if not ablation:
            raise HeadPruneError("--order ablation needs --ablation FILE (from fairseq-headprune "
                                 "ablate)")
        return ablation_order(read_json(ablation, "ablation file"), kinds, exclude, shape=shape,
                              what=f"--ablation file {ablation!r}")
    if order not in ("importance", "fisher"):
        raise HeadPruneError(f"unknown order {order!r} (allowed: {', '.join(ORDERS)})")
    if not importance:
        raise HeadPruneError(f"--order {order} needs --importance FILE (written by fairseq-headprune "
                             f"importance)")
    if order == "importance":
        scores = load_importance(importance, shape, removed=removed)
    else:
        what = f"importance file {importance!r}"
        scores = fisher_scores(read_json(importance, "importance file"), what)
        check_fits(scores, shape, what, removed=removed)
    return order_by_scores(scores, kinds, exclude=exclude)
