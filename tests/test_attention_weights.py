"""Attention weights returned under masks and removals count only the heads that take
part: compared with stock fairseq MultiheadAttention's per-head weights on the same
inputs (E, A, D; full and incremental), in the decoder's alignment output, and in
fairseq-generate --print-alignment."""

import copy
import os
import subprocess

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention

from conftest import ROOT, generate_output
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models import attention_modules, remove_heads, set_head_mask
from helpers import batch, build, generate, load

MASKED = [0, 2]  # 0-based heads masked (or removed) in the module tests
KEEP = [1, 3]


@pytest.fixture(scope="module")
def setup(data_dir):
    task, model, _ = build(data_dir)
    model.eval()
    sample = batch(task, "test", n=6)
    assert sample["net_input"]["src_tokens"].eq(1).any()  # padded keys
    return task, model, sample


def forward(model, sample):
    net = sample["net_input"]
    return model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])


def captured_inputs(model, sample):
    """(kind, layer) -> the keyword arguments each attention module got in a forward."""
    calls, handles = {}, []
    for key, m in attention_modules(model).items():
        def hook(mod, args, kwargs, key=key):
            calls[key] = dict(kwargs)
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            forward(model, sample)
    finally:
        for h in handles:
            h.remove()
    return calls


def stock_copy(module):
    """The module as stock fairseq's class, on its Python path (the fused path ignores
    need_head_weights)."""
    ref = copy.deepcopy(module)
    ref.__class__ = MultiheadAttention
    ref.skip_embed_dim_check = True
    ref.init_incremental_state()
    return ref


def variants(module):
    masked = copy.deepcopy(module)
    masked.init_incremental_state()
    mask = torch.ones(module.orig_num_heads)
    mask[MASKED] = 0
    masked.set_head_mask(mask)
    pruned = copy.deepcopy(module)
    pruned.init_incremental_state()
    pruned.remove_heads(MASKED)
    return masked, pruned


def call(m, kwargs, **over):
    with torch.no_grad():
        return m(**dict(kwargs, **over))[1]


@pytest.mark.parametrize("key", [("E", 1), ("E", 2), ("A", 1), ("A", 3), ("D", 1), ("D", 3)])
def test_weights_average_over_unmasked_heads_only(setup, key):
    _, model, sample = setup
    kwargs = captured_inputs(model, sample)[key]
    module = attention_modules(model)[key]
    stock = stock_copy(module)
    per_head = call(stock, kwargs, need_weights=True, need_head_weights=True)  # [H,B,T,S]
    assert per_head.shape[0] == 4
    expected = per_head[KEEP].mean(0)
    assert (expected - per_head.mean(0)).abs().max() > 1e-3  # masking changes them
    masked, pruned = variants(module)
    for m in (masked, pruned):
        avg = call(m, kwargs, need_weights=True, need_head_weights=False)
        torch.testing.assert_close(avg, expected, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(avg).all()
    # per-head: present heads' own rows; masked heads' rows hold the mean, so that the
    # decoder's mean over rows is the mean over the unmasked heads
    rows = call(masked, kwargs, need_weights=False, need_head_weights=True)
    assert rows.shape == per_head.shape
    torch.testing.assert_close(rows[KEEP], per_head[KEEP], rtol=1e-5, atol=1e-6)
    for h in MASKED:
        torch.testing.assert_close(rows[h], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows.mean(0), expected, rtol=1e-5, atol=1e-6)
    rows_p = call(pruned, kwargs, need_weights=False, need_head_weights=True)
    torch.testing.assert_close(rows_p, per_head[KEEP], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", [("A", 3), ("D", 2)])
def test_incremental_weights_average_over_unmasked_heads_only(setup, key):
    """Step by step with incremental state (the decoder's path in beam search)."""
    _, model, _ = setup
    module = attention_modules(model)[key]
    torch.manual_seed(0)
    T, B, S, C = 5, 3, 7, module.embed_dim
    x, enc = torch.randn(T, B, C), torch.randn(S, B, C)
    enc_pad = torch.zeros(B, S, dtype=torch.bool)
    enc_pad[1, 5:] = True
    stock = stock_copy(module)
    masked, pruned = variants(module)
    states = {id(m): {} for m in (stock, masked, pruned)}
    for t in range(T):
        def step(m, head):
            if key[0] == "A":
                kw = dict(query=x[t:t + 1], key=enc, value=enc, key_padding_mask=enc_pad,
                          static_kv=True)
            else:
                kw = dict(query=x[t:t + 1], key=x[t:t + 1], value=x[t:t + 1])
            return call(m, kw, incremental_state=states[id(m)], need_weights=True,
                        need_head_weights=head)
        per_head = step(stock, True)
        expected = per_head[KEEP].mean(0)
        torch.testing.assert_close(step(masked, False), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(step(pruned, False), expected, rtol=1e-5, atol=1e-6)


def test_modules_without_heads_return_no_weights(setup):
    _, model, sample = setup
    calls = captured_inputs(model, sample)
    for key in [("E", 1), ("A", 3), ("D", 3)]:
        module = attention_modules(model)[key]
        removed = copy.deepcopy(module)
        removed.remove_heads(range(4))
        masked = copy.deepcopy(module)
        masked.set_head_mask(torch.zeros(4))
        for m in (removed, masked):
            for head in (False, True):
                assert call(m, calls[key], need_weights=True, need_head_weights=head) is None


def test_decoder_alignment_counts_unmasked_heads_only(setup):
    """The decoder's averaged attention (what --print-alignment uses) under a mask on
    the last encoder-decoder attention equals the mean of stock's heads 3 and 4."""
    task, model, sample = setup
    stock = copy.deepcopy(model)
    last = attention_modules(stock)[("A", 3)]
    last.__class__ = MultiheadAttention
    seen = {}
    last.register_forward_hook(lambda m, i, o: seen.update(w=o[1]))
    with torch.no_grad():
        forward(stock, sample)
    expected = seen["w"][KEEP].mean(0)  # [B, T, S]
    heads = HeadSet([("A", 3, h + 1) for h in MASKED])
    masked, pruned = copy.deepcopy(model), copy.deepcopy(model)
    set_head_mask(masked, heads)
    remove_heads(pruned, heads)
    for m in (masked, pruned):
        with torch.no_grad():
            attn = forward(m, sample)[1]["attn"][0]
        torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)
    # every head of the last layer gone: no alignment, and beam search still works
    gone = copy.deepcopy(model)
    remove_heads(gone, HeadSet([("A", 3, h) for h in range(1, 5)]))
    with torch.no_grad():
        assert forward(gone, sample)[1]["attn"][0] is None
    for hyp in generate(task, gone, sample, beam=3):
        assert hyp[0]["attention"].numel() == 0


# ---------------------------------------------------------------- fairseq-generate
USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]


def generate_alignments(data, ckpt, *extra):
    out = generate_output(["fairseq-generate", data, "--path", ckpt, "--gen-subset", "valid",
                           "--beam", "5", "--cpu", "--max-tokens", "4000", "--print-alignment",
                           "soft", *USER, *extra])
    return out["H"], out["A"]


def test_generate_print_alignment_with_masked_heads(data_dir, trained_ckpt):
    """--mask-heads A:2:1,2: the soft alignment printed is the mean of heads 3 and 4 of
    the last layer, recomputed here on stock fairseq (heads 1, 2 zeroed at out_proj)."""
    hyps, aligns = generate_alignments(data_dir, trained_ckpt, "--mask-heads", "A:2:1,2")
    assert len(aligns) == 120 and "nan" not in " ".join(aligns.values()).lower()
    task, stock = load(trained_ckpt, data_dir, task="translation")
    last = stock.decoder.layers[-1].encoder_attn
    assert type(last) is MultiheadAttention and last.num_heads == 4
    d = last.head_dim

    def zero_heads_1_2(m, inputs):
        x = inputs[0].clone()
        x[..., :2 * d] = 0
        return (x,)
    last.out_proj.register_forward_pre_hook(zero_heads_1_2)
    seen = {}
    last.register_forward_hook(lambda m, i, o: seen.update(w=o[1]))
    task.load_dataset("valid")
    ds, tgt_dict = task.dataset("valid"), task.target_dictionary
    eos = tgt_dict.eos()
    ids = sorted(aligns)[:40]
    for i in ids:
        src = ds[i]["source"]
        hyp = tgt_dict.encode_line(hyps[i], add_if_not_exist=False, append_eos=True).long()
        prev = torch.cat([hyp.new_tensor([eos]), hyp[:-1]])
        with torch.no_grad():
            stock(src[None], torch.tensor([len(src)]), prev[None])
        expected = seen["w"][2:4, 0].mean(0)  # [T, S]
        got = torch.tensor([[float(p) for p in row.split(",")] for row in aligns[i].split()])
        assert got.shape == expected.shape, (i, got.shape, expected.shape)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
        all_heads = seen["w"][:, 0].mean(0)
        assert (all_heads - expected).abs().max() > 1e-3  # the mask matters


@pytest.mark.parametrize("flag", ["--prune-heads", "--mask-heads"])
def test_print_alignment_without_heads_in_the_alignment_layer_is_one_line(
        data_dir, trained_ckpt, flag):
    p = subprocess.run(["fairseq-generate", data_dir, "--path", trained_ckpt, "--gen-subset",
                        "valid", "--cpu", "--max-tokens", "4000", "--print-alignment", "soft",
                        *USER, flag, "A:2:*"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "fairseq-headprune: error: --print-alignment reads the encoder-decoder attention of "
        "decoder layer 2 (A:2), which has no heads left (all removed or masked); keep at "
        "least one head there, or leave out --print-alignment")
