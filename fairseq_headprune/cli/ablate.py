"""``fairseq-headprune ablate``: mask one head at a time, score, compare with the full
model (paper §3.2 Table 1), with paired-bootstrap significance; on two or more
evaluation sets, also the cross-domain comparison (paper §3.4 Fig. 2).

    fairseq-headprune ablate DATA --path CKPT --results-dir DIR [--kinds E,A,D]
        [--heads SPEC] [--metric bleu|sacrebleu|chrf|accuracy|f1|mcc|loss] [--alpha 0.01]
        [--bootstrap-samples 1000] [--bootstrap-seed 12345]
        [--gen-subset test[,test1,...]] [--compare-data DIR2 [--compare-subset SPLIT]]
        [--max-eval-sentences N] [--overwrite] [--no-save-hyps]
        [--head-shards N --head-shard-id I]
        [fairseq-generate options: --beam --lenpen --max-tokens --batch-size --remove-bpe --cpu --fp16 ...]

The model is loaded once; each head costs one decode of the set (``--metric loss``:
one teacher-forced forward pass). Files in DIR (STEM = ``ablation``, or
``ablation_loss`` for ``--metric loss``; see analysis/ablation.py for the formats):

* ``STEM.json`` for the first evaluation set, ``STEM.LABEL.json`` for each further set
  (LABEL = the subset name, or ``compare.SPLIT`` for ``--compare-data``): written
  atomically after every head. A rerun of the same command resumes after the last
  finished head; a rerun with other settings is refused (``--overwrite`` starts over).
* ``STEM[.LABEL].csv``, ``.md`` (paper Table 1 style) and heatmaps (report/);
  ``STEM[.LABEL]_hyps/``: each model's hypotheses, unless ``--no-save-hyps``.
* With two or more sets: ``cross_domain[_loss][.LABEL].json`` + ``.png`` (Pearson r,
  Spearman rho, heads significant on one set only); with both a loss and a metric
  ablation of a set: ``agreement[.LABEL].json``.

``--head-shards N --head-shard-id I`` (0-based; default id: $SLURM_ARRAY_TASK_ID): this
process ablates only heads I, I+N, I+2N, ... of the sorted list (analysis/shards.py),
computes the full-model baseline itself and writes its own DIR (one per shard: the JSON
files and hypotheses; no tables, plots or comparisons of a part of the heads);
``fairseq-headprune merge-shards OUT_DIR DIR...`` then writes what one run would have.

SIGINT/SIGTERM stop the sweep (exit status 130/143) with the results file consistent;
the test hook ``HEADPRUNE_ABLATE_STOP_AFTER=k`` stops after k heads (exit status 130).
"""

import os
import signal
import sys

from ..analysis import ablation as ab
from ..errors import HeadPruneError
from ..heads import HeadSet, parse_kinds
from ..models.head_model import model_head_shape, removed_heads
from .common import (add_bootstrap_args, add_eval_args, check_bootstrap_args, logger,
                     nonnegative_int, open_session, out_path, parse_args, require_heads)
from .merge_shards import add_shard_args, shard_of


def add_args(group):
    group.add_argument("--kinds", default=None, metavar="KINDS",
                       help="attention kinds to ablate: E, A, D, comma-separated (default: "
                            "every kind the model has)")
    group.add_argument("--heads", default=None, metavar="SPEC",
                       help="only these heads (KIND:LAYERS:HEADS spec or @file.json), within --kinds")
    group.add_argument("--metric", default=None, choices=ab.METRICS,
                       help="bleu (default for translation: tokenized BLEU), sacrebleu, chrf; "
                            "accuracy (default for a classifier), f1 (labels 0/1), mcc; or loss")
    add_bootstrap_args(group)
    group.add_argument("--bootstrap-workers", type=nonnegative_int, default=None, metavar="N",
                       help="processes running bootstraps while the next head decodes "
                            "(0: inline; default 1 on machines with more than 2 CPUs, else 0: "
                            "there a worker slows the decoding more than it saves)")
    add_eval_args(group)
    group.add_argument("--compare-data", default=None, metavar="DIR2",
                       help="another data directory with the same dictionaries: also "
                            "ablate its --compare-subset and compare")
    group.add_argument("--compare-subset", default=None, metavar="SPLIT",
                       help="subset of --compare-data (default: the first --gen-subset)")
    group.add_argument("--overwrite", action="store_true",
                       help="start over instead of resuming existing results")
    group.add_argument("--no-save-hyps", action="store_true",
                       help="do not write each ablated model's hypotheses")
    add_shard_args(group, "heads to ablate")


def check_args(args):
    check_bootstrap_args(args)
    require_heads(args.heads, "--heads")
    if args.bootstrap_workers is None:
        args.bootstrap_workers = 1 if (os.cpu_count() or 1) > 2 else 0
    if args.compare_subset and not args.compare_data:
        raise HeadPruneError("--compare-subset needs --compare-data DIR2")
    parse_kinds(args.kinds)
    args.shard = shard_of(args)
    stop = os.environ.get(ab.STOP_AFTER_ENV)
    if stop is not None and (not stop.isdigit() or int(stop) < 1):
        raise HeadPruneError(f"{ab.STOP_AFTER_ENV}={stop!r} (allowed: a number >= 1)")
    return int(stop) if stop else None


def main(argv):
    args = parse_args("ablate", argv, add_args)
    stop_after = check_args(args)
    # the bootstrap worker starts before the model loads (see BootstrapPool)
    pool = ab.BootstrapPool(args.bootstrap_workers) if args.metric != "loss" else None
    try:
        return run(args, stop_after, pool)
    finally:
        if pool is not None:
            pool.close()


def run(args, stop_after, pool) -> int:
    from ..report import ablation_report as rep

    session = open_session(args)
    args.metric = session.metric(args.metric)
    shape, removed = model_head_shape(session.model), removed_heads(session.model)
    heads = ab.heads_to_ablate(shape, session.kinds(args.kinds), args.heads, removed,
                               session.fixed_mask)
    everything = heads
    if args.shard:
        heads = args.shard.items(heads, "heads to ablate")
    sweeps = []
    # every evaluator is built, and every earlier result checked, before anything is decoded
    sets = ab.evaluation_sets(session, args.gen_subset, args.max_eval_sentences, args.eval_seed,
                              args.compare_data, args.compare_subset)
    for i, (label, data, selection, task) in enumerate(sets):
        masks = session.evaluator(selection, task, cache=False, progress=False)
        ev = (ab.LossEvaluator(masks, args.bootstrap_samples, args.bootstrap_seed)
              if args.metric == "loss" else
              ab.DecodeEvaluator(masks, args.metric, args.bootstrap_samples, args.bootstrap_seed, pool))
        stem = ab.file_stem(args.metric, i, label)
        settings = ab.sweep_settings(session, selection, data, args.metric,
                                     args.bootstrap_samples, args.bootstrap_seed, removed)
        if args.shard:
            settings["shard"] = args.shard.settings(of=HeadSet(everything).to_spec(),
                                                    sets=[s[0] for s in sets])
        sweep = ab.Sweep(
            evaluator=ev, heads=heads, path=out_path(args, stem + ".json"), settings=settings,
            meta=session.meta(subset=selection.spec.subset, label=label, kinds=args.kinds,
                              heads=args.heads, metric=args.metric),
            shape=shape, alpha=args.alpha, overwrite=args.overwrite,
            hyps_dir=None if args.no_save_hyps else out_path(args, stem + "_hyps"),
            stop_after=stop_after)
        ab.load_results(sweep.path, sweep.settings, args.overwrite)
        sweeps.append((label, sweep))

    def on_signal(signum, frame):
        raise ab.Interrupted(signal.Signals(signum).name, signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for label, sweep in sweeps:
            logger.info(f"ablating {len(heads)} heads on {label} ({sweep.evaluator.n_sentences} "
                        f"sentences) -> {sweep.path}")
            obj = sweep.run()
            if args.shard:  # tables and comparisons are drawn once, from the merged files
                print(f"{label}: shard {args.shard.index} of {args.shard.count} done: "
                      f"{len(obj['heads'])} heads in {sweep.path}")
                continue
            rep.write_ablation_reports(sweep.path)
            print(f"{label}: {ab.summary_line(obj, args.alpha)}; table {sweep.path[:-5]}.md")
    except ab.Interrupted as e:
        sys.stdout.flush()
        sys.stderr.write(f"fairseq-headprune: ablate interrupted ({e.reason}) with {e.done} of "
                         f"{e.total} heads done in {e.path}; rerun the same command to resume\n")
        return 128 + e.signum if e.signum else 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.shard:
        print(f"merge the {args.shard.count} shards with: fairseq-headprune merge-shards "
              f"OUT_DIR SHARD_DIR... (the --results-dir of each)")
        return 0
    for kind, path, obj, text in ab.write_comparisons(args.results_dir, args.metric,
                                                       [label for label, _ in sweeps]):
        if kind == "cross_domain":
            rep.write_cross_domain_plot(path)
            text = rep.cross_domain_text(obj) + f" -> {path}"
        print(text)
    return 0
