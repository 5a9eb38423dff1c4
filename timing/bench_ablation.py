"""How much does a single-head ablation sweep cost, in decodes of the evaluation set?

    python timing/bench_ablation.py DATA --path CKPT --results-dir DIR \\
        [--gen-subset test] [--kinds A] [--heads SPEC] [--repeats 3] \\
        [--bootstrap-workers 0,1] [--reference-generate] [fairseq-generate options]

1. Loads the model once in this process and times ``--repeats`` decodes of the set with
   the full model and with one head masked, taking turns (the median is "one decode").
2. Runs the real ``fairseq-headprune ablate`` (a fresh process, ``--overwrite``) for each
   ``--bootstrap-workers`` value and reads its sweep time back from the JSON.
3. Prints and writes DIR/bench_ablation.json: sweep seconds / ((heads + 1) x one decode),
   which the issue bounds at 1.1, for the sweep alone and for the whole process (model
   load and reports included). With ``--reference-generate`` it also times one
   ``fairseq-generate`` process (what the reference code paid per head: a reload each).
"""

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def add_bench_args(group):
    from fairseq_headprune.cli.ablate import add_args

    add_args(group)
    group.add_argument("--repeats", type=int, default=3, help="single decodes to time")
    group.add_argument("--workers-list", default="0,1",
                       help="--bootstrap-workers values to run the sweep with")
    group.add_argument("--reference-generate", action="store_true",
                       help="also time one fairseq-generate process")


def main(argv):
    import fairseq_headprune  # noqa: F401
    from fairseq_headprune.analysis.session import Session
    from fairseq_headprune.analysis.speed import time_interleaved
    from fairseq_headprune.cli.common import parse_args, setup_logging  # options only
    from fairseq_headprune.heads import HeadSet, parse_kinds
    from fairseq_headprune.models.head_model import model_head_shape

    setup_logging()
    args = parse_args("bench-ablation", argv, add_bench_args)
    session = Session(args)
    os.makedirs(args.results_dir, exist_ok=True)
    subset = args.gen_subset.split(",")[0]
    # the sentences ablate decodes (its --max-eval-sentences sample)
    selection = session.select(session.data_spec(subset, args.max_eval_sentences,
                                                 seed=getattr(args, "eval_seed", 1)))
    ev = session.evaluator(selection, cache=False, progress=False)
    shape = model_head_shape(session.model)
    heads = HeadSet.all_heads(shape, parse_kinds(args.kinds))
    if args.heads:
        heads = heads & HeadSet.parse(args.heads, shape)
    n_heads = len(heads)

    one_head = HeadSet([next(iter(heads))])
    # the bench command's timing loop: full and one-head-masked decodes take turns
    times = time_interleaved({"full": lambda: ev.translate(),
                              "masked": lambda: ev.translate(one_head)}, 1, args.repeats)
    full, masked = times["full"], times["masked"]
    one = statistics.median(full + masked)
    report = {"subset": subset, "sentences": ev.nsentences, "heads": n_heads,
              "single_decode_s": {"full": full, "one_head_masked": masked, "median": one},
              "sweeps": {}}
    print(f"one decode of {subset} ({ev.nsentences} sentences): {one:.3f}s "
          f"(full {statistics.median(full):.3f}s, one head masked "
          f"{statistics.median(masked):.3f}s); {n_heads} heads -> budget 1.1 x "
          f"{n_heads + 1} x {one:.3f}s = {1.1 * (n_heads + 1) * one:.1f}s")

    # the real command, same options, in a fresh process
    skip = {"--repeats", "--workers-list"}
    base_argv, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in skip:
            i += 2
            continue
        if a.split("=")[0] in skip:
            i += 1
            continue
        if a in ("--reference-generate", "--overwrite") or a.startswith("--bootstrap-workers"):
            i += 1 if a != "--bootstrap-workers" else 2
            continue
        base_argv.append(a)
        i += 1
    for w in [int(x) for x in args.workers_list.split(",") if x != ""]:
        out = os.path.join(args.results_dir, f"sweep_workers{w}")
        cmd = [sys.executable, "-m", "fairseq_headprune.cli.main", "ablate", *base_argv,
               "--results-dir", out, "--overwrite", "--bootstrap-workers", str(w)]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.stderr.write(p.stderr[-3000:])
            return p.returncode
        stem = "ablation_loss" if args.metric == "loss" else "ablation"
        with open(os.path.join(out, stem + ".json")) as f:
            obj = json.load(f)
        tm = obj["timing"]
        r = {"process_s": wall, "sweep_s": tm["sweep_s"], "evaluations": tm["decodes"],
             "median_decode_in_sweep_s": tm["median_decode_s"],
             "ratio_sweep": tm["sweep_s"] / ((n_heads + 1) * one),
             "ratio_process": wall / ((n_heads + 1) * one),
             "ratio_in_sweep": tm["ratio"]}
        report["sweeps"][f"workers={w}"] = r
        print(f"ablate --bootstrap-workers {w}: sweep {r['sweep_s']:.1f}s, process {wall:.1f}s "
              f"for {n_heads} heads + full model -> {r['ratio_sweep']:.3f} x (heads+1) decodes "
              f"(whole process {r['ratio_process']:.3f}; vs its own median decode "
              f"{r['ratio_in_sweep']:.3f})")
    if args.reference_generate:
        cmd = ["fairseq-generate", args.data, "--path", args.path, "--gen-subset", subset,
               "--user-dir", os.path.join(ROOT, "fairseq_headprune"),
               "--task", "translation_headprune", "--beam", str(args.beam),
               "--lenpen", str(args.lenpen)]
        if args.post_process:
            cmd += ["--post-process", args.post_process]
        if args.cpu:
            cmd += ["--cpu"]
        if args.max_tokens:
            cmd += ["--max-tokens", str(args.max_tokens)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, text=True, check=True)
        g = time.perf_counter() - t
        report["fairseq_generate_process_s"] = g
        print(f"one fairseq-generate process: {g:.1f}s; a reload per head would cost "
              f"{(n_heads + 1) * g:.0f}s")
    path = os.path.join(args.results_dir, "bench_ablation.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
