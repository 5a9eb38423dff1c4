"""Repair without gradient steps: bias compensation keeps each pruned module's mean
output on the calibration tokens exactly where the full module had it (same inputs);
the layer-wise reconstruction leaves, at every module it repairs, a residual that is
orthogonal to each kept head's output and has zero mean (the least-squares optimum,
checked by forward passes); an exported repaired checkpoint reloads with no spec and
equals the repaired in-memory model."""

import copy
import json
import os

import pytest
import torch

from conftest import run
from fairseq_headprune.analysis.importance import query_padding
from fairseq_headprune.analysis.importance import gated
from fairseq_headprune.analysis.repair import (
    Calibration, calibration_stats, compensate_bias, context_means, reconstruct_layerwise, repair,
    rescale_heads, residual_sums, solve_scales,
)
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import attention_modules, remove_heads, set_head_mask


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
    total, count = 0, 0
    for sample, out in zip(batches, outputs_of(model, key, batches)):
        keep = ~query_padding(model, sample)[key[0]]
        total = total + out.double()[keep].sum(0)
        count += int(keep.sum())
    return total / count


def outputs_of(model, key, batches):
    """Module ``key``'s output [T, B, embed] on each batch (teacher-forced)."""
    module = attention_modules(model)[key]
    seen, outs = {}, []
    handle = module.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o[0]))
    try:
        with torch.no_grad():
            for sample in batches:
                model(**sample["net_input"])
                outs.append(seen["out"].clone())
    finally:
        handle.remove()
    return outs


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


def module_error(model, key, batches, full_outputs):
    """Σ over non-padding positions of ||module output - the full module's||²."""
    err = 0.0
    for sample, out, full in zip(batches, outputs_of(model, key, batches), full_outputs):
        keep = ~query_padding(model, sample)[key[0]]
        err += float((out.double() - full.double())[keep].pow(2).sum())
    return err


@pytest.mark.parametrize("key, heads", [(("E", 2), [2, 4]), (("A", 1), [1, 2, 3]), (("D", 3), [3])])
def test_least_squares_reduces_the_reconstruction_error(small, key, heads):
    _, model, batches = small
    full = outputs_of(model, key, batches)
    stats = calibration_stats(model, batches)
    spec = HeadSet((key[0], key[1], h) for h in heads)
    errors = {}
    for method in ("none", "bias", "lstsq"):
        m = copy.deepcopy(model)
        if method == "lstsq":
            scales = rescale_heads(m, spec, stats)
            assert set(scales) == {f"{key[0]}:{key[1]}"} and all(0 <= x <= 2 for x in scales[f"{key[0]}:{key[1]}"])
        if method != "none":
            compensate_bias(m, spec, {k: v["mean"] for k, v in stats.items()})
        remove_heads(m, spec)
        errors[method] = module_error(m, key, batches, full)
    assert errors["lstsq"] <= errors["bias"] * (1 + 1e-9) and errors["bias"] < errors["none"]


def test_undamped_scales_minimise_the_measured_error(small):
    """Without damping the scales are the minimum of the module's reconstruction error as
    measured by forward passes: nudging any kept head's scale by 1% makes it worse."""
    _, model, batches = small
    key, spec = ("E", 2), HeadSet([("E", 2, 2), ("E", 2, 4)])
    full = outputs_of(model, key, batches)
    stats = calibration_stats(model, batches)
    m = copy.deepcopy(model)
    rescale_heads(m, spec, stats, damping=0.0, bounds=(-10, 10))
    compensate_bias(m, spec, {k: v["mean"] for k, v in stats.items()})
    remove_heads(m, spec)
    best = module_error(m, key, batches, full)
    module, d = attention_modules(m)[key], attention_modules(m)[key].head_dim
    for pos in range(module.num_heads):
        for factor in (0.99, 1.01):
            cols = slice(pos * d, (pos + 1) * d)
            with torch.no_grad():
                module.out_proj.weight[:, cols] *= factor
            assert module_error(m, key, batches, full) > best
            with torch.no_grad():
                module.out_proj.weight[:, cols] /= factor


def test_least_squares_is_exact_when_no_head_is_removed(small):
    _, model, batches = small
    st = calibration_stats(model, batches)[("A", 2)]
    m = attention_modules(model)[("A", 2)]
    w = m.out_proj.weight.detach().double().view(-1, m.num_heads, m.head_dim)
    scales = solve_scales(st["gram"], st["out_sum"], st["mean"].view(m.num_heads, -1), w, [0, 1, 2, 3], [])
    torch.testing.assert_close(scales, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-9)
    # and a model whose heads are all kept is left exactly as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert rescale_heads(model, HeadSet(), {("A", 2): st}) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_context_means_count_only_real_tokens(small):
    """Padded batches give the means of one-sentence batches (no padding at all)."""
    task, model, batches = small
    ds = task.dataset("valid")
    singles = [ds.collater([ds[i]]) for i in range(10)]  # the first batch, one sentence each
    batched, alone = context_means(model, batches[:1]), context_means(model, singles)
    assert set(batched) == set(attention_modules(model))
    for key in batched:
        torch.testing.assert_close(alone[key], batched[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["bias", "lstsq", "layerwise", "refit"])
def test_export_with_repair_reloads_and_equals_the_repaired_model(data_dir, trained_ckpt, tmp_path, method):
    from helpers import batch, load

    out = tmp_path / "rep.pt"
    run(["fairseq-headprune", "export", data_dir, "--path", trained_ckpt, "--cpu",
         "--prune-heads", "E:1:1-2 A:2:3 D:1:4", "--repair", method, "--calibration-subset", "valid",
         "--calibration-sentences", "50", "--out", str(out)])
    report = json.loads((tmp_path / "rep.export.json").read_text())
    assert report["repair"]["calibration"]["sentences"] == 50
    # layerwise: every module from the first pruned one (E:1) on
    assert set(report["repair"]["bias_change_norm"]) == (
        {"E:1", "A:2", "D:1"} if method in ("bias", "lstsq") else set(f"{k}:{i}" for k in "EAD" for i in (1, 2)))
    # the same repair in memory, from the same 50 sentences
    from fairseq_headprune.analysis.data import DataSpec, collate, select

    task, model = load(trained_ckpt, data_dir)
    sel = select(task, [model], DataSpec(subset="valid", max_sentences=50, seed=1, max_tokens=12000,
                                         batching_seed=1))
    spec = HeadSet.parse("E:1:1-2 A:2:3 D:1:4", {"E": [4, 4], "A": [4, 4], "D": [4, 4]})
    done = repair(model, spec, method, Calibration(model, collate(task, "valid", sel.batches), [method]))
    assert done["bias_change_norm"] == pytest.approx(report["repair"]["bias_change_norm"], rel=1e-6)
    if method != "bias":
        assert done["head_scales"] == report["repair"]["head_scales"]
    remove_heads(model, spec)
    task2, reloaded = load(str(out), data_dir)
    sample = batch(task2, "test", 6)
    with torch.no_grad():
        a = model(**sample["net_input"])[0]
        b = reloaded(**sample["net_input"])[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not os.path.exists(str(out) + ".tmp")


# ------------------------------------------------------------ layer-wise reconstruction
SUM_NORMS = {  # the LayerNorm whose input is the residual sum after each kind's sublayer
    False: {"E": "self_attn_layer_norm", "D": "self_attn_layer_norm", "A": "encoder_attn_layer_norm"},
    True: {"E": "final_layer_norm", "D": "encoder_attn_layer_norm", "A": "final_layer_norm"},
}


def sums_and_head_outputs(model, batches, pre_ln):
    """Per module: the residual sums after its sublayer and each present head's output
    W_h c_h (out_proj's input, masked heads zero), [N, embed] and [H, N, embed], over
    the non-padding query positions of all batches."""
    seen, handles = {}, []
    for (kind, i) in attention_modules(model):
        layer = (model.encoder.layers if kind == "E" else model.decoder.layers)[i - 1]
        ln = getattr(layer, SUM_NORMS[pre_ln][kind])
        handles.append(ln.register_forward_pre_hook(lambda m, a, k=(kind, i): seen.__setitem__(k, a[0])))
    sums, outs, ctxs = {}, {}, {}
    try:
        with torch.no_grad(), gated(model) as modules:
            for sample in batches:
                model(**sample["net_input"])
                pad = query_padding(model, sample)
                for key, m in modules.items():
                    keep = ~pad[key[0]]
                    c = m.last_context[keep].double().view(-1, m.num_heads, m.head_dim)
                    w = m.out_proj.weight.double().view(-1, m.num_heads, m.head_dim)
                    sums.setdefault(key, []).append(seen[key][keep].double())
                    outs.setdefault(key, []).append(torch.einsum("nhd,ehd->hne", c, w))
                    ctxs.setdefault(key, []).append(c.reshape(c.size(0), -1))
    finally:
        for h in handles:
            h.remove()
    return ({k: torch.cat(v) for k, v in sums.items()}, {k: torch.cat(v, dim=1) for k, v in outs.items()},
            {k: torch.cat(v) for k, v in ctxs.items()})


@pytest.mark.parametrize("pre_ln, refit", [(False, False), (True, False), (False, True)])
def test_layerwise_leaves_a_least_squares_residual_at_every_module(data_dir, pre_ln, refit):
    """Undamped and unbounded, the repair is the least-squares optimum at each module
    given the repaired modules before it: the residual S' - S_full is orthogonal to every
    kept head's output (refit: to every coordinate of the kept heads' contexts, in every
    output dimension) and sums to zero (the intercept). Modules before the first pruned
    one are left exactly as they were."""
    from helpers import build

    extra = ["--encoder-normalize-before", "--decoder-normalize-before"] if pre_ln else []
    task, model, _ = build(data_dir, seed=7, extra=extra)
    model.eval()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batches = [ds.collater([ds[i] for i in range(j, j + 10)]) for j in (0, 10, 20)]
    spec = HeadSet([("E", 2, 1), ("E", 2, 3), ("D", 2, 4), ("A", 2, 1), ("A", 2, 2), ("A", 2, 3), ("A", 2, 4)])
    full_sums = sums_and_head_outputs(model, batches, pre_ln)[0]
    repaired = copy.deepcopy(model)
    done = reconstruct_layerwise(repaired, spec, batches, residual_sums(model, batches),
                                 damping=0.0, bounds=(-100.0, 100.0), refit=refit)
    # from E:2 on, in the order they run; A:2 keeps no head: its bias alone
    assert list(done["bias_change_norm"]) == ["E:2", "D:1", "A:1", "D:2", "A:2", "D:3", "A:3"]
    if not refit:
        assert "A:2" not in done["head_scales"] and len(done["head_scales"]["E:2"]) == 2
    before = dict(model.named_parameters())
    for name, p in repaired.named_parameters():
        if name.startswith("encoder.layers.0."):
            assert torch.equal(p, before[name]), name
    set_head_mask(repaired, spec)
    sums, outs, ctxs = sums_and_head_outputs(repaired, batches, pre_ln)
    for key in [("E", 2), ("D", 1), ("A", 1), ("D", 2), ("A", 2), ("D", 3), ("A", 3)]:
        r = sums[key] - full_sums[key]  # [N, embed]
        scale = float(full_sums[key].norm())
        assert float(r.mean(0).norm()) < 1e-6 * scale, key
        if refit:  # [embed, H·d]: every column of a kept head's context, every output
            kept = ctxs[key][:, ctxs[key].abs().sum(0) > 0]
            dots = r.t() @ kept
            bound = r.norm(dim=0).unsqueeze(1) * kept.norm(dim=0).unsqueeze(0)
            # (float32 weights: cosines of about 1e-6 per coordinate)
            assert bool((dots.abs() <= 1e-4 * bound + 1e-9).all()), key
            continue
        for h in range(outs[key].size(0)):
            z = outs[key][h]
            if float(z.norm()) == 0:  # a masked head
                continue
            assert abs(float((r * z).sum())) < 1e-6 * float(r.norm()) * float(z.norm()) + 1e-9, (key, h)
        if key == ("E", 2):  # and it is better than no repair there
            plain = copy.deepcopy(model)
            set_head_mask(plain, spec)
            assert float(r.norm()) < float((sums_and_head_outputs(plain, batches, pre_ln)[0][key]
                                             - full_sums[key]).norm())


def test_layerwise_changes_nothing_when_no_head_is_removed(small):
    _, model, batches = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = Calibration(model, batches, ["layerwise"])
    assert repair(model, HeadSet(), "layerwise", cal) == {"head_scales": {}, "bias_change_norm": {}}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
