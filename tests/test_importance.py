"""Importance against independent computations: finite differences of the loss with
respect to a continuous mask, a brute-force per-sentence loop, and the definitions of
the granularities; normalisation and padding."""

import json
import math
import os

import pytest
import torch

from fairseq_headprune.analysis.importance import (
    batch_gate_gradients,
    compute_importance,
    removed_map,
)
from fairseq_headprune.criterions import sentence_nll
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models import attention_modules, remove_heads


@pytest.fixture(scope="module")
def tiny(tiny_float64):
    _, _, sample = tiny_float64
    # the batch must be padded on both sides for the padding checks to mean anything
    assert sample["net_input"]["src_tokens"].eq(1).any() and sample["target"].eq(1).any()
    return tiny_float64


def per_sentence_fd(model, sample, key, head, eps=1e-6):
    """(L_b(ξ_h = 1+eps) - L_b(ξ_h = 1-eps)) / 2eps for every sentence b."""
    module = attention_modules(model)[key]
    vals = []
    for sign in (1, -1):
        mask = torch.ones(module.orig_num_heads, dtype=torch.float64)
        mask[head] += sign * eps
        module.set_head_mask(mask)
        with torch.no_grad():
            vals.append(sentence_nll(model, sample))
    module.set_head_mask(None)
    return (vals[0] - vals[1]) / (2 * eps)


def test_gate_gradient_equals_finite_difference_per_sentence(tiny):
    _, model, sample = tiny
    grads, finite = batch_gate_gradients(model, sample)
    assert finite
    for key in [("E", 1), ("E", 2), ("A", 1), ("A", 3), ("D", 2)]:
        g, kept = grads[key]
        for head in (0, 3):
            exact = g[:, :, kept.index(head)].sum(0)  # Σ_t ∂L_b/∂ξ_{h,t,b} = ∂L_b/∂ξ_h
            fd = per_sentence_fd(model, sample, key, head)
            torch.testing.assert_close(exact.double(), fd, rtol=1e-5, atol=1e-7)
            assert exact.abs().max() > 1e-4


def test_fisher_equals_squared_finite_difference_gradients(tiny):
    """fisher = Σ_b (∂L_b/∂ξ_h)², each per-sentence gradient from finite differences of
    that sentence's loss (independent of the backward pass)."""
    _, model, sample = tiny
    acc = compute_importance(model, [sample])
    for key in [("E", 2), ("A", 1), ("D", 3)]:
        i = acc.keys.index(key)
        for head in (1, 2):
            fd = per_sentence_fd(model, sample, key, head)
            torch.testing.assert_close(acc.sums["fisher"][i, head], fd.pow(2).sum(), rtol=1e-5, atol=1e-9)
    means = acc.result().means("fisher")["A"][0]
    assert means[1] == pytest.approx(float(acc.sums["fisher"][acc.keys.index(("A", 1)), 1]) / sample["nsentences"])


def test_batched_equals_brute_force_per_sentence_loop(tiny):
    """Padding in a batch changes nothing: sentence-level sums from the padded batch
    equal one-sentence-at-a-time passes."""
    task, model, sample = tiny
    acc = compute_importance(model, [sample])
    ds = task.dataset("valid")
    singles = [ds.collater([ds[i]]) for i in range(sample["nsentences"])]
    acc1 = compute_importance(model, singles)
    for g in ("sentence", "token", "fisher"):
        torch.testing.assert_close(acc.sums[g], acc1.sums[g], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(acc.tokens, acc1.tokens)
    src_tokens = sum(int(s["net_input"]["src_tokens"].ne(1).sum()) for s in singles)
    tgt_tokens = sum(int(s["target"].ne(1).sum()) for s in singles)
    i_e, i_d = acc.keys.index(("E", 1)), acc.keys.index(("D", 1))
    assert acc.tokens[i_e] == src_tokens and acc.tokens[i_d] == tgt_tokens  # no padding counted
    # batch granularity: |Σ over the batch|, which per-sentence batches turn into Σ|.|
    torch.testing.assert_close(acc1.sums["batch"], acc1.sums["sentence"])
    assert (acc.sums["batch"] <= acc.sums["sentence"] + 1e-12).all()
    assert (acc.sums["sentence"] <= acc.sums["token"] + 1e-12).all()


def test_granularities_follow_their_definitions(tiny):
    _, model, sample = tiny
    grads, _ = batch_gate_gradients(model, sample)
    acc = compute_importance(model, [sample])
    i = acc.keys.index(("A", 2))
    g, _ = grads[("A", 2)]
    pad = sample["target"].eq(1).t().unsqueeze(-1)
    g = g.double().masked_fill(pad, 0)
    torch.testing.assert_close(acc.sums["token"][i, :4], g.abs().sum((0, 1)))
    torch.testing.assert_close(acc.sums["sentence"][i, :4], g.sum(0).abs().sum(0))
    torch.testing.assert_close(acc.sums["batch"][i, :4], g.sum((0, 1)).abs())
    res = acc.result()
    means = res.means("token")["A"][1]
    torch.testing.assert_close(torch.tensor(means, dtype=torch.float64),
                               g.abs().sum((0, 1)) / int((~pad).sum()))


def test_layer_normalisation_and_removed_heads(tiny):
    _, model, sample = tiny
    import copy

    pruned = copy.deepcopy(model)
    remove_heads(pruned, HeadSet([("E", 1, 2), ("D", 3, 1), ("D", 3, 2), ("D", 3, 3), ("D", 3, 4)]))
    res = compute_importance(pruned, [sample]).result(removed_map(pruned))
    scores = res.scores("sentence", normalize=True, eps=0.0)
    for kind, layers in scores.items():
        for l, row in enumerate(layers, 1):
            vals = [v for v in row if v is not None]
            if vals:
                assert math.isclose(math.sqrt(sum(v * v for v in vals)), 1.0, rel_tol=1e-9)
    assert scores["E"][0][1] is None and scores["D"][2] == [None] * 4
    # removing a head leaves the other heads' gradients equal to masking it
    masked = copy.deepcopy(model)
    from fairseq_headprune.models import set_head_mask
    set_head_mask(masked, HeadSet([("E", 1, 2), ("D", 3, 1), ("D", 3, 2), ("D", 3, 3), ("D", 3, 4)]))
    res_m = compute_importance(masked, [sample]).result()
    raw_p = res.means("sentence")["A"]
    raw_m = res_m.means("sentence")["A"]
    torch.testing.assert_close(torch.tensor(raw_p), torch.tensor(raw_m), rtol=1e-6, atol=1e-10)


def test_no_parameter_gradients_are_computed(tiny):
    _, model, sample = tiny
    for p in model.parameters():
        p.grad = None
    batch_gate_gradients(model, sample)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_importance_command(data_dir, trained_ckpt, tmp_path):
    from conftest import run

    out = tmp_path / "imp"
    run(["fairseq-headprune", "importance", data_dir, "--path", trained_ckpt, "--cpu",
         "--results-dir", str(out), "--importance-subset", "valid", "--max-tokens", "2000",
         "--importance-granularity", "token"])
    obj = json.loads((out / "importance.json").read_text())
    assert [len(r) for r in obj["E"]] == [4, 4] and len(obj["A"]) == 2 and len(obj["D"]) == 2
    assert obj["granularity"] == "token" and obj["counts"]["sentences"] == 120
    assert obj["meta"]["checkpoint"] == os.path.abspath(trained_ckpt)
    for k in "EAD":
        assert (out / f"importance_{k}.png").stat().st_size > 1000
        for row in obj[k]:
            assert math.isclose(sum(v * v for v in row), 1.0, rel_tol=1e-6)
    assert (out / "importance.csv").read_text().count("\n") == 1 + 24


def importance_cmd(data, ckpt, out, *extra):
    import subprocess

    return subprocess.run(["fairseq-headprune", "importance", data, "--path", ckpt, "--cpu",
                           "--results-dir", str(out), *extra], capture_output=True, text=True)


def assert_one_line_error(p, message):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert message in p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("extra,message", [
    (["--importance-subset", "nosuchsplit"], "--importance-subset 'nosuchsplit' is not a split of"),
    (["--importance-subset", "valid", "--max-tokens", "3"], "cannot batch subset 'valid'"),
    (["--importance-granularity", "word"], "invalid choice: 'word'"),
])
def test_importance_bad_input(data_dir, trained_ckpt, tmp_path, extra, message):
    assert_one_line_error(importance_cmd(data_dir, trained_ckpt, tmp_path, *extra), message)


def test_importance_on_an_empty_subset(data_dir, trained_ckpt, tmp_path):
    from conftest import run

    for lang in ("de", "en"):
        (tmp_path / f"empty.{lang}").write_text("")
    dest = tmp_path / "bin"
    run(["fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
         "--testpref", str(tmp_path / "empty"), "--destdir", str(dest),
         "--srcdict", os.path.join(data_dir, "dict.de.txt"),
         "--tgtdict", os.path.join(data_dir, "dict.en.txt")])
    p = importance_cmd(str(dest), trained_ckpt, tmp_path / "out", "--importance-subset", "test")
    assert_one_line_error(p, "subset 'test' of")
    assert "empty" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "importance.json").exists()
