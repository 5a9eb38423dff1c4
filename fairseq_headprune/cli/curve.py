"""``fairseq-headprune curve DATA --path CKPT --results-dir DIR``

Masks the least important heads at 0%, 10%, ..., 100% (of the heads of --kinds that are
neither removed nor masked by --mask-heads; counts rounded by ``heads.share_count``) and
evaluates --gen-subset at each step: tokenized BLEU (the paper's), detokenized sacreBLEU
and teacher-forced loss (bits per token). Writes curve.json (resumable: an interrupted
run re-run with the same command continues), curve.csv, curve.png, and for each point a
spec file specs/curve_<kinds>_<pct>.json that reproduces it with
``fairseq-generate ... --mask-heads @specs/curve_all_040.json`` (the run's own
--mask-heads included).

``--head-shards N --head-shard-id I`` (0-based; default id: $SLURM_ARRAY_TASK_ID): this
process evaluates only points I, I+N, I+2N, ... of each curve (0% first), in its own
--results-dir (curve.json and spec files; no CSV or plot);
``fairseq-headprune merge-shards OUT_DIR DIR...`` then writes what one run would have.
The order must be fixed and the same in every shard: --order importance needs
--importance FILE, and --reestimate (each point depends on the ones before) is refused.
"""

import os

from ..analysis.curve import FORMAT, fractions, pruning_curve
from ..analysis.ranking import ORDERS, fisher_scores, order_by_scores, order_heads
from ..analysis.scoring import METRIC_LABELS
from ..errors import HeadPruneError
from ..heads import KINDS, HeadSpec, parse_kinds
from ..models.head_model import model_head_shape, removed_heads
from ..results import load_resumable, write_csv, write_json
from .common import (add_eval_args, eval_selection, logger, nonnegative_int, open_session, out_path,
                     parse_args, seed_list)
from .importance import add_importance_args, estimate, scores_of, write_importance
from .merge_shards import add_shard_args, shard_of

def add_args(group):
    group.add_argument("--kinds", default=None,
                       help="attention kinds to prune, e.g. E or A,D (default: every kind "
                            "the model has); percentages are of these kinds' heads")
    group.add_argument("--per-kind", action="store_true",
                       help="draw one curve per kind and the all-kinds curve in one run and "
                            "one plot")
    group.add_argument("--order", choices=ORDERS, default="importance",
                       help="importance (I_h, per-layer normalised), fisher (Σ (dL/dxi)², raw), "
                            "weight-norm (fairseq's own rule: Σ|q,k,v rows|), ablation (an "
                            "ablation file's deltas) or random (--order-seed)")
    group.add_argument("--importance", metavar="FILE", help="importance.json to rank by "
                       "(default: estimate it now with the --importance-* options)")
    group.add_argument("--ablation", metavar="FILE", help="ablation.json for --order ablation")
    group.add_argument("--order-seed", type=seed_list, default=[1], metavar="SEEDS",
                       help="seed(s) for --order random: one (default 1) or a comma list "
                            "(e.g. 1,2,3,4,5), one curve per seed, drawn as their mean and a "
                            "min-max band")
    group.add_argument("--reestimate", action="store_true",
                       help="re-estimate importance on the masked model before each step")
    group.add_argument("--min-heads-per-layer", type=nonnegative_int, default=0, metavar="N",
                       help="never mask the last N heads of any attention module")
    group.add_argument("--prune-step", type=float, default=0.1, help="step (default 0.1)")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh even if DIR/curve.json holds other settings")
    add_eval_args(group)
    add_importance_args(group)
    add_shard_args(group, "points of the curve")


def ranking(session, args, kinds, exclude, scores, seed=None):
    """Heads of ``kinds`` from least to most important, and the importance or Fisher
    scores estimated by this run (kept for the next curve), if any."""
    if args.order in ("importance", "fisher") and not args.importance:
        if scores is None:
            obj = estimate(session, args)
            write_importance(args, obj)
            scores = (scores_of(obj) if args.order == "importance"
                      else fisher_scores(obj, "the importance estimate"))
        return order_by_scores(scores, kinds, exclude), scores
    return order_heads(session.model, args.order, args.importance, seed, kinds, args.ablation,
                       exclude), scores


def settings(args, session, curve_names, selection):
    return {"order": args.order, "importance": args.importance, "ablation": args.ablation,
            # one seed stays a number, as in files written before seed lists existed
            "order_seed": args.order_seed[0] if len(args.order_seed) == 1 else args.order_seed,
            "reestimate": args.reestimate,
            "min_heads_per_layer": args.min_heads_per_layer, "step": args.prune_step,
            "curves": curve_names, "path": os.path.abspath(args.path),
            "mask_heads": session.fixed_mask.to_spec(), "eval_data": selection.describe(),
            "beam": args.beam, "lenpen": args.lenpen,
            "importance_subset": args.importance_subset,
            "importance_max_sentences": args.importance_max_sentences,
            "importance_seed": args.importance_seed,
            "importance_granularity": args.importance_granularity}


def main(argv):
    args = parse_args("curve", argv, add_args)
    steps = fractions(args.prune_step)
    if args.order == "ablation" and not args.ablation:
        raise HeadPruneError("--order ablation needs --ablation FILE (from fairseq-headprune ablate)")
    parse_kinds(args.kinds)  # a bad --kinds before the model loads
    shard = shard_of(args)
    if shard:
        steps = shard_steps(args, shard, steps)
    if args.reestimate and args.order != "importance":
        raise HeadPruneError(f"--reestimate re-ranks by importance at every point; it cannot be "
                             f"combined with --order {args.order} (allowed: --order importance)")
    if len(args.order_seed) > 1 and args.order != "random":
        raise HeadPruneError(f"--order-seed {','.join(map(str, args.order_seed))}: several seeds "
                             f"are for --order random, not --order {args.order}")
    session = open_session(args)
    shape = model_head_shape(session.model)
    kinds = session.kinds(args.kinds)
    kind_sets = [(k,) for k in kinds] + [kinds] if args.per_kind and len(kinds) > 1 else [kinds]
    names = ["".join(ks) if ks != KINDS else "all" for ks in kind_sets]
    seeds = args.order_seed
    if len(seeds) > 1:  # one curve per kind set and seed: "all@seed3"
        kind_sets = [ks for ks in kind_sets for _ in seeds]
        names = [f"{n}@seed{s}" for n in names for s in seeds]
    seed_of = dict(zip(names, seeds * (len(names) // len(seeds))))
    selection = eval_selection(session, args, args.gen_subset)
    out_json = out_path(args, "curve.json")
    evaluate = session.evaluator(selection)
    metrics = evaluate.metrics  # the first is the curve's: bleu, or accuracy for a classifier
    want = settings(args, session, names, selection)
    if metrics[0] != "bleu":  # (translation curves' files stay as before, resumable)
        want["metric"], want["metrics"] = metrics[0], list(metrics)
    if shard:
        want["shard"] = shard.settings()
    old = load_resumable(out_json, FORMAT, want, args.overwrite, "curve file")
    curves = old["curves"] if old else {}
    if old:
        logger.info(f"resuming {out_json}: {sum(len(c) for c in curves.values())} points done")
    exclude = removed_heads(session.model) | session.fixed_mask
    meta = session.meta(loss_unit=evaluate.loss_unit)

    def save():
        write_json(out_json, {"format": FORMAT, "settings": want, "curves": curves, "meta": meta})

    def reestimate(masked):
        return scores_of(estimate(session, args, mask=masked))

    scores = None
    for ks, name in zip(kind_sets, names):
        order, scores = ranking(session, args, ks, exclude, scores, seed_of[name])

        def on_point(point, name=name):
            curves[name].append(point)
            pct = int(round(point["fraction"] * 100))
            # the run's own --mask-heads included: --mask-heads @file alone reproduces it
            heads = HeadSpec.parse(point["spec"]).resolve(shape) | session.fixed_mask
            os.makedirs(out_path(args, "specs"), exist_ok=True)
            write_json(out_path(args, f"specs/curve_{name}_{pct:03d}.json"), heads.to_json_obj(
                {"curve": name, "fraction": point["fraction"], metrics[0]: point[metrics[0]]}))
            save()
            logger.info(f"[{name}] {point['masked']} heads masked ({pct}%): "
                        + ", ".join(f"{METRIC_LABELS.get(m, m)} {point[m]:.2f}" for m in metrics)
                        + f", loss {point['loss']:.3f} {evaluate.loss_unit.split(' (')[0]}")

        done = curves.setdefault(name, [])
        pruning_curve(shape, ks, steps, evaluate, order=order,
                      reestimate=reestimate if args.reestimate else None,
                      min_heads_per_layer=args.min_heads_per_layer, exclude=exclude,
                      done=list(done), on_point=on_point)
    save()
    if shard:  # the table and plot are drawn once, from the merged file
        logger.info(f"shard {shard.index} of {shard.count} done: {out_json}; merge the shards "
                    f"with fairseq-headprune merge-shards OUT_DIR SHARD_DIR...")
        return
    write_outputs(args.results_dir, curves, metrics)


def shard_steps(args, shard, steps):
    """This shard's points; refused where the points depend on each other or the
    shards could rank the heads differently."""
    if args.reestimate:
        raise HeadPruneError(
            "--reestimate cannot be split with --head-shards: each point ranks the heads by "
            "importance re-estimated with the points before it masked (allowed: a fixed "
            "--order without --reestimate, or one run)")
    if args.order in ("importance", "fisher") and not args.importance:
        raise HeadPruneError(
            f"--head-shards with --order {args.order} needs --importance FILE, so that every "
            "shard ranks the heads alike (allowed: estimate it once with fairseq-headprune "
            "importance, or --order weight-norm|ablation|random)")
    return shard.items(steps, f"points of the curve (--prune-step {args.prune_step:g})")


def write_outputs(results_dir, curves, metrics=("bleu", "sacrebleu")):
    """curve.csv and curve.png from the points (also for merged shards)."""
    from ..report import redraw

    rows = [(name, p["fraction"], p["target"], p["masked"], *(p[m] for m in metrics),
             p["loss"], p["spec"]) for name, pts in curves.items() for p in pts]
    loss = "loss_bits_per_token" if "bleu" in metrics else "loss_bits_per_example"
    write_csv(os.path.join(results_dir, "curve.csv"), [
        "curve", "fraction", "target", "masked", *metrics, loss, "spec"], rows)
    redraw.curve(results_dir)
    logger.info(f"wrote {os.path.join(results_dir, 'curve.json')}, curve.csv, curve.png")
