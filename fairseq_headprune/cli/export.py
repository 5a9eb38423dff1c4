"""``fairseq-headprune export DATA --path CKPT (--prune-heads SPEC | --prune-ratio R
--importance FILE | --budget heads:N%|params:N% [--order ...]) [--kinds E,A,D]
[--min-heads-per-layer N] [--repair none|bias|lstsq|layerwise|refit] --out NEW.pt``; ``fairseq-headprune
prune`` is the same with a --budget required (heads:N%, params:N% or latency:Sx, the
last at --beam and --latency-batch-size, analysis/latency.py).

Writes NEW.pt with the heads physically removed (any number per layer, zero included)
and recorded in its config, so that ``fairseq-generate DATA --user-dir
fairseq_headprune --task translation_headprune --path NEW.pt`` needs no spec and
translates exactly as ``--mask-heads SPEC`` on the original. Next to it (or in
--results-dir): NEW.heads.json (the removed heads, usable as ``--mask-heads
@NEW.heads.json``) and NEW.export.json (parameter counts before/after, per kind, the
exact shares removed, file sizes, provenance). ``--torchscript OUT.pt`` also writes
the pruned model as TorchScript (``torch.jit.save``; stock fairseq attention modules,
see modules/deploy.py), checked against the eager model unless --no-verify.
"""

import argparse
import os
import sys

from ..errors import HeadPruneError


def add_selection_args(group):
    """--prune-ratio/--importance/--kinds/--min-heads-per-layer (export and bench)."""
    from .common import fraction_closed, nonnegative_int

    group.add_argument("--prune-ratio", type=fraction_closed, default=None, metavar="R",
                       help="remove round(R x heads of --kinds) least important heads "
                            "(needs --importance); R in [0, 1]")
    group.add_argument("--importance", default=None, metavar="FILE",
                       help="importance file written by fairseq-headprune importance")
    group.add_argument("--kinds", default=None, metavar="KINDS",
                       help="attention kinds --prune-ratio chooses from (E, A, D, all; "
                            "default: every kind the model has)")
    group.add_argument("--min-heads-per-layer", type=nonnegative_int, default=0, metavar="N",
                       help="with --prune-ratio: keep at least N heads in every module")


def add_args(group):
    from ..analysis.ranking import ORDERS

    group.add_argument("--out", required=True, metavar="NEW.pt",
                       help="the checkpoint to write (its folder must exist)")
    add_selection_args(group)
    group.add_argument("--budget", default=None, metavar="UNIT:N%",
                       help="remove heads until the budget is met: heads:N%% (that share of the "
                            "heads of --kinds), params:N%% (at least that share of all "
                            "parameters) or latency:Sx (a decoding speed-up of S at --beam and "
                            "--latency-batch-size, predicted by a table measured on this "
                            "machine), in --order")
    add_latency_args(group)
    group.add_argument("--latency-table", default=None, metavar="FILE",
                       help="latency budgets: reuse this table if it exists (same model shape, "
                            "batch, beam, length), else measure it and save it there "
                            "(default: measured, saved next to --out as NEW.latency.json)")
    group.add_argument("--order", choices=ORDERS, default="importance",
                       help="ranking for --budget: importance or fisher (from --importance FILE), "
                            "weight-norm (fairseq's own rule), ablation (--ablation FILE), "
                            "random (--order-seed)")
    group.add_argument("--ablation", default=None, metavar="FILE",
                       help="ablation.json of fairseq-headprune ablate, for --order ablation")
    group.add_argument("--order-seed", type=int, default=1, help="seed of --order random")
    group.add_argument("--torchscript", default=None, metavar="OUT.pt",
                       help="also write the pruned model scripted by torch.jit.script "
                            "(torch.jit.save; load with torch.jit.load)")
    group.add_argument("--no-verify", action="store_true",
                       help="skip reloading NEW.pt (and OUT.pt) to check them")
    add_repair_args(group)


def add_latency_args(group):
    from .common import positive_int

    group.add_argument("--latency-batch-size", type=positive_int, default=None, metavar="B",
                       help="sentences per batch of the latency table and of the check (default: "
                            "--batch-size if given, else 16); BLEU is decoded in fairseq's own "
                            "batches (--max-tokens/--batch-size), as the curves are")
    group.add_argument("--latency-length", type=positive_int, default=None, metavar="L",
                       help="tokens per hypothesis of the latency table (default: the mean "
                            "reference length of the timed sentences of --gen-subset)")
    group.add_argument("--latency-repeats", type=positive_int, default=3, metavar="N",
                       help="timed rounds of the latency table (and of the check; default 3)")


def latency_batch_size(args) -> int:
    return args.latency_batch_size or args.batch_size or 16


def add_repair_args(group):
    from ..analysis.repair import REPAIRS
    from .common import sample_size

    group.add_argument("--repair", choices=REPAIRS, default="none",
                       help="repair without gradient steps: 'bias' folds each removed head's mean "
                            "output on the calibration sentences into out_proj's bias; 'lstsq' also "
                            "rescales each kept head (damped, bounded least squares) so that each "
                            "module reconstructs its full output; 'layerwise' rescales the kept heads "
                            "and shifts the bias of every attention module from the first pruned "
                            "one on, in order, so that the pruned model's residual stream after "
                            "each reconstructs the full model's from its own inputs; 'refit' does the "
                            "same walk re-solving out_proj's kept columns and bias by ridge "
                            "regression (default none)")
    group.add_argument("--calibration-subset", default="train", metavar="SPLIT",
                       help="split the calibration sentences come from (default train)")
    group.add_argument("--calibration-sentences", type=sample_size, default=2000, metavar="N",
                       help="a seeded random sample of N sentences (default 2000)")
    group.add_argument("--calibration-seed", type=int, default=1, help="seed of that sample")


def _preparse(argv):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out")
    p.add_argument("--results-dir")
    known, _ = p.parse_known_args(argv)
    return known


def check_args(args):
    """Every check that needs no model: fail before any work."""
    out = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(out)):
        raise HeadPruneError(f"--out {args.out!r}: folder {os.path.dirname(out)!r} does not exist")
    if os.path.isdir(out):
        raise HeadPruneError(f"--out {args.out!r} is a folder (allowed: a checkpoint file name)")
    if os.path.abspath(args.path) == out:
        raise HeadPruneError(f"--out {args.out!r} is the input checkpoint (allowed: a new file)")
    if args.mask_heads:
        raise HeadPruneError("--mask-heads is not saved in a checkpoint; export removes "
                             "heads (allowed: --prune-heads SPEC or --prune-ratio R)")
    if args.torchscript is not None:
        check_torchscript_path(args)
    check_selection(args)
    if not os.path.isfile(args.path):
        raise HeadPruneError(f"checkpoint {args.path!r} does not exist")


def check_torchscript_path(args):
    ts = os.path.abspath(args.torchscript)
    if not os.path.isdir(os.path.dirname(ts)):
        raise HeadPruneError(f"--torchscript {args.torchscript!r}: folder "
                             f"{os.path.dirname(ts)!r} does not exist")
    if os.path.isdir(ts):
        raise HeadPruneError(f"--torchscript {args.torchscript!r} is a folder "
                             f"(allowed: a file name)")
    results = os.path.abspath(args.results_dir or os.path.dirname(os.path.abspath(args.out)))
    taken = {os.path.abspath(args.path): "the input checkpoint",
             os.path.abspath(args.out): "--out",
             os.path.join(results, stem(args.out) + ".heads.json"): "the heads file",
             os.path.join(results, stem(args.out) + ".export.json"): "the export report"}
    if ts in taken:
        raise HeadPruneError(f"--torchscript {args.torchscript!r} is {taken[ts]} "
                             f"(allowed: a new file)")


def check_selection(args):
    """--prune-heads / --prune-ratio --importance (/ --budget, export): one rule for
    export and bench."""
    from .common import require_heads

    require_heads(args.prune_heads, "--prune-heads")
    budget = getattr(args, "budget", None)
    if budget is not None:
        from ..analysis.budget import parse_budget

        unit, _ = parse_budget(budget)
        if unit != "latency" and args.latency_table is not None:
            raise HeadPruneError(f"--latency-table is for latency budgets, not --budget {budget}")
        if args.latency_table is not None and os.path.isdir(args.latency_table):
            raise HeadPruneError(f"--latency-table {args.latency_table!r} is a folder "
                                 f"(allowed: a file name)")
        if args.prune_heads is not None or args.prune_ratio is not None:
            raise HeadPruneError("give exactly one of --prune-heads SPEC, --prune-ratio R and --budget")
        if args.order == "ablation":
            if not args.ablation:
                raise HeadPruneError("--budget with --order ablation needs --ablation FILE "
                                     "(written by fairseq-headprune ablate)")
            if not os.path.isfile(args.ablation):
                raise HeadPruneError(f"ablation file {args.ablation!r} does not exist")
        if args.order in ("importance", "fisher"):
            if not args.importance:
                raise HeadPruneError(f"--budget with --order {args.order} needs --importance FILE "
                                     f"(written by fairseq-headprune importance)")
            if not os.path.isfile(args.importance):
                raise HeadPruneError(f"importance file {args.importance!r} does not exist")
        return
    if (args.prune_heads is not None) == (args.prune_ratio is not None):
        raise HeadPruneError("give exactly one of --prune-heads SPEC and --prune-ratio R"
                             + (" (or --budget)" if hasattr(args, "budget") else ""))
    if args.prune_ratio is not None:
        if not args.importance:
            raise HeadPruneError("--prune-ratio needs --importance FILE "
                                 "(written by fairseq-headprune importance)")
        if not os.path.isfile(args.importance):
            raise HeadPruneError(f"importance file {args.importance!r} does not exist")
    elif args.importance:
        raise HeadPruneError("--importance is only used with --prune-ratio")


def repair_heads(session, args, heads) -> dict:
    """--repair of ``heads`` on the calibration sample (analysis/repair.py), before they
    are removed; what was done, for export.json."""
    import time

    from ..analysis.repair import Calibration, repair

    t0 = time.time()
    selection = session.select(session.data_spec(args.calibration_subset, args.calibration_sentences,
                                                  seed=args.calibration_seed))
    calibration = Calibration(session.model, session.samples(selection), [args.repair], session.use_cuda)
    done = repair(session.model, heads, args.repair, calibration)
    return {"method": args.repair, "calibration": selection.describe(), **done,
            "seconds": round(time.time() - t0, 3)}


def latency_budget(session, args, order, speedup, kinds):
    """--budget latency:Sx: the table (read from --latency-table, or measured and saved),
    the heads it predicts to reach S, and the speed-up measured with them removed."""
    from ..analysis.data import load_subset
    from ..analysis.latency import (LatencySettings, check_table, heads_for_latency,
                                    measure_table, module_counts, verify)
    from ..results import read_json, write_json

    module_counts(session.model, kinds)  # refuse an uneven model before any timing
    subset = session.cfg.dataset.gen_subset
    load_subset(session.task, subset, session.saved_cfg.task)
    settings = LatencySettings(batch_size=latency_batch_size(args), beam=args.beam,
                               length=args.latency_length, repeats=args.latency_repeats,
                               subset=subset)
    path = args.latency_table or os.path.join(args.results_dir, stem(args.out) + ".latency.json")
    gen = session.cfg.generation
    if args.latency_table and os.path.isfile(path):
        table = read_json(path, "latency table")
        check_table(table, session.model, settings, kinds, path)
        reused = True
    else:
        table = measure_table(session.task, session.model, gen, settings, kinds, session.use_cuda)
        write_json(path, table)
        reused = False
    heads, met = heads_for_latency(session.model, order, speedup, kinds, table,
                                   args.min_heads_per_layer)
    check = verify(session.task, session.model, heads, gen, table, session.use_cuda)
    met.update({"table": os.path.abspath(path), "table_reused": reused,
                "settings": table["settings"], "measured_speedup": check["measured_speedup"],
                "measured_full_seconds": check["full_seconds"],
                "measured_pruned_seconds": check["pruned_seconds"],
                "measured_over_predicted": check["measured_speedup"]["median"]
                / met["predicted_speedup"]})
    return heads, met


def stem(path):
    base = os.path.basename(path)
    return base[:-3] if base.endswith(".pt") else base


def main(argv, command: str = "export"):
    import torch

    from ..analysis.export import export_pruned, select_heads, write_torchscript
    from ..heads import HeadSpec, parse_kinds
    from ..results import clean_temp_files, write_json
    from .common import open_session, parse_args

    pre = _preparse(argv)
    if pre.out and not pre.results_dir:
        argv = list(argv) + ["--results-dir", os.path.dirname(os.path.abspath(pre.out))]
    args = parse_args(command, argv, add_args)
    if command == "prune" and not args.budget:
        raise HeadPruneError("prune needs --budget heads:N% or params:N% (export takes "
                             "--prune-heads or --prune-ratio)")
    check_args(args)
    parse_kinds(args.kinds)  # a bad --kinds before the model loads
    spec = HeadSpec.parse(args.prune_heads) if args.prune_heads else None
    # The task must not remove --prune-heads itself: we count parameters before.
    args.prune_heads = None
    args.cpu = True  # export is CPU work; keeps the checkpoint's tensors on CPU

    session = open_session(args)
    kinds = session.kinds(args.kinds)
    clean_temp_files(os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out))
    if args.budget:
        from ..analysis.budget import heads_for_budget, parse_budget
        from ..analysis.ranking import order_heads

        unit, fraction = parse_budget(args.budget)
        order = order_heads(session.model, args.order, args.importance, args.order_seed, kinds,
                            args.ablation)
        if unit == "latency":
            heads, met = latency_budget(session, args, order, fraction, kinds)
        else:
            heads, met = heads_for_budget(session.model, order, unit, fraction, kinds,
                                          args.min_heads_per_layer)
        how = {"budget": args.budget, "order": args.order, "importance": args.importance
               and os.path.abspath(args.importance), "ablation": args.ablation
               and os.path.abspath(args.ablation), "order_seed": args.order_seed,
               "kinds": list(kinds), "min_heads_per_layer": args.min_heads_per_layer, "met": met}
    else:
        heads, how = select_heads(session.model, spec, args.importance, args.prune_ratio, kinds,
                                  args.min_heads_per_layer)
    out, source = os.path.abspath(args.out), os.path.abspath(args.path)
    repair = None
    if args.repair != "none":
        repair = repair_heads(session, args, heads)
    removed, facts = export_pruned(session.model, session.task, session.saved_cfg.model,
                                   args.path, out, heads, verify=not args.no_verify)
    if args.torchscript is not None:
        ts = os.path.abspath(args.torchscript)
        clean_temp_files(os.path.dirname(ts), os.path.basename(ts))
        try:
            facts["torchscript"] = write_torchscript(session.model, ts,
                                                     verify=not args.no_verify)
        except BaseException:
            os.unlink(out)  # all or nothing: no checkpoint without its TorchScript file
            raise

    heads_path = os.path.join(args.results_dir, stem(out) + ".heads.json")
    write_json(heads_path, removed.to_json_obj(meta={"checkpoint": out, "source": source}))
    if repair is not None:
        facts["repair"] = repair
    report = {"out": out, "source": source, "selection": how, **facts,
              "heads_file": heads_path,
              "meta": session.meta(subcommand=command, torch=torch.__version__)}
    json_path = os.path.join(args.results_dir, stem(out) + ".export.json")
    write_json(json_path, report)

    p, size = facts["parameters"], facts["bytes"]
    lines = [
        f"wrote {out} ({size['out_file']:,} bytes; source {size['source_file']:,} bytes)",
        f"removed heads: {len(removed)} of {p['heads']['all']['before']} "
        f"({p['heads']['all']['share_removed']['exact']}): {removed.to_spec() or '(none)'}",
        f"parameters: {p['total']['before']:,} -> {p['total']['after']:,} "
        f"(-{p['total']['removed']:,}, {100 * p['total']['share_removed']['fraction']:.4f}% "
        f"= {p['total']['share_removed']['exact']})",
    ]
    for kind in [k for k in ("E", "A", "D") if k in p["attention"]]:
        a, h = p["attention"][kind], p["heads"][kind]
        lines.append(f"  {kind}: heads {h['before']} -> {h['after']}, attention parameters "
                     f"{a['before']:,} -> {a['after']:,} "
                     f"({100 * a['share_removed']['fraction']:.2f}% removed)")
    met = how.get("met") or {}
    if met.get("unit") == "latency":
        m, st = met["measured_speedup"], met["settings"]
        lines.append(f"latency (beam {st['beam']}, batch {st['batch_size']}, {st['length']} tokens "
                     f"per hypothesis): predicted {met['predicted_speedup']:.3f}x, measured "
                     f"{m['median']:.3f}x (rounds {m['min']:.3f}-{m['max']:.3f}x); table "
                     f"{met['table']}{' (reused)' if met['table_reused'] else ''}")
    if repair is not None:
        what = {"bias": "removed heads' mean output folded into out_proj's bias",
                "lstsq": "removed heads' mean output folded into out_proj's bias and kept heads rescaled",
                "layerwise": "kept heads rescaled and out_proj's bias shifted, module by module",
                "refit": "out_proj's kept columns and bias re-solved, module by module"}
        lines.append(f"repair ({args.repair}): {what[args.repair]} in "
                     f"{len(repair['bias_change_norm'])} modules, from "
                     f"{repair['calibration']['sentences']} {args.calibration_subset} sentences "
                     f"({repair['seconds']:.1f} s)")
    if "torchscript" in facts:
        t = facts["torchscript"]
        check = (f"max abs diff {t['verified']['max_abs_diff']:.2g} against the eager model"
                 if t["verified"] else "not verified")
        lines.append(f"wrote {t['path']} (TorchScript, {t['bytes']:,} bytes; {check})")
    lines.append(f"results: {json_path}, {heads_path}")
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
