"""Latency budgets: a table of decoding time against heads kept, measured on this
machine at the user's batch, beam and target length, and the heads that reach a
speed-up by it.

The table: for every kind K and every count k below the model's H_K heads, the model
with each K module cut to k heads (which heads does not change the work) decodes the
same sentences as the full model (fairseq's beam search, every hypothesis exactly L
tokens, so every variant takes the same steps), the variants taking turns in every
timed round (``speed.time_interleaved``). With r_K(k) the median over rounds of
t_K(k) / t_full in the same round (so that drift between rounds cancels), made
non-decreasing in k (fewer heads cannot cost more), one K module at k heads saves
``(1 - r_K(k)) / modules of K`` of the full decode: the whole decode as fairseq runs it,
key/value cache appends and beam reorders included, shared out over the modules. A
choice of heads is predicted to take ``t_full (1 - Σ_modules saving_K(k_m))`` (modules
run one after another, so their savings add up); the predicted speed-up is t_full over
that. ``verify`` times the chosen model against the full one the same way, so the
prediction and the measurement are reported side by side.
"""

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import HeadPruneError
from ..heads import Head, HeadSet
from . import speed

logger = logging.getLogger("fairseq_headprune.latency")

TABLE_FORMAT = "fairseq-headprune/latency-table-v1"


@dataclass
class LatencySettings:
    batch_size: int = 16
    beam: int = 5
    length: Optional[int] = None  # target tokens per hypothesis; None: the sample's mean
    repeats: int = 3
    warmup: int = 1
    subset: str = "test"


def module_counts(model, kinds: Sequence[str]) -> Dict[str, int]:
    """Heads per module of each kind; refuses a model whose modules of one kind have
    different counts (the table is indexed by one count per kind)."""
    from ..models.head_model import attention_modules

    counts: Dict[str, List[int]] = {}
    for (kind, _), m in attention_modules(model).items():
        if kind in kinds:
            counts.setdefault(kind, []).append(m.num_heads)
    for kind, ns in counts.items():
        if len(set(ns)) > 1:
            raise HeadPruneError(
                f"latency budgets need the same number of heads in every module of a kind; "
                f"this model's {kind} modules have {ns} (allowed: heads: or params: budgets)")
    return {k: ns[0] for k, ns in counts.items()}


def _cut_to(model, kind: str, k: int) -> HeadSet:
    """Every ``kind`` module's present heads beyond the first ``k``."""
    from ..models.head_model import attention_modules

    return HeadSet((kind, layer, h + 1) for (kd, layer), m in attention_modules(model).items()
                   if kd == kind for h in m.kept_heads[k:])


def _decoder(task, batches, gen_cfg, settings: LatencySettings, model):
    import torch

    from ..models.head_model import generation_mode
    from .bench import generation_cfg

    gen = task.build_generator([model], generation_cfg(gen_cfg, settings.beam, settings.length))

    def run():
        with torch.no_grad(), generation_mode(model):
            for b in batches:
                task.inference_step(gen, [model], b)
    return run


def sample(task, model, settings: LatencySettings, use_cuda=False):
    """``batch_size`` sentences of the subset (seeded, as bench samples) in one batch
    (more where --max-tokens splits it), and the target length L: ``settings.length``
    or the mean of their reference lengths (EOS excluded), rounded."""
    from .bench import make_batches

    batches = make_batches(task, model, settings.subset, settings.batch_size,
                           settings.batch_size, use_cuda)
    length = settings.length
    if length is None:
        pad = task.target_dictionary.pad()
        refs = [int(n) - 1 for b in batches if b.get("target") is not None
                for n in b["target"].ne(pad).sum(1)]
        length = max(1, round(sum(refs) / len(refs))) if refs else 20
    return batches, length


def measure_table(task, model, gen_cfg, settings: LatencySettings, kinds: Sequence[str],
                  use_cuda=False) -> dict:
    """The table (JSON-ready): per kind, modules, heads, seconds per decode at every
    count 0..H and the saving of one module at each count; t_full; the settings."""
    import torch

    from ..models.head_model import attention_modules, remove_heads
    from .bench import fresh_copy

    counts = module_counts(model, kinds)
    batches, length = sample(task, model, settings, use_cuda)
    settings = LatencySettings(**{**asdict(settings), "length": length})
    models = {("full", None): model}
    for kind, h in counts.items():
        for k in range(h):
            m = fresh_copy(model)
            remove_heads(m, _cut_to(m, kind, k))
            models[(kind, k)] = m.eval()
    sync = torch.cuda.synchronize if use_cuda else None
    fns = {key: _decoder(task, batches, gen_cfg, settings, m) for key, m in models.items()}
    logger.info(f"latency table: {len(fns)} variants x {settings.repeats} repeats, beam "
                f"{settings.beam}, {sum(b['nsentences'] for b in batches)} sentences, "
                f"{length} tokens each")
    t0 = time.time()
    times = speed.time_interleaved(fns, settings.warmup, settings.repeats, sync)
    full_times = times[("full", None)]
    full = speed.summarize(full_times)["median"]
    n_modules = {kind: sum(1 for kd, _ in attention_modules(model) if kd == kind) for kind in counts}
    table = {}
    for kind, h in counts.items():
        # time over the full model's time in the same round: drift cancels
        ratios = [statistics.median(t / f for t, f in zip(times[(kind, k)], full_times))
                  for k in range(h)] + [1.0]
        table[kind] = {"modules": n_modules[kind], "heads": h,
                       "seconds": [speed.summarize(times[(kind, k)])["median"] for k in range(h)]
                       + [full], "time_ratio": ratios, **savings(ratios, n_modules[kind])}
    return {"format": TABLE_FORMAT, "settings": asdict(settings),
            "sentences": sum(b["nsentences"] for b in batches),
            "source_tokens": int(sum(b["net_input"]["src_lengths"].sum() for b in batches)),
            "full_seconds": full, "full_times": times[("full", None)], "kinds": table,
            "seconds_to_measure": round(time.time() - t0, 3),
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if use_cuda else "cpu",
            "dtype": str(next(model.parameters()).dtype)}


def savings(ratios: Sequence[float], modules: int) -> dict:
    """Per-module savings, as shares of the full model's time, at 0..H heads kept, from
    the time ratios to the full model (the last: all H, 1). Fewer heads cannot take
    longer, so the ratios are first made non-decreasing in heads kept by isotonic
    regression (scipy), which pools neighbours that timing noise put out of order; the
    saving at H is 0."""
    from scipy.optimize import isotonic_regression

    fitted = [float(x) for x in isotonic_regression(list(ratios), increasing=True).x]
    return {"ratio_fitted": fitted,
            "saving_per_module": [(fitted[-1] - f) / modules for f in fitted]}


def predict(table: dict, left: Dict[Tuple[str, int], int]) -> float:
    """Predicted seconds of a model whose modules keep ``left[(kind, layer)]`` heads
    (modules of kinds not in the table are taken as full); refuses a table whose
    savings add up to the whole decode (timing noise larger than the effect)."""
    share = 1.0
    for (kind, _), k in left.items():
        if kind in table["kinds"]:
            share -= table["kinds"][kind]["saving_per_module"][k]
    if share <= 0:
        s = table["settings"]
        raise HeadPruneError(
            f"the latency table (beam {s['beam']}, batch {s['batch_size']}, {s['length']} tokens) "
            f"predicts that removing these heads saves {100 * (1 - share):.0f}% of the decode: "
            f"its timings are noisier than the effect (allowed: a table measured with more "
            f"--latency-repeats or a longer --latency-length, on a quiet machine)")
    return table["full_seconds"] * share


def heads_for_latency(model, order: Sequence[Head], speedup: float, kinds: Sequence[str],
                      table: dict, min_heads_per_layer: int = 0) -> Tuple[HeadSet, dict]:
    """The fewest heads of ``order`` (least important first) whose removal the table
    predicts to reach ``speedup``; refuses a speed-up that removing every head the
    floor allows does not reach."""
    from ..models.head_model import attention_modules, removed_heads
    from .budget import _removable

    gone = removed_heads(model)
    left = {key: m.num_heads for key, m in attention_modules(model).items() if key[0] in kinds}
    candidates = _removable([h for h in order if h not in gone and h[0] in kinds], left,
                            min_heads_per_layer)
    full = table["full_seconds"]
    chosen: List[Head] = []
    predicted = full
    for head in candidates:
        if full / predicted >= speedup:
            break
        chosen.append(head)
        left[head[:2]] -= 1
        predicted = predict(table, left)
    reached = full / predicted
    if reached < speedup:
        raise HeadPruneError(
            f"--budget latency:{speedup:g}x: removing every head it may ({len(candidates)}, "
            f"--min-heads-per-layer {min_heads_per_layer}) is predicted to reach only "
            f"{reached:.3f}x at beam {table['settings']['beam']}, batch "
            f"{table['settings']['batch_size']} (allowed: up to latency:{reached:.2f}x)")
    return HeadSet(chosen), {"unit": "latency", "asked": speedup, "predicted_speedup": reached,
                             "predicted_seconds": predicted, "full_seconds": full,
                             "removed": len(chosen)}


def verify(task, model, heads: HeadSet, gen_cfg, table: dict, use_cuda=False) -> dict:
    """The measured speed-up of ``model`` with ``heads`` removed over ``model``, on the
    table's sentences and settings, paired by round."""
    import torch

    from ..models.head_model import remove_heads
    from .bench import fresh_copy

    settings = LatencySettings(**table["settings"])
    batches, _ = sample(task, model, settings, use_cuda)
    small = fresh_copy(model)
    remove_heads(small, heads)
    small.eval()
    fns = {"full": _decoder(task, batches, gen_cfg, settings, model),
           "pruned": _decoder(task, batches, gen_cfg, settings, small)}
    times = speed.time_interleaved(fns, settings.warmup, settings.repeats,
                                   torch.cuda.synchronize if use_cuda else None)
    measured = speed.paired_speedup(times["full"], times["pruned"])
    return {"measured_speedup": measured, "times": times,
            "full_seconds": speed.summarize(times["full"])["median"],
            "pruned_seconds": speed.summarize(times["pruned"])["median"]}


def check_table(table: dict, model, settings: LatencySettings, kinds: Sequence[str], path: str):
    """Refuse a saved table measured for another model shape or other settings."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise HeadPruneError(f"--latency-table {path!r} is not a latency table (expected format "
                             f"{TABLE_FORMAT!r}, as fairseq-headprune prune writes it)")
    saved = table.get("settings") or {}
    for key in ("batch_size", "beam", "subset") + (("length",) if settings.length else ()):
        if saved.get(key) != getattr(settings, key):
            raise HeadPruneError(
                f"--latency-table {path!r} was measured at {key} {saved.get(key)!r}, this run "
                f"asks for {getattr(settings, key)!r} (allowed: a table of the same batch size, "
                f"beam, length and subset, or a new file name to measure one)")
    counts = module_counts(model, kinds)
    have = {k: (v.get("heads"), v.get("modules")) for k, v in (table.get("kinds") or {}).items()}
    from ..models.head_model import attention_modules

    want = {k: (h, sum(1 for kd, _ in attention_modules(model) if kd == k)) for k, h in counts.items()}
    if any(have.get(k) != v for k, v in want.items()):
        raise HeadPruneError(f"--latency-table {path!r} does not fit this model: (heads, modules) "
                             f"per kind there {have}, here {want}")

