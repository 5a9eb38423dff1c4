"""Budgets: heads:N% removes exactly that share (rounded by share_count) in the order
asked, params:N% the fewest heads of the order that free at least that share of the
parameters; budgets that cannot be met, and malformed ones, fail with one line."""

import json
import subprocess

import pytest

from conftest import run
from fairseq_headprune.analysis.budget import parse_budget
from fairseq_headprune.errors import HeadPruneError

SHAPE = {"E": [4, 4], "A": [4, 4], "D": [4, 4]}


@pytest.mark.parametrize("text, message", [
    ("heads:150%", "150% is more than the whole model"),
    ("flops:10%", "unknown unit 'flops'"),
    ("latency:30%", "latency budgets are speed-ups"),
    ("latency:0.8x", "a speed-up below 1x is a slow-down"),
    ("heads:50", "is not UNIT:N%"),
    ("heads:2x", "heads budgets are percentages"),
])
def test_bad_budgets(text, message):
    with pytest.raises(HeadPruneError, match=message) as e:
        parse_budget(text)
    assert "\n" not in str(e.value)
    assert parse_budget("params:30%") == ("params", 0.3)
    assert parse_budget("latency:1.3x") == ("latency", 1.3)


def prune(data_dir, ckpt, out, *extra, check=True):
    cmd = ["fairseq-headprune", "prune", data_dir, "--path", ckpt, "--cpu", "--out", str(out), *extra]
    if check:
        run(cmd)
        return json.loads(out.with_suffix(".export.json").read_text())
    return subprocess.run(cmd, capture_output=True, text=True)


def test_heads_budget_in_weight_norm_order(data_dir, trained_ckpt, tmp_path):
    from helpers import load

    from fairseq_headprune.analysis.ranking import weight_norm_scores

    rep = prune(data_dir, trained_ckpt, tmp_path / "h.pt", "--budget", "heads:50%", "--order", "weight-norm")
    assert rep["selection"]["met"] == {"unit": "heads", "asked": 0.5, "heads": 24, "removed": 12}
    _, model = load(trained_ckpt, data_dir)
    scores = weight_norm_scores(model)
    lowest = sorted((v, k, l, h) for k, rows in scores.items() for l, row in enumerate(rows, 1)
                    for h, v in enumerate(row, 1))[:12]
    assert rep["removed_in_all"]["count"] == 12
    spec = {f"{k}:{l}:{h}" for _, k, l, h in lowest}
    from fairseq_headprune.heads import HeadSet

    assert {f"{k}:{l}:{h}" for k, l, h in HeadSet.parse(rep["removed_in_all"]["spec"], SHAPE)} == spec


def test_params_budget_is_the_fewest_heads_that_reach_it(data_dir, trained_ckpt, tmp_path):
    rep = prune(data_dir, trained_ckpt, tmp_path / "p.pt", "--budget", "params:3%", "--order", "random",
                "--order-seed", "4")
    met, p = rep["selection"]["met"], rep["parameters"]["total"]
    assert met["removed"] == p["removed"] and met["parameters"] == p["before"]
    assert p["removed"] >= 0.03 * p["before"]
    per_head = p["removed"] // rep["removed_in_all"]["count"]  # every head of this model costs the same
    assert p["removed"] - per_head < 0.03 * p["before"]  # one head fewer would not do


@pytest.mark.parametrize("extra, message", [
    (["--budget", "heads:90%", "--order", "weight-norm", "--min-heads-per-layer", "2"],
     "lets only 12 go (allowed: up to heads:50.0%)"),
    (["--budget", "params:60%", "--order", "weight-norm"], "frees only"),
    (["--budget", "heads:50%"], "--budget with --order importance needs --importance FILE"),
    (["--order", "weight-norm"], "prune needs --budget"),
])
def test_budgets_that_cannot_be_met(data_dir, trained_ckpt, tmp_path, extra, message):
    p = prune(data_dir, trained_ckpt, tmp_path / "x.pt", *extra, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert message in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.pt").exists()


def test_heads_budget_in_ablation_order(data_dir, trained_ckpt, tmp_path):
    """Masking a head alone lowered BLEU by 0.1 x (its number + its layer): the budget
    removes the heads whose ablation hurt least."""
    from fairseq_headprune.heads import HeadSet

    heads = HeadSet.all_heads(SHAPE)
    abl = tmp_path / "ablation.json"
    abl.write_text(json.dumps({"format": "fairseq-headprune/ablation-v1", "settings": {"metric": "bleu"},
                               "shape": SHAPE, "heads": [{"kind": k, "layer": l, "head": h,
                                                          "delta": -0.1 * (h + l)} for k, l, h in heads]}))
    rep = prune(data_dir, trained_ckpt, tmp_path / "a.pt", "--budget", "heads:25%", "--order",
                "ablation", "--ablation", str(abl))
    removed = HeadSet.parse(rep["removed_in_all"]["spec"], SHAPE)
    # the 3 heads that hurt 0.2 first, then 3 of the 6 that hurt 0.3 (ties: kind, layer, head)
    assert set(removed) == {(k, 1, 1) for k in "EAD"} | {("E", 1, 2), ("E", 2, 1), ("A", 1, 2)}
    assert rep["selection"]["ablation"] == str(abl)
