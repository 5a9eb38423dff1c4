"""Pruning while training: schedules (pure), importance accumulated from fairseq's own
training steps == the importance pass run in training mode on the same batches with
the same dropout seed, a removal mid-training == a model built without those heads
that continues from the same weights and the sliced optimizer state, and fairseq-train
end to end (removal lines, resume, 2 gloo workers == 1 worker, no-spec reload, bad
schedules one line)."""

import json
import os
import socket
import subprocess

import pytest
import torch

from conftest import ROOT, TINY_ARCH, run
from fairseq_headprune.analysis.importance import ImportanceAccumulator, batch_gate_gradients, query_padding
from fairseq_headprune.analysis.schedule import PruneSchedule
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import attention_modules, model_head_shape, removed_heads
from fairseq_headprune.tasks.train_pruning import shrink_trainer, slice_flat, slice_optimizer_state

USER_DIR = os.path.join(ROOT, "fairseq_headprune")
SHAPE = {"E": [4, 4], "A": [4, 4], "D": [4, 4]}


# ---- schedules ------------------------------------------------------------------------

@pytest.mark.parametrize("text, start, end, floor, message", [
    ("E:150%", 1, None, 0, "150% is more than all the heads"),
    ("X:10%", 1, None, 0, "unknown kind 'X'"),
    ("E:10", 1, None, 0, "is not KIND:N%"),
    ("E:10% E:20%", 1, None, 0, "names E twice"),
    ("all:10% E:20%", 1, None, 0, "mixes 'all' with single kinds"),
    ("", 1, None, 0, "is empty"),
    ("E:10%", 3, 2, 0, "--prune-end-epoch 2 is before --prune-start-epoch 3"),
    ("E:10%", 0, None, 0, "--prune-start-epoch 0"),
    ("E:10%", 1, None, -1, "--min-heads-per-layer -1"),
])
def test_bad_schedules(text, start, end, floor, message):
    with pytest.raises(HeadPruneError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        PruneSchedule.parse(text, start, end, "linear", floor)
    assert "\n" not in str(e.value)


def test_floor_that_cannot_be_met():
    s = PruneSchedule.parse("E:80%", min_per_layer=2)
    with pytest.raises(HeadPruneError, match=r"E:80% asks for 6 of 8 heads.*at most 4 can go"):
        s.check_shape(SHAPE)
    with pytest.raises(HeadPruneError, match="--min-heads-per-layer 5 is more than the 4 heads"):
        PruneSchedule.parse("E:10%", min_per_layer=5).check_shape(SHAPE)
    PruneSchedule.parse("E:50%", min_per_layer=2).check_shape(SHAPE)  # exactly possible


def test_ramps_and_targets():
    lin = PruneSchedule.parse("E:50% D:100%", 2, 5, "linear")
    assert [lin.progress(e) for e in range(1, 7)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert [lin.targets(SHAPE, e) for e in (1, 3, 5)] == [{"E": 0, "D": 0}, {"E": 2, "D": 4}, {"E": 4, "D": 8}]
    cub = PruneSchedule.parse("all:50%", 1, 4, "cubic")
    assert [round(cub.progress(e), 6) for e in (1, 2, 3, 4)] == [0.578125, 0.875, 0.984375, 1]
    assert cub.targets(SHAPE, 1) == {"all": 7}  # 0.578125 * 0.5 * 24 = 6.94 -> 7
    one = PruneSchedule.parse("A:25%", 3)
    assert not one.in_window(2) and one.in_window(3) and not one.in_window(4)


def test_next_removal_takes_least_important_within_kind_and_floor():
    scores = {k: [[float(10 * l + h + (100 if k == "D" else 0)) for h in range(4)] for l in range(2)]
              for k in SHAPE}
    s = PruneSchedule.parse("E:50% D:25%", min_per_layer=1)
    got = s.next_removal(SHAPE, 1, scores, HeadSet())
    # E: the 4 lowest (layer 1 heads 1-4 have scores 0-3) but the floor keeps one there
    assert got == HeadSet([("E", 1, 1), ("E", 1, 2), ("E", 1, 3), ("E", 2, 1),
                           ("D", 1, 1), ("D", 1, 2)])
    # heads already removed count towards the target
    again = s.next_removal(SHAPE, 1, scores, got)
    assert again == HeadSet()
    every = PruneSchedule.parse("all:25%").next_removal(SHAPE, 1, scores, HeadSet([("A", 1, 1)]))
    assert len(every) == 5 and all(h[0] != "D" for h in every)  # D scores are the highest


def test_slice_flat_equals_slicing_each_parameter():
    torch.manual_seed(0)
    params = [torch.randn(8, 5), torch.randn(8), torch.randn(5, 8), torch.randn(3)]
    cuts = [(0, torch.tensor([0, 1, 6, 7])), (0, torch.tensor([0, 1, 6, 7])),
            (1, torch.tensor([0, 1, 6, 7])), None]
    flat = torch.cat([p.reshape(-1) for p in params])
    want = torch.cat([(p if c is None else p.index_select(*c)).reshape(-1) for p, c in zip(params, cuts)])
    assert torch.equal(slice_flat(flat, [p.shape for p in params], cuts), want)
    # per-parameter state, and a flat state with a scalar step: same values
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": flat * 2}}, "param_groups": [{"params": [0]}]}
    got = slice_optimizer_state(state, [flat], params, {id(p): c for p, c in zip(params, cuts) if c},
                                flat=True)
    assert torch.equal(got["state"][0]["exp_avg"], want * 2) and float(got["state"][0]["step"]) == 3.0


# ---- in-process: importance from training steps, removal with optimizer state ----------

TRAIN = ["--optimizer", "adam", "--lr", "1e-3", "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--max-tokens", "2000"]


def _setup(data_dir, extra=()):
    from fairseq import optim
    from helpers import batch, build

    task, model, cfg = build(data_dir, extra=[*TRAIN, "--dropout", "0.1", "--attention-dropout", "0.1",
                                              *extra])
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    return task, model, cfg, criterion, optimizer, batch(task, "valid", 8)


def test_training_importance_equals_importance_pass_in_training_mode(data_dir):
    task, model, cfg, criterion, optimizer, sample = _setup(data_dir, ["--accumulate-head-importance"])
    model.train()
    torch.manual_seed(11)
    task.train_step(sample, model, criterion, optimizer, 0)
    got = task._prune.acc
    # reference: the evaluation-mode importance pass, with the model in training mode and
    # the training criterion's loss, same seed, same weights (no optimizer step was taken)
    ref = ImportanceAccumulator(model_head_shape(model))
    torch.manual_seed(11)
    grads, finite = batch_gate_gradients(model, sample, loss_fn=lambda m, s: criterion(m, s)[0])
    assert finite
    ref.add_batch(grads, query_padding(model, sample), sample["target"].size(0))
    for g in ("sentence", "token", "batch"):
        assert torch.allclose(got.sums[g], ref.sums[g], rtol=1e-6, atol=1e-12), g
        assert float(got.sums[g].abs().sum()) > 0
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.counts, ref.counts)
    # and the parameters did get their gradients from that same step
    assert all(p.grad is not None for p in model.parameters())
    # dummy batches (ignore_grad) add nothing
    task.train_step(sample, model, criterion, optimizer, 1, ignore_grad=True)
    assert torch.equal(task._prune.acc.counts, ref.counts)


def _trainer(task, model, criterion, cfg):
    from fairseq.trainer import Trainer

    return Trainer(cfg, task, model, criterion)


def test_removal_mid_training_equals_model_built_without_the_heads(data_dir):
    from helpers import build

    extra = ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--dropout", "0",
             "--attention-dropout", "0"]
    task, model, cfg, criterion, _, sample = _setup(data_dir, extra)
    trainer = _trainer(task, model, criterion, cfg)
    for _ in range(3):
        trainer.train_step([sample])
    full_weights = {k: v.clone() for k, v in model.state_dict().items()}
    full_opt = {k: v.clone() if torch.is_tensor(v) else v for k, v in _adam_state(trainer).items()}
    heads = HeadSet([("E", 1, 2), ("E", 2, 1), ("E", 2, 4), ("A", 3, 3), ("D", 1, 1), ("D", 1, 4)])
    shrink_trainer(trainer, heads, model_cfg=cfg.model)
    assert removed_heads(model) == heads
    trainer.train_step([sample])
    got = {k: v.clone() for k, v in model.state_dict().items()}

    # reference: a model built without those heads, the same weights (a full state dict
    # sliced by the attention modules on load), Adam's moments sliced here by hand
    task2, model2, cfg2 = build(data_dir, extra=[*TRAIN, *extra, "--prune-heads", heads.to_spec()])
    model2.load_state_dict(full_weights)
    trainer2 = _trainer(task2, model2, task2.build_criterion(cfg2.criterion), cfg2)
    trainer2.set_num_updates(3)
    names = [n for n, _ in model2.named_parameters()]
    opt = trainer2.optimizer.optimizer
    for n, p in zip(names, [p for g in opt.param_groups for p in g["params"]]):
        st = {}
        for key in ("exp_avg", "exp_avg_sq"):
            st[key] = _by_hand(full_opt[(n, key)], n, p.shape, model2)
        st["step"] = full_opt[(n, "step")]
        opt.state[p] = st
    trainer2.train_step([sample])
    assert trainer2.get_lr() == trainer.get_lr()
    want = model2.state_dict()
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=1e-6, atol=1e-7), k
    # the removal changed something real: the update moved the kept weights
    w = "encoder.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(got[w], _by_hand(full_weights[w], w, got[w].shape, model2))


def _adam_state(trainer):
    opt = trainer.optimizer.optimizer
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    out = {}
    for n, p in zip(names, [p for g in opt.param_groups for p in g["params"]]):
        for key, v in opt.state[p].items():
            out[(n, key)] = v
    return out


def _by_hand(full: torch.Tensor, name: str, shape, model) -> torch.Tensor:
    """Keep the rows (q/k/v) or columns (out_proj) of the heads the module still has:
    head h owns indices h*d ... h*d+d-1 of the full module."""
    if full.shape == shape:
        return full
    module = model.get_submodule(name.rsplit(".", 2)[0])
    d = module.head_dim
    index = torch.tensor([h * d + i for h in module.kept_heads for i in range(d)])
    dim = 1 if name.endswith("out_proj.weight") else 0
    return full.index_select(dim, index)
