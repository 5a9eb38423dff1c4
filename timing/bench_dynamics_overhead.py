"""Overhead of --prune-curve-every-epoch: per-epoch dynamics time / epoch training time.

Runs a short real fairseq-train (CPU by default) with the option at its default
settings (importance on 1000 training sentences, 11-point curve on 200 validation
sentences, greedy decoding, several masks per decode) and reads the "head dynamics ...
s, X% of the epoch" log lines.

    python timing/bench_dynamics_overhead.py DATA_BIN [--epochs 2] [--arch-args "..."]
        [--max-tokens 4000] [--cpu/--no-cpu] [--extra "--fp16"]

The goal (issue 12) is <= 15% of an epoch of the full Multi30k training set (29k pairs)
with the quick demo's model shape (6+6 layers, 8 heads, d=64, as in the README's
measured figures; pass --extra "--lr 2e-3 --warmup-updates 300" so that the model
learns within the first epochs: an untrained model decodes every sentence to the
length limit). The dynamics cost is fixed per epoch, the epoch cost grows with the data:
on a small data set the ratio is larger, on IWSLT (160k pairs) smaller.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IWSLT_ARCH = ("--arch transformer --encoder-layers 6 --decoder-layers 6 --encoder-embed-dim 512 "
              "--decoder-embed-dim 512 --encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 "
              "--encoder-attention-heads 8 --decoder-attention-heads 8 "
              "--share-decoder-input-output-embed --dropout 0.3")
TINY_ARCH = ("--arch transformer_iwslt_de_en --encoder-layers 2 --decoder-layers 2 "
             "--encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 "
             "--decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4")
LINE = re.compile(r"head dynamics \(epoch (\d+)\).*: ([\d.]+) s, ([\d.]+)% of the epoch \(([\d.]+) s\)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--arch-args", default=TINY_ARCH, help="model flags (default: tiny; "
                   "for the IWSLT recipe pass the string in IWSLT_ARCH of this file)")
    p.add_argument("--iwslt", action="store_true", help="use the IWSLT recipe's model")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--no-cpu", action="store_true", help="train on the GPU")
    p.add_argument("--extra", default="", help="more fairseq-train flags, e.g. '--fp16'")
    p.add_argument("--save-dir", default=None)
    args = p.parse_args(argv)
    save = args.save_dir or tempfile.mkdtemp(prefix="bench_dyn_")
    cmd = ["fairseq-train", args.data, "--save-dir", save, "--user-dir",
           os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune",
           *shlex.split(IWSLT_ARCH if args.iwslt else args.arch_args),
           "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "5e-4",
           "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", str(args.max_tokens), "--max-epoch", str(args.epochs),
           "--no-progress-bar", "--log-interval", "1000", "--num-workers", "0",
           "--no-epoch-checkpoints", "--prune-curve-every-epoch",
           *(["--cpu"] if not args.no_cpu else []), *shlex.split(args.extra)]
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return proc.returncode
    rows = [tuple(float(x) for x in m.groups()) for m in LINE.finditer(proc.stderr + proc.stdout)]
    if not rows:
        sys.stderr.write("no 'head dynamics' lines in the log\n")
        return 1
    print(f"{'epoch':>5} {'dynamics s':>11} {'epoch s':>9} {'overhead':>9}")
    for epoch, sec, pct, ep_sec in rows:
        print(f"{int(epoch):5d} {sec:11.1f} {ep_sec:9.1f} {pct:8.1f}%")
    mean = sum(r[1] for r in rows) / sum(r[3] for r in rows)
    print(f"overhead: {100 * mean:.1f}% of the epoch time (goal <= 15% of a full Multi30k epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
