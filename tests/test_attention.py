"""Numbers, not smoke: the masked head, the removed head and the paper's definition
(ξ_h scaling head h's context before out_proj) agree, and an untouched model under
the task is stock fairseq."""

import copy
import random

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention

from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models import (
    attention_modules,
    model_head_shape,
    remove_heads,
    removed_heads,
    set_head_mask,
)
from fairseq_headprune.modules import HeadMaskedMultiheadAttention
from helpers import batch, build, generate


def zero_heads_hook(heads, head_dim):
    """A pre-hook on stock out_proj that zeroes the given heads' context: the
    paper's definition, computed independently of our module."""
    def hook(module, inputs):
        (x,) = inputs
        x = x.clone()
        for h in heads:
            x[..., h * head_dim:(h + 1) * head_dim] = 0
        return (x,)
    return hook


def stock_with_zeroed(model, heads: HeadSet):
    """A deep copy of ``model`` in which every attention module is the stock class,
    running its own python path, with out_proj hooks zeroing ``heads``."""
    ref = copy.deepcopy(model)
    for (kind, layer), m in attention_modules(ref).items():
        m.__class__ = MultiheadAttention
        m.init_incremental_state()
        hs = [h - 1 for h in heads.of(kind, layer)]
        if hs:
            m.skip_embed_dim_check = True  # disables the fused path, so out_proj runs
            m.out_proj.register_forward_pre_hook(zero_heads_hook(hs, m.head_dim))
    return ref


def forward(model, sample):
    net = sample["net_input"]
    return model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])[0]


@pytest.fixture(scope="module")
def setup(data_dir):
    task, model, _ = build(data_dir)
    sample = batch(task, "test", n=7)
    return task, model.eval(), sample


def test_untouched_model_equals_stock_fairseq(data_dir, setup):
    task, model, sample = setup
    stock_task, stock, _ = build(data_dir, task="translation")
    stock.load_state_dict(model.state_dict())
    stock.eval()
    assert all(isinstance(m, HeadMaskedMultiheadAttention) for m in attention_modules(model).values())
    assert not any(isinstance(m, HeadMaskedMultiheadAttention) for m in stock.modules())
    with torch.no_grad():
        assert torch.equal(forward(model, sample), forward(stock, sample))
    # training forward (dropout RNG consumed identically)
    model.train(); stock.train()
    torch.manual_seed(3); a = forward(model, sample)
    torch.manual_seed(3); b = forward(stock, sample)
    model.eval(); stock.eval()
    assert torch.equal(a, b)
    hyp, ref = generate(task, model, sample), generate(stock_task, stock, sample)
    for h, r in zip(hyp, ref):
        assert torch.equal(h[0]["tokens"], r[0]["tokens"])
        assert torch.equal(h[0]["positional_scores"], r[0]["positional_scores"])


@pytest.mark.parametrize("spec", ["E:1:2", "A:2:1,4", "D:3:3", "E:2:1-3 A:1:* D:1:2"])
def test_mask_equals_zeroed_context_on_stock_attention(setup, spec):
    task, model, sample = setup
    heads = HeadSet.parse(spec, model_head_shape(model))
    ref = stock_with_zeroed(model, heads)
    with torch.no_grad():
        unmasked = forward(model, sample)
    set_head_mask(model, heads)
    try:
        with torch.no_grad():
            assert (forward(model, sample) - unmasked).abs().max() > 1e-3  # it bites
            torch.testing.assert_close(forward(model, sample), forward(ref, sample),
                                       rtol=1e-5, atol=1e-5)
        hyp, exp = generate(task, model, sample), generate(task, ref, sample)
        for h, r in zip(hyp, exp):
            assert torch.equal(h[0]["tokens"], r[0]["tokens"])
    finally:
        set_head_mask(model, None)


def test_mask_is_a_multiplicative_gate_on_one_module():
    """Module level: a continuous ξ scales exactly head h's slice of out_proj's input."""
    torch.manual_seed(0)
    for kind in ("self", "encdec"):
        stock = MultiheadAttention(16, 4, self_attention=kind == "self",
                                   encoder_decoder_attention=kind == "encdec")
        ours = HeadMaskedMultiheadAttention.convert(copy.deepcopy(stock), "E", 1)
        x, mem = torch.randn(5, 3, 16), torch.randn(7, 3, 16)
        pad = torch.zeros(3, 7, dtype=torch.bool); pad[1, 5:] = True
        key = x if kind == "self" else mem
        kpm = None if kind == "self" else pad
        xi = torch.tensor([1.0, 0.0, 0.3, 1.0])
        stock.skip_embed_dim_check = True
        stock.out_proj.register_forward_pre_hook(
            lambda m, i: (i[0] * xi.repeat_interleave(4),))
        exp, _ = stock(x, key, key, key_padding_mask=kpm, static_kv=kind == "encdec")
        ours.set_head_mask(xi)
        got, _ = ours(x, key, key, key_padding_mask=kpm, static_kv=kind == "encdec",
                      need_weights=False)
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)


def random_spec(shape, rng):
    """Different counts per module, some modules emptied entirely."""
    heads = []
    for kind, counts in shape.items():
        for layer, n in enumerate(counts, 1):
            k = rng.choice([0, 1, 2, n - 1, n])
            heads += [(kind, layer, h) for h in rng.sample(range(1, n + 1), k)]
    return HeadSet(heads)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removal_equals_masking(setup, seed):
    task, model, sample = setup
    rng = random.Random(seed)
    heads = random_spec(model_head_shape(model), rng)
    assert any(len(heads.of(k, l)) == n for k, c in model_head_shape(model).items()
               for l, n in enumerate(c, 1)), "want a zero-head module"
    masked = copy.deepcopy(model)
    set_head_mask(masked, heads)
    pruned = copy.deepcopy(model)
    remove_heads(pruned, heads)
    for m in pruned.modules():
        if hasattr(m, "init_incremental_state"):
            m.init_incremental_state()
    assert removed_heads(pruned) == heads
    # scoring (eval) and training mode forward + backward
    for train in (False, True):
        masked.train(train); pruned.train(train)
        out_m, out_p = forward(masked, sample), forward(pruned, sample)
        torch.testing.assert_close(out_p, out_m, rtol=1e-5, atol=1e-5)
        if train:
            out_m.logsumexp(-1).sum().backward()
            out_p.logsumexp(-1).sum().backward()
            check_pruned_grads(masked, pruned)
    masked.eval(); pruned.eval()
    # beam search with incremental state, beam > 1
    hm, hp = generate(task, masked, sample, beam=4), generate(task, pruned, sample, beam=4)
    for a, b in zip(hm, hp):
        assert torch.equal(a[0]["tokens"], b[0]["tokens"])
        torch.testing.assert_close(a[0]["positional_scores"], b[0]["positional_scores"],
                                   rtol=1e-4, atol=1e-5)


def check_pruned_grads(masked, pruned):
    """Gradients of the kept weights equal the masked model's gradients on them."""
    pm = dict(masked.named_parameters())
    mods_m = attention_modules(masked)
    for key, mp in attention_modules(pruned).items():
        mm = mods_m[key]
        d = mp.head_dim
        rows = [h * d + i for h in mp.kept_heads for i in range(d)]
        for name in ("q_proj", "k_proj", "v_proj"):
            g_p = getattr(mp, name).weight.grad
            g_m = getattr(mm, name).weight.grad[rows]
            if g_p is not None and g_p.numel():
                torch.testing.assert_close(g_p, g_m, rtol=1e-4, atol=1e-6)
        if mp.out_proj.weight.numel():
            torch.testing.assert_close(mp.out_proj.weight.grad,
                                       mm.out_proj.weight.grad[:, rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mp.out_proj.bias.grad, mm.out_proj.bias.grad,
                                   rtol=1e-4, atol=1e-6)
    # and every non-attention parameter too
    pp = dict(pruned.named_parameters())
    for name, p in pp.items():
        if "attn" not in name and p.grad is not None:
            torch.testing.assert_close(p.grad, pm[name].grad, rtol=1e-4, atol=1e-6)


def test_zero_head_module_outputs_its_bias():
    m = HeadMaskedMultiheadAttention.convert(MultiheadAttention(16, 4, self_attention=True))
    torch.nn.init.normal_(m.out_proj.bias)
    m.remove_heads(range(4))
    assert m.num_heads == 0 and m.q_proj.weight.shape == (0, 16)
    assert m.out_proj.weight.shape == (16, 0)
    out, _ = m(torch.randn(5, 2, 16), None, None, need_weights=False)
    torch.testing.assert_close(out, m.out_proj.bias.expand(5, 2, 16))


def test_parameter_count_drops_by_head_size(setup):
    _, model, _ = setup
    pruned = copy.deepcopy(model)
    before = sum(p.numel() for p in pruned.parameters())
    remove_heads(pruned, HeadSet([("E", 1, 1), ("A", 2, 3), ("A", 2, 4), ("D", 3, 2)]))
    after = sum(p.numel() for p in pruned.parameters())
    d_model, d_head = 32, 8
    per_head = 4 * d_model * d_head + 3 * d_head  # q,k,v rows + out_proj columns; q,k,v biases
    assert before - after == 4 * per_head


def test_state_dict_round_trip_of_pruned_model(data_dir, setup):
    """A pruned state dict loads into a freshly built full model (shapes adopted) and
    a full state dict loads into a pruned model (sliced)."""
    task, model, sample = setup
    heads = HeadSet.parse("E:1:1-2 A:1:* D:2:4", model_head_shape(model))
    pruned = copy.deepcopy(model)
    remove_heads(pruned, heads)
    _, fresh, _ = build(data_dir, seed=7)
    fresh.load_state_dict(copy.deepcopy(pruned.state_dict()))
    fresh.eval()
    assert removed_heads(fresh) == heads
    with torch.no_grad():
        torch.testing.assert_close(forward(fresh, sample), forward(pruned, sample))
    _, target, _ = build(data_dir, seed=9)
    remove_heads(target, heads)
    target.load_state_dict(copy.deepcopy(model.state_dict()))
    target.eval()
    with torch.no_grad():
        torch.testing.assert_close(forward(target, sample), forward(pruned, sample))


def test_fairseqs_own_head_pruning_api_keeps_masks_consistent(data_dir):
    """MultiheadAttention._adaptive_prune_heads (RoBERTa's --mha-heads-to-keep) on a
    masked module: same outputs as remove_heads of the other heads, mask kept."""
    from fairseq_headprune.errors import HeadPruneError

    task, model, _ = build(data_dir)
    model.eval()
    ref = copy.deepcopy(model)
    sample = batch(task, "valid", n=4)
    m = attention_modules(model)[("E", 1)]
    reserve = m._get_reserve_head_index(2)  # by weight norm, as fairseq does
    kept = sorted(m.kept_heads[start // m.head_dim] for start, _ in reserve)
    mask = HeadSet([("E", 1, kept[0] + 1)])
    set_head_mask(model, mask)
    m._adaptive_prune_heads(reserve)
    assert m.num_heads == 2 and m.kept_heads == kept
    remove_heads(ref, HeadSet(("E", 1, h + 1) for h in range(4) if h not in kept))
    set_head_mask(ref, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(**sample["net_input"])[0], ref(**sample["net_input"])[0])
    with pytest.raises(HeadPruneError, match=r"head span \(1, 5\) is not one head"):
        m._adaptive_prune_heads([(1, 5)])
