"""Masks at zero cost and several masks per decode, compared in numbers:

* a 0/1 mask runs fairseq's own forward (fused path included) with the masked heads'
  out_proj columns zeroed: outputs equal, bit for bit, those of stock fairseq modules
  whose weights were zeroed by hand; the module's own weights (what checkpoints save)
  are untouched, and changing the mask or the weights is seen at once;
* per-row masks: K masks evaluated in one decode give exactly the hypotheses and the
  per-sentence losses of one mask at a time (beam 1 and 5, removed heads, the fixed
  mask, a layer masked entirely, sentences finishing at different steps);
* curves and the ablation give the same results with any --masks-per-batch.
"""

import copy

import pytest
import torch
from fairseq import options
from fairseq.modules.multihead_attention import MultiheadAttention

from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models import attention_modules, model_head_shape, set_head_mask
from fairseq_headprune.models.head_model import remove_heads, set_row_masks
from fairseq_headprune.modules import HeadMaskedMultiheadAttention
from helpers import batch, build, generate, load


def forward(model, sample):
    net = sample["net_input"]
    return model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])[0]


def stock_zeroed(model, heads: HeadSet):
    """A copy with stock fairseq attention whose out_proj columns of ``heads`` are 0."""
    ref = copy.deepcopy(model)
    for (kind, layer), m in attention_modules(ref).items():
        m.__class__ = MultiheadAttention
        with torch.no_grad():
            for h in heads.of(kind, layer):
                m.out_proj.weight[:, (h - 1) * m.head_dim:h * m.head_dim] = 0
    return ref


@pytest.fixture(scope="module")
def setup(data_dir):
    task, model, _ = build(data_dir)
    return task, model.eval(), batch(task, "test", n=7)


def test_zero_cost_mask_is_fairseqs_own_forward(setup):
    task, model, sample = setup
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    shape = model_head_shape(model)
    for spec in ("E:1:2", "E:2:1-3 A:1:* D:3:2,4"):
        heads = HeadSet.parse(spec, shape)
        ref = stock_zeroed(model, heads)
        set_head_mask(model, heads)
        try:
            with torch.no_grad():
                assert torch.equal(forward(model, sample), forward(ref, sample))
            for h, r in zip(generate(task, model, sample, beam=3), generate(task, ref, sample, beam=3)):
                assert torch.equal(h[0]["tokens"], r[0]["tokens"])
                assert torch.equal(h[0]["positional_scores"], r[0]["positional_scores"])
        finally:
            set_head_mask(model, None)
    # checkpoints save the unmasked weights
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_folded_weight_follows_mask_and_weight_changes(setup):
    task, model, sample = setup
    shape = model_head_shape(model)
    a, b = HeadSet.parse("E:1:1 D:1:2", shape), HeadSet.parse("E:1:3 D:1:2,3", shape)
    work = copy.deepcopy(model)
    with torch.no_grad():
        set_head_mask(work, a)
        forward(work, sample)  # caches the folded weights of mask a
        set_head_mask(work, b)
        assert torch.equal(forward(work, sample), forward(stock_zeroed(model, b), sample))
        # an in-place weight change (an optimizer step, load_state_dict) is seen
        mod = attention_modules(work)[("E", 1)]
        mod.out_proj.weight.mul_(0.5)
        expected = stock_zeroed(work, b)
        assert torch.equal(forward(work, sample), forward(expected, sample))
        # so is a conversion of the model (new storage: .double(), .half(), .to())
        work.double()
        assert torch.equal(forward(work, sample), forward(expected.double(), sample))


def test_zero_cost_mask_trains_like_the_masked_context(setup):
    """With gradients on, the folded weight is in the graph: every gradient equals
    that of stock modules whose out_proj weight is multiplied by the column mask
    through torch's own parametrization (the paper's ξ on the context; masked
    columns get no gradient)."""
    from torch.nn.utils import parametrize

    class Columns(torch.nn.Module):
        def __init__(self, cols):
            super().__init__()
            self.cols = cols

        def forward(self, w):
            return w * self.cols

    task, model, sample = setup
    heads = HeadSet.parse("E:1:2 A:2:1 D:1:3,4", model_head_shape(model))
    work = copy.deepcopy(model)
    set_head_mask(work, heads)
    ref = copy.deepcopy(model)
    for (kind, layer), m in attention_modules(ref).items():
        m.__class__ = MultiheadAttention
        hs = [h - 1 for h in heads.of(kind, layer)]
        if hs:
            cols = torch.ones(m.out_proj.in_features)
            for h in hs:
                cols[h * m.head_dim:(h + 1) * m.head_dim] = 0
            parametrize.register_parametrization(m.out_proj, "weight", Columns(cols))
    for m in (work, ref):
        forward(m, sample).sum().backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    for n, p in work.named_parameters():
        q = grads.get(n, grads.get(n.replace(".weight", ".parametrizations.weight.original")))
        torch.testing.assert_close(p.grad, q, rtol=1e-6, atol=1e-7, msg=n)
    out = attention_modules(work)[("E", 1)].out_proj.weight.grad
    assert out[:, 8:16].abs().max() == 0 and out[:, :8].abs().max() > 0  # head 2 of 4, d=8


def test_row_masks_follow_beam_reordering_in_the_generator(data_dir, trained_ckpt):
    """Module level: a batch of the same sentences twice, copy 0 masked one way and
    copy 1 another, decodes each copy exactly as that mask alone does."""
    task, model = load(trained_ckpt, data_dir)
    sample = batch(task, "test", n=7)
    shape = model_head_shape(model)
    m1, m2 = HeadSet.parse("E:1:2 D:2:1", shape), HeadSet.parse("A:1:1,3 D:2:*", shape)
    expected = []
    for m in (m1, m2):
        set_head_mask(model, m)
        expected.append(generate(task, model, sample, beam=4))
    from fairseq_headprune.analysis.decoding import tile

    n = sample["id"].numel()
    set_row_masks(model, [m1, m2], n)
    try:
        got = generate(task, model, tile(sample, 2), beam=4)
    finally:
        set_head_mask(model, None)
    lengths = {len(h[0]["tokens"]) for h in got}
    assert len(lengths) > 1  # sentences finish at different steps (and are dropped)
    for c in range(2):
        for i in range(n):
            assert torch.equal(got[c * n + i][0]["tokens"], expected[c][i][0]["tokens"])
            # a batch twice as large: float32 sums may round differently (seen: 1.5e-5)
            torch.testing.assert_close(got[c * n + i][0]["positional_scores"],
                                       expected[c][i][0]["positional_scores"], rtol=1e-5, atol=1e-4)


def test_row_mask_shape_is_checked():
    m = HeadMaskedMultiheadAttention.convert(MultiheadAttention(16, 4, self_attention=True), "E", 1)
    with pytest.raises(HeadPruneError, match=r"E:1: row mask has shape \(2, 3\), expected \(rows, 4\)"):
        m.set_row_mask(torch.ones(2, 3))
    m.set_row_mask(torch.ones(3, 4))
    with pytest.raises(HeadPruneError, match="a batch of 4 rows does not fit the row mask of 3"):
        m(torch.randn(5, 4, 16), None, None)


def session(data_dir, ckpt, beam, *extra):
    from fairseq_headprune.analysis.session import Session

    parser = options.get_generation_parser(default_task="translation_headprune")
    args = options.parse_args_and_arch(parser, [data_dir, "--path", ckpt, "--cpu", "--beam",
                                                str(beam), "--batch-size", "8", *extra])
    return Session(args)


@pytest.mark.parametrize("beam", [1, 5])
def test_many_masks_per_decode_equal_one_at_a_time(data_dir, trained_ckpt, beam):
    extra = ("--mask-heads", "D:1:4") if beam == 5 else ()
    s = session(data_dir, trained_ckpt, beam, *extra)
    if beam == 5:  # a model with removed heads, and a fixed mask on top
        remove_heads(s.model, HeadSet([("E", 1, 2), ("A", 2, 1)]))
    sel = s.select(s.data_spec("test", max_sentences=24))
    masks = [HeadSet(), HeadSet([("E", 1, 1)]), HeadSet([("E", 2, 3)]), HeadSet([("A", 1, 2)]),
             HeadSet([("D", 2, 1)]), HeadSet([("E", 2, h) for h in (1, 2, 4)]),
             HeadSet([("D", 2, h) for h in (1, 2, 3, 4)]), HeadSet([("A", 1, 1), ("D", 1, 2)])]
    one = s.evaluator(sel, masks_per_batch=1, progress=False)
    a = [one.translate(m) for m in masks]
    la = [one.losses(m) for m in masks]
    many = s.evaluator(sel, masks_per_batch=3, progress=False)  # groups of 3, 3 and 2
    b, lb = many.translate_many(masks), many.losses_many(masks)
    assert sum(x.hyps != a[0].hyps for x in a) >= 5  # the masks change the output
    for x, y, lx, ly in zip(a, b, la, lb):
        assert x.hyps == y.hyps and x.refs == y.refs and x.ntokens == y.ntokens
        assert lx.nll == ly.nll  # exactly: each row computes what it computes alone
    # the model is left with the fixed mask alone
    assert all(m.row_mask is None for m in attention_modules(s.model).values())
    assert many.translate(HeadSet()).hyps == a[0].hyps


def test_curve_points_do_not_depend_on_masks_per_batch(data_dir, trained_ckpt):
    from fairseq_headprune.analysis.curve import fractions, pruning_curve

    s = session(data_dir, trained_ckpt, 2)
    sel = s.select(s.data_spec("test", max_sentences=16))
    shape = model_head_shape(s.model)
    order = list(HeadSet.all_heads(shape, "EAD"))[::-1]
    points = [pruning_curve(shape, "EAD", fractions(0.2), s.evaluator(sel, masks_per_batch=k,
                                                                       progress=False), order=order)
              for k in (1, 4)]
    strip = [[{k: v for k, v in p.items()} for p in ps] for ps in points]
    assert strip[0] == strip[1] and len(strip[0]) == 6
