"""``fairseq-headprune importance DATA --path CKPT --results-dir DIR``

Writes importance.json ({"E": [[...]], "A": ..., "D": ..., "meta": ...}: one list per
layer, one float per head, layer 1 and head 1 first; null = head removed), importance.csv
and importance_{E,A,D}.png heatmaps.

(fairseq's generation parser already owns ``--max-sentences`` as an alias of
``--batch-size``, hence ``--importance-max-sentences``.)"""

import random

from ..analysis import importance as imp
from ..analysis.decoding import limit_sentences
from ..errors import HeadPruneError
from ..results import write_csv, write_json
from .common import Context, logger, parse_args


def add_importance_args(group, default_subset="train"):
    group.add_argument("--importance-subset", default=default_subset, metavar="SPLIT",
                       help=f"split to estimate importance on (default: {default_subset}, as the paper)")
    group.add_argument("--importance-max-sentences", type=int, default=None, metavar="N",
                       help="use at most N sentences (batches drawn in a seeded random order)")
    group.add_argument("--importance-max-batches", type=int, default=None, metavar="N",
                       help="use at most N batches")
    group.add_argument("--importance-seed", type=int, default=1,
                       help="seed of the batch order when capping the data")
    group.add_argument("--importance-granularity", choices=imp.GRANULARITIES, default="sentence",
                       help="where |.| is taken: per sentence (the paper's E_x, default), per "
                            "query token (official MT code) or per batch (bertology)")
    group.add_argument("--no-importance-normalize", action="store_true",
                       help="do not divide each layer's scores by their l2 norm")
    group.add_argument("--importance-eps", type=float, default=1e-12,
                       help="epsilon added to the l2 norm (default 1e-12)")
    group.add_argument("--importance-loss", choices=("nll", "criterion"), default="nll",
                       help="nll: summed token NLL of the reference (default); criterion: the "
                            "training criterion given by --criterion")
    group.add_argument("--importance-loss-scale", type=float, default=None,
                       help="loss scale for --fp16 (default 128; 1 in fp32); gradients are "
                            "unscaled, non-finite batches skipped and counted")


def add_args(group):
    add_importance_args(group)


def importance_batches(ctx: Context, args):
    batches = list(ctx.batches(args.importance_subset))
    if args.importance_max_sentences or args.importance_max_batches:
        random.Random(args.importance_seed).shuffle(batches)
        batches = limit_sentences(batches, args.importance_max_sentences)
        if args.importance_max_batches:
            batches = batches[: args.importance_max_batches]
    if not batches:
        raise HeadPruneError(f"subset {args.importance_subset!r} gave no batches")
    return batches


def loss_function(ctx: Context, args):
    if args.importance_loss == "nll":
        return None
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    criterion = ctx.task.build_criterion(convert_namespace_to_omegaconf(args).criterion)
    return lambda model, sample: criterion(model, sample)[0]


def estimate(ctx: Context, args) -> "imp.Importance":
    """Run the importance pass with the command's options on ctx's model."""
    from fairseq.logging import progress_bar

    batches = importance_batches(ctx, args)
    scale = args.importance_loss_scale or (128.0 if args.fp16 else 1.0)
    bar = lambda it: progress_bar.progress_bar(it, log_format="tqdm", prefix="importance",
                                               default_log_format="tqdm")
    acc = imp.compute_importance(ctx.model, batches, loss_function(ctx, args), scale,
                                 ctx.use_cuda, progress=bar)
    if acc.counts[2]:
        logger.warning(f"skipped {int(acc.counts[2])} batches with non-finite gradients")
    if acc.counts[1] == acc.counts[2]:
        raise HeadPruneError("every batch had non-finite gradients; try a smaller --importance-loss-scale")
    return acc.result(imp.removed_map(ctx.model))


def importance_json(ctx, args, result) -> dict:
    meta = ctx.meta(importance_subset=args.importance_subset,
                    importance_loss=args.importance_loss,
                    importance_max_sentences=args.importance_max_sentences,
                    importance_max_batches=args.importance_max_batches)
    return result.to_json(args.importance_granularity, not args.no_importance_normalize,
                          args.importance_eps, meta)


def write_importance(ctx, obj) -> None:
    from ..report.plots import heatmap

    write_json(ctx.path("importance.json"), obj)
    rows = [(k, l, h, v) for k in ("E", "A", "D") for l, row in enumerate(obj.get(k) or [], 1)
            for h, v in enumerate(row, 1)]
    write_csv(ctx.path("importance.csv"), ["kind", "layer", "head", "importance"], rows)
    for kind in ("E", "A", "D"):
        if obj.get(kind):
            heatmap(obj[kind], ctx.path(f"importance_{kind}.png"),
                    f"head importance, {kind} ({obj['granularity']}"
                    f"{', l2-normalised per layer' if obj['normalize'] else ''})", "importance")


def main(argv):
    args = parse_args("importance", argv, add_args)
    ctx = Context(args)
    result = estimate(ctx, args)
    obj = importance_json(ctx, args, result)
    write_importance(ctx, obj)
    logger.info(f"importance of {sum(len(r) for k in 'EAD' for r in obj.get(k) or [])} heads "
                f"from {result.nsentences} sentences -> {ctx.path('importance.json')}")
