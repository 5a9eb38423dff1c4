"""data-prep/prepare-pairs.sh: a balanced, deterministic sentence-pair task from
Multi30k that fairseq's own sentence_prediction task loads; negatives are never the
sentence's own translation, and near misses overlap it more than random ones do."""

import os
import pathlib
import subprocess
import sys

from conftest import PAIRS_ARGS, ROOT, prepare_command

sys.path.insert(0, os.path.join(ROOT, "data-prep"))
from make_pairs import jaccard, make_pairs, words  # noqa: E402


def test_pairs_are_balanced_deterministic_and_never_the_translation():
    tgt = [f"a dog runs on grass {i % 7} num{i}" for i in range(50)] + ["a cat sleeps"] * 4
    src = [f"src {i}" for i in range(len(tgt))]
    rows = make_pairs(src, tgt, seed=3, candidates=10)
    assert rows == make_pairs(src, tgt, seed=3, candidates=10)
    assert rows != make_pairs(src, tgt, seed=4, candidates=10)
    assert len(rows) == 2 * len(src) and sum(r[2] == "match" for r in rows) == len(src)
    for i, (pos, neg) in enumerate(zip(rows[::2], rows[1::2])):
        assert pos == (src[i], tgt[i], "match", "positive")
        assert neg[0] == src[i] and neg[1] != tgt[i] and neg[2] == "mismatch"
        assert neg[3] == ("near-miss" if i % 2 == 0 else "random")
    near = [jaccard(words(tgt[i]), words(r[1])) for i, r in enumerate(rows[1::2]) if i % 2 == 0]
    rand = [jaccard(words(tgt[i]), words(r[1])) for i, r in enumerate(rows[1::2]) if i % 2 == 1]
    assert sum(near) / len(near) > sum(rand) / len(rand)


def test_fairseq_sentence_prediction_loads_the_pairs(pairs_dir):
    from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

    out = pathlib.Path(pairs_dir)
    task = SentencePredictionTask.setup_task(SentencePredictionConfig(
        data=str(out / "bin"), num_classes=2, regression_target=False, seed=1))
    for split, n in (("train", 400), ("valid", 40), ("test", 40), ("test2", 40)):
        task.load_dataset(split)
        ds = task.dataset(split)
        assert len(ds) == n
        labels = [int(ds[i]["target"]) for i in range(len(ds))]
        assert sorted(set(labels)) == [0, 1] and labels.count(0) == n // 2
    # the label dictionary's order and the text files agree
    first = (out / "pairs" / "valid" / "valid.label").read_text().split("\n")[0]
    assert task.label_dictionary[int(task.dataset("valid")[0]["target"]) + task.label_dictionary.nspecial] == first
    # same options again: every step skipped, nothing rewritten
    p = subprocess.run(prepare_command("prepare-pairs.sh", out, *PAIRS_ARGS), capture_output=True,
                       text=True)
    assert p.returncode == 0 and "skip (done)" in p.stderr
