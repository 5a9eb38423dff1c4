"""Pruning schedules for training (``--prune-schedule``): how many heads of each kind
are gone after each epoch, and which ones go next. Pure Python (no torch).

A schedule is ``"E:50% A:25% D:50%"`` (each kind its own share, ranked within the
kind) or ``"all:50%"`` (one share of all heads, ranked together). Between
``start`` and ``end`` (epochs, inclusive) the share is reached on a ramp: after epoch
e the target is share × r(e), with t = (e - start + 1) / (end - start + 1) and
r = t (``linear``) or 1 - (1 - t)³ (``cubic``, Zhu & Gupta 2017: most heads go early,
while the model can still adapt). Counts use ``heads.share_count``, the package's one
rounding rule, over the *original* heads of the group, so heads removed before
training (``--prune-heads``, a pruned checkpoint) count towards the target.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import HeadPruneError
from ..heads import KINDS, Head, HeadSet, Shape, _show, share_count, shape_total
from .ranking import Scores, order_by_scores, take_with_floor

RAMPS = ("linear", "cubic")
ALL = "all"
_ENTRY = re.compile(r"^([A-Za-z]+):([0-9]+(?:\.[0-9]+)?)%$")


@dataclass
class PruneSchedule:
    shares: Dict[str, float]  # group ("E", "A", "D" or "all") -> fraction of its heads
    start: int = 1
    end: Optional[int] = None  # None: = start (everything at the end of one epoch)
    ramp: str = "linear"
    min_per_layer: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str, start: int = 1, end: Optional[int] = None, ramp: str = "linear",
              min_per_layer: int = 0) -> "PruneSchedule":
        """One line naming the bad value and what is allowed for any malformed input."""
        allowed = "(allowed: 'KIND:N%' entries for kinds E, A, D, e.g. 'E:50% A:25% D:50%', or 'all:N%')"
        items = [t for t in re.split(r"[\s;,]+", (text or "").strip()) if t]
        if not items:
            raise HeadPruneError(f"--prune-schedule is empty {allowed}")
        shares: Dict[str, float] = {}
        for item in items:
            m = _ENTRY.match(item)
            if not m:
                raise HeadPruneError(f"--prune-schedule entry {_show(item)} is not KIND:N% {allowed}")
            kind, value = m.group(1), float(m.group(2))
            kind = ALL if kind.lower() == ALL else kind.upper()
            if kind not in KINDS and kind != ALL:
                raise HeadPruneError(f"--prune-schedule entry {_show(item)}: unknown kind "
                                     f"{_show(m.group(1))} {allowed}")
            if value > 100:
                raise HeadPruneError(f"--prune-schedule entry {_show(item)}: {m.group(2)}% is more "
                                     f"than all the heads (allowed: 0% to 100%)")
            if kind in shares:
                raise HeadPruneError(f"--prune-schedule names {kind} twice ({_show(text)})")
            shares[kind] = value / 100.0
        if ALL in shares and len(shares) > 1:
            raise HeadPruneError(f"--prune-schedule {_show(text)} mixes 'all' with single kinds "
                                 f"(allowed: either 'all:N%' or per-kind entries)")
        if ramp not in RAMPS:
            raise HeadPruneError(f"--prune-ramp {_show(ramp)} is unknown (allowed: {', '.join(RAMPS)})")
        if start < 1:
            raise HeadPruneError(f"--prune-start-epoch {start} is not an epoch (allowed: 1 or more)")
        if end is not None and end < start:
            raise HeadPruneError(f"--prune-end-epoch {end} is before --prune-start-epoch {start} "
                                 f"(allowed: an epoch >= {start})")
        if min_per_layer < 0:
            raise HeadPruneError(f"--min-heads-per-layer {min_per_layer} is negative (allowed: 0 or more)")
        return cls(shares, start, end, ramp, min_per_layer, " ".join(items))

    @property
    def last_epoch(self) -> int:
        return self.start if self.end is None else self.end

    def groups(self) -> List[Tuple[str, Tuple[str, ...]]]:
        """(group name, its kinds) in kind order."""
        if ALL in self.shares:
            return [(ALL, KINDS)]
        return [(k, (k,)) for k in KINDS if k in self.shares]

    def progress(self, epoch: int) -> float:
        """r(epoch): 0 before the window, 1 from its last epoch on."""
        if epoch < self.start:
            return 0.0
        if epoch >= self.last_epoch:
            return 1.0
        t = (epoch - self.start + 1) / (self.last_epoch - self.start + 1)
        return t if self.ramp == "linear" else 1.0 - (1.0 - t) ** 3

    def in_window(self, epoch: int) -> bool:
        return self.start <= epoch <= self.last_epoch

    def check_shape(self, shape: Shape):
        """Refuse a schedule the per-layer floor makes impossible, before training."""
        for group, kinds in self.groups():
            total = shape_total(shape, kinds)
            layers = sum(len(shape.get(k) or []) for k in kinds)
            smallest = min([n for k in kinds for n in (shape.get(k) or [])] or [0])
            if self.min_per_layer > smallest and layers:
                raise HeadPruneError(
                    f"--min-heads-per-layer {self.min_per_layer} is more than the {smallest} heads "
                    f"a {group} layer has (allowed: 0 to {smallest})")
            want = share_count(self.shares[group], total)
            can = total - self.min_per_layer * layers
            if want > can:
                raise HeadPruneError(
                    f"--prune-schedule {group}:{100 * self.shares[group]:g}% asks for {want} of "
                    f"{total} heads, but --min-heads-per-layer {self.min_per_layer} keeps "
                    f"{self.min_per_layer} in each of {layers} layers, so at most {can} can go "
                    f"(allowed: up to {100 * can / max(total, 1):.1f}%)")

    def targets(self, shape: Shape, epoch: int) -> Dict[str, int]:
        """Heads of each group that should be gone after ``epoch``."""
        r = self.progress(epoch)
        return {group: share_count(self.shares[group] * r, shape_total(shape, kinds))
                for group, kinds in self.groups()}

    def next_removal(self, shape: Shape, epoch: int, scores: Scores, removed: HeadSet,
                     exclude: HeadSet = HeadSet()) -> HeadSet:
        """Heads to remove after ``epoch`` (on top of ``removed``): per group, the least
        important by ``scores`` until the group reaches its target, keeping
        ``min_per_layer`` heads in every layer; ``exclude`` (heads masked for the whole
        run) are never chosen."""
        out = HeadSet()
        for group, kinds in self.groups():
            target = self.targets(shape, epoch)[group]
            already = HeadSet(h for h in removed if h[0] in kinds)
            if target <= len(already):
                continue
            order = order_by_scores(scores, kinds, exclude | removed)
            chosen = take_with_floor(order, target, shape, self.min_per_layer, already)
            out = out | (chosen - already)
        return out


def score_of(scores: Scores, head: Head) -> Optional[float]:
    kind, layer, h = head
    return scores[kind][layer - 1][h - 1]


def heads_left(shape: Shape, removed: HeadSet, kinds: Sequence[str] = KINDS) -> Dict[str, int]:
    return {k: shape_total(shape, (k,)) - removed.count(k) for k in kinds}
