"""``fairseq-headprune ablate``: mask one head at a time, score, compare with the full
model (paper §3.2 Table 1), with paired-bootstrap significance; on two or more
evaluation sets, also the cross-domain comparison (paper §3.4 Fig. 2).

    fairseq-headprune ablate DATA --path CKPT --results-dir DIR [--kinds E,A,D]
        [--heads SPEC] [--metric bleu|sacrebleu|chrf|loss] [--alpha 0.01]
        [--bootstrap-samples 1000] [--bootstrap-seed 12345]
        [--gen-subset test[,test1,...]] [--compare-data DIR2 [--compare-subset SPLIT]]
        [--max-eval-sentences N] [--overwrite] [--no-save-hyps]
        [fairseq-generate options: --beam --lenpen --max-tokens --batch-size --remove-bpe --cpu --fp16 ...]

The model is loaded once; each head costs one decode of the set (``--metric loss``:
one teacher-forced forward pass). Files in DIR (STEM = ``ablation``, or
``ablation_loss`` for ``--metric loss``):

* ``STEM.json`` for the first evaluation set, ``STEM.LABEL.json`` for each further set
  (LABEL = the subset name, or ``compare.SPLIT`` for ``--compare-data``): written
  atomically after every head. A rerun of the same command resumes after the last
  finished head; a rerun with other settings is refused (``--overwrite`` starts over).
  Format: see fairseq_headprune/analysis/ablation.py.
* ``STEM[.LABEL].csv``, ``.md`` (paper Table 1 style) and ``_E.png``/``_A.png``/``_D.png``
  heatmaps, drawn from the JSON (report/ablation_report.py).
* ``STEM[.LABEL]_hyps/``: the full model's and each ablated model's hypotheses, one per
  line in sentence-id order (``full.txt``, ``E_1_3.txt``), unless ``--no-save-hyps``.
* With two or more sets: ``cross_domain[_loss].json`` + ``.png`` (first set vs the
  second; ``cross_domain[_loss].LABEL.json`` for further sets): Pearson r, Spearman
  rho, heads significant on one set but not the other.
* When both a loss and a decoding-metric ablation of the same set exist in DIR:
  ``agreement[.LABEL].json`` (Pearson/Spearman of loss deltas vs metric deltas).

SIGINT/SIGTERM stop the sweep (exit status 130/143) with the results file consistent;
the test hook ``HEADPRUNE_ABLATE_STOP_AFTER=k`` stops after k heads (exit status 130).
"""

import copy
import os
import signal
import sys

from ..errors import HeadPruneError
from ..heads import HeadSet, parse_kinds
from .common import Context, logger, parse_args


def add_args(group):
    from ..analysis.ablation import METRICS

    group.add_argument("--kinds", default="E,A,D", metavar="KINDS",
                       help="attention kinds to ablate: E, A, D, comma-separated (default all)")
    group.add_argument("--heads", default=None, metavar="SPEC",
                       help="only these heads (KIND:LAYERS:HEADS spec or @file.json), "
                            "within --kinds")
    group.add_argument("--metric", default="bleu", metavar="METRIC",
                       help=f"one of {', '.join(METRICS)} (default bleu: tokenized BLEU)")
    group.add_argument("--alpha", type=float, default=0.01,
                       help="significance level of the paired bootstrap (default 0.01)")
    group.add_argument("--bootstrap-samples", type=int, default=1000, metavar="N",
                       help="paired bootstrap resamples (default 1000)")
    group.add_argument("--bootstrap-seed", type=int, default=12345, metavar="SEED",
                       help="paired bootstrap seed, non-zero (default 12345, sacrebleu's)")
    group.add_argument("--bootstrap-workers", type=int, default=None, metavar="N",
                       help="processes running bootstraps while the next head decodes "
                            "(0: inline; default 1 on machines with more than 2 CPUs, else 0: "
                            "there a worker slows the decoding more than it saves)")
    group.add_argument("--max-eval-sentences", type=int, default=None, metavar="N",
                       help="evaluate only the first whole batches holding at least N "
                            "sentences (fast checks)")
    group.add_argument("--compare-data", default=None, metavar="DIR2",
                       help="another data directory with the same dictionaries: also "
                            "ablate its --compare-subset and compare")
    group.add_argument("--compare-subset", default=None, metavar="SPLIT",
                       help="subset of --compare-data (default: the first --gen-subset)")
    group.add_argument("--overwrite", action="store_true",
                       help="start over instead of resuming existing results")
    group.add_argument("--no-save-hyps", action="store_true",
                       help="do not write each ablated model's hypotheses")


class EvalSet:
    def __init__(self, label, subset, data, task, batches):
        self.label, self.subset, self.data, self.task, self.batches = (
            label, subset, data, task, batches)


def _other_task(ctx, data2: str):
    """The task of another data directory, which must share the model's dictionaries."""
    from fairseq import tasks
    from omegaconf import open_dict

    if not os.path.isdir(data2):
        raise HeadPruneError(f"--compare-data {data2!r} is not a directory")
    tcfg = copy.deepcopy(ctx.cfg.task)
    with open_dict(tcfg):
        tcfg.data = data2
    try:
        task2 = tasks.setup_task(tcfg)
    except (FileNotFoundError, OSError) as e:
        raise HeadPruneError(f"--compare-data {data2!r}: cannot load its dictionaries ({e})")
    for side, a, b in (("source", ctx.task.source_dictionary, task2.source_dictionary),
                       ("target", ctx.task.target_dictionary, task2.target_dictionary)):
        if a.symbols != b.symbols:
            raise HeadPruneError(
                f"--compare-data {data2!r}: its {side} dictionary differs from {ctx.cfg.task.data!r} "
                f"({len(b)} vs {len(a)} symbols); both sets must share the model's dictionaries")
    return task2


def eval_sets(ctx, args):
    from ..analysis.decoding import batches_for, limit_sentences

    subsets = [s.strip() for s in str(args.gen_subset).split(",") if s.strip()]
    if not subsets:
        raise HeadPruneError("--gen-subset names no subset (e.g. test or test,test1)")
    if len(set(subsets)) != len(subsets):
        raise HeadPruneError(f"--gen-subset {args.gen_subset!r} names a subset twice")
    sets = [EvalSet(s, s, os.path.abspath(ctx.cfg.task.data), ctx.task,
                    ctx.batches(s, args.max_eval_sentences)) for s in subsets]
    if args.compare_data:
        task2 = _other_task(ctx, args.compare_data)
        split = args.compare_subset or subsets[0]
        try:
            batches = batches_for(ctx.cfg, task2, [ctx.model], split)
        except FileNotFoundError as e:
            raise HeadPruneError(f"subset {split!r} not found in --compare-data "
                                 f"{args.compare_data!r}: {e}")
        batches = limit_sentences(batches, args.max_eval_sentences)
        sets.append(EvalSet(f"compare.{split}", split, os.path.abspath(args.compare_data),
                            task2, batches))
    elif args.compare_subset:
        raise HeadPruneError("--compare-subset needs --compare-data DIR2")
    return sets


def settings_for(ctx, args, s: EvalSet, base_mask: HeadSet, removed: HeadSet) -> dict:
    from omegaconf import OmegaConf

    from ..analysis.ablation import FORMAT, checkpoint_fingerprint

    def plain(c):
        return OmegaConf.to_container(c, resolve=True) if c is not None else None

    decode = args.metric != "loss"
    return {
        "format": FORMAT,
        "checkpoint": os.path.abspath(args.path),
        "checkpoint_fingerprint": checkpoint_fingerprint(args.path),
        "model_overrides": str(args.model_overrides),
        "data": s.data, "subset": s.subset, "max_eval_sentences": args.max_eval_sentences,
        "metric": args.metric, "lang": ctx.target_lang,
        "n_samples": args.bootstrap_samples, "seed": args.bootstrap_seed,
        "generation": plain(ctx.cfg.generation) if decode else None,
        "post_process": ctx.cfg.common_eval.post_process if decode else None,
        "tokenizer": plain(ctx.cfg.tokenizer) if decode else None,
        "bpe": plain(ctx.cfg.bpe) if decode else None,
        "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "required_batch_size_multiple": args.required_batch_size_multiple,
        "fp16": bool(args.fp16), "device": "cuda" if ctx.use_cuda else "cpu",
        "base_mask": base_mask.to_spec(), "removed": removed.to_spec(),
    }


def select_heads(args, shape, removed: HeadSet, base_mask: HeadSet):
    kinds = parse_kinds(args.kinds)
    heads = HeadSet.all_heads(shape, kinds)
    if args.heads:
        heads = heads & HeadSet.parse(args.heads, shape)
    heads = heads - removed - base_mask
    if not heads:
        raise HeadPruneError(
            f"no heads to ablate (--kinds {args.kinds!r}, --heads {args.heads!r}; heads "
            f"already removed or masked by --mask-heads are skipped)")
    return list(heads)


def check_args(args):
    from ..analysis.ablation import METRICS

    if args.metric not in METRICS:
        raise HeadPruneError(f"unknown --metric {args.metric!r} (allowed: {', '.join(METRICS)})")
    if not 0 < args.alpha < 1:
        raise HeadPruneError(f"--alpha {args.alpha} is out of range (allowed: 0 < alpha < 1)")
    if args.bootstrap_samples < 1:
        raise HeadPruneError(f"--bootstrap-samples {args.bootstrap_samples} must be at least 1")
    if args.bootstrap_seed == 0:
        raise HeadPruneError("--bootstrap-seed 0 means 'unseeded' to sacrebleu (use a non-zero seed)")
    if args.bootstrap_workers is None:
        args.bootstrap_workers = 1 if (os.cpu_count() or 1) > 2 else 0
    if args.bootstrap_workers < 0:
        raise HeadPruneError(f"--bootstrap-workers {args.bootstrap_workers} must be 0 or more")
    if args.max_eval_sentences is not None and args.max_eval_sentences < 1:
        raise HeadPruneError(f"--max-eval-sentences {args.max_eval_sentences} must be at least 1")
    parse_kinds(args.kinds)
    stop = os.environ.get("HEADPRUNE_ABLATE_STOP_AFTER")
    if stop is not None:
        if not stop.isdigit() or int(stop) < 1:
            raise HeadPruneError(f"HEADPRUNE_ABLATE_STOP_AFTER={stop!r} (allowed: a number >= 1)")
        return int(stop)
    return None


def file_stem(metric: str, index: int, label: str) -> str:
    stem = "ablation_loss" if metric == "loss" else "ablation"
    return stem if index == 0 else f"{stem}.{label}"


def run(args) -> int:
    from ..analysis import ablation as ab

    stop_after = check_args(args)
    decode = args.metric != "loss"
    # the bootstrap worker starts before the model loads (see BootstrapPool)
    pool = ab.BootstrapPool(args.bootstrap_workers) if decode else None
    try:
        return _run(args, ab, stop_after, pool)
    finally:
        if pool is not None:
            pool.close()


def _run(args, ab, stop_after, pool) -> int:
    from ..models.head_model import model_head_shape, removed_heads
    from ..report import ablation_report as rep
    from ..results import read_json, write_json

    ctx = Context(args)
    model = ctx.model
    shape = model_head_shape(model)
    removed = removed_heads(model)
    base_mask = ctx.task.mask_spec.resolve(shape) if hasattr(ctx.task, "mask_spec") else HeadSet()
    heads = select_heads(args, shape, removed, base_mask)
    sets = eval_sets(ctx, args)

    def on_signal(signum, frame):
        raise ab.Interrupted(signal.Signals(signum).name, signum)

    # Every evaluator (decoder and generator) is built before anything is decoded, so a
    # set that cannot be evaluated fails before any time is spent. (The target
    # dictionary no longer grows while decoding: SubsetDecoder post-processes with a copy.)
    evaluators = []
    for s in sets:
        if args.metric == "loss":
            evaluators.append(ab.LossEvaluator(model, s.batches, args.bootstrap_samples,
                                               args.bootstrap_seed, ctx.use_cuda))
        else:
            from ..analysis.decoding import SubsetDecoder

            dec = SubsetDecoder(ctx.cfg, s.task, model, s.subset, batches=s.batches)
            evaluators.append(ab.DecodeEvaluator(dec, args.metric, ctx.target_lang,
                                                 args.bootstrap_samples, args.bootstrap_seed,
                                                 pool))
    sweeps = []
    for i, (s, ev) in enumerate(zip(sets, evaluators)):
        stem = file_stem(args.metric, i, s.label)
        sweeps.append(ab.Sweep(
            model=model, evaluator=ev, heads=heads, path=ctx.path(stem + ".json"),
            settings=settings_for(ctx, args, s, base_mask, removed),
            meta=ctx.meta(subset=s.subset, label=s.label, kinds=args.kinds,
                          heads=args.heads, metric=args.metric),
            shape=shape, base_mask=base_mask, alpha=args.alpha, overwrite=args.overwrite,
            hyps_dir=None if args.no_save_hyps else ctx.path(stem + "_hyps"),
            stop_after=stop_after))
        # refuse mismatched earlier results of any set before decoding anything
        ab.load_results(sweeps[-1].path, sweeps[-1].settings, args.overwrite)
    paths = []
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, (s, ev, sweep) in enumerate(zip(sets, evaluators, sweeps)):
            stem = file_stem(args.metric, i, s.label)
            logger.info(f"ablating {len(heads)} heads on {s.subset} ({s.data}, "
                        f"{ev.n_sentences} sentences) -> {sweep.path}")
            obj = sweep.run()
            paths.append(sweep.path)
            rep.write_ablation_reports(sweep.path)
            sm, t = obj["summary"], obj["timing"]
            ratio = f"{t['ratio']:.3f}" if t.get("ratio") else "n/a"
            print(f"{s.label}: full model {args.metric} {obj['baseline']['score']:.2f}; "
                  f"{sm['n_significant']} of {sm['n_heads']} heads significant at p < "
                  f"{args.alpha:g} ({sm['n_significant_better']} better, "
                  f"{sm['n_significant_worse']} worse without them); sweep "
                  f"{t['sweep_s']:.1f}s for {t['decodes']} evaluations, "
                  f"{t['median_decode_s']:.2f}s each, ratio {ratio}; table "
                  f"{ctx.path(stem + '.md')}")
    except ab.Interrupted as e:
        code = 128 + e.signum if e.signum else 130
        sys.stdout.flush()
        sys.stderr.write(f"fairseq-headprune: ablate interrupted ({e.reason}) with {e.done} of "
                         f"{e.total} heads done in {e.path}; rerun the same command to resume\n")
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)

    # cross-domain comparisons: first set against each other set
    cd_stem = "cross_domain_loss" if args.metric == "loss" else "cross_domain"
    objs = [read_json(p, "ablation results file") for p in paths]
    for i in range(1, len(sets)):
        c = ab.cross_domain(objs[0], objs[i], sets[0].label, sets[i].label)
        path = ctx.path(cd_stem + (".json" if i == 1 else f".{sets[i].label}.json"))
        write_json(path, c)
        rep.write_cross_domain_plot(path)
        print(rep.cross_domain_text(c) + f" -> {path}")

    # loss vs decoding-metric agreement, where both exist for a set
    for i, s in enumerate(sets):
        other = file_stem("bleu" if args.metric == "loss" else "loss", i, s.label)
        other_path = ctx.path(other + ".json")
        if not os.path.exists(other_path):
            continue
        other_obj = read_json(other_path, "ablation results file")
        loss_obj, metric_obj = (objs[i], other_obj) if args.metric == "loss" else (other_obj, objs[i])
        try:
            a = ab.agreement(loss_obj, metric_obj)
        except HeadPruneError as e:
            logger.warning(f"no loss/metric agreement for {s.label}: {e}")
            continue
        path = ctx.path("agreement" + ("" if i == 0 else f".{s.label}") + ".json")
        write_json(path, a)

        def f(v):
            return "undefined" if v is None else f"{v:.3f}"

        print(f"{s.label}: loss vs {a['metric']} over {a['n']} heads: Pearson {f(a['pearson'])}, "
              f"Spearman {f(a['spearman'])} (negative = agree), top-{a['top_k']} overlap "
              f"{a['top_k_overlap']:.2f}; sweep time loss {a['timing_s']['loss']:.1f}s vs "
              f"{a['metric']} {a['timing_s'][a['metric']]:.1f}s -> {path}")
    return 0


def main(argv):
    args = parse_args("ablate", argv, add_args)
    return run(args)
