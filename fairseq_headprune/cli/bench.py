"""``fairseq-headprune bench DATA --path CKPT (--prune-heads SPEC | --prune-ratio R
--importance FILE) --results-dir DIR [--batch-sizes 1,4,16,64] [--beams 1,5]``

Times, in one process and side by side, three variants of the same model: ``full``
(as loaded), ``masked`` (the heads masked: same work, plus the mask) and ``removed``
(the heads physically removed). For every batch size: an encoder-only forward (the
analogue of the paper's BERT measurement), and for every beam: fairseq's beam search
(``task.inference_step``, what fairseq-generate runs) over the same sentences.
Warm-up rounds, then repeats in which the variants take turns (rotating order);
median, quartiles, min/max. On GPU every clock read is preceded by a synchronise.
Beside each measured speed-up: the speed-up a multiply-add count of the removed heads
allows (the bound, analysis/speed.py) and measured/bound. Peak memory per variant where
the platform reports it (CUDA); on CPU "n/a". Writes bench.json, bench.csv, bench.png.
"""

import copy
import logging
import os
import sys

from ..errors import HeadPruneError

logger = logging.getLogger("fairseq_headprune.bench")

VARIANTS = ("full", "masked", "removed")
PARTS = ("encoder", "decode")


def _int_list(text, what):
    try:
        vals = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise HeadPruneError(f"{what} {text!r} is not a comma list of positive integers "
                             f"(e.g. 1,4,16,64)")
    return vals


def add_args(group):
    from .export import add_selection_args

    add_selection_args(group)
    group.add_argument("--batch-sizes", default="1,4,16,64", metavar="LIST",
                       help="sentences per batch (default 1,4,16,64)")
    group.add_argument("--beams", default="1,5", metavar="LIST", help="beam sizes (default 1,5)")
    group.add_argument("--bench-sentences", type=int, default=128, metavar="N",
                       help="sentences of --gen-subset to time (at least the largest batch)")
    group.add_argument("--repeats", type=int, default=5, metavar="N", help="timed rounds")
    group.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed rounds")
    group.add_argument("--parts", default="encoder,decode", metavar="LIST",
                       help="what to time: encoder, decode or both")
    group.add_argument("--variants", default="full,masked,removed", metavar="LIST",
                       help="variants to time (full is always included)")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch CPU threads (default: torch's choice); 1 gives steadier "
                            "timings on a shared machine")
    group.add_argument("--fixed-length", type=int, default=None, metavar="L",
                       help="decode exactly L tokens (+EOS) per hypothesis (sets --min-len L "
                            "--max-len-a 0 --max-len-b L) so that all variants do the same "
                            "number of steps; default: free decoding, as fairseq-generate")


def check_args(args):
    if bool(args.prune_heads) == (args.prune_ratio is not None):
        raise HeadPruneError("give exactly one of --prune-heads SPEC and --prune-ratio R")
    if args.prune_ratio is not None:
        if not (0.0 <= args.prune_ratio <= 1.0):
            raise HeadPruneError(f"--prune-ratio {args.prune_ratio:g} is outside [0, 1]")
        if not args.importance:
            raise HeadPruneError("--prune-ratio needs --importance FILE")
        if not os.path.isfile(args.importance):
            raise HeadPruneError(f"importance file {args.importance!r} does not exist")
    if args.mask_heads:
        raise HeadPruneError("bench masks the heads it removes itself; drop --mask-heads")
    args.batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    args.beams = _int_list(args.beams, "--beams")
    for name in ("repeats", "bench_sentences"):
        if getattr(args, name) < 1:
            raise HeadPruneError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.fixed_length is not None and args.fixed_length < 1:
        raise HeadPruneError(f"--fixed-length {args.fixed_length} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise HeadPruneError(f"--threads {args.threads} must be >= 1")
    if args.warmup < 0:
        raise HeadPruneError(f"--warmup {args.warmup} must be >= 0")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise HeadPruneError(f"--parts {args.parts!r}: allowed encoder, decode")
    args.parts = parts
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise HeadPruneError(f"--variants {args.variants!r}: allowed {', '.join(VARIANTS)}")
    args.variants = ["full"] + [v for v in VARIANTS[1:] if v in variants]


def fresh_copy(model):
    """A deep copy whose attention modules get their own incremental-state ids."""
    new = copy.deepcopy(model)
    for m in new.modules():
        if hasattr(m, "init_incremental_state"):
            m.init_incremental_state()
    return new


def make_batches(task, subset, n, batch_size, use_cuda):
    """The first n sentences of ``subset``, sorted by length (as fairseq batches),
    cut into batches of ``batch_size`` sentences."""
    from fairseq import utils

    ds = task.dataset(subset)
    n = min(n, len(ds))
    ids = sorted(range(n), key=lambda i: (ds.src_sizes[i], ds.tgt_sizes[i]
                                          if ds.tgt_sizes is not None else 0, i))
    batches = []
    for start in range(0, n, batch_size):
        b = ds.collater([ds[i] for i in ids[start:start + batch_size]])
        batches.append(utils.move_to_cuda(b) if use_cuda else b)
    return batches


def run_bench(ctx, heads, args):
    """All measurements; returns the JSON-ready result."""
    import torch

    from ..analysis import speed
    from ..models.head_model import parameter_counts, remove_heads, set_head_mask

    task, subset = ctx.task, ctx.cfg.dataset.gen_subset
    ctx.load_subset(subset)
    use_cuda = ctx.use_cuda
    sync = torch.cuda.synchronize if use_cuda else None
    models = {"full": ctx.model}
    if "masked" in args.variants:
        models["masked"] = fresh_copy(ctx.model)
        set_head_mask(models["masked"], heads)
    if "removed" in args.variants:
        models["removed"] = fresh_copy(ctx.model)
        remove_heads(models["removed"], heads)
    for m in models.values():
        m.eval()
    dims = {name: speed.model_dims(m) for name, m in models.items()}
    info = {}
    for name, m in models.items():
        counts = parameter_counts(m)
        info[name] = {"parameters": counts["total"], "heads": counts["heads"],
                      "parameter_bytes": sum(p.numel() * p.element_size() for p in m.parameters())}

    def peak_memory(fn):
        if not use_cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    rows = []
    for bs in args.batch_sizes:
        batches = make_batches(task, subset, args.bench_sentences, bs, use_cuda)
        nsent = sum(b["nsentences"] for b in batches)
        src_tokens = int(sum(b["net_input"]["src_lengths"].sum() for b in batches))
        if "encoder" in args.parts:
            def enc(model):
                def f():
                    with torch.no_grad():
                        for b in batches:
                            net = b["net_input"]
                            model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
                return f
            fns = {name: enc(m) for name, m in models.items()}
            logger.info(f"encoder, batch {bs}: {len(batches)} batches x {args.repeats} repeats")
            times = speed.time_interleaved(fns, args.warmup, args.repeats, sync)
            # padded work, as executed
            macs = {name: sum(b["net_input"]["src_tokens"].size(0) *
                              speed.encoder_macs(dims[name], b["net_input"]["src_tokens"].size(1))
                              for b in batches) for name in models}
            for name in models:
                rows.append(_row("encoder", None, bs, name, times, macs, nsent, src_tokens,
                                 peak_memory(fns[name]), "source", macs["full"]))
        if "decode" in args.parts:
            for beam in args.beams:
                gen_cfg = copy.deepcopy(ctx.cfg.generation)
                gen_cfg.beam = beam
                if args.fixed_length:
                    gen_cfg.min_len = args.fixed_length
                    gen_cfg.max_len_a, gen_cfg.max_len_b = 0, args.fixed_length
                outputs = {}

                def dec(name, model):
                    gen = task.build_generator([model], gen_cfg)

                    def f():
                        out = []
                        with torch.no_grad():
                            for b in batches:
                                hypos = task.inference_step(gen, [model], b)
                                out += [(int(i), h[0]["tokens"].tolist())
                                        for i, h in zip(b["id"].tolist(), hypos)]
                        outputs[name] = sorted(out)
                    return f
                fns = {name: dec(name, m) for name, m in models.items()}
                logger.info(f"decoding, beam {beam}, batch {bs}: {len(batches)} batches x "
                            f"{args.repeats} repeats")
                times = speed.time_interleaved(fns, args.warmup, args.repeats, sync)
                src_len = {int(i): int(l) for b in batches
                           for i, l in zip(b["id"].tolist(), b["net_input"]["src_lengths"].tolist())}
                macs, ntok, full_macs = {}, {}, {}
                for name in models:
                    outs = outputs[name]
                    ntok[name] = sum(len(t) for _, t in outs)
                    macs[name] = sum(speed.decode_macs(dims[name], src_len[i], len(t), beam)
                                     for i, t in outs)
                    # what the full model would compute for this variant's outputs
                    full_macs[name] = sum(speed.decode_macs(dims["full"], src_len[i], len(t),
                                                            beam) for i, t in outs)
                for name in models:
                    row = _row("decode", beam, bs, name, times, macs, nsent, ntok, None, "target",
                               full_macs[name])
                    row["peak_memory_bytes"] = peak_memory(fns[name])
                    if name != "full" and "masked" in outputs and "removed" in outputs:
                        row["masked_equals_removed"] = outputs["masked"] == outputs["removed"]
                    rows.append(row)
    _add_speedups(rows)
    return {"variants": info, "rows": rows,
            "model_dims": {n: d.to_json() for n, d in dims.items()}}


def _row(part, beam, bs, name, times, macs, nsent, ntokens, peak, token_kind, full_macs):
    """``full_macs``: what the full model computes for the same outputs (the bound's
    numerator; masked variants thus have bound 1 exactly)."""
    from ..analysis import speed

    t = times[name]
    med = speed.summarize(t)
    ntok = ntokens[name] if isinstance(ntokens, dict) else ntokens
    return {
        "part": part, "beam": beam, "batch_size": bs, "variant": name,
        "sentences": nsent, f"{token_kind}_tokens": ntok,
        "seconds": med, "times": t,
        "sentences_per_s": nsent / med["median"],
        "tokens_per_s": ntok / med["median"],
        "macs": macs[name], "macs_per_token": macs[name] / max(ntok, 1),
        "bound": speed.bound(full_macs, macs[name]),
        "peak_memory_bytes": peak,
        "_times": times,
        "_tokens": ntokens if isinstance(ntokens, dict) else {n: ntokens for n in times},
    }


def _add_speedups(rows):
    """Speed-ups of the same part/beam/batch, as token-rate ratios (equal to time
    ratios when the variants produce equally many tokens; the encoder's tokens are the
    same source tokens for all), from repeats paired by round: ``speedup`` over full,
    and for removed also ``speedup_vs_masked`` (identical hypotheses, so identical
    work apart from the removed heads). ``measured_over_bound`` = speedup / bound."""
    from ..analysis import speed

    def ratio(r, base):
        times, tokens = r["_times"], r["_tokens"]
        scale = tokens[r["variant"]] / max(tokens[base], 1)
        return {k: v * scale for k, v in
                speed.paired_speedup(times[base], times[r["variant"]]).items()}

    for r in rows:
        r["speedup"] = ratio(r, "full")
        if r["variant"] == "removed" and "masked" in r["_times"]:
            r["speedup_vs_masked"] = ratio(r, "masked")
        r["measured_over_bound"] = r["speedup"]["median"] / r["bound"]
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
                                        "bound": top["bound"],
                                        "measured_over_bound": top["measured_over_bound"],
                                        "at_least_90_percent": top["measured_over_bound"] >= 0.9}
    return out


CSV_HEADER = ["part", "beam", "batch_size", "variant", "median_s", "q1_s", "q3_s", "min_s",
              "max_s", "repeats", "sentences_per_s", "tokens_per_s", "speedup",
              "speedup_min", "speedup_max", "speedup_vs_masked", "flop_bound",
              "measured_over_bound",
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
               f"{r['bound']:.4f}", f"{r['measured_over_bound']:.4f}",
               "n/a" if r["peak_memory_bytes"] is None else r["peak_memory_bytes"],
               "" if "masked_equals_removed" not in r else r["masked_equals_removed"]]


def plot(rows, path):
    from ..report.plots import lines

    series = {}
    for r in rows:
        if r["variant"] == "full":
            continue
        label = "encoder" if r["part"] == "encoder" else f"decode beam {r['beam']}"
        series.setdefault(f"{label}: {r['variant']}", []).append(
            (r["batch_size"], r["speedup"]["median"]))
        if r["variant"] == "removed":
            series.setdefault(f"{label}: FLOP bound", []).append((r["batch_size"], r["bound"]))
    for pts in series.values():
        pts.sort()
    return lines(series, path, "speed-up over the full model", "batch size (sentences)",
                 "speed-up (x)", logx=True, hline=1.0)


def format_table(rows):
    head = (f"{'part':8s} {'beam':>4s} {'batch':>5s} {'variant':8s} {'median s':>9s} "
            f"{'[min, max]':>19s} {'sent/s':>8s} {'tok/s':>9s} {'speed-up':>8s} "
            f"{'vs mask':>7s} {'bound':>6s} {'meas/bnd':>8s} {'peak mem':>9s}")
    lines = [head]
    for r in rows:
        s = r["seconds"]
        mem = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}MiB"
        lines.append(
            f"{r['part']:8s} {r['beam'] or '-':>4} {r['batch_size']:>5d} {r['variant']:8s} "
            f"{s['median']:9.4f} [{s['min']:8.4f},{s['max']:8.4f}] "
            f"{r['sentences_per_s']:8.1f} {r['tokens_per_s']:9.1f} "
            f"{r['speedup']['median']:7.3f}x "
            + (f"{r['speedup_vs_masked']['median']:6.3f}x " if "speedup_vs_masked" in r
               else f"{'':7s} ")
            + f"{r['bound']:5.3f}x {r['measured_over_bound']:8.3f} "
            f"{mem:>9s}")
    return "\n".join(lines)


def main(argv):
    import torch

    from ..analysis.export import select_least_important
    from ..analysis.ranking import load_importance
    from ..heads import HeadSpec, parse_kinds, shape_total
    from ..models.head_model import model_head_shape, removed_heads
    from ..results import write_csv, write_json
    from .common import Context, parse_args

    args = parse_args("bench", argv, add_args)
    check_args(args)
    kinds = parse_kinds(args.kinds)
    spec = HeadSpec.parse(args.prune_heads) if args.prune_heads else None
    args.prune_heads = None  # the task must load the model as it is
    ctx = Context(args)
    shape = model_head_shape(ctx.model)
    if spec is not None:
        heads = spec.resolve(shape)
    else:
        heads = select_least_important(ctx.model, load_importance(args.importance, shape),
                                       args.prune_ratio, kinds, args.min_heads_per_layer)
    heads = heads - removed_heads(ctx.model)
    if not heads:
        raise HeadPruneError("no heads to remove: the spec/ratio selects none "
                             "(or only heads the checkpoint has already removed)")
    if args.bench_sentences < max(args.batch_sizes):
        logger.warning(f"--bench-sentences {args.bench_sentences} is below the largest batch "
                       f"size {max(args.batch_sizes)}: that batch will be smaller")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_bench(ctx, heads, args)
    rows = result["rows"]
    present = sum(sum(v) for v in shape.values()) - len(removed_heads(ctx.model))
    obj = {
        "heads": {"spec": heads.to_spec(), "count": len(heads), "present_before": present,
                  "share": len(heads) / present, "of_original": shape_total(shape)},
        "settings": {"subset": ctx.cfg.dataset.gen_subset, "batch_sizes": args.batch_sizes,
                     "fixed_length": args.fixed_length,
                     "beams": args.beams, "bench_sentences": args.bench_sentences,
                     "repeats": args.repeats, "warmup": args.warmup, "parts": args.parts,
                     "threads": torch.get_num_threads(),
                     "device": torch.cuda.get_device_name() if ctx.use_cuda else "cpu",
                     "dtype": str(next(ctx.model.parameters()).dtype),
                     "peak_memory": "torch.cuda.max_memory_allocated per variant" if ctx.use_cuda
                     else "n/a on CPU (no per-variant peak is reported by the platform)"},
        "variants": result["variants"],
        "goals": summary_goals(rows),
        "rows": rows,
        "model_dims": result["model_dims"],
        "flop_count": "multiply-adds of projections, attention scores/context, FFN and "
                      "(decoding) output projection + softmax; see analysis/speed.py",
        "meta": ctx.meta(subcommand="bench"),
    }
    write_json(ctx.path("bench.json"), obj)
    write_csv(ctx.path("bench.csv"), CSV_HEADER, csv_rows(rows))
    plot(rows, ctx.path("bench.png"))
    print(f"heads removed/masked: {len(heads)} of {present} ({heads.to_spec()})")
    print(format_table(rows))
    g = obj["goals"]
    if "masked_worst_slowdown_vs_full" in g:
        m = g["masked_worst_slowdown_vs_full"]
        print(f"masked vs full, worst case: {100 * m['slowdown']:+.1f}% slower "
              f"({m['part']}, beam {m['beam']}, batch {m['batch_size']})")
    if "encoder_largest_batch" in g:
        e = g["encoder_largest_batch"]
        print(f"encoder, batch {e['batch_size']}: speed-up {e['speedup']:.3f}x, bound "
              f"{e['bound']:.3f}x, measured/bound {e['measured_over_bound']:.3f}")
    print(f"results: {ctx.path('bench.json')}, bench.csv, bench.png")
    sys.stdout.flush()
    return 0
