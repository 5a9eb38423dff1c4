"""Keep-one-head-per-layer (paper Table 2): the chosen head is the best on the
selection subset, and the reported change re-derives from fairseq-generate
--mask-heads + sacrebleu (score and paired bootstrap)."""

import json
import os

from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from conftest import generate_lines, run
from fairseq_headprune.heads import HeadSet
from test_curve import GEN, USER


def test_one_head_table(data_dir, trained_ckpt, tmp_path):
    run(["fairseq-headprune", "one-head", data_dir, "--path", trained_ckpt, *GEN,
         "--results-dir", str(tmp_path), "--kinds", "A", "--bootstrap-samples", "200"])
    obj = json.loads((tmp_path / "one_head.json").read_text())
    rows = obj["rows"]
    assert [(r["kind"], r["layer"]) for r in rows] == [("A", 1), ("A", 2)]
    row = rows[1]
    scores = {int(h): s for h, s in row["select_scores"].items()}
    assert row["best_head"] == max(scores, key=lambda h: (scores[h], -h))
    others = HeadSet(("A", 2, h) for h in range(1, 5) if h != row["best_head"])
    assert HeadSet.parse(row["spec"], {"A": [4, 4]}) == others
    base_h, refs = generate_lines(["fairseq-generate", data_dir, "--path", trained_ckpt, *GEN, *USER])
    sys_h, _ = generate_lines(["fairseq-generate", data_dir, "--path", trained_ckpt, *GEN, *USER,
                                "--mask-heads", row["spec"]])
    metric = BLEU(tokenize="none", force=True)
    assert row["baseline"] == metric.corpus_score(base_h, [refs]).score
    assert row["score"] == metric.corpus_score(sys_h, [refs]).score == scores[row["best_head"]]
    os.environ["SACREBLEU_SEED"] = "12345"
    _, res = PairedTest([("b", base_h), ("s", sys_h)], {"bleu": BLEU(tokenize="none", force=True)},
                        references=[refs], test_type="bs", n_samples=200)()
    assert row["p_value"] == res["BLEU"][1].p_value
    md = (tmp_path / "one_head.md").read_text()
    assert f"{row['delta']:+.2f}" in md and "encoder-decoder attention" in md
    assert "change in BLEU (full model" in md


def test_one_head_chooses_on_a_sample(data_dir, trained_ckpt, tmp_path):
    """--select-sentences N chooses on the seeded N-sentence sample that
    --max-eval-sentences N evaluates (same scores per head), then scores the chosen head
    on the whole evaluation subset."""
    sample, chosen = tmp_path / "sample", tmp_path / "chosen"
    common = [data_dir, "--path", trained_ckpt, *GEN, "--kinds", "A", "--bootstrap-samples", "100"]
    run(["fairseq-headprune", "one-head", *common, "--results-dir", str(sample),
         "--max-eval-sentences", "12"])
    run(["fairseq-headprune", "one-head", *common, "--results-dir", str(chosen),
         "--select-sentences", "12"])
    on_sample = json.loads((sample / "one_head.json").read_text())
    obj = json.loads((chosen / "one_head.json").read_text())
    assert obj["settings"]["select_data"] == on_sample["settings"]["eval_data"]
    assert obj["settings"]["eval_data"] != on_sample["settings"]["eval_data"]
    for a, b in zip(obj["rows"], on_sample["rows"]):
        assert a["select_scores"] == b["select_scores"] and a["best_head"] == b["best_head"]
    assert "chosen on 12 of " in (chosen / "one_head.md").read_text()
    row = obj["rows"][-1]
    sys_h, refs = generate_lines(["fairseq-generate", data_dir, "--path", trained_ckpt, *GEN, *USER,
                                  "--mask-heads", row["spec"]])
    assert row["score"] == BLEU(tokenize="none", force=True).corpus_score(sys_h, [refs]).score
