"""``fairseq-headprune importance DATA --path CKPT --results-dir DIR``

Writes importance.json ({"E": [[...]], "A": ..., "D": ..., "meta": ...}: one list per
layer, one float per head, layer 1 and head 1 first; null = head removed), importance.csv
and importance_{E,A,D}.png heatmaps.

(fairseq's generation parser already owns ``--max-sentences`` as an alias of
``--batch-size``, hence ``--importance-max-sentences``.)"""

from ..analysis import importance as imp
from ..heads import KINDS, HeadSet
from ..results import write_csv, write_json
from .common import logger, open_session, out_path, parse_args, positive_float, sample_size


def add_importance_args(group, default_subset="train"):
    group.add_argument("--importance-subset", default=default_subset, metavar="SPLIT",
                       help=f"split to estimate importance on (default: {default_subset}, as the paper)")
    group.add_argument("--importance-max-sentences", type=sample_size, default=None, metavar="N",
                       help="use a seeded random sample of N sentences (default: all)")
    group.add_argument("--importance-max-batches", type=sample_size, default=None, metavar="N",
                       help="use N of the batches, drawn in a seeded random order")
    group.add_argument("--importance-seed", type=int, default=1,
                       help="seed of that sample and order (default 1)")
    group.add_argument("--importance-granularity", choices=imp.GRANULARITIES, default="sentence",
                       help="where |.| is taken: per sentence (the paper's E_x, default), per "
                            "query token (official MT code) or per batch (bertology); fisher: "
                            "squares per sentence (empirical Fisher, Kwon et al. 2022)")
    group.add_argument("--no-importance-normalize", action="store_true",
                       help="do not divide each layer's scores by their l2 norm")
    group.add_argument("--importance-eps", type=positive_float, default=1e-12,
                       help="epsilon added to the l2 norm (default 1e-12)")
    group.add_argument("--importance-loss", choices=("nll", "criterion"), default="nll",
                       help="nll: summed token NLL of the reference (default); criterion: the "
                            "training criterion given by --criterion")
    group.add_argument("--importance-loss-scale", type=positive_float, default=None,
                       help="loss scale (default 128 with --fp16; 1 in float32 and with --bf16, "
                            "which has float32's range); gradients are unscaled, non-finite "
                            "batches skipped and counted")


def add_args(group):
    add_importance_args(group)


def importance_selection(session, args):
    return session.select(session.data_spec(
        args.importance_subset, args.importance_max_sentences, args.importance_max_batches,
        args.importance_seed))


def loss_function(session, args):
    if args.importance_loss == "nll":
        return None
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    criterion = session.task.build_criterion(convert_namespace_to_omegaconf(args).criterion)
    return lambda model, sample: criterion(model, sample)[0]


def estimate(session, args, selection=None, mask: HeadSet = HeadSet()) -> dict:
    """importance.json's content for the model with ``mask`` (and the fixed mask) on."""
    from fairseq.logging import progress_bar

    selection = selection or importance_selection(session, args)
    scale = args.importance_loss_scale or (128.0 if args.fp16 else 1.0)
    bar = lambda it: progress_bar.progress_bar(it, log_format="tqdm", prefix="importance",
                                               default_log_format="tqdm")
    result = session.importance(selection, loss_function(session, args), scale, mask, bar)
    meta = session.meta(importance_data=selection.describe(),
                        importance_loss=args.importance_loss,
                        masked_during_estimate=(mask | session.fixed_mask).to_spec())
    return result.to_json(args.importance_granularity, not args.no_importance_normalize,
                          args.importance_eps, meta)


def scores_of(obj: dict) -> dict:
    return {k: obj[k] for k in KINDS if k in obj}


def write_importance(args, obj) -> None:
    from ..report import redraw

    write_json(out_path(args, "importance.json"), obj)
    rows = [(k, l, h, v) for k in KINDS for l, row in enumerate(obj.get(k) or [], 1)
            for h, v in enumerate(row, 1)]
    write_csv(out_path(args, "importance.csv"), ["kind", "layer", "head", "importance"], rows)
    redraw.importance(args.results_dir)


def main(argv):
    args = parse_args("importance", argv, add_args)
    session = open_session(args)
    obj = estimate(session, args)
    write_importance(args, obj)
    logger.info(f"importance of {sum(len(r) for k in KINDS for r in obj.get(k) or [])} heads "
                f"from {obj['counts']['sentences']} sentences -> {out_path(args, 'importance.json')}")
