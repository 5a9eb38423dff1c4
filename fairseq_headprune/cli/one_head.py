"""``fairseq-headprune one-head DATA --path CKPT --results-dir DIR`` (paper §3.3, Table 2)

For each attention kind and layer: keep only one head in that layer (its other heads
masked, the rest of the model intact), choose the head that scores best on
--select-subset (default: the evaluation subset, as the paper's Table 2; the paper's
appendix chose on another set), and report that configuration's change on the
evaluation subset (--gen-subset) with sacrebleu's paired bootstrap. Writes
one_head.json (resumable), one_head.csv and one_head.md.
"""

import os

from ..analysis.scoring import METRICS, paired_bootstrap, score
from ..errors import HeadPruneError
from ..heads import KIND_NAMES, HeadSet, parse_kinds
from ..models.head_model import attention_modules, set_head_mask
from ..results import read_json, write_csv, write_json, write_text
from .common import Context, logger, parse_args
from .curve import add_eval_args


def add_args(group):
    group.add_argument("--kinds", default="E,A,D", help="attention kinds (default: all)")
    group.add_argument("--select-subset", default=None, metavar="SPLIT",
                       help="split on which the best head is chosen (default: --gen-subset)")
    group.add_argument("--metric", choices=METRICS, default="bleu",
                       help="bleu: tokenized BLEU (default, the paper's); sacrebleu; chrf")
    group.add_argument("--bootstrap-samples", type=int, default=1000)
    group.add_argument("--bootstrap-seed", type=int, default=12345)
    group.add_argument("--alpha", type=float, default=0.01, help="significance level (default 0.01)")
    group.add_argument("--overwrite", action="store_true")
    add_eval_args(group)


class CachedTranslator:
    """masked HeadSet -> Translations of one subset, each mask decoded once."""

    def __init__(self, ctx: Context, subset: str, max_sentences=None):
        self.ctx, self.subset = ctx, subset
        self.decoder = ctx.decoder(subset, max_sentences)
        self.cache = {}

    def __call__(self, masked: HeadSet):
        if masked not in self.cache:
            set_head_mask(self.ctx.model, masked or None)
            try:
                self.cache[masked] = self.decoder.translate(
                    desc=f"{self.subset} {masked.to_spec() or 'full'}"[:60])
            finally:
                set_head_mask(self.ctx.model, None)
        return self.cache[masked]


def main(argv):
    args = parse_args("one-head", argv, add_args)
    kinds = parse_kinds(args.kinds)
    select = args.select_subset or args.gen_subset
    ctx = Context(args)
    lang = ctx.target_lang
    evaluate = CachedTranslator(ctx, args.gen_subset, args.max_eval_sentences)
    chooser = evaluate if select == args.gen_subset else CachedTranslator(ctx, select, args.max_eval_sentences)
    settings = {"path": os.path.abspath(args.path), "subset": args.gen_subset, "select_subset": select,
                "metric": args.metric, "kinds": list(kinds), "beam": args.beam, "lenpen": args.lenpen,
                "bootstrap_samples": args.bootstrap_samples, "bootstrap_seed": args.bootstrap_seed,
                "alpha": args.alpha, "max_eval_sentences": args.max_eval_sentences}
    out = ctx.path("one_head.json")
    rows = []
    if os.path.exists(out) and not args.overwrite:
        old = read_json(out, "one-head results")
        if old.get("settings") != settings:
            raise HeadPruneError(f"{out} was made with other settings; use another --results-dir or --overwrite")
        rows = old["rows"]
    done = {(r["kind"], r["layer"]) for r in rows}
    full = evaluate(HeadSet())
    baseline = score(args.metric, full.hyps, full.refs, lang)
    meta = ctx.meta()
    modules = attention_modules(ctx.model)
    for (kind, layer), module in modules.items():
        if kind not in kinds or (kind, layer) in done:
            continue
        heads = [h + 1 for h in module.kept_heads]
        if len(heads) < 2:
            logger.info(f"{kind}:{layer} has {len(heads)} head(s): nothing to choose")
            continue
        per_head = {}
        for keep in heads:
            masked = HeadSet((kind, layer, h) for h in heads if h != keep)
            tr = chooser(masked)
            per_head[keep] = score(args.metric, tr.hyps, tr.refs, lang)["score"]
        best = max(heads, key=lambda h: (per_head[h], -h))
        masked = HeadSet((kind, layer, h) for h in heads if h != best)
        tr = evaluate(masked)
        test = paired_bootstrap(args.metric, full.hyps, tr.hyps, full.refs, lang,
                                args.bootstrap_samples, args.bootstrap_seed)
        row = {"kind": kind, "layer": layer, "best_head": best, "heads": len(heads),
               "select_scores": {str(h): s for h, s in per_head.items()},
               "score": test["score"], "baseline": test["baseline"], "delta": test["delta"],
               "p_value": test["p_value"], "significant": test["p_value"] < args.alpha,
               "spec": masked.to_spec()}
        rows.append(row)
        write_json(out, {"settings": settings, "baseline": baseline, "rows": rows, "meta": meta})
        logger.info(f"{kind}:{layer} keep head {best}: {args.metric} {row['score']:.2f} "
                    f"({row['delta']:+.2f}, p={row['p_value']:.4f})")
    write_json(out, {"settings": settings, "baseline": baseline, "rows": rows, "meta": meta})
    write_tables(ctx, rows, baseline, args.alpha)


def write_tables(ctx, rows, baseline, alpha):
    write_csv(ctx.path("one_head.csv"),
              ["kind", "layer", "best_head", "heads", "score", "baseline", "delta", "p_value", "significant"],
              [(r["kind"], r["layer"], r["best_head"], r["heads"], r["score"], r["baseline"],
                r["delta"], r["p_value"], r["significant"]) for r in rows])
    write_text(ctx.path("one_head.md"), one_head_markdown(rows, baseline, alpha))
    logger.info(f"wrote {ctx.path('one_head.json')}, one_head.csv, one_head.md")


def one_head_markdown(rows, baseline, alpha) -> str:
    """The paper's Table 2: layers x kinds, ΔBLEU when only the best head is kept."""
    kinds = [k for k in ("E", "A", "D") if any(r["kind"] == k for r in rows)]
    layers = sorted({r["layer"] for r in rows})
    cell = {(r["kind"], r["layer"]): r for r in rows}
    lines = [f"Keeping only the best head of one layer: change in {baseline['metric']} "
             f"(full model {baseline['score']:.2f}); **bold** = significant (paired bootstrap, p < {alpha}).",
             "", "| Layer | " + " | ".join(f"{KIND_NAMES[k]} (best head)" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for layer in layers:
        cells = []
        for k in kinds:
            r = cell.get((k, layer))
            if r is None:
                cells.append("")
                continue
            text = f"{r['delta']:+.2f}"
            cells.append((f"**{text}**" if r["significant"] else text) + f" (H{r['best_head']})")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
