"""``fairseq-headprune one-head DATA --path CKPT --results-dir DIR`` (paper §3.3, Table 2)

For each attention kind and layer: keep only one head in that layer (its other heads
masked, the rest of the model intact), choose the head that scores best on
--select-subset (default: the evaluation subset, as the paper's Table 2; the paper's
appendix chose on another set; --select-sentences N chooses on a seeded sample of N of
its sentences, for 8 heads 8x cheaper than choosing on a whole test set), and report
that configuration's change on the evaluation subset (--gen-subset) with sacrebleu's
paired bootstrap. Writes one_head.json (resumable), one_head.csv and one_head.md.
"""

import os

from ..analysis import significance
from ..analysis.scoring import CLASS_METRICS, METRIC_LABELS, METRICS, score
from ..heads import KIND_NAMES, HeadSet, parse_kinds
from ..models.head_model import attention_modules
from ..results import load_resumable, write_csv, write_json, write_text
from .common import (add_bootstrap_args, add_eval_args, check_bootstrap_args, eval_selection,
                     logger, open_session, out_path, parse_args, positive_int)

FORMAT = "fairseq-headprune/one-head-v1"


def add_args(group):
    group.add_argument("--kinds", default=None,
                       help="attention kinds (default: every kind the model has)")
    group.add_argument("--select-subset", default=None, metavar="SPLIT",
                       help="split on which the best head is chosen (default: --gen-subset)")
    group.add_argument("--select-sentences", type=positive_int, default=None, metavar="N",
                       help="choose the best head on a seeded random sample of N sentences of "
                            "--select-subset (default: the evaluated sentences); the chosen "
                            "head is then scored on the evaluation subset")
    group.add_argument("--metric", choices=METRICS + CLASS_METRICS, default=None,
                       help="bleu: tokenized BLEU (default for translation, the paper's); "
                            "sacrebleu; chrf; accuracy (default for a classifier), f1, mcc")
    add_bootstrap_args(group)
    group.add_argument("--overwrite", action="store_true")
    add_eval_args(group)


def main(argv):
    args = parse_args("one-head", argv, add_args)
    parse_kinds(args.kinds)  # a bad --kinds before the model loads
    check_bootstrap_args(args)
    select = args.select_subset or args.gen_subset
    session = open_session(args)
    kinds = session.kinds(args.kinds)
    args.metric = session.metric(args.metric, loss=False)
    lang = session.target_lang
    sel = eval_selection(session, args, args.gen_subset)
    evaluate = session.evaluator(sel)
    if select == args.gen_subset and not args.select_sentences:
        chooser = evaluate
    else:
        chooser = session.evaluator(eval_selection(session, args, select, args.select_sentences))
    settings = {"path": os.path.abspath(args.path), "eval_data": sel.describe(),
                "select_subset": select, "select_data": chooser.selection.describe(),
                "metric": args.metric, "kinds": list(kinds),
                "mask_heads": session.fixed_mask.to_spec(), "beam": args.beam, "lenpen": args.lenpen,
                "bootstrap_samples": args.bootstrap_samples, "bootstrap_seed": args.bootstrap_seed,
                "alpha": args.alpha}
    out = out_path(args, "one_head.json")
    old = load_resumable(out, FORMAT, settings, args.overwrite, "one-head results")
    rows = old["rows"] if old else []
    done = {(r["kind"], r["layer"]) for r in rows}
    full = evaluate.translate(HeadSet())
    baseline = score(args.metric, full.hyps, full.refs, lang)
    meta = session.meta()

    def save():
        write_json(out, {"format": FORMAT, "settings": settings, "baseline": baseline,
                         "rows": rows, "meta": meta})

    for (kind, layer), module in attention_modules(session.model).items():
        if kind not in kinds or (kind, layer) in done:
            continue
        # heads that take part: present and not masked by --mask-heads
        heads = [h + 1 for h in module.kept_heads if (kind, layer, h + 1) not in session.fixed_mask]
        if len(heads) < 2:
            logger.info(f"{kind}:{layer} has {len(heads)} head(s) taking part: nothing to choose")
            continue
        trs = chooser.translate_many([HeadSet((kind, layer, h) for h in heads if h != keep)
                                      for keep in heads])
        per_head = {keep: score(args.metric, tr.hyps, tr.refs, lang)["score"]
                    for keep, tr in zip(heads, trs)}
        best = max(heads, key=lambda h: (per_head[h], -h))
        masked = HeadSet((kind, layer, h) for h in heads if h != best)
        tr = evaluate.translate(masked)
        test = significance.paired_bootstrap(args.metric, full.hyps, tr.hyps, full.refs, lang,
                                             args.bootstrap_samples, args.bootstrap_seed)
        row = {"kind": kind, "layer": layer, "best_head": best, "heads": len(heads),
               "select_scores": {str(h): s for h, s in per_head.items()},
               "score": test["score"], "baseline": test["baseline"], "delta": test["delta"],
               "p_value": test["p_value"], "identical": test["identical"],
               **({"p_ttest": test["p_ttest"]} if "p_ttest" in test else {}),
               "significant": significance.significant(test["p_value"], args.alpha, test["identical"],
                                                       test["delta"]),
               "spec": (masked | session.fixed_mask).to_spec()}
        rows.append(row)
        save()
        logger.info(f"{kind}:{layer} keep head {best}: {args.metric} {row['score']:.2f} "
                    f"({row['delta']:+.2f}, p={row['p_value']:.4f}"
                    f"{', output unchanged' if row['identical'] else ''})")
    save()
    write_tables(args, rows, baseline, args.alpha, settings)


def write_tables(args, rows, baseline, alpha, settings):
    write_csv(out_path(args, "one_head.csv"),
              ["kind", "layer", "best_head", "heads", "score", "baseline", "delta", "p_value", "significant"],
              [(r["kind"], r["layer"], r["best_head"], r["heads"], r["score"], r["baseline"],
                r["delta"], r["p_value"], r["significant"]) for r in rows])
    write_text(out_path(args, "one_head.md"), one_head_markdown(rows, baseline, alpha, settings))
    logger.info(f"wrote {out_path(args, 'one_head.json')}, one_head.csv, one_head.md")


def _sentences(data: dict) -> str:
    n = f"{data['sentences']:,}"
    if data["sentences"] != data["of"]:
        n += f" of {data['of']:,}"
    return f"{n} sentences of `{data['subset']}`"


def one_head_markdown(rows, baseline, alpha, settings=None) -> str:
    """The paper's Table 2: layers x kinds, ΔBLEU when only the best head is kept."""
    chosen = ""
    if settings and settings.get("select_data") not in (None, settings["eval_data"]):
        chosen = (f" Each layer's head was chosen on {_sentences(settings['select_data'])}, "
                  f"then scored on {_sentences(settings['eval_data'])}.")
    kinds = [k for k in ("E", "A", "D") if any(r["kind"] == k for r in rows)]
    layers = sorted({r["layer"] for r in rows})
    cell = {(r["kind"], r["layer"]): r for r in rows}
    lines = [f"Keeping only the best head of one layer: change in "
             f"{METRIC_LABELS.get(baseline['metric'], baseline['metric'])} "
             f"(full model {baseline['score']:.2f}); **bold** = significant (paired bootstrap, p < {alpha}; "
             f"a layer whose output or score did not change is never significant).{chosen}",
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
