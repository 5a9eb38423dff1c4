"""Budgets: which heads to remove so that a model meets ``heads:N%`` (that share of
the heads of the chosen kinds removed, ``heads.share_count`` rounding) or
``params:N%`` (at least that share of all the model's parameters removed, the fewest
heads of the ranking that reach it), in the order of a ranking (least important
first), keeping ``min_heads_per_layer`` heads in every module. A budget that the floor
or the model cannot meet is refused with one line saying what can be met.
``latency:1.3x`` (a decoding speed-up) is met with a measured table (analysis/latency.py)."""

import re
from typing import Dict, List, Sequence, Tuple

from ..errors import HeadPruneError
from ..heads import Head, HeadSet, _show, share_count
from ..models.head_model import attention_modules, head_parameter_count, parameter_counts, removed_heads

UNITS = ("heads", "params", "latency")
_BUDGET = re.compile(r"^([a-z]+):([0-9]+(?:\.[0-9]+)?)(%|x)$")
ALLOWED = ("(allowed: heads:N% or params:N%, N from 0 to 100, e.g. heads:50%; or latency:Sx, "
           "a decoding speed-up S >= 1, e.g. latency:1.3x)")


def parse_budget(text: str) -> Tuple[str, float]:
    """'heads:50%' -> ('heads', 0.5); 'latency:1.3x' -> ('latency', 1.3)."""
    m = _BUDGET.match((text or "").strip().lower())
    if not m:
        raise HeadPruneError(f"--budget {_show(text)} is not UNIT:N% or latency:Sx {ALLOWED}")
    unit, value, sign = m.group(1), float(m.group(2)), m.group(3)
    if unit not in UNITS:
        raise HeadPruneError(f"--budget {_show(text)}: unknown unit {_show(m.group(1))} {ALLOWED}")
    if unit == "latency":
        if sign != "x":
            raise HeadPruneError(f"--budget {_show(text)}: latency budgets are speed-ups {ALLOWED}")
        if value < 1:
            raise HeadPruneError(f"--budget {_show(text)}: a speed-up below 1x is a slow-down "
                                 f"{ALLOWED}")
        return unit, value
    if sign != "%":
        raise HeadPruneError(f"--budget {_show(text)}: {unit} budgets are percentages {ALLOWED}")
    if value > 100:
        raise HeadPruneError(f"--budget {_show(text)}: {m.group(2)}% is more than the whole model {ALLOWED}")
    return unit, value / 100.0


def _present(model, kinds: Sequence[str]) -> Dict[Tuple[str, int], int]:
    return {key: m.num_heads for key, m in attention_modules(model).items() if key[0] in kinds}


def _removable(order: Sequence[Head], present: Dict[Tuple[str, int], int], floor: int) -> List[Head]:
    """The heads of ``order`` in order, skipping those the floor keeps."""
    left, out = dict(present), []
    for head in order:
        key = head[:2]
        if key in left and left[key] - 1 >= floor:
            left[key] -= 1
            out.append(head)
    return out


def heads_for_budget(model, order: Sequence[Head], unit: str, fraction: float,
                     kinds: Sequence[str], min_heads_per_layer: int = 0) -> Tuple[HeadSet, dict]:
    """The heads to remove now (none already removed) and what the budget came to."""
    gone = removed_heads(model)
    order = [h for h in order if h not in gone and h[0] in kinds]
    present = _present(model, kinds)
    candidates = _removable(order, present, min_heads_per_layer)
    if unit == "heads":
        n = sum(present.values())
        want = share_count(fraction, n)
        if want > len(candidates):
            raise HeadPruneError(
                f"--budget heads:{100 * fraction:g}% asks for {want} of {n} heads, but "
                f"--min-heads-per-layer {min_heads_per_layer} lets only {len(candidates)} go "
                f"(allowed: up to heads:{100 * len(candidates) / max(n, 1):.1f}%)")
        chosen = candidates[:want]
        return HeadSet(chosen), {"unit": "heads", "asked": fraction, "heads": n, "removed": want}
    total = parameter_counts(model)["total"]
    target = fraction * total
    per_head = {key: head_parameter_count(m) for key, m in attention_modules(model).items()}
    chosen, freed = [], 0
    for head in candidates:
        if freed >= target:
            break
        chosen.append(head)
        freed += per_head[head[:2]]
    if freed < target:
        raise HeadPruneError(
            f"--budget params:{100 * fraction:g}% asks for {int(round(target)):,} of {total:,} "
            f"parameters, but removing every head it may ({len(candidates)}) frees only {freed:,} "
            f"(allowed: up to params:{100 * freed / total:.2f}%)")
    return HeadSet(chosen), {"unit": "params", "asked": fraction, "parameters": total,
                             "removed": freed, "share_removed": freed / total}
