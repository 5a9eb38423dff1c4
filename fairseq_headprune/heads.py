"""Sets of attention heads and the spec grammar that names them.

Grammar (1-based, as the paper's tables: "E:1:6" is encoder self-attention L1H6)::

    SPEC    := ENTRY ((" " | ";") ENTRY)*   |  "@" PATH.json  |  ""
    ENTRY   := KIND ":" NUMBERS ":" NUMBERS
    KIND    := "E" (encoder self-attn) | "A" (encoder-decoder attn) | "D" (decoder self-attn)
    NUMBERS := "*" | ITEM ("," ITEM)*      ITEM := N | N "-" M

Spec files (``@PATH``) are JSON objects as every command writes them::

    {"format": "fairseq-headprune/heads-v1", "spec": "E:1:6,8", "count": 2,
     "heads": {"E": {"1": [6, 8]}}, "meta": {...}}

Only ``heads`` is required (hand-written files may leave the rest out): kinds E, A, D,
each mapping decimal layer numbers ("1") to JSON lists of integer head numbers. When
present, ``format`` must be exactly ``fairseq-headprune/heads-v1`` (another package
file given by mistake is refused), ``count`` must be the number of distinct heads and
``spec`` must name exactly the heads of ``heads`` (checked against the model's shape
when resolved): a file whose fields disagree was edited by hand, and is refused rather
than guessed at. ``{"heads": {}}`` is the empty spec, as is a blank spec text.

Every number is range-checked before anything is expanded, so "E:1:1-99999999999"
fails at once; numbers longer than 18 digits are refused as they are parsed.

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

_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")  # ASCII digits only (int() takes others)
_DECIMAL = re.compile(r"[0-9]+")
MAX_DIGITS = 18  # no model has 10**18 layers or heads; int() of > 4300 digits fails


def _show(text, limit: int = 60) -> str:
    """repr of ``text`` for a one-line message, cut short when long."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _cut(text, limit: int = 160) -> str:
    """``text`` on one line, cut short when long."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _num(n: int) -> str:
    s = str(n)
    return s if len(s) <= 24 else f"{s[:12]}...({len(s)} digits)"


def _span(what: str, lo: int, hi: int) -> str:
    """'head 9' or 'head range 1-99999999999'."""
    return f"{what} {_num(lo)}" if lo == hi else f"{what} range {_num(lo)}-{_num(hi)}"


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
                f"unknown attention kind {_show(item)} (allowed: E, A, D or all)"
            )
        kinds.add(item.upper())
    if not kinds:
        raise HeadPruneError("no attention kind given (allowed: E, A, D or all)")
    return tuple(k for k in KINDS if k in kinds)


def _parse_numbers(text: str, what: str, entry: str) -> Optional[List[Tuple[int, int]]]:
    """'2-5,7' -> [(2, 5), (7, 7)]; '*' -> None (all). Nothing is expanded here."""
    if text == "*":
        return None
    ranges = []
    for item in text.split(","):
        m = _ITEM.fullmatch(item.strip())
        if not m:
            raise HeadPruneError(
                f"bad {what} {_show(item)} in entry {_show(entry)} "
                f"(allowed: a number, a range like 2-5, a comma list of these, or *)"
            )
        for digits in m.groups():
            if digits is not None and len(digits.lstrip("0")) > MAX_DIGITS:
                raise HeadPruneError(
                    f"bad {what} {_show(item, 30)} in entry {_show(entry, 30)}: a number of "
                    f"{len(digits.lstrip('0'))} digits (allowed: {what} numbers of this "
                    f"model, at most {MAX_DIGITS} digits)"
                )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if lo < 1:
            raise HeadPruneError(
                f"bad {what} {_show(item)} in entry {_show(entry)}: {what}s are numbered from 1"
            )
        if hi < lo:
            raise HeadPruneError(
                f"bad {what} range {_show(item)} in entry {_show(entry)}: the end is below the start"
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

    def __init__(self, entries=(), text: str = "", source: str = "spec", check=None):
        # entries: (kind, layer ranges or None, head ranges or None, entry text);
        # check: a HeadSpec that must resolve to the same heads (a spec file's 'spec'
        # field), or None
        self.entries = list(entries)
        self.text = text
        self.source = source
        self.check = check

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
                    f"malformed head entry {_show(entry)} "
                    f"(expected KIND:LAYERS:HEADS, e.g. E:1:6,8 or A:5-6:*)"
                )
            kind, layers, heads = parts
            if kind.upper() not in KINDS:
                raise HeadPruneError(
                    f"unknown attention kind {_show(kind)} in entry {_show(entry)} "
                    f"(allowed: E, A, D)"
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
        """A spec file (see the module docstring): every field strictly typed."""
        where = f"head spec file {path!r}"
        if not os.path.isfile(path):
            raise HeadPruneError(f"{where} does not exist")
        example = f'{{"format": "{SPEC_FILE_FORMAT}", "heads": {{"E": {{"1": [6, 8]}}}}}}'
        expected = f"(expected a spec file as fairseq-headprune writes them: {example})"

        def no_duplicates(pairs):
            obj = {}
            for key, value in pairs:
                if key in obj:
                    raise HeadPruneError(f"{where} names {_show(key)} twice in one object "
                                         f"(allowed: each kind and layer once)")
                obj[key] = value
            return obj

        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f, object_pairs_hook=no_duplicates)
        except HeadPruneError:
            raise
        except RecursionError:
            raise HeadPruneError(f"{where} is nested too deeply to be a spec file {expected}")
        except (OSError, ValueError) as e:
            raise HeadPruneError(f"{where} is not valid JSON: {_cut(e, 160)}")
        if not isinstance(data, dict):
            raise HeadPruneError(f"{where} holds a JSON {_json_type(data)}, not an object {expected}")
        fmt = data.get("format")
        if "format" in data and fmt != SPEC_FILE_FORMAT:
            raise HeadPruneError(f"{where} has format {_show(fmt)}, not {SPEC_FILE_FORMAT!r} "
                                 f"(allowed: {SPEC_FILE_FORMAT!r} or no format; a spec file is "
                                 f"{example})")
        if not isinstance(data.get("heads"), dict):
            raise HeadPruneError(f"{where} has no 'heads' object {expected}")
        entries = []
        heads_seen = set()
        for kind, layers in data["heads"].items():
            if kind not in KINDS or not isinstance(layers, dict):
                raise HeadPruneError(
                    f"{where}: bad kind {_show(kind)} (allowed: E, A, D, each mapping "
                    f"layer numbers to lists of head numbers)"
                )
            for layer, heads in layers.items():
                entry = f"{kind}:{layer}:{_brief(heads)}"
                if not _DECIMAL.fullmatch(layer) or len(layer.lstrip("0")) > MAX_DIGITS:
                    raise HeadPruneError(
                        f"{where}: bad layer {_show(layer)} in {_show(entry)} (allowed: a layer "
                        f"number as a decimal string, e.g. \"1\")"
                    )
                if not isinstance(heads, list) or any(type(h) is not int for h in heads):
                    bad = (f"head {_cut(_brief(next(h for h in heads if type(h) is not int)), 40)}"
                           if isinstance(heads, list) else f"heads {_cut(_brief(heads), 40)}")
                    raise HeadPruneError(
                        f"{where}: bad {bad} in {_show(entry)} "
                        f"(allowed: a JSON list of whole head numbers, e.g. [6, 8])"
                    )
                layer_n = int(layer)
                if layer_n < 1 or any(h < 1 for h in heads):
                    raise HeadPruneError(
                        f"{where}: {_show(entry)}: layers and heads are numbered from 1"
                    )
                if heads:
                    heads_seen.update((kind, layer_n, h) for h in heads)
                    entries.append(
                        (kind, [(layer_n, layer_n)], [(h, h) for h in sorted(set(heads))], entry)
                    )
        count = data.get("count")
        if "count" in data and (type(count) is not int or count != len(heads_seen)):
            raise HeadPruneError(
                f"{where} has count {_cut(_brief(count), 40)} but its 'heads' hold "
                f"{len(heads_seen)} distinct heads (allowed: the number of heads, or no count)"
            )
        check = None
        if "spec" in data:
            text = data["spec"]
            if not isinstance(text, str) or text.strip().startswith("@"):
                raise HeadPruneError(
                    f"{where} has spec {_cut(_brief(text), 80)} (allowed: a spec text "
                    f"naming the same heads as 'heads', e.g. \"E:1:6,8\", or no spec)"
                )
            try:
                check = HeadSpec.parse(text)
            except HeadPruneError as e:
                raise HeadPruneError(f"{where}: its 'spec' field: {e}")
            check.source = f"{where}, its 'spec' field"
        return cls(entries, "@" + path, source=where, check=check)

    def __bool__(self):
        return bool(self.entries)

    def resolve(self, shape: Shape) -> "HeadSet":
        """Check every layer and head range against the model's shape, then expand '*'
        and the ranges (never before: "E:1:1-99999999999" fails at once)."""
        heads = set()
        for kind, layer_ranges, head_ranges, entry in self.entries:
            counts = shape.get(kind) or []
            if not counts:
                raise HeadPruneError(
                    f"{self.source}: entry {_show(entry)} names {KIND_NAMES[kind]} ({kind}), "
                    f"which this model does not have"
                )
            if layer_ranges is None:
                layers = range(1, len(counts) + 1)
            else:
                for lo, hi in layer_ranges:
                    if hi > len(counts):
                        raise HeadPruneError(
                            f"{self.source}: {_span('layer', lo, hi)} in entry {_show(entry)} "
                            f"is out of range: this model's {kind} layers are 1-{len(counts)}"
                        )
                layers = sorted({l for lo, hi in layer_ranges for l in range(lo, hi + 1)})
            for layer in layers:
                n = counts[layer - 1]
                if head_ranges is None:
                    heads.update((kind, layer, h) for h in range(1, n + 1))
                    continue
                for lo, hi in head_ranges:
                    if hi > n:
                        has = f"has heads 1-{n}" if n else "has no heads"
                        raise HeadPruneError(
                            f"{self.source}: {_span('head', lo, hi)} in entry {_show(entry)} "
                            f"is out of range: {kind} layer {layer} of this model {has}"
                        )
                heads.update((kind, layer, h) for lo, hi in head_ranges for h in range(lo, hi + 1))
        out = HeadSet(heads)
        if self.check is not None:
            said = self.check.resolve(shape)
            if said != out:
                raise HeadPruneError(
                    f"{self.source}: its 'spec' field names {_show(said.to_spec() or '(no heads)', 80)} "
                    f"but its 'heads' hold {_show(out.to_spec() or '(no heads)', 80)} "
                    f"(allowed: both naming the same heads; fix or remove 'spec')"
                )
        return out


def _brief(value) -> str:
    """A JSON value as text for a message: scalars and flat lists of numbers in full
    (JSON spelling: true, null, NaN), other containers by their type."""
    if isinstance(value, list):
        if all(type(v) in (int, float, bool) or v is None for v in value):
            return json.dumps(value)
        return "[" + ", ".join(_brief(v) if not isinstance(v, (list, dict)) else
                               f"<a {_json_type(v)}>" for v in value) + "]"
    if isinstance(value, dict):
        return "<an object>"
    return json.dumps(value)


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


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
