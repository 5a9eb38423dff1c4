"""``fairseq-headprune curve DATA --path CKPT --results-dir DIR``

Masks the least important heads at 0%, 10%, ..., 100% and decodes the evaluation
subset (--gen-subset) at each step: tokenized BLEU (the paper's), detokenized
sacreBLEU and teacher-forced loss. Writes curve.json (resumable: an interrupted run
re-run with the same command continues), curve.csv, curve.png, and for each point a
spec file specs/curve_<kinds>_<pct>.json that reproduces it with
``fairseq-generate ... --mask-heads @specs/curve_all_040.json``.
"""

import os

from ..analysis.curve import ablation_order, fractions, importance_order, pruning_curve
from ..analysis.decoding import sentence_losses
from ..analysis.ranking import load_importance, random_order
from ..analysis.scoring import score
from ..errors import HeadPruneError
from ..heads import KINDS, HeadSpec, parse_kinds
from ..models.head_model import model_head_shape, removed_heads, set_head_mask
from ..results import read_json, write_csv, write_json
from .common import Context, logger, parse_args
from .importance import add_importance_args, estimate, importance_json, write_importance


def add_eval_args(group):
    group.add_argument("--max-eval-sentences", type=int, default=None, metavar="N",
                       help="score only the first batches of --gen-subset that hold N "
                            "sentences (whole batches, as fairseq-generate makes them)")


def add_args(group):
    group.add_argument("--kinds", default="E,A,D",
                       help="attention kinds to prune, e.g. E or A,D (default: all); "
                            "percentages are of these kinds' heads")
    group.add_argument("--per-kind", action="store_true",
                       help="draw the E, A, D and all-kinds curves in one run and one plot")
    group.add_argument("--order", choices=("importance", "ablation", "random"), default="importance")
    group.add_argument("--importance", metavar="FILE", help="importance.json to rank by "
                       "(default: estimate it now with the --importance-* options)")
    group.add_argument("--ablation", metavar="FILE", help="ablation.json for --order ablation")
    group.add_argument("--order-seed", type=int, default=1, help="seed for --order random")
    group.add_argument("--reestimate", action="store_true",
                       help="re-estimate importance on the masked model before each step")
    group.add_argument("--min-heads-per-layer", type=int, default=0, metavar="N",
                       help="never mask the last N heads of any attention module")
    group.add_argument("--prune-step", type=float, default=0.1, help="step (default 0.1)")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh even if DIR/curve.json holds other settings")
    add_eval_args(group)
    add_importance_args(group)


def make_evaluator(ctx: Context, subset: str, max_sentences=None, label=""):
    """HeadSet -> {'bleu', 'sacrebleu', 'sacrebleu_signature', 'loss'} on ``subset``."""
    decoder = ctx.decoder(subset, max_sentences)
    ntokens = sum(int(b["ntokens"]) for b in decoder.batches)

    cache = {}  # the same mask (e.g. the 0% point of every curve) is decoded once

    def evaluate(masked):
        if masked in cache:
            return dict(cache[masked])
        set_head_mask(ctx.model, masked or None)
        try:
            tr = decoder.translate(desc=f"{label}{len(masked)} heads masked")
            losses = sentence_losses(ctx.model, decoder.batches, ctx.use_cuda)
        finally:
            set_head_mask(ctx.model, None)
        bleu = score("bleu", tr.hyps, tr.refs, ctx.target_lang)
        sacre = score("sacrebleu", tr.hyps, tr.refs, ctx.target_lang)
        cache[masked] = {"bleu": bleu["score"], "sacrebleu": sacre["score"],
                         "loss": float(losses.sum()) / max(ntokens, 1),
                         "bleu_signature": bleu["signature"],
                         "sacrebleu_signature": sacre["signature"]}
        return dict(cache[masked])

    return evaluate, decoder


def ranking_for(ctx, args, kinds, exclude):
    shape = model_head_shape(ctx.model)
    if args.order == "random":
        return random_order(shape, kinds, args.order_seed, exclude), None
    if args.order == "ablation":
        if not args.ablation:
            raise HeadPruneError("--order ablation needs --ablation FILE (from fairseq-headprune ablate)")
        return ablation_order(read_json(args.ablation, "ablation file"), kinds, exclude), None
    if args.importance:
        scores = load_importance(args.importance, shape)
    else:
        obj = importance_json(ctx, args, estimate(ctx, args))
        write_importance(ctx, obj)
        scores = {k: obj[k] for k in KINDS if k in obj}
    return importance_order(scores, kinds, exclude), scores


def settings(args, curve_names):
    return {"order": args.order, "importance": args.importance, "ablation": args.ablation,
            "order_seed": args.order_seed, "reestimate": args.reestimate,
            "min_heads_per_layer": args.min_heads_per_layer, "step": args.prune_step,
            "curves": curve_names, "subset": args.gen_subset, "path": os.path.abspath(args.path),
            "max_eval_sentences": args.max_eval_sentences, "beam": args.beam, "lenpen": args.lenpen,
            "importance_subset": args.importance_subset,
            "importance_granularity": args.importance_granularity}


def main(argv):
    args = parse_args("curve", argv, add_args)
    if args.min_heads_per_layer < 0:
        raise HeadPruneError(f"--min-heads-per-layer {args.min_heads_per_layer} is negative")
    steps = fractions(args.prune_step)
    kinds = parse_kinds(args.kinds)
    kind_sets = [(k,) for k in kinds] + [kinds] if args.per_kind else [kinds]
    names = ["".join(ks) if ks != KINDS else "all" for ks in kind_sets]
    ctx = Context(args)
    shape = model_head_shape(ctx.model)
    for ks in kind_sets:
        missing = [k for k in ks if not shape.get(k)]
        if missing:
            raise HeadPruneError(f"--kinds {','.join(missing)}: this model has no such attention")
    out_json = ctx.path("curve.json")
    want = settings(args, names)
    curves = {}
    if os.path.exists(out_json) and not args.overwrite:
        old = read_json(out_json, "curve file")
        if old.get("settings") != want:
            raise HeadPruneError(f"{out_json} was made with other settings; use another "
                                 f"--results-dir or --overwrite")
        curves = old.get("curves", {})
        logger.info(f"resuming {out_json}: {sum(len(c) for c in curves.values())} points done")
    os.makedirs(ctx.path("specs"), exist_ok=True)
    exclude = removed_heads(ctx.model)
    evaluate, _ = make_evaluator(ctx, args.gen_subset, args.max_eval_sentences)
    meta = ctx.meta()

    def reestimate(masked):
        set_head_mask(ctx.model, masked or None)
        try:
            obj = importance_json(ctx, args, estimate(ctx, args))
        finally:
            set_head_mask(ctx.model, None)
        return {k: obj[k] for k in KINDS if k in obj}

    scores = None
    for ks, name in zip(kind_sets, names):
        if args.order == "importance" and scores is not None:
            order = importance_order(scores, ks, exclude)  # estimated once for all curves
        else:
            order, scores = ranking_for(ctx, args, ks, exclude)

        def on_point(point, name=name):
            curves[name].append(point)
            pct = int(round(point["fraction"] * 100))
            heads = HeadSpec.parse(point["spec"]).resolve(shape)
            write_json(ctx.path(f"specs/curve_{name}_{pct:03d}.json"), heads.to_json_obj(
                {"curve": name, "fraction": point["fraction"], "bleu": point["bleu"]}))
            write_json(out_json, {"settings": want, "curves": curves, "meta": meta})
            logger.info(f"[{name}] {point['masked']} heads masked ({pct}%): BLEU {point['bleu']:.2f}, "
                        f"sacreBLEU {point['sacrebleu']:.2f}, loss {point['loss']:.3f}")

        done = curves.setdefault(name, [])
        pruning_curve(shape, ks, steps, evaluate, order=order,
                      reestimate=reestimate if args.reestimate else None,
                      min_heads_per_layer=args.min_heads_per_layer, exclude=exclude,
                      done=list(done), on_point=on_point)
    write_outputs(ctx, curves, want, meta)


def write_outputs(ctx, curves, settings_, meta):
    from ..report.plots import lines

    write_json(ctx.path("curve.json"), {"settings": settings_, "curves": curves, "meta": meta})
    rows = [(name, p["fraction"], p["target"], p["masked"], p["bleu"], p["sacrebleu"], p["loss"], p["spec"])
            for name, pts in curves.items() for p in pts]
    write_csv(ctx.path("curve.csv"), ["curve", "fraction", "target", "masked", "bleu", "sacrebleu",
                                      "loss", "spec"], rows)
    series = {name: [(100 * p["share_masked"], p["bleu"]) for p in pts] for name, pts in curves.items()}
    lines(series, ctx.path("curve.png"), f"pruning by {settings_['order']} ({settings_['subset']})",
          "% of heads masked", "BLEU (tokenized)")
    logger.info(f"wrote {ctx.path('curve.json')}, curve.csv, curve.png")
