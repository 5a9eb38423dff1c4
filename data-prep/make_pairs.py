"""Sentence-pair classification from a parallel corpus: is sentence B the translation of
sentence A? For every pair (a_i, b_i): one positive (a_i, b_i) and one negative, a_i
with another sentence's b_j: for even i a near miss (of CANDIDATES other sentences drawn
at random, the one whose words overlap b_i's most, by Jaccard similarity of word sets),
for odd i a random one. A b_j equal to b_i is never a negative. Labels are balanced
(half "match", half "mismatch"); everything is seeded and deterministic.

usage: make_pairs.py SRC_FILE TGT_FILE OUT_PREFIX [--seed S] [--candidates N]
writes OUT_PREFIX.input0 (A), .input1 (B), .label, .kind (positive|near-miss|random)."""

import argparse
import random


def words(line: str) -> frozenset:
    """The word set of a line, subword-nmt's '@@ ' joins undone."""
    return frozenset(line.replace("@@ ", "").split())


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def make_pairs(src, tgt, seed=1, candidates=100):
    """[(a, b, label, kind)], two per input pair."""
    if len(src) != len(tgt):
        raise SystemExit(f"make_pairs.py: {len(src)} source lines but {len(tgt)} target lines")
    if len(set(tgt)) < 2:
        raise SystemExit("make_pairs.py: need at least two different target sentences")
    rng = random.Random(seed)
    sets = [words(t) for t in tgt]
    n, out = len(tgt), []
    for i, (a, b) in enumerate(zip(src, tgt)):
        out.append((a, b, "match", "positive"))
        pool = [j for j in (rng.randrange(n) for _ in range(candidates)) if tgt[j] != b]
        while not pool:  # every draw was b itself (or a copy): draw until another
            j = rng.randrange(n)
            pool = [j] if tgt[j] != b else []
        if i % 2 == 0:
            j = max(pool, key=lambda j: (jaccard(sets[i], sets[j]), -j))
            out.append((a, tgt[j], "mismatch", "near-miss"))
        else:
            out.append((a, tgt[pool[0]], "mismatch", "random"))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src_file")
    p.add_argument("tgt_file")
    p.add_argument("out_prefix")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--candidates", type=int, default=100)
    args = p.parse_args()
    if args.candidates < 1:
        raise SystemExit(f"make_pairs.py: --candidates {args.candidates} (allowed: >= 1)")
    with open(args.src_file, encoding="utf-8") as f:
        src = f.read().split("\n")[:-1]
    with open(args.tgt_file, encoding="utf-8") as f:
        tgt = f.read().split("\n")[:-1]
    rows = make_pairs(src, tgt, args.seed, args.candidates)
    for col, ext in enumerate(("input0", "input1", "label", "kind")):
        with open(f"{args.out_prefix}.{ext}", "w", encoding="utf-8") as f:
            f.writelines(r[col] + "\n" for r in rows)


if __name__ == "__main__":
    main()
