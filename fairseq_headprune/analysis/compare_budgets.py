"""Budgets compared without retraining: for every budget, every order (random: every
seed) and every repair, the heads the budget removes in that order, repaired on the
calibration sentences, removed, and the smaller model scored on the evaluation
sentences; beside it the parameters left, the decoding speed-up the latency table
predicts, and the seconds that choosing and repairing took.

What the repairs need of the full model (analysis/repair.py's Calibration) is gathered
once and shared by every row (each row's repair starts from a fresh copy of the full
model); so is the latency table. Rows are computed one at a time and handed to
``on_row`` (the caller saves them: an interrupted comparison resumes)."""

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import HeadPruneError
from ..models.head_model import attention_modules, parameter_counts, remove_heads
from .budget import heads_for_budget, parse_budget
from .ranking import order_heads

FORMAT = "fairseq-headprune/budgets-v1"
logger = logging.getLogger("fairseq_headprune.budgets")


@dataclass
class Arm:
    budget: str
    order: str
    repair: str
    seed: Optional[int] = None  # random orders only

    @property
    def key(self) -> str:
        seed = f"@seed{self.seed}" if self.seed is not None else ""
        return f"{self.budget}|{self.order}{seed}|{self.repair}"


@dataclass
class Plan:
    budgets: List[str]
    orders: List[str]
    repairs: List[str]
    seeds: List[int] = field(default_factory=lambda: [1])
    kinds: Sequence[str] = ("E", "A", "D")
    min_heads_per_layer: int = 0
    importance: Optional[str] = None
    ablation: Optional[str] = None

    def arms(self) -> List[Arm]:
        return [Arm(b, o, r, s if o == "random" else None)
                for b in self.budgets for o in self.orders
                for s in (self.seeds if o == "random" else [None]) for r in self.repairs]


def run(model, plan: Plan, score: Callable[[object], Dict], calibration,
        table: Optional[dict], done: Dict[str, dict], on_row: Callable[[dict], None]) -> List[dict]:
    """Every arm of ``plan`` not in ``done`` (by key), in order. ``score(model)``: the
    evaluation of a (pruned) model, {'bleu', 'sacrebleu', 'loss', ...}; ``calibration``:
    the full model's ``repair.Calibration`` or None when no arm repairs; ``table``: a
    latency table (analysis/latency.py) or None."""
    from .bench import fresh_copy
    from .repair import repair

    rows, orders = [], {}
    total = parameter_counts(model)["total"]
    for arm in plan.arms():
        if arm.key in done:
            rows.append(done[arm.key])
            continue
        t0 = time.perf_counter()
        unit, amount = parse_budget(arm.budget)
        key = (arm.order, arm.seed)  # one ranking per order and seed, for every budget and repair
        if key not in orders:
            orders[key] = order_heads(model, arm.order, plan.importance, arm.seed or 1,
                                      plan.kinds, plan.ablation)
        order = orders[key]
        if unit == "latency":
            from .latency import heads_for_latency

            heads, _ = heads_for_latency(model, order, amount, plan.kinds, table,
                                         plan.min_heads_per_layer)
        else:
            heads, _ = heads_for_budget(model, order, unit, amount, plan.kinds,
                                        plan.min_heads_per_layer)
        chosen = time.perf_counter() - t0
        small = fresh_copy(model)
        t1 = time.perf_counter()
        repair(small, heads, arm.repair, calibration)
        repaired = time.perf_counter() - t1
        remove_heads(small, heads)
        small.eval()
        left = {key: m.num_heads for key, m in attention_modules(small).items()}
        after = parameter_counts(small)["total"]
        row = {"key": arm.key, "budget": arm.budget, "order": arm.order, "seed": arm.seed,
               "repair": arm.repair, "removed": len(heads), "spec": heads.to_spec(),
               "parameters": after, "parameters_removed_share": (total - after) / total,
               "predicted_speedup": _speedup(table, left),
               "seconds_to_choose": round(chosen, 4), "seconds_to_repair": round(repaired, 4),
               **{k: v for k, v in score(small).items() if not k.endswith("_signature")}}
        del small
        rows.append(row)
        on_row(row)
    return rows


def _speedup(table: Optional[dict], left) -> Optional[float]:
    """The table's predicted speed-up, or None (no table; a table too noisy to say)."""
    from .latency import predict

    if not table:
        return None
    try:
        return table["full_seconds"] / predict(table, left)
    except HeadPruneError as e:
        logger.warning(str(e))
        return None


def baseline(model, score: Callable[[object], Dict], kinds: Sequence[str]) -> dict:
    """The full model's row: its parameters, its present heads of ``kinds`` (what the
    budgets' shares are of), its scores."""
    heads = sum(m.num_heads for (kind, _), m in attention_modules(model).items() if kind in kinds)
    return {"parameters": parameter_counts(model)["total"], "heads": heads,
            **{k: v for k, v in score(model).items() if not k.endswith("_signature")}}
