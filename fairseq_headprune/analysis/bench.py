"""The bench command's engine: three variants of one model timed side by side.

``full`` (as loaded), ``masked`` (the heads masked: same work, plus the mask) and
``removed`` (the heads physically removed). For every batch size: an encoder-only
forward (the analogue of the paper's BERT measurement; for an encoder classifier, its
forward pass to the labels, and nothing else), and for every beam: fairseq's
beam search (``task.inference_step``, what fairseq-generate runs) over the same
sentences. Warm-up rounds, then repeats in which the variants take turns
(``speed.time_interleaved``). Beside each measured speed-up: the cost-model estimate
(``speed.estimate``: the work each variant does, counted term by term, at throughputs
calibrated once per run or the defaults) and measured/estimate. Peak memory per variant
where the platform reports it (CUDA), else None.
"""

import copy
import logging
from dataclasses import dataclass
from typing import List, Optional

from ..models.head_model import generation_mode
from . import speed

logger = logging.getLogger("fairseq_headprune.bench")

VARIANTS = ("full", "masked", "removed")
PARTS = ("encoder", "decode")
COST_MODEL = ("estimated time = gemm_macs/R_gemm + attn_macs/R_attn + bytes/R_bytes; work "
              "counted per term (cost_terms: per kind projections, scores, softmax, head "
              "layout, decoder key/value cache append and beam reorder, encoder-decoder "
              "keys/values once per sentence; FFN, norms, embeddings, vocabulary, encoder "
              "output reorder); per-operation overhead not counted; see analysis/speed.py")
THROUGHPUTS = ("calibrate", "default")


@dataclass
class BenchSettings:
    batch_sizes: List[int]
    beams: List[int]
    bench_sentences: int = 128
    repeats: int = 5
    warmup: int = 1
    parts: List[str] = PARTS
    variants: List[str] = VARIANTS  # "full" first
    fixed_length: Optional[int] = None
    cost_throughput: str = "calibrate"  # or "default": speed.DEFAULT_THROUGHPUT

    @classmethod
    def from_args(cls, args) -> "BenchSettings":
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__})


def fresh_copy(model):
    """A deep copy whose attention modules get their own incremental-state ids."""
    new = copy.deepcopy(model)
    for m in new.modules():
        if hasattr(m, "init_incremental_state"):
            m.init_incremental_state()
    return new


def make_batches(task, model, subset, n, batch_size, use_cuda):
    """A seeded random sample of n sentences of ``subset`` (``data.select``, seed 1: the
    same sentences for every batch size), in fairseq's length-sorted batches of
    ``batch_size`` sentences."""
    from fairseq import utils

    from .data import DataSpec, collate, select

    sel = select(task, [model], DataSpec(subset, max_sentences=n, batch_size=batch_size))
    return [utils.move_to_cuda(b) if use_cuda else b for b in collate(task, subset, sel.batches)]


def _variants(model, heads, names):
    from ..models.head_model import remove_heads, set_head_mask

    models = {"full": model}
    if "masked" in names:
        models["masked"] = fresh_copy(model)
        set_head_mask(models["masked"], heads)
    if "removed" in names:
        models["removed"] = fresh_copy(model)
        remove_heads(models["removed"], heads)
    for m in models.values():
        m.eval()
    return models


def _variant_info(m):
    from ..models.head_model import parameter_counts

    counts = parameter_counts(m)
    return {"parameters": counts["total"], "heads": counts["heads"],
            "parameter_bytes": sum(p.numel() * p.element_size() for p in m.parameters())}


def throughput(s: BenchSettings, dims, model, use_cuda) -> speed.Throughput:
    """The cost model's rates: calibrated on this machine (once per run) or defaults."""
    import torch

    if s.cost_throughput == "default":
        return speed.DEFAULT_THROUGHPUT
    p = next(model.parameters())
    return speed.calibrate(dims, p.device, p.dtype,
                           torch.cuda.synchronize if use_cuda else None)


def run_bench(task, subset, model, heads, gen_cfg, s: BenchSettings, use_cuda=False):
    """All measurements (``subset`` loaded, ``gen_cfg`` fairseq's generation config);
    returns {"variants", "rows", "model_dims", "throughput"}, JSON-ready."""
    import torch

    from ..models.head_model import unwrap_model
    from .classify import classifier_logits

    sync = torch.cuda.synchronize if use_cuda else None
    # an encoder classifier: its forward pass to the labels (the paper's BERT timing)
    classifier = getattr(unwrap_model(model), "decoder", None) is None
    models = _variants(model, heads, s.variants)
    dims = {name: speed.model_dims(m) for name, m in models.items()}
    info = {name: _variant_info(m) for name, m in models.items()}
    tp = throughput(s, dims["full"], model, use_cuda)
    logger.info(f"cost model throughputs: {tp}")

    def peak_memory(fn):
        if not use_cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    rows = []
    for bs in s.batch_sizes:
        batches = make_batches(task, model, subset, s.bench_sentences, bs, use_cuda)
        nsent = sum(b["nsentences"] for b in batches)
        src_tokens = int(sum(b["net_input"]["src_lengths"].sum() for b in batches))
        if "encoder" in s.parts:
            def enc(model):
                def f():
                    with torch.no_grad():
                        for b in batches:
                            net = b["net_input"]
                            if classifier:
                                classifier_logits(model, b)
                            else:
                                model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
                return f
            fns = {name: enc(m) for name, m in models.items()}
            logger.info(f"encoder, batch {bs}: {len(batches)} batches x {s.repeats} repeats")
            times = speed.time_interleaved(fns, s.warmup, s.repeats, sync)
            # padded work, as executed
            cost = {name: sum(b["net_input"]["src_tokens"].size(0) *
                              speed.encoder_cost(dims[name], b["net_input"]["src_tokens"].size(1))
                              for b in batches) for name in models}
            for name in models:
                rows.append(_row("encoder", None, bs, name, times, cost[name], nsent, src_tokens,
                                 peak_memory(fns[name]), "source", cost["full"], tp))
        if "decode" in s.parts and not classifier:
            for beam in s.beams:
                rows += _decode_rows(task, models, dims, batches, gen_cfg, beam, bs, nsent, s,
                                     sync, peak_memory, tp)
    _add_speedups(rows)
    return {"variants": info, "rows": rows, "throughput": tp.to_json(),
            "model_dims": {n: d.to_json() for n, d in dims.items()}}


def generation_cfg(gen_cfg, beam: int, fixed_length: Optional[int] = None):
    """A copy of fairseq's generation config at ``beam``; with ``fixed_length`` every
    hypothesis is exactly that many tokens (+ EOS), so that variants that translate
    differently still take the same steps."""
    gen_cfg = copy.deepcopy(gen_cfg)
    gen_cfg.beam = beam
    if fixed_length:
        gen_cfg.min_len = fixed_length
        gen_cfg.max_len_a, gen_cfg.max_len_b = 0, fixed_length
    return gen_cfg


def _decode_rows(task, models, dims, batches, gen_cfg, beam, bs, nsent, s, sync, peak_memory,
                 tp):
    import torch

    gen_cfg = generation_cfg(gen_cfg, beam, s.fixed_length)
    outputs = {}

    def dec(name, model):
        gen = task.build_generator([model], gen_cfg)

        def f():
            out = []
            with torch.no_grad(), generation_mode(model):
                for b in batches:
                    hypos = task.inference_step(gen, [model], b)
                    out += [(int(i), h[0]["tokens"].tolist())
                            for i, h in zip(b["id"].tolist(), hypos)]
            outputs[name] = sorted(out)
        return f
    fns = {name: dec(name, m) for name, m in models.items()}
    logger.info(f"decoding, beam {beam}, batch {bs}: {len(batches)} batches x "
                f"{s.repeats} repeats")
    times = speed.time_interleaved(fns, s.warmup, s.repeats, sync)
    # the source as executed: padded to its batch's length
    src_len = {int(i): b["net_input"]["src_tokens"].size(1) for b in batches
               for i in b["id"].tolist()}
    memo = {}

    def cost_of(name, outs):
        total = speed.Cost()
        for i, t in outs:
            key = (name, src_len[i], len(t))
            if key not in memo:
                memo[key] = speed.decode_cost(dims[name], src_len[i], len(t), beam)
            total = total + memo[key]
        return total

    cost, ntok, full_cost = {}, {}, {}
    for name in models:
        outs = outputs[name]
        ntok[name] = sum(len(t) for _, t in outs)
        cost[name] = cost_of(name, outs)
        # what the full model would compute for this variant's outputs
        full_cost[name] = cost_of("full", outs)
    rows = []
    for name in models:
        row = _row("decode", beam, bs, name, times, cost[name], nsent, ntok, None, "target",
                   full_cost[name], tp)
        row["peak_memory_bytes"] = peak_memory(fns[name])
        if name != "full" and "masked" in outputs and "removed" in outputs:
            row["masked_equals_removed"] = outputs["masked"] == outputs["removed"]
        rows.append(row)
    return rows


def _row(part, beam, bs, name, times, cost, nsent, ntokens, peak, token_kind, full_cost, tp):
    """``cost``: the variant's work (``speed.Cost``); ``full_cost``: what the full model
    computes for the same outputs (the estimate's numerator; masked variants thus have
    estimate 1 exactly)."""
    t = times[name]
    med = speed.summarize(t)
    ntok = ntokens[name] if isinstance(ntokens, dict) else ntokens
    return {
        "part": part, "beam": beam, "batch_size": bs, "variant": name,
        "sentences": nsent, f"{token_kind}_tokens": ntok,
        "seconds": med, "times": t,
        "sentences_per_s": nsent / med["median"],
        "tokens_per_s": ntok / med["median"],
        "cost": cost.totals(), "cost_terms": dict(cost),
        "estimated_seconds": cost.seconds(tp),
        "estimate": speed.estimate(full_cost, cost, tp),
        "peak_memory_bytes": peak,
        "_times": times,
        "_tokens": ntokens if isinstance(ntokens, dict) else {n: ntokens for n in times},
    }


def _add_speedups(rows):
    """Speed-ups of the same part/beam/batch, as token-rate ratios (equal to time
    ratios when the variants produce equally many tokens; the encoder's tokens are the
    same source tokens for all), from repeats paired by round: ``speedup`` over full,
    and for removed also ``speedup_vs_masked`` (identical hypotheses, so identical
    work apart from the removed heads). ``measured_over_estimate`` = speedup / estimate
    (1: the cost model predicts the measured speed-up exactly)."""
    def ratio(r, base):
        times, tokens = r["_times"], r["_tokens"]
        scale = tokens[r["variant"]] / max(tokens[base], 1)
        return {k: v * scale for k, v in
                speed.paired_speedup(times[base], times[r["variant"]]).items()}

    for r in rows:
        r["speedup"] = ratio(r, "full")
        if r["variant"] == "removed" and "masked" in r["_times"]:
            r["speedup_vs_masked"] = ratio(r, "masked")
        r["measured_over_estimate"] = r["speedup"]["median"] / r["estimate"]
    for r in rows:
        del r["_times"], r["_tokens"]


def summary_goals(rows):
    """The issue's goals, read off the rows."""
    out = {}
    masked = [r for r in rows if r["variant"] == "masked"]
    if masked:
        worst = min(masked, key=lambda r: r["speedup"]["median"])
        out["masked_worst_slowdown_vs_full"] = {
            "part": worst["part"], "beam": worst["beam"], "batch_size": worst["batch_size"],
            "slowdown": 1 - worst["speedup"]["median"],
            "within_2_percent": all(r["speedup"]["median"] >= 0.98 for r in masked)}
    pairs = {}
    for r in rows:
        pairs.setdefault((r["part"], r["beam"], r["batch_size"]), {})[r["variant"]] = r
    cmp = [(k, v["removed"]["tokens_per_s"], v["masked"]["tokens_per_s"])
           for k, v in pairs.items() if "removed" in v and "masked" in v]
    if cmp:
        out["removed_faster_than_masked"] = {
            "all": all(a > b for _, a, b in cmp),
            "slower_cases": [{"part": k[0], "beam": k[1], "batch_size": k[2]}
                             for k, a, b in cmp if a <= b]}
    enc = [v["removed"] for k, v in pairs.items() if k[0] == "encoder" and "removed" in v]
    if enc:
        top = max(enc, key=lambda r: r["batch_size"])
        out["encoder_largest_batch"] = {"batch_size": top["batch_size"],
                                        "speedup": top["speedup"]["median"],
                                        "estimate": top["estimate"],
                                        "measured_over_estimate": top["measured_over_estimate"]}
    removed = [r for r in rows if r["variant"] == "removed"]
    if removed:
        def where(r):
            return {"part": r["part"], "beam": r["beam"], "batch_size": r["batch_size"],
                    "measured_over_estimate": r["measured_over_estimate"]}
        out["removed_measured_over_estimate"] = {
            "lowest": where(min(removed, key=lambda r: r["measured_over_estimate"])),
            "highest": where(max(removed, key=lambda r: r["measured_over_estimate"]))}
    return out


def bench(task, subset, model, heads, gen_cfg, s: BenchSettings, use_cuda=False) -> dict:
    """The results object of bench.json, all but its "meta" (the caller's provenance):
    the heads, settings, per-variant sizes, goals, rows, dimensions."""
    import torch

    from ..heads import shape_total
    from ..models.head_model import model_head_shape, removed_heads

    shape = model_head_shape(model)
    present = sum(sum(v) for v in shape.values()) - len(removed_heads(model))
    result = run_bench(task, subset, model, heads, gen_cfg, s, use_cuda)
    rows = result["rows"]
    return {
        "heads": {"spec": heads.to_spec(), "count": len(heads), "present_before": present,
                  "share": len(heads) / present, "of_original": shape_total(shape)},
        "settings": {"subset": subset, "batch_sizes": s.batch_sizes,
                     "fixed_length": s.fixed_length,
                     "beams": s.beams, "bench_sentences": s.bench_sentences,
                     "repeats": s.repeats, "warmup": s.warmup, "parts": s.parts,
                     "cost_throughput": s.cost_throughput,
                     "threads": torch.get_num_threads(),
                     "device": torch.cuda.get_device_name() if use_cuda else "cpu",
                     "dtype": str(next(model.parameters()).dtype),
                     "peak_memory": "torch.cuda.max_memory_allocated per variant" if use_cuda
                     else "n/a on CPU (no per-variant peak is reported by the platform)"},
        "variants": result["variants"],
        "goals": summary_goals(rows),
        "rows": rows,
        "model_dims": result["model_dims"],
        "cost_model": {"description": COST_MODEL, "throughput": result["throughput"],
                       "touches": dict(speed.TOUCHES), "term_units": dict(speed.TERM_UNITS)},
    }


CSV_HEADER = ["part", "beam", "batch_size", "variant", "median_s", "q1_s", "q3_s", "min_s",
              "max_s", "repeats", "sentences_per_s", "tokens_per_s", "speedup",
              "speedup_min", "speedup_max", "speedup_vs_masked", "estimate",
              "measured_over_estimate", "estimated_s", "gemm_macs", "attn_macs", "bytes",
              "peak_memory_bytes", "masked_equals_removed"]


def csv_rows(rows):
    for r in rows:
        s = r["seconds"]
        yield [r["part"], r["beam"] or "", r["batch_size"], r["variant"],
               f"{s['median']:.6f}", f"{s['q1']:.6f}", f"{s['q3']:.6f}", f"{s['min']:.6f}",
               f"{s['max']:.6f}", s["n"], f"{r['sentences_per_s']:.3f}",
               f"{r['tokens_per_s']:.3f}", f"{r['speedup']['median']:.4f}",
               f"{r['speedup']['min']:.4f}", f"{r['speedup']['max']:.4f}",
               f"{r['speedup_vs_masked']['median']:.4f}" if "speedup_vs_masked" in r else "",
               f"{r['estimate']:.4f}", f"{r['measured_over_estimate']:.4f}",
               f"{r['estimated_seconds']:.6f}", r["cost"]["gemm_macs"], r["cost"]["attn_macs"],
               r["cost"]["bytes"],
               "n/a" if r["peak_memory_bytes"] is None else r["peak_memory_bytes"],
               "" if "masked_equals_removed" not in r else r["masked_equals_removed"]]
