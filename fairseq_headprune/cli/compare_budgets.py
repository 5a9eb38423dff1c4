"""``fairseq-headprune compare-budgets DATA --path CKPT --results-dir DIR
[--budgets heads:25%,heads:50%,heads:75%] [--orders importance,fisher,weight-norm,random]
[--repairs none,bias,lstsq,layerwise,refit] [--order-seed 1,2,3] [--importance FILE] [--ablation FILE]``

Every budget x order x repair without retraining (analysis/compare_budgets.py): the heads
chosen, repaired on --calibration-sentences training sentences, removed, scored on
--gen-subset (tokenized BLEU, sacreBLEU, loss); parameters left, the decoding speed-up
predicted by a latency table measured once at --beam and --latency-batch-size (--no-speed
to skip), and the seconds each choice and repair took. Writes budgets.json (resumable: the
same command continues), budgets.csv, budgets.png and budgets.md (report/budgets.py).
Without --importance, importance (with Fisher scores) is estimated first with the
--importance-* options and saved as importance.json.
"""

import os
import sys

from ..errors import HeadPruneError
from .common import (add_eval_args, eval_selection, logger, nonnegative_int, open_session, out_path,
                     parse_args, seed_list)
from .export import latency_batch_size

DEFAULT_BUDGETS = "heads:25%,heads:50%,heads:75%"


def add_args(group):
    from ..analysis.ranking import ORDERS
    from ..analysis.repair import REPAIRS
    from .export import add_latency_args, add_repair_args
    from .importance import add_importance_args

    group.add_argument("--budgets", default=DEFAULT_BUDGETS, metavar="LIST",
                       help=f"comma list of budgets (heads:N%%, params:N%%, latency:Sx; default "
                            f"{DEFAULT_BUDGETS})")
    group.add_argument("--orders", default="importance,fisher,weight-norm,random", metavar="LIST",
                       help=f"comma list of orders ({', '.join(ORDERS)})")
    group.add_argument("--repairs", default=",".join(REPAIRS), metavar="LIST",
                       help=f"comma list of repairs ({', '.join(REPAIRS)})")
    group.add_argument("--order-seed", type=seed_list, default=[1, 2, 3], metavar="SEEDS",
                       help="seeds of --orders random, one row each (default 1,2,3)")
    group.add_argument("--kinds", default=None, metavar="KINDS",
                       help="attention kinds the budgets remove from (default: every kind "
                            "the model has)")
    group.add_argument("--min-heads-per-layer", type=nonnegative_int, default=0, metavar="N",
                       help="keep at least N heads in every module")
    group.add_argument("--importance", default=None, metavar="FILE",
                       help="importance.json for --orders importance and fisher (default: "
                            "estimate it now)")
    group.add_argument("--ablation", default=None, metavar="FILE",
                       help="ablation.json of fairseq-headprune ablate, for --orders ablation")
    group.add_argument("--no-speed", action="store_true",
                       help="skip the latency table (no predicted speed-up column)")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh even if DIR/budgets.json holds other settings")
    add_latency_args(group)
    add_repair_args(group)
    add_eval_args(group)
    add_importance_args(group)


def _list(text, allowed, option):
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items or len(set(items)) != len(items):
        raise HeadPruneError(f"{option} {text!r}: {'unknown ' + repr(bad[0]) if bad else 'empty or repeated'} "
                             f"(allowed: a comma list of {', '.join(allowed)})")
    return items


def check_args(args):
    from ..analysis.budget import parse_budget
    from ..analysis.ranking import ORDERS
    from ..analysis.repair import REPAIRS

    args.budgets = [b.strip() for b in str(args.budgets).split(",") if b.strip()]
    if not args.budgets or len(set(args.budgets)) != len(args.budgets):
        raise HeadPruneError(f"--budgets {','.join(args.budgets)!r}: empty or repeated "
                             f"(allowed: a comma list such as {DEFAULT_BUDGETS})")
    units = {parse_budget(b)[0] for b in args.budgets}
    args.orders = _list(args.orders, ORDERS, "--orders")
    args.repairs = _list(args.repairs, REPAIRS, "--repairs")
    if "latency" in units and args.no_speed:
        raise HeadPruneError("latency budgets need the latency table: drop --no-speed")
    if "ablation" in args.orders and not args.ablation:
        raise HeadPruneError("--orders ablation needs --ablation FILE (from fairseq-headprune ablate)")
    for option, path in (("--importance", args.importance), ("--ablation", args.ablation)):
        if path and not os.path.isfile(path):
            raise HeadPruneError(f"{option} file {path!r} does not exist")
    if args.mask_heads or args.prune_heads:
        raise HeadPruneError("compare-budgets chooses the heads itself: drop --mask-heads/--prune-heads")


def settings(args, selection, calibration) -> dict:
    return {"path": os.path.abspath(args.path), "budgets": args.budgets, "orders": args.orders,
            "repairs": args.repairs, "seeds": args.order_seed, "kinds": list(args.kinds),
            "min_heads_per_layer": args.min_heads_per_layer,
            "importance": args.importance and os.path.abspath(args.importance),
            "ablation": args.ablation and os.path.abspath(args.ablation),
            "eval_data": selection.describe(), "beam": args.beam, "lenpen": args.lenpen,
            "calibration": calibration, "speed": not args.no_speed,
            "latency": None if args.no_speed else {"batch_size": latency_batch_size(args),
                                                   "beam": args.beam,
                                                   "length": args.latency_length}}


def main(argv):
    import time

    from ..analysis import compare_budgets as cb
    from ..analysis.data import load_subset
    from ..heads import HeadSet, parse_kinds
    from ..report.budgets import redraw
    from ..results import load_resumable, write_json
    from .importance import estimate, write_importance

    args = parse_args("compare-budgets", argv, add_args)
    check_args(args)
    parse_kinds(args.kinds)  # a bad --kinds before the model loads
    session = open_session(args)
    args.kinds = session.kinds(args.kinds)
    selection = eval_selection(session, args, args.gen_subset)
    repairs = [r for r in args.repairs if r != "none"]
    calibration = ({"subset": args.calibration_subset, "sentences": args.calibration_sentences,
                    "seed": args.calibration_seed} if repairs else None)
    want = settings(args, selection, calibration)
    metric = session.metric(None)
    if session.classifier:  # (translation files stay as before, resumable)
        from ..analysis.classify import metrics_of

        want["metrics"] = list(metrics_of(session.task))
    out_json = out_path(args, "budgets.json")
    old = load_resumable(out_json, cb.FORMAT, want, args.overwrite, "budgets file")
    obj = old or {"format": cb.FORMAT, "settings": want, "rows": [], "meta": session.meta()}
    if old:
        logger.info(f"resuming {out_json}: {len(old['rows'])} rows done")

    if any(o in ("importance", "fisher") for o in args.orders) and not args.importance:
        if not os.path.isfile(out_path(args, "importance.json")):
            write_importance(args, estimate(session, args))
        args.importance = out_path(args, "importance.json")

    def score(model):  # the one scoring path, for the full model and every pruned one
        return session.evaluator(selection, model=model, fixed=HeadSet(), cache=False,
                                 progress=False).scores(HeadSet())

    if "baseline" not in obj:
        obj["baseline"] = cb.baseline(session.model, score, args.kinds)
        write_json(out_json, obj)
    table = obj.get("latency_table")
    if not args.no_speed and table is None and not session.classifier:  # (decoding speed)
        from ..analysis.latency import LatencySettings, measure_table

        load_subset(session.task, session.cfg.dataset.gen_subset, session.saved_cfg.task)
        table = measure_table(session.task, session.model, session.cfg.generation, LatencySettings(
            batch_size=latency_batch_size(args), beam=args.beam, length=args.latency_length,
            repeats=args.latency_repeats, subset=session.cfg.dataset.gen_subset),
            args.kinds, session.use_cuda)
        obj["latency_table"] = table
        write_json(out_json, obj)
    calibration = None
    if repairs:
        from ..analysis.repair import Calibration

        t0 = time.time()
        cal = session.select(session.data_spec(args.calibration_subset, args.calibration_sentences,
                                               seed=args.calibration_seed))
        calibration = Calibration(session.model, session.samples(cal), repairs, session.use_cuda)
        obj["calibration_seconds"] = round(time.time() - t0, 3)

    def on_row(row):
        obj["rows"].append(row)
        write_json(out_json, obj)
        logger.info(f"[{row['key']}] {row['removed']} heads removed: {metric} {row[metric]:.2f}"
                    + (f", predicted speed-up {row['predicted_speedup']:.3f}x"
                       if row["predicted_speedup"] else ""))

    plan = cb.Plan(args.budgets, args.orders, args.repairs, args.order_seed, args.kinds,
                   args.min_heads_per_layer, args.importance, args.ablation)
    cb.run(session.model, plan, score, calibration, table, {r["key"]: r for r in obj["rows"]}, on_row)
    write_json(out_json, obj)
    paths = redraw(args.results_dir)
    print(open(out_path(args, "budgets.md")).read())
    print(f"results: {out_json}, " + ", ".join(os.path.basename(p) for p in paths))
    sys.stdout.flush()
    return 0
