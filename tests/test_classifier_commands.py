"""Every command on an encoder classifier (fairseq's sentence_prediction, a small
roberta_base trained by stock fairseq-train): the accuracy and loss they report ==
fairseq-validate's (full model; a checkpoint exported without heads == the masked
model's), accuracy/F1/MCC == scikit-learn's, the paired bootstrap == an independent
resampling with sacrebleu's draws, the t-test == scipy's."""

import json
import os
import re

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import f1_score, matthews_corrcoef

from conftest import ROOT, run
from fairseq_headprune.analysis import scoring, significance
from fairseq_headprune.heads import HeadSet

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune")]
CPU = ["--cpu", "--batch-size", "8"]


def validate(data, ckpt, subset="test", task="sentence_prediction"):
    """fairseq-validate's loss (bits per example, 3 decimals) and accuracy (1 decimal)."""
    p = run(["fairseq-validate", data, "--path", ckpt, *USER, "--task", task, "--criterion",
             "sentence_prediction", "--valid-subset", subset, *CPU])
    line = next(l for l in (p.stdout + p.stderr).splitlines() if "valid on" in l)
    return (float(re.search(r"\| loss ([\d.]+)", line).group(1)),
            float(re.search(r"\| accuracy ([\d.]+)", line).group(1)))


@pytest.fixture(scope="module")
def analysed(pairs_dir, classifier_ckpt, tmp_path_factory):
    """importance, curve, ablate (two domains), one-head on the classifier."""
    data, out = os.path.join(pairs_dir, "bin"), tmp_path_factory.mktemp("clf")
    common = [data, "--path", classifier_ckpt, *CPU, "--results-dir", str(out)]
    run(["fairseq-headprune", "importance", *common, "--importance-subset", "valid"])
    run(["fairseq-headprune", "curve", *common, "--importance", str(out / "importance.json"),
         "--prune-step", "0.25"])
    run(["fairseq-headprune", "ablate", *common, "--gen-subset", "test,test2",
         "--bootstrap-samples", "300"])
    run(["fairseq-headprune", "one-head", *common, "--bootstrap-samples", "300"])
    return data, out


def test_curve_scores_equal_fairseq_validate(analysed, classifier_ckpt, tmp_path):
    data, out = analysed
    curve = json.loads((out / "curve.json").read_text())
    assert curve["settings"]["metric"] == "accuracy" and list(curve["curves"]) == ["E"]
    points = curve["curves"]["E"]
    full, half = points[0], points[2]
    assert (full["masked"], half["masked"]) == (0, 4)
    loss, acc = validate(data, classifier_ckpt)
    assert full["loss"] == pytest.approx(loss, abs=5e-4) and full["accuracy"] == pytest.approx(acc, abs=0.05)
    # the masked model's numbers == a checkpoint without those heads, through fairseq-validate
    small = tmp_path / "half.pt"
    run(["fairseq-headprune", "export", data, "--path", classifier_ckpt, "--cpu",
         "--prune-heads", half["spec"], "--out", str(small)])
    loss, acc = validate(data, str(small), task="sentence_prediction_headprune")
    assert half["loss"] == pytest.approx(loss, abs=5e-4) and half["accuracy"] == pytest.approx(acc, abs=0.05)
    header = (out / "curve.csv").read_text().splitlines()[0]
    assert header == "curve,fraction,target,masked,accuracy,mcc,loss_bits_per_example,spec"
    assert os.path.getsize(out / "curve.png") > 0


def test_ablation_records_rederive(analysed):
    """Each head's accuracy, bootstrap p and t-test p from its saved predictions."""
    _, out = analysed
    obj = json.loads((out / "ablation.json").read_text())
    base = obj["baseline"]
    assert obj["settings"]["metric"] == "accuracy" and len(obj["heads"]) == 8
    refs, base_hyps = base["refs"], base["hyps"]
    right = lambda hyps: np.array([h == r for h, r in zip(hyps, refs)], float)
    assert base["score"] == pytest.approx(100 * right(base_hyps).mean(), abs=1e-9)
    idx = np.random.default_rng(12345).choice(len(refs), size=(300, len(refs)), replace=True)
    changed = 0
    for rec in obj["heads"]:
        hyps = (out / "ablation_hyps" / f"{rec['spec'].replace(':', '_')}.txt").read_text().splitlines()
        assert rec["score"] == pytest.approx(100 * right(hyps).mean(), abs=1e-9)
        a, b = right(base_hyps), right(hyps)
        diffs = np.abs(100 * b[idx].mean(1) - 100 * a[idx].mean(1))
        p = (np.sum(diffs - diffs.mean() > abs(rec["delta"])) + 1) / 301
        assert rec["p_value"] == pytest.approx(p, abs=1e-12)
        if (a != b).any():
            changed += 1
            assert rec["p_ttest"] == pytest.approx(ttest_rel(b, a).pvalue, rel=1e-9)
        else:
            assert rec["p_ttest"] == 1.0 and not rec["significant"]
    assert changed >= 1
    cross = json.loads((out / "cross_domain.json").read_text())
    assert cross["n"] == 8 and cross["metric"] == "accuracy"


def test_one_head_on_a_classifier(analysed):
    _, out = analysed
    obj = json.loads((out / "one_head.json").read_text())
    assert [(r["kind"], r["layer"]) for r in obj["rows"]] == [("E", 1), ("E", 2)]
    for r in obj["rows"]:
        assert r["score"] == r["select_scores"][str(r["best_head"])]
        assert r["delta"] == pytest.approx(r["score"] - obj["baseline"]["score"])
    assert "encoder self-attention" in (out / "one_head.md").read_text()


def test_budgets_and_bench_on_a_classifier(analysed, classifier_ckpt, tmp_path):
    data, out = analysed
    run(["fairseq-headprune", "compare-budgets", data, "--path", classifier_ckpt, *CPU,
         "--results-dir", str(tmp_path), "--budgets", "heads:50%", "--orders", "importance",
         "--repairs", "none,layerwise", "--calibration-sentences", "40",
         "--importance", str(out / "importance.json")])
    obj = json.loads((tmp_path / "budgets.json").read_text())
    # the layer-wise repair runs on an encoder-only model too: same heads, its own scores
    fixed = obj["rows"][1]
    assert fixed["repair"] == "layerwise" and fixed["spec"] == obj["rows"][0]["spec"]
    assert fixed["loss"] != obj["rows"][0]["loss"]
    curve = json.loads((out / "curve.json").read_text())["curves"]["E"]
    row, half = obj["rows"][0], curve[2]
    # the removed model of the budget == the curve's masked point at 50%
    assert HeadSet.parse(row["spec"], {"E": [4, 4]}) == HeadSet.parse(half["spec"], {"E": [4, 4]})
    assert row["accuracy"] == pytest.approx(half["accuracy"], abs=1e-9)
    assert row["loss"] == pytest.approx(half["loss"], rel=1e-5)
    assert obj["baseline"]["accuracy"] == pytest.approx(curve[0]["accuracy"], abs=1e-9)
    assert "accuracy" in (tmp_path / "budgets.md").read_text()
    run(["fairseq-headprune", "bench", data, "--path", classifier_ckpt, "--cpu", "--results-dir",
         str(tmp_path / "bench"), "--prune-heads", row["spec"], "--batch-sizes", "8",
         "--bench-sentences", "16", "--repeats", "1", "--warmup", "0"])
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert {r["part"] for r in rows} == {"encoder"}
    assert {r["variant"] for r in rows} == {"full", "masked", "removed"}


def test_classifier_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    for labels in (["0", "1"], ["entailment", "neutral", "contradiction"]):
        refs = list(rng.choice(labels, 60))
        hyps = list(rng.choice(labels, 60))
        classes = scoring.label_classes(hyps, refs)
        acc = scoring.score("accuracy", hyps, refs)["score"]
        assert acc == pytest.approx(100 * np.mean([h == r for h, r in zip(hyps, refs)]))
        mcc = scoring.score("mcc", hyps, refs)["score"]
        assert mcc == pytest.approx(100 * matthews_corrcoef(refs, hyps), abs=1e-9)
        if labels == ["0", "1"]:
            f1 = scoring.score("f1", hyps, refs)["score"]
            assert f1 == pytest.approx(100 * f1_score(refs, hyps, pos_label="1"), abs=1e-9)
        # the resampled confusion matrices: each resample's MCC == scikit-learn's
        rows = rng.choice(60, size=(5, 60))
        per = scoring.from_confusion("mcc", scoring.confusion(hyps, refs, classes, rows), classes)
        for k, r in enumerate(rows):
            ref_k, hyp_k = [refs[i] for i in r], [hyps[i] for i in r]
            assert per[k] == pytest.approx(100 * matthews_corrcoef(ref_k, hyp_k), abs=1e-9)


def test_unchanged_predictions_are_never_significant():
    refs = ["1", "0"] * 20
    r = significance.paired_bootstrap("accuracy", refs, list(refs), refs, n_samples=100)
    assert r["identical"] and r["delta"] == 0 and r["p_ttest"] == 1.0
    assert not significance.significant(r["p_value"], 0.01, r["identical"], r["delta"])


@pytest.mark.parametrize("extra, message", [
    (["--metric", "bleu"], "--metric bleu does not fit this classifier (allowed: accuracy, mcc"),
    (["--kinds", "A"], "--kinds A: this model has no encoder-decoder attention"),
])
def test_wrong_options_for_a_classifier(pairs_dir, classifier_ckpt, tmp_path, extra, message):
    import subprocess

    from test_bad_specs_and_files import one_line

    p = subprocess.run(["fairseq-headprune", "ablate", os.path.join(pairs_dir, "bin"), "--path",
                        classifier_ckpt, "--cpu", "--results-dir", str(tmp_path / "r"), *extra],
                       capture_output=True, text=True, cwd=ROOT)
    one_line(p, message)
    assert not os.path.exists(tmp_path / "r" / "ablation.json")
