"""Orders in which to prune heads, and importance files read back.

An importance file is ``{"E": [[float|null per head] per layer], "A": ..., "D": ...,
"meta": {...}}`` (layer 1 and head 1 first; null marks a head already removed)."""

import random
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import HeadPruneError
from ..heads import KINDS, Head, HeadSet, Shape
from ..results import read_json

Scores = Dict[str, List[List[Optional[float]]]]


def load_importance(path: str, shape: Shape) -> Scores:
    """Read an importance file and check it fits a model of ``shape``."""
    obj = read_json(path, "importance file")
    scores = {k: obj[k] for k in KINDS if k in obj}
    check_fits(scores, shape, f"importance file {path!r}")
    return scores


def check_fits(scores: Scores, shape: Shape, what: str):
    for kind in KINDS:
        want = shape.get(kind) or []
        got = scores.get(kind) or []
        if [len(layer) for layer in got] != list(want):
            raise HeadPruneError(
                f"{what} does not fit this model: {kind} has "
                f"{[len(l) for l in got]} heads per layer there, the model has {list(want)}"
            )


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
