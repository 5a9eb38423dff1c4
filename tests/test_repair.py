"""Repair without gradient steps: bias compensation keeps each pruned module's mean
output on the calibration tokens exactly where the full module had it (same inputs),
and an exported repaired checkpoint reloads with no spec and equals the repaired
in-memory model."""

import copy
import json
import os

import pytest
import torch

from conftest import run
from fairseq_headprune.analysis.importance import query_padding
from fairseq_headprune.analysis.repair import compensate_bias, context_means
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import attention_modules, remove_heads


@pytest.fixture(scope="module")
def small(data_dir):
    from helpers import build

    task, model, _ = build(data_dir, seed=5)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batches = [ds.collater([ds[i] for i in range(j, j + 10)]) for j in (0, 10, 20)]
    return task, model.eval(), batches


def module_mean_output(model, key, batches):
    """Mean of module ``key``'s output over the non-padding query positions."""
    module = attention_modules(model)[key]
    total, count, seen = 0, 0, {}
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o[0]))
    try:
        with torch.no_grad():
            for sample in batches:
                model(**sample["net_input"])
                keep = ~query_padding(model, sample)[key[0]]
                total = total + seen["out"].double()[keep].sum(0)
                count += int(keep.sum())
    finally:
        handle.remove()
    return total / count


@pytest.mark.parametrize("key, heads", [(("E", 1), [1, 3]), (("A", 3), [2, 3, 4]), (("D", 2), [4])])
def test_bias_compensation_keeps_the_mean_output(small, key, heads):
    _, model, batches = small
    full = module_mean_output(model, key, batches)
    means = context_means(model, batches)
    spec = HeadSet((key[0], key[1], h) for h in heads)
    plain, repaired = copy.deepcopy(model), copy.deepcopy(model)
    remove_heads(plain, spec)
    compensate_bias(repaired, spec, means)
    remove_heads(repaired, spec)
    # only this module changed, so its inputs are the full model's
    torch.testing.assert_close(module_mean_output(repaired, key, batches), full, rtol=1e-5, atol=1e-6)
    assert (module_mean_output(plain, key, batches) - full).abs().max() > 1e-3


def test_context_means_count_only_real_tokens(small):
    """Padded batches give the means of one-sentence batches (no padding at all)."""
    task, model, batches = small
    ds = task.dataset("valid")
    singles = [ds.collater([ds[i]]) for i in range(10)]  # the first batch, one sentence each
    batched, alone = context_means(model, batches[:1]), context_means(model, singles)
    assert set(batched) == set(attention_modules(model))
    for key in batched:
        torch.testing.assert_close(alone[key], batched[key], rtol=1e-5, atol=1e-7)


def test_export_with_bias_repair_reloads_and_equals_the_repaired_model(data_dir, trained_ckpt, tmp_path):
    from helpers import batch, load

    out = tmp_path / "rep.pt"
    run(["fairseq-headprune", "export", data_dir, "--path", trained_ckpt, "--cpu",
         "--prune-heads", "E:1:1-2 A:2:3 D:1:4", "--repair", "bias", "--calibration-subset", "valid",
         "--calibration-sentences", "50", "--out", str(out)])
    report = json.loads((tmp_path / "rep.export.json").read_text())
    assert report["repair"]["calibration"]["sentences"] == 50
    assert set(report["repair"]["bias_change_norm"]) == {"E:1", "A:2", "D:1"}
    # the same repair in memory, from the same 50 sentences
    from fairseq_headprune.analysis.data import DataSpec, collate, select

    task, model = load(trained_ckpt, data_dir)
    sel = select(task, [model], DataSpec(subset="valid", max_sentences=50, seed=1, max_tokens=12000,
                                         batching_seed=1))
    spec = HeadSet.parse("E:1:1-2 A:2:3 D:1:4", {"E": [4, 4], "A": [4, 4], "D": [4, 4]})
    compensate_bias(model, spec, context_means(model, collate(task, "valid", sel.batches)))
    remove_heads(model, spec)
    task2, reloaded = load(str(out), data_dir)
    sample = batch(task2, "test", 6)
    with torch.no_grad():
        a = model(**sample["net_input"])[0]
        b = reloaded(**sample["net_input"])[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not os.path.exists(str(out) + ".tmp")
