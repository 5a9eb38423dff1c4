"""``fairseq-headprune export DATA --path CKPT (--prune-heads SPEC | --prune-ratio R
--importance FILE [--kinds E,A,D] [--min-heads-per-layer N]) --out NEW.pt``

Writes NEW.pt with the heads physically removed (any number per layer, zero included)
and recorded in its config, so that ``fairseq-generate DATA --user-dir
fairseq_headprune --task translation_headprune --path NEW.pt`` needs no spec and
translates exactly as ``--mask-heads SPEC`` on the original. Next to it (or in
--results-dir): NEW.heads.json (the removed heads, usable as ``--mask-heads
@NEW.heads.json``) and NEW.export.json (parameter counts before/after, per kind, the
exact shares removed, file sizes, provenance).
"""

import argparse
import logging
import os
import sys

from ..errors import HeadPruneError

logger = logging.getLogger("fairseq_headprune.export")


def add_selection_args(group):
    """--prune-ratio/--importance/--kinds/--min-heads-per-layer (export and bench)."""
    group.add_argument("--prune-ratio", type=float, default=None, metavar="R",
                       help="remove round(R x heads of --kinds) least important heads "
                            "(needs --importance); R in [0, 1]")
    group.add_argument("--importance", default=None, metavar="FILE",
                       help="importance file written by fairseq-headprune importance")
    group.add_argument("--kinds", default="E,A,D", metavar="KINDS",
                       help="attention kinds --prune-ratio chooses from (E, A, D, all)")
    group.add_argument("--min-heads-per-layer", type=int, default=0, metavar="N",
                       help="with --prune-ratio: keep at least N heads in every module")


def add_args(group):
    group.add_argument("--out", required=True, metavar="NEW.pt",
                       help="the checkpoint to write (its folder must exist)")
    add_selection_args(group)
    group.add_argument("--no-verify", action="store_true",
                       help="skip reloading NEW.pt to check its shapes")


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
    if bool(args.prune_heads) == (args.prune_ratio is not None):
        raise HeadPruneError("give exactly one of --prune-heads SPEC and --prune-ratio R")
    if args.prune_ratio is not None:
        r = args.prune_ratio
        if not (0.0 <= r <= 1.0):  # also catches nan
            raise HeadPruneError(f"--prune-ratio {r:g} is outside [0, 1]")
        if not args.importance:
            raise HeadPruneError("--prune-ratio needs --importance FILE "
                                 "(written by fairseq-headprune importance)")
        if not os.path.isfile(args.importance):
            raise HeadPruneError(f"importance file {args.importance!r} does not exist")
    elif args.importance:
        raise HeadPruneError("--importance is only used with --prune-ratio")
    if args.min_heads_per_layer < 0:
        raise HeadPruneError(f"--min-heads-per-layer {args.min_heads_per_layer} is negative "
                             f"(allowed: 0 or more)")
    if not os.path.isfile(args.path):
        raise HeadPruneError(f"checkpoint {args.path!r} does not exist")


def stem(path):
    base = os.path.basename(path)
    return base[:-3] if base.endswith(".pt") else base


def main(argv):
    import torch

    from ..heads import HeadSpec, parse_kinds
    from ..models.head_model import (
        model_head_shape,
        parameter_counts,
        remove_heads,
        removed_heads,
    )
    from ..results import write_json
    from ..analysis.export import (
        parameter_summary,
        pruned_checkpoint_state,
        select_least_important,
        tensor_bytes,
        write_checkpoint,
    )
    from ..analysis.ranking import load_importance
    from .common import Context, parse_args

    pre = _preparse(argv)
    if pre.out and not pre.results_dir:
        argv = list(argv) + ["--results-dir", os.path.dirname(os.path.abspath(pre.out))]
    args = parse_args("export", argv, add_args)
    check_args(args)
    kinds = parse_kinds(args.kinds)
    spec = HeadSpec.parse(args.prune_heads) if args.prune_heads else None
    # The task must not remove --prune-heads itself: we count parameters before.
    args.prune_heads = None
    args.cpu = True  # export is CPU work; keeps the checkpoint's tensors on CPU
    results_dir = args.results_dir

    ctx = Context(args)
    model = ctx.model
    shape = model_head_shape(model)
    already = removed_heads(model)
    before = parameter_counts(model)
    before_bytes = tensor_bytes(model.state_dict())

    if spec is not None:
        heads = spec.resolve(shape)
        how = {"spec": spec.text}
    else:
        scores = load_importance(args.importance, shape)
        heads = select_least_important(model, scores, args.prune_ratio, kinds,
                                       args.min_heads_per_layer)
        how = {"prune_ratio": args.prune_ratio, "importance": os.path.abspath(args.importance),
               "kinds": list(kinds), "min_heads_per_layer": args.min_heads_per_layer}
    new = heads - already
    removed = remove_heads(model, heads, model_cfg=ctx.saved_cfg.model)
    after = parameter_counts(model)
    logger.info(f"removing {len(new)} heads ({len(removed)} removed in all): "
                f"{removed.to_spec() or '(none)'}")

    state = pruned_checkpoint_state(args.path, model)
    out = os.path.abspath(args.out)
    size = write_checkpoint(state, out)
    del state

    verified = None
    if not args.no_verify:
        from fairseq import checkpoint_utils

        models, _ = checkpoint_utils.load_model_ensemble([out], task=ctx.task)
        check = models[0]
        verified = (removed_heads(check) == removed
                    and parameter_counts(check)["total"] == after["total"])
        if not verified:
            os.unlink(out)
            raise HeadPruneError(f"{out!r} did not reload with the removed heads; deleted it")

    heads_path = os.path.join(results_dir, stem(out) + ".heads.json")
    write_json(heads_path, removed.to_json_obj(meta={"checkpoint": out,
                                                     "source": os.path.abspath(args.path)}))
    summary = parameter_summary(before, after)
    report = {
        "out": out,
        "source": os.path.abspath(args.path),
        "selection": how,
        "removed_now": {"spec": new.to_spec(), "count": len(new)},
        "removed_in_all": {"spec": removed.to_spec(), "count": len(removed),
                           "per_kind": {k: removed.count(k) for k in shape}},
        "removed_before": {"spec": already.to_spec(), "count": len(already)},
        "parameters": summary,
        "bytes": {"source_file": os.path.getsize(args.path), "out_file": size,
                  "model_tensors_before": before_bytes,
                  "model_tensors_after": tensor_bytes(model.state_dict())},
        "optimizer_state": "dropped (it has the original shapes); fine-tune with "
                           "--finetune-from-model, or --restore-file starts a fresh optimizer",
        "verified_reload": verified,
        "heads_file": heads_path,
        "meta": ctx.meta(subcommand="export", torch=torch.__version__),
    }
    json_path = os.path.join(results_dir, stem(out) + ".export.json")
    write_json(json_path, report)

    p = summary
    lines = [
        f"wrote {out} ({size:,} bytes; source {os.path.getsize(args.path):,} bytes)",
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
    lines.append(f"results: {json_path}, {heads_path}")
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
