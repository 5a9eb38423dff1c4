"""sentence_prediction_headprune: fairseq's RoBERTa-style classifier with head-aware
encoder attention. A model of fairseq's roberta_base architecture at small dimensions:
masked heads == removed heads (the classification logits), a layer with no head left
included; the spec's kind E is the encoder; A and D are refused with one line."""

import copy
import os

import pytest
import torch

from conftest import CLASSIFIER_ARCH
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import (
    attention_modules, model_head_shape, remove_heads, set_head_mask)

SMALL = [*CLASSIFIER_ARCH, "--dropout", "0", "--attention-dropout", "0"]


def build(pairs_dir, *extra, seed=3):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [os.path.join(pairs_dir, "bin"), "--task",
                                                "sentence_prediction_headprune", "--cpu", *SMALL,
                                                *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    return task, task.build_model(cfg.model).eval()


def logits(task, model, n=12):
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(n)])
    with torch.no_grad():
        out, _ = model(**sample["net_input"], features_only=True,
                       classification_head_name="sentence_classification_head")
    return out


@pytest.mark.parametrize("spec", ["E:1:2", "E:1:* E:2:1,3", "E:1:1-3 E:2:4"])
def test_masked_equals_removed_logits(pairs_dir, spec):
    task, model = build(pairs_dir)
    assert model_head_shape(model) == {"E": [4, 4]}
    heads = HeadSet.parse(spec, {"E": [4, 4]})
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    set_head_mask(masked, heads)
    remove_heads(removed, heads)
    full, a, b = logits(task, model), logits(task, masked), logits(task, removed)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(full, a)
    gone = {layer: 4 - len(heads.of("E", layer)) for layer in (1, 2)}
    assert {l: m.num_heads for (_, l), m in attention_modules(removed).items()} == gone


def test_task_options_mask_and_remove(pairs_dir):
    _, plain = build(pairs_dir)
    task, masked = build(pairs_dir, "--mask-heads", "E:1:*")
    _, pruned = build(pairs_dir, "--prune-heads", "E:1:*")
    assert task.fixed_mask == HeadSet([("E", 1, h) for h in range(1, 5)])
    assert [m.num_heads for m in attention_modules(pruned).values()] == [0, 4]
    torch.testing.assert_close(logits(task, masked), logits(task, pruned), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits(task, plain), logits(task, masked))


@pytest.mark.parametrize("spec", ["A:1:1", "D:2:*"])
def test_decoder_kinds_are_refused(pairs_dir, spec):
    with pytest.raises(HeadPruneError) as e:
        build(pairs_dir, "--mask-heads", spec)
    assert "\n" not in str(e.value) and spec[0] in str(e.value)


def test_importance_is_the_classification_loss_gradient(pairs_dir, monkeypatch):
    """Per example, Σ_t ∂L/∂ξ_h from the backward pass == the finite difference of that
    example's cross-entropy in ξ_h (float64; fairseq's attention softmax and gelu, always
    float32, kept in float64 here, as in tiny_float64); the importance pass covers E only."""
    import torch.nn.functional as F
    from fairseq import utils

    softmax = utils.softmax
    monkeypatch.setattr(utils, "softmax", lambda x, dim, onnx_trace=False: (
        torch.softmax(x, dim=dim) if x.dtype == torch.float64 else softmax(x, dim, onnx_trace)))

    from fairseq_headprune.analysis.importance import batch_gate_gradients, compute_importance

    task, model = build(pairs_dir)
    model.double()
    for layer in model.encoder.sentence_encoder.layers:  # fairseq's gelu runs in float32
        layer.activation_fn = F.gelu
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(10)])
    assert sample["net_input"]["src_tokens"].eq(task.source_dictionary.pad()).any()

    def per_example(m):
        with torch.no_grad():
            out, _ = m(**sample["net_input"], features_only=True,
                       classification_head_name="sentence_classification_head")
        return F.cross_entropy(out, sample["target"].view(-1), reduction="none")

    grads, finite = batch_gate_gradients(model, sample)
    assert finite and set(grads) == {("E", 1), ("E", 2)}
    for key in grads:
        module = attention_modules(model)[key]
        g, kept = grads[key]
        for head in (0, 2):
            vals = []
            for sign in (1, -1):
                mask = torch.ones(4, dtype=torch.float64)
                mask[head] += sign * 1e-6
                module.set_head_mask(mask)
                vals.append(per_example(model))
            module.set_head_mask(None)
            fd = (vals[0] - vals[1]) / 2e-6
            torch.testing.assert_close(g[:, :, kept.index(head)].sum(0), fd, rtol=1e-5, atol=1e-8)
            assert fd.abs().max() > 1e-5
    acc = compute_importance(model, [sample])
    assert acc.keys == [("E", 1), ("E", 2)]
    assert acc.result().means("sentence").get("A") is None
