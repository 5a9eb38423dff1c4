"""What several masks per decode save: the cost of a single-head ablation sweep with K
masks per decode, against one mask at a time ((heads + 1) separate decodes).

    python timing/bench_mask_batching.py DATA --path CKPT [--masks 16] [--ks 1,4,8,16]
        [--max-eval-sentences N] [fairseq-generate options: --beam 5 --batch-size 16 ...]

Loads the model once, warms up with one decode of the full model, then decodes the same
``--masks`` single-head masks (heads spread over kinds and layers) once with each K,
K = 1 first and last (its two timings show the drift of the machine). A sweep of every
head costs (heads + 1) x the time per mask, so time per mask with K / time per mask
with K = 1 is the sweep's ratio. Also times one masked decode against the full model
(0/1 masks run fairseq's own forward: the ratio should be 1). Hypotheses of every K are
checked equal to K = 1's. Writes the table to stdout and --json FILE if given.
"""

import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def add_bench_args(group):
    from fairseq_headprune.cli.common import add_eval_args

    add_eval_args(group)
    group.add_argument("--masks", type=int, default=16, help="single-head masks to decode")
    group.add_argument("--ks", default="1,4,8,16", help="masks per decode to compare")
    group.add_argument("--json", default=None, help="also write the results here")


def spread(heads, n):
    """n heads taken evenly from the sorted list (every kind and layer represented)."""
    heads = sorted(heads)
    step = max(1, len(heads) // n)
    return heads[::step][:n]


def main(argv):
    import fairseq_headprune  # noqa: F401
    from fairseq_headprune.analysis.session import Session
    from fairseq_headprune.cli.common import parse_args, setup_logging
    from fairseq_headprune.heads import HeadSet
    from fairseq_headprune.models.head_model import model_head_shape

    setup_logging()
    args = parse_args("bench-mask-batching", argv, add_bench_args)
    session = Session(args)
    sel = session.select(session.data_spec(args.gen_subset, args.max_eval_sentences,
                                           seed=args.eval_seed))
    ks = [int(k) for k in args.ks.split(",")]
    heads = spread(HeadSet.all_heads(model_head_shape(session.model), "EAD"), args.masks)
    masks = [HeadSet([h]) for h in heads]

    def timed(k, ms):
        ev = session.evaluator(sel, cache=False, progress=False, masks_per_batch=k)
        t0 = time.perf_counter()
        out = ev.translate_many(ms)
        return time.perf_counter() - t0, out

    timed(1, [HeadSet()])  # warm-up
    full_s = [timed(1, [HeadSet()])[0] for _ in range(2)]
    one_s = [timed(1, masks[:1])[0] for _ in range(2)]
    rows, ref = [], None
    for k in [ks[0]] + ks[1:] + ([ks[0]] if len(ks) > 1 else []):
        seconds, out = timed(k, masks)
        hyps = [t.hyps for t in out]
        if ref is None:
            ref = hyps
        rows.append({"k": k, "seconds": seconds, "per_mask_s": seconds / len(masks),
                     "identical_to_k1": hyps == ref})
        print(f"K={k:2d}: {len(masks)} masks in {seconds:.1f}s ({seconds / len(masks):.2f}s per mask), "
              f"hypotheses identical to K=1: {hyps == ref}", flush=True)
    base = statistics.mean(r["per_mask_s"] for r in rows if r["k"] == ks[0])
    for r in rows:
        r["ratio_vs_one_at_a_time"] = r["per_mask_s"] / base
    g = session.cfg.generation
    result = {"sentences": len(sel.ids), "beam": g.beam, "masks": [h for h in map(list, heads)],
              "max_tokens": session.cfg.dataset.max_tokens,
              "batch_size": session.cfg.dataset.batch_size,
              "full_decode_s": full_s, "one_masked_decode_s": one_s,
              "masked_over_full_speed": statistics.median(full_s) / statistics.median(one_s),
              "rows": rows}
    print(f"{len(sel.ids)} sentences, beam {g.beam}, max_tokens {result['max_tokens']}, "
          f"batch_size {result['batch_size']}; full decode {statistics.median(full_s):.2f}s, "
          f"one head masked {statistics.median(one_s):.2f}s "
          f"(masked/full speed {result['masked_over_full_speed']:.3f})")
    print(f"{'K':>3} {'s per mask':>10} {'sweep ratio vs one mask at a time':>34}")
    for r in rows:
        print(f"{r['k']:3d} {r['per_mask_s']:10.3f} {r['ratio_vs_one_at_a_time']:34.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
