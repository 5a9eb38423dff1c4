"""The analysis core: one data selector (seeded samples, never the shortest, no dropped
sentence), one mask evaluator always composed with --mask-heads, one significance rule
(unchanged output is never significant), one rounding rule, one loss unit (bits)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu

from conftest import ROOT, generate_lines, run
from fairseq_headprune.analysis import significance
from fairseq_headprune.analysis.curve import ablation_order, pruning_curve
from fairseq_headprune.analysis.data import DataSpec, select
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet, share_count

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]
GEN = ["--cpu", "--beam", "3", "--remove-bpe", "--max-tokens", "4000"]


@pytest.fixture(scope="module")
def loaded(data_dir, trained_ckpt):
    from helpers import load

    return load(trained_ckpt, data_dir)


# ------------------------------------------------------------------ rounding (defect 5)
def test_one_rounding_rule_for_curves_and_export(data_dir):
    from fairseq_headprune.analysis.export import select_least_important
    from fairseq_headprune.models.head_model import model_head_shape
    from helpers import build

    assert [share_count(f, 10) for f in (0.25, 0.05, 0.15, 0.35, 0.5)] == [3, 1, 2, 4, 5]
    _, model, _ = build(data_dir)
    shape = model_head_shape(model)  # E: 2 layers x 4 heads = 8
    scores = {"E": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]}
    order = [("E", 1, 1), ("E", 1, 2), ("E", 1, 3), ("E", 1, 4),
             ("E", 2, 1), ("E", 2, 2), ("E", 2, 3), ("E", 2, 4)]
    frac = 0.3125  # 2.5 heads of 8: halves go up in both
    points = pruning_curve(shape, ("E",), [frac], lambda m: {}, order=order)
    exported = select_least_important(model, scores, frac, kinds=("E",))
    assert points[0]["masked"] == len(exported) == 3
    assert HeadSet.parse(points[0]["spec"], shape) == exported


# ------------------------------------------------------------------ data (defect 6)
def test_sentence_cap_is_a_seeded_sample_not_the_shortest(loaded):
    task, model = loaded
    spec = DataSpec("test", max_sentences=40, seed=7, max_tokens=4000,
                    required_batch_size_multiple=8)
    a, b = select(task, [model], spec), select(task, [model], spec)
    assert a.ids == b.ids and a.nsentences == 40  # the same every run, every epoch
    other = select(task, [model], DataSpec("test", max_sentences=40, seed=8, max_tokens=4000))
    assert other.ids != a.ids
    d = a.describe()
    assert (d["sentences"], d["of"], d["seed"]) == (40, 120, 7)
    ds = task.dataset("test")
    length = lambda ids: float(np.mean([ds.src_sizes[i] for i in ids]))
    everything = length(range(len(ds)))
    shortest = length(ds.ordered_indices()[:40])  # what "the first batches" gave
    assert abs(length(a.ids) - everything) < abs(shortest - everything)
    with pytest.raises(HeadPruneError, match="max-sentences 0 is not allowed"):
        DataSpec("test", max_sentences=0, max_tokens=4000)


def test_no_cap_gives_fairseq_generates_batches_and_drops_no_sentence(loaded):
    task, model = loaded
    from fairseq import utils

    sel = select(task, [model], DataSpec("test", max_tokens=1000, required_batch_size_multiple=8))
    itr = task.get_batch_iterator(
        dataset=task.dataset("test"), max_tokens=1000,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        required_batch_size_multiple=8, seed=1, disable_iterator_cache=True)
    fairseq_batches = [list(map(int, b)) for b in itr.frozen_batches]
    n = len(fairseq_batches)
    assert sel.batches[:n] == fairseq_batches
    assert sel.nsentences == 120 and sorted(sel.ids) == list(range(120))
    # a sample of 60 batched by 8s: fairseq's batch_by_size would drop the last 4
    sixty = select(task, [model], DataSpec("test", max_sentences=60, max_tokens=4000,
                                           required_batch_size_multiple=8))
    assert sixty.nsentences == 60 and [len(b) for b in sixty.batches] == [56, 4]


# ------------------------------------------------------------------ significance (defect 1)
def test_unchanged_output_is_never_significant():
    hyps = ["a b c", "d e f", "g h"]
    refs = ["a b c", "d e x", "g h i"]
    r = significance.paired_bootstrap("bleu", hyps, list(hyps), refs, n_samples=100)
    assert r["identical"] and r["delta"] == 0 and r["p_value"] == pytest.approx(1 / 101)
    assert not significance.significant(r["p_value"], 0.05, r["identical"], r["delta"])
    # different output, same score on every resample (BLEU 0 on two sentences): p = 1/101
    r = significance.paired_bootstrap("bleu", ["x y", "z"], ["q", "w v"], refs[:2], n_samples=100)
    assert not r["identical"] and r["delta"] == 0 and r["p_value"] == pytest.approx(1 / 101)
    assert not significance.significant(r["p_value"], 0.05, r["identical"], r["delta"])
    with pytest.raises(HeadPruneError, match="--alpha 5"):
        significance.check_settings(5, 1000, 1)


def test_one_head_unchanged_layer_is_not_significant(data_dir, trained_ckpt, tmp_path):
    run(["fairseq-headprune", "one-head", data_dir, "--path", trained_ckpt, *GEN,
         "--gen-subset", "valid", "--results-dir", str(tmp_path), "--kinds", "E",
         "--max-eval-sentences", "2", "--bootstrap-samples", "100"])
    obj = json.loads((tmp_path / "one_head.json").read_text())
    rows = obj["rows"]
    assert rows and obj["settings"]["eval_data"]["sentences"] == 2
    assert any(r["delta"] == 0 and r["p_value"] < 0.01 for r in rows)  # what sacrebleu says
    for r in rows:
        assert r["significant"] == (r["p_value"] < 0.01 and not r["identical"] and r["delta"] != 0)
    md = (tmp_path / "one_head.md").read_text()
    assert "**+0.00**" not in md


# ------------------------------------------------------------------ ablation order (defect 3)
def test_ablation_order_reads_the_metric_direction():
    def abl(metric, deltas):
        heads = [{"kind": "E", "layer": 1, "head": h, "delta": d} for h, d in enumerate(deltas, 1)]
        return {"format": "fairseq-headprune/ablation-v1", "settings": {"metric": metric},
                "heads": heads}

    # loss: masking head 1 raises the loss most (it matters most), head 3 lowers it
    assert ablation_order(abl("loss", [2.0, 0.1, -0.5]), ("E",)) == [
        ("E", 1, 3), ("E", 1, 2), ("E", 1, 1)]
    # BLEU: masking head 1 lowers BLEU most (it matters most)
    assert ablation_order(abl("bleu", [-2.0, -0.1, 0.5]), ("E",)) == [
        ("E", 1, 3), ("E", 1, 2), ("E", 1, 1)]
    with pytest.raises(HeadPruneError, match="not a fairseq-headprune/ablation-v1 file"):
        ablation_order({"heads": []}, ("E",))


# ------------------------------------------------------------------ --mask-heads (defect 2), units (8)
def validate_nll_bits(data, ckpt, *extra):
    p = run(["fairseq-validate", data, "--path", ckpt, "--valid-subset", "valid", "--cpu",
             "--max-tokens", "4000", *USER, *extra])
    m = re.search(r"\| nll_loss ([0-9.]+) \|", p.stdout + p.stderr)
    assert m, (p.stdout + p.stderr)[-2000:]
    return float(m.group(1))


def generate_bleu(data, ckpt, *extra):
    hyps, refs = generate_lines(["fairseq-generate", data, "--path", ckpt, *GEN,
                                 "--gen-subset", "valid", *USER, *extra])
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score


def test_curve_keeps_the_fixed_mask(data_dir, trained_ckpt, tmp_path):
    mask = "A:2:*"
    run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN,
         "--gen-subset", "valid", "--results-dir", str(tmp_path), "--mask-heads", mask,
         "--importance-subset", "valid", "--prune-step", "0.5", "--kinds", "A,D"])
    obj = json.loads((tmp_path / "curve.json").read_text())
    pts = obj["curves"]["AD"]
    assert [p["masked"] for p in pts] == [0, 6, 12]  # 16 A,D heads minus the 4 masked
    assert pts[0]["bleu"] == pytest.approx(generate_bleu(data_dir, trained_ckpt, "--mask-heads", mask),
                                           abs=1e-9)
    assert pts[0]["bleu"] != pytest.approx(generate_bleu(data_dir, trained_ckpt), abs=1e-6)
    spec = tmp_path / "specs" / "curve_AD_050.json"
    assert "A:2:1-4" in json.loads(spec.read_text())["spec"]
    assert pts[1]["bleu"] == pytest.approx(
        generate_bleu(data_dir, trained_ckpt, "--mask-heads", f"@{spec}"), abs=1e-9)
    # loss in bits per token, as fairseq prints it
    assert obj["meta"]["loss_unit"].startswith("bits per target token")
    assert pts[0]["loss"] == pytest.approx(
        validate_nll_bits(data_dir, trained_ckpt, "--mask-heads", mask), abs=6e-4)
    # importance was estimated with the mask on, and masked heads are not candidates
    imp = json.loads((tmp_path / "importance.json").read_text())
    assert imp["meta"]["masked_during_estimate"] == "A:2:1-4"
    assert all(h[:2] != ("A", 2) for p in pts for h in HeadSet.parse(p["spec"], {"A": [4, 4], "D": [4, 4], "E": [4, 4]}))


def test_heads_imports_without_torch_or_fairseq():
    code = ("import sys; sys.path.insert(0, %r); import fairseq_headprune.heads as h; "
            "assert h.HeadSpec.parse('E:1:2').text == 'E:1:2'; "
            "assert 'torch' not in sys.modules and 'fairseq' not in sys.modules" % ROOT)
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd="/")
    assert p.returncode == 0, p.stderr
