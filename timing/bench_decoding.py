#!/usr/bin/env python
"""Decoding and encoder speed of full, masked and removed models, in one run.

    python timing/bench_decoding.py DATA --path CKPT --prune-ratio 0.5 \\
        --importance importance.json --out results/bench [--generate-timing 3] \\
        [-- any further fairseq-headprune bench options, e.g. --threads 1]

    python timing/bench_decoding.py DATA --random-model --prune-ratio 0.5 --out DIR

1. ``--random-model``: first trains a 6-layer, 8-head, d=512 transformer
   (transformer_wmt_en_de) for one update at lr 1e-9 with stock fairseq-train (i.e.
   random initialisation in a real checkpoint), and, with --prune-ratio and no
   --importance, estimates importance on 64 validation sentences.
2. Runs ``fairseq-headprune bench`` (all variants side by side in one process):
   bench.json, bench.csv, bench.png in OUT/bench.
3. ``--generate-timing N``: exports the pruned checkpoint (OUT/pruned.pt) and times the
   real ``fairseq-generate`` on the original and the exported checkpoint, alternating,
   N times each (wall clock, whole process), and checks that the exported checkpoint
   prints the hypotheses ``--mask-heads`` prints on the original:
   OUT/generate_timing.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]


def sh(cmd, **kw):
    print("+ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
        sys.exit(p.returncode)
    return p


def random_model(data, out):
    save = os.path.join(out, "random-6x8-d512")
    ckpt = os.path.join(save, "checkpoint_last.pt")
    if not os.path.exists(ckpt):
        sh(["fairseq-train", data, "--task", "translation", "--arch", "transformer_wmt_en_de",
            "--encoder-layers", "6", "--decoder-layers", "6", "--encoder-attention-heads", "8",
            "--decoder-attention-heads", "8", "--optimizer", "adam", "--lr", "1e-9",
            "--criterion", "cross_entropy", "--max-tokens", "500", "--max-update", "1",
            "--cpu", "--save-dir", save, "--no-progress-bar", "--no-epoch-checkpoints",
            "--no-save-optimizer-state", "--disable-validation", "--num-workers", "0"])
    return ckpt


def main():
    argv = sys.argv[1:]
    passthrough = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--path")
    ap.add_argument("--random-model", action="store_true")
    ap.add_argument("--prune-heads")
    ap.add_argument("--prune-ratio")
    ap.add_argument("--importance")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu", action="store_true", help="force CPU even where CUDA exists")
    ap.add_argument("--generate-timing", type=int, default=0, metavar="N")
    ap.add_argument("--gen-subset", default="test")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    if a.random_model:
        a.path = random_model(a.data, a.out)
    if not a.path:
        ap.error("give --path CKPT or --random-model")
    cpu = ["--cpu"] if a.cpu else []
    if a.prune_ratio and not a.importance:
        imp_dir = os.path.join(a.out, "importance")
        sh(["fairseq-headprune", "importance", a.data, "--path", a.path, "--results-dir",
            imp_dir, "--importance-subset", "valid", "--importance-max-sentences", "64",
            "--max-tokens", "2000", *cpu])
        a.importance = os.path.join(imp_dir, "importance.json")
    select = (["--prune-heads", a.prune_heads] if a.prune_heads else
              ["--prune-ratio", a.prune_ratio, "--importance", a.importance])
    p = sh(["fairseq-headprune", "bench", a.data, "--path", a.path, *select, "--results-dir",
            os.path.join(a.out, "bench"), "--gen-subset", a.gen_subset, *cpu, *passthrough])
    print(p.stdout)

    if a.generate_timing:
        pruned = os.path.join(a.out, "pruned.pt")
        sh(["fairseq-headprune", "export", a.data, "--path", a.path, *select, "--out", pruned])
        heads = os.path.join(a.out, "pruned.heads.json")
        gen = ["fairseq-generate", a.data, "--gen-subset", a.gen_subset, "--beam", "5",
               "--remove-bpe", "--max-tokens", "4000", *USER, *cpu]

        def hyps(p):
            return [l for l in p.stdout.splitlines() if l.startswith(("H-", "D-"))]

        times = {"original": [], "exported": []}
        outs = {}
        for r in range(a.generate_timing):
            for name, path in (("original", a.path), ("exported", pruned))[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                outs[name] = sh(gen + ["--path", path])
                times[name].append(time.perf_counter() - t0)
        masked = hyps(sh(gen + ["--path", a.path, "--mask-heads", "@" + heads]))
        res = {
            "command": " ".join(gen),
            "seconds": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "speedup": statistics.median(times["original"]) / statistics.median(times["exported"]),
            "exported_equals_masked": hyps(outs["exported"]) == masked,
            "file_bytes": {"original": os.path.getsize(a.path), "exported": os.path.getsize(pruned)},
        }
        with open(os.path.join(a.out, "generate_timing.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"fairseq-generate (whole process, beam 5): original "
              f"{res['median_s']['original']:.2f}s, exported {res['median_s']['exported']:.2f}s, "
              f"speed-up {res['speedup']:.3f}x; exported == masked: {res['exported_equals_masked']}")


if __name__ == "__main__":
    main()
