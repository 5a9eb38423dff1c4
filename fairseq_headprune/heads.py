"""Sets of attention heads and the spec grammar that names them.

Grammar (1-based, as the paper's tables: "E:1:6" is encoder self-attention L1H6)::

    SPEC    := ENTRY ((" " | ";") ENTRY)*   |  "@" PATH.json  |  ""
    ENTRY   := KIND ":" NUMBERS ":" NUMBERS
    KIND    := "E" (encoder self-attn) | "A" (encoder-decoder attn) | "D" (decoder self-attn)
    NUMBERS := "*" | ITEM ("," ITEM)*      ITEM := N | N "-" M

``HeadSpec`` is the parsed text, which may still hold ``*``; ``HeadSet`` is a concrete
set of (kind, layer, head) triples, checked against a model's shape. A shape is a dict
``{kind: [heads in layer 1, heads in layer 2, ...]}`` of the model's original head
counts. Pure Python: no torch, no fairseq.
"""

import json
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import HeadPruneError

KINDS = ("E", "A", "D")
KIND_NAMES = {
    "E": "encoder self-attention",
    "A": "encoder-decoder attention",
    "D": "decoder self-attention",
}
SPEC_FILE_FORMAT = "fairseq-headprune/heads-v1"

Shape = Dict[str, List[int]]
Head = Tuple[str, int, int]  # (kind, layer, head), 1-based

_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_kinds(text: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """'E,A' / 'EA' / ['E', 'A'] / None (all) -> ('E', 'A') in canonical order."""
    if text is None:
        return KINDS
    items = re.split(r"[\s,;|]+", text.strip()) if isinstance(text, str) else list(text)
    if len(items) == 1 and len(items[0]) > 1 and "all" != items[0].lower():
        items = list(items[0])  # "EAD"
    kinds = set()
    for item in items:
        if not item:
            continue
        if item.lower() == "all":
            kinds.update(KINDS)
            continue
        if item.upper() not in KINDS:
            raise HeadPruneError(
                f"unknown attention kind {item!r} (allowed: E, A, D or all)"
            )
        kinds.add(item.upper())
    if not kinds:
        raise HeadPruneError("no attention kind given (allowed: E, A, D or all)")
    return tuple(k for k in KINDS if k in kinds)


def _parse_numbers(text: str, what: str, entry: str) -> Optional[List[Tuple[int, int]]]:
    """'2-5,7' -> [(2, 5), (7, 7)]; '*' -> None (all)."""
    if text == "*":
        return None
    ranges = []
    for item in text.split(","):
        m = _ITEM.match(item.strip())
        if not m:
            raise HeadPruneError(
                f"bad {what} {item!r} in entry {entry!r} "
                f"(allowed: a number, a range like 2-5, a comma list of these, or *)"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if lo < 1:
            raise HeadPruneError(
                f"bad {what} {item!r} in entry {entry!r}: {what}s are numbered from 1"
            )
        if hi < lo:
            raise HeadPruneError(
                f"bad {what} range {item!r} in entry {entry!r}: the end is below the start"
            )
        ranges.append((lo, hi))
    return ranges


def _compress(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    nums = sorted(set(numbers))
    parts = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


class HeadSpec:
    """A parsed spec, possibly with '*': resolve it against a model shape."""

    def __init__(self, entries=(), text: str = "", source: str = "spec"):
        # entries: (kind, layer ranges or None, head ranges or None, entry text)
        self.entries = list(entries)
        self.text = text
        self.source = source

    @classmethod
    def parse(cls, text: Optional[str]) -> "HeadSpec":
        if text is None:
            return cls()
        text = text.strip()
        if text.startswith("@"):
            return cls.from_file(text[1:])
        entries = []
        for entry in re.split(r"[\s;]+", text):
            if not entry:
                continue
            parts = entry.split(":")
            if len(parts) != 3:
                raise HeadPruneError(
                    f"malformed head entry {entry!r} "
                    f"(expected KIND:LAYERS:HEADS, e.g. E:1:6,8 or A:5-6:*)"
                )
            kind, layers, heads = parts
            if kind.upper() not in KINDS:
                raise HeadPruneError(
                    f"unknown attention kind {kind!r} in entry {entry!r} (allowed: E, A, D)"
                )
            entries.append(
                (
                    kind.upper(),
                    _parse_numbers(layers, "layer", entry),
                    _parse_numbers(heads, "head", entry),
                    entry,
                )
            )
        return cls(entries, text)

    @classmethod
    def from_file(cls, path: str) -> "HeadSpec":
        if not os.path.isfile(path):
            raise HeadPruneError(f"head spec file {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise HeadPruneError(f"head spec file {path!r} is not valid JSON: {e}")
        if not isinstance(data, dict) or not isinstance(data.get("heads"), dict):
            raise HeadPruneError(
                f"head spec file {path!r} has no 'heads' object "
                f"(expected the {SPEC_FILE_FORMAT} format that fairseq-headprune writes)"
            )
        entries = []
        for kind, layers in data["heads"].items():
            if kind not in KINDS or not isinstance(layers, dict):
                raise HeadPruneError(
                    f"head spec file {path!r}: bad kind {kind!r} (allowed: E, A, D, "
                    f"each mapping layer numbers to lists of head numbers)"
                )
            for layer, heads in layers.items():
                entry = f"{kind}:{layer}:{heads}"
                try:
                    layer_n = int(layer)
                    head_ns = [int(h) for h in heads]
                except (TypeError, ValueError):
                    raise HeadPruneError(
                        f"head spec file {path!r}: bad layer/heads {entry!r} "
                        f"(expected a layer number and a list of head numbers)"
                    )
                if layer_n < 1 or any(h < 1 for h in head_ns):
                    raise HeadPruneError(
                        f"head spec file {path!r}: {entry!r}: layers and heads are numbered from 1"
                    )
                if head_ns:
                    entries.append(
                        (kind, [(layer_n, layer_n)], [(h, h) for h in head_ns], entry)
                    )
        return cls(entries, "@" + path, source=f"spec file {path!r}")

    def __bool__(self):
        return bool(self.entries)

    def resolve(self, shape: Shape) -> "HeadSet":
        """Expand '*' and check every layer and head against the model's shape."""
        heads = set()
        for kind, layer_ranges, head_ranges, entry in self.entries:
            counts = shape.get(kind) or []
            if not counts:
                raise HeadPruneError(
                    f"{self.source}: entry {entry!r} names {KIND_NAMES[kind]} ({kind}), "
                    f"which this model does not have"
                )
            if layer_ranges is None:
                layers = range(1, len(counts) + 1)
            else:
                layers = [l for lo, hi in layer_ranges for l in range(lo, hi + 1)]
            for layer in layers:
                if layer > len(counts):
                    raise HeadPruneError(
                        f"{self.source}: layer {layer} in entry {entry!r} is out of range: "
                        f"this model's {kind} layers are 1-{len(counts)}"
                    )
                n = counts[layer - 1]
                if head_ranges is None:
                    hs = range(1, n + 1)
                else:
                    hs = [h for lo, hi in head_ranges for h in range(lo, hi + 1)]
                for h in hs:
                    if h > n:
                        raise HeadPruneError(
                            f"{self.source}: head {h} in entry {entry!r} is out of range: "
                            f"{kind} layer {layer} of this model has heads 1-{n}"
                        )
                    heads.add((kind, layer, h))
        return HeadSet(heads)


class HeadSet:
    """An immutable set of heads (kind, layer, head), 1-based."""

    def __init__(self, heads: Iterable[Head] = ()):
        self._heads = frozenset((str(k), int(l), int(h)) for k, l, h in heads)

    @classmethod
    def parse(cls, text: Optional[str], shape: Shape) -> "HeadSet":
        return HeadSpec.parse(text).resolve(shape)

    @classmethod
    def all_heads(cls, shape: Shape, kinds: Iterable[str] = KINDS) -> "HeadSet":
        return cls(
            (k, l + 1, h + 1)
            for k in kinds
            for l, n in enumerate(shape.get(k) or [])
            for h in range(n)
        )

    # set protocol
    def __iter__(self) -> Iterator[Head]:
        return iter(sorted(self._heads, key=lambda t: (KINDS.index(t[0]), t[1], t[2])))

    def __len__(self):
        return len(self._heads)

    def __contains__(self, head):
        return tuple(head) in self._heads

    def __eq__(self, other):
        return isinstance(other, HeadSet) and self._heads == other._heads

    def __hash__(self):
        return hash(self._heads)

    def __or__(self, other: "HeadSet") -> "HeadSet":
        return HeadSet(self._heads | other._heads)

    def __and__(self, other: "HeadSet") -> "HeadSet":
        return HeadSet(self._heads & other._heads)

    def __sub__(self, other: "HeadSet") -> "HeadSet":
        return HeadSet(self._heads - other._heads)

    def __repr__(self):
        return f"HeadSet({self.to_spec()!r})"

    def of(self, kind: str, layer: int) -> List[int]:
        """Sorted 1-based heads of one module."""
        return sorted(h for k, l, h in self._heads if k == kind and l == layer)

    def by_module(self) -> Dict[Tuple[str, int], List[int]]:
        out: Dict[Tuple[str, int], List[int]] = {}
        for k, l, h in self:
            out.setdefault((k, l), []).append(h)
        return out

    def count(self, kind: Optional[str] = None) -> int:
        return sum(1 for k, _, _ in self._heads if kind is None or k == kind)

    def to_spec(self) -> str:
        """Canonical text: kinds E, A, D; layers ascending; head runs as ranges."""
        return " ".join(
            f"{k}:{l}:{_compress(hs)}" for (k, l), hs in self.by_module().items()
        )

    __str__ = to_spec

    def to_json_obj(self, meta: Optional[dict] = None) -> dict:
        heads: Dict[str, Dict[str, List[int]]] = {}
        for (k, l), hs in self.by_module().items():
            heads.setdefault(k, {})[str(l)] = hs
        obj = {"format": SPEC_FILE_FORMAT, "spec": self.to_spec(), "count": len(self),
               "heads": heads}
        if meta:
            obj["meta"] = meta
        return obj

    def validate(self, shape: Shape, source: str = "head set") -> "HeadSet":
        """Raise if a head does not exist in a model of this shape."""
        spec = HeadSpec.parse(self.to_spec())
        spec.source = source
        return spec.resolve(shape)


def shape_total(shape: Shape, kinds: Iterable[str] = KINDS) -> int:
    return sum(sum(shape.get(k) or []) for k in kinds)


def share_count(fraction: float, n: int) -> int:
    """How many of ``n`` heads "``fraction`` of the heads" is: the nearest whole number,
    halves rounded up (25% of 10 heads = 3). The one rounding rule of the package:
    curves, export and every budget use it, so the "same" point is the same heads."""
    import math

    return int(math.floor(fraction * n + 0.5))
