"""Pruning while training: schedules (pure), importance accumulated from fairseq's own
training steps == the importance pass run in training mode on the same batches with
the same dropout seed, a removal mid-training == a model built without those heads
that continues from the same weights and the sliced optimizer state, and fairseq-train
end to end (removal lines, resume, 2 gloo workers == 1 worker, no-spec reload, bad
schedules one line)."""

import json
import os
import subprocess

import pytest
import torch

from conftest import ROOT, TINY_ARCH, run, run_gloo_workers
from fairseq_headprune.analysis.importance import ImportanceAccumulator, batch_gate_gradients, query_padding
from fairseq_headprune.analysis.schedule import PruneSchedule
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import HeadSet
from fairseq_headprune.models.head_model import model_head_shape, removed_heads
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


# ---- fairseq-train end to end -----------------------------------------------------------

SCHEDULE = ["--prune-schedule", "E:50% A:25% D:50%", "--prune-end-epoch", "2"]


@pytest.fixture(scope="module")
def tiny(tiny_data):
    return tiny_data


def train_cmd(tiny, save, *extra):
    # dropout 0: fairseq's dropout RNG is not part of its checkpoints, so only a run
    # without dropout resumes bit for bit (the removals match either way)
    return ["fairseq-train", tiny, "--save-dir", str(save), "--task", "translation_headprune",
            "--user-dir", USER_DIR, *TINY_ARCH, "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--dropout", "0", "--max-tokens", "1000", "--cpu", "--seed", "1", "--no-progress-bar",
            "--log-interval", "100", "--num-workers", "0", "--prune-curve-sentences", "16",
            "--batch-size-valid", "8", *extra]


def read(save, name):
    with open(os.path.join(str(save), name)) as f:
        return [json.loads(l) for l in f if l.strip()]


@pytest.fixture(scope="module")
def three_epochs(tiny, tmp_path_factory):
    save = tmp_path_factory.mktemp("prune3")
    run(train_cmd(tiny, save, *SCHEDULE, "--max-epoch", "3"))
    return save


def test_schedule_removes_heads_at_epoch_ends(three_epochs):
    lines = read(three_epochs, "head_pruning.jsonl")
    assert [l["epoch"] for l in lines] == [1, 2]  # the window: epochs 1-2
    # linear ramp to E 50% (of 8), A 25%, D 50%: half way after epoch 1
    assert [l["targets"] for l in lines] == [{"E": 2, "A": 1, "D": 2}, {"E": 4, "A": 2, "D": 4}]
    assert [l["heads_left"] for l in lines] == [{"E": 6, "A": 7, "D": 6}, {"E": 4, "A": 6, "D": 4}]
    imp = read(three_epochs, "head_importance.jsonl")
    assert [l["epoch"] for l in imp] == [1, 2, 3]
    for line in lines:
        # the least important heads of each kind by that epoch's training importance
        scores = next(l for l in imp if l["epoch"] == line["epoch"])["importance"]
        for removed in line["removed"]:
            kind, layer, head = removed["head"].split(":")
            assert removed["score"] == scores[kind][int(layer) - 1][int(head) - 1]
        for kind in "EAD":
            gone = [r["score"] for r in line["removed"] if r["head"][0] == kind]
            left = [v for row in scores[kind] for v in row if v is not None and v not in gone]
            assert not gone or max(gone) <= min(left)
        assert line["parameters"] < line["parameters_before"]
        # a removed head costs its q/k/v rows and out_proj columns: 4 * 16 * 64 + 3 * 16 weights
        assert line["parameters_before"] - line["parameters"] == len(line["removed"]) * (4 * 16 * 64 + 3 * 16)
    ckpt = torch.load(three_epochs / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert ckpt["cfg"]["model"].pruned_heads == lines[-1]["all_removed_spec"]  # a legacy Namespace
    assert ckpt["task_state"]["head_importance_train"]["epoch"] == 3


def test_checkpoint_after_removal_generates_with_no_spec(tiny, three_epochs):
    from conftest import generate_lines

    common = [tiny, "--user-dir", USER_DIR, "--task", "translation_headprune", "--gen-subset", "valid",
              "--beam", "2", "--cpu", "--batch-size", "40", "--max-len-b", "20"]
    hyps, _ = generate_lines(["fairseq-generate", *common, "--path", str(three_epochs / "checkpoint_last.pt")])
    assert len(hyps) == 120


def test_resume_after_a_removal_reproduces_the_uninterrupted_run(tiny, three_epochs, tmp_path):
    save = tmp_path / "resumed"
    run(train_cmd(tiny, save, *SCHEDULE, "--max-epoch", "1"))
    p = run(train_cmd(tiny, save, *SCHEDULE, "--max-epoch", "3"))
    assert "has 5 attention heads removed: building the model without them" in p.stderr + p.stdout
    got, want = read(save, "head_pruning.jsonl"), read(three_epochs, "head_pruning.jsonl")
    assert [l["removed_spec"] for l in got] == [l["removed_spec"] for l in want]
    # fairseq's own resume is not bit for bit: stock fairseq-train (task translation, no
    # pruning, dropout 0, this data) gave valid ppl 2024.28 after epoch 2 uninterrupted and
    # 2024.46 resumed after epoch 1; so numbers after the resume agree to ~1e-3, not 1e-7
    for a, b in zip(got, want):
        assert a["valid_loss_after"] == pytest.approx(b["valid_loss_after"], rel=1e-3)
    assert got[0] == want[0] | {"seconds": got[0]["seconds"]}  # epoch 1: before the resume
    gi, wi = read(save, "head_importance.jsonl"), read(three_epochs, "head_importance.jsonl")
    assert [l["epoch"] for l in gi] == [1, 2, 3]
    for a, b in zip(gi, wi):
        for kind in "EAD":
            for ra, rb in zip(a["importance"][kind], b["importance"][kind]):
                assert [x is None for x in ra] == [x is None for x in rb]
                assert [x for x in ra if x is not None] == pytest.approx([x for x in rb if x is not None], rel=2e-2)


def test_two_gloo_workers_equal_one_worker(tiny, tmp_path):
    one = tmp_path / "one"
    run(train_cmd(tiny, one, *SCHEDULE, "--max-epoch", "2", "--update-freq", "2"))
    two = tmp_path / "two"
    run_gloo_workers(train_cmd(tiny, two, *SCHEDULE, "--max-epoch", "2"))
    a, b = read(one, "head_pruning.jsonl"), read(two, "head_pruning.jsonl")
    assert [l["removed_spec"] for l in a] == [l["removed_spec"] for l in b] and len(a) == 2
    ia, ib = read(one, "head_importance.jsonl"), read(two, "head_importance.jsonl")
    for x, y in zip(ia, ib):
        assert x["importance"]["counts"]["sentences"] == y["importance"]["counts"]["sentences"] == 120
        for kind in "EAD":
            fx = [v for row in x["importance"]["raw_sums"]["sentence"][kind] for v in row if v is not None]
            fy = [v for row in y["importance"]["raw_sums"]["sentence"][kind] for v in row if v is not None]
            assert fx == pytest.approx(fy, rel=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["--prune-schedule", "E:150%"], "'E:150%': 150% is more than all the heads"),
    (["--prune-schedule", "Q:10%"], "unknown kind 'Q'"),
    (["--prune-schedule", "E:90%", "--min-heads-per-layer", "2"], "at most 4 can go"),
    (["--prune-schedule", "E:10%", "--prune-start-epoch", "3", "--prune-end-epoch", "2"],
     "--prune-end-epoch 2 is before --prune-start-epoch 3"),
    (["--prune-schedule", "E:10%", "--disable-validation"], "leave out --disable-validation"),
])
def test_bad_schedules_fail_with_one_line(tiny, tmp_path, extra, message):
    p = subprocess.run(train_cmd(tiny, tmp_path / "bad", "--max-epoch", "1", *extra), cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert p.returncode != 0
    errors = [l for l in p.stderr.splitlines() if l.startswith("fairseq-headprune: error:")]
    assert len(errors) == 1 and message in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not os.path.exists(tmp_path / "bad" / "checkpoint_last.pt")


def test_hydra_config_prunes_while_training(tiny, tmp_path):
    save = tmp_path / "h"
    run(["fairseq-hydra-train", "--config-dir", os.path.join(ROOT, "configs"),
         "--config-name", "multi30k_prune_while_training", f"task.data={tiny}", f"common.user_dir={USER_DIR}",
         f"checkpoint.save_dir={save}", f"hydra.run.dir={tmp_path}/hydra",
         "model.encoder.layers=1", "model.decoder.layers=1", "model.encoder.embed_dim=32",
         "model.decoder.embed_dim=32", "model.encoder.ffn_embed_dim=32", "model.decoder.ffn_embed_dim=32",
         "model.encoder.attention_heads=4", "model.decoder.attention_heads=4", "optimization.max_epoch=2",
         "task.prune_end_epoch=2", "dataset.max_tokens=1000", "dataset.batch_size_valid=8",
         "task.prune_curve_sentences=8"])
    lines = read(save, "head_pruning.jsonl")
    # cubic ramp over 2 epochs: 1 - (1 - 1/2)^3 = 87.5% of the share after epoch 1
    assert [l["progress"] for l in lines] == [0.875, 1.0]
    assert [l["targets"] for l in lines] == [{"all": 5}, {"all": 6}]  # of 12 heads
    removed = {k: sum(1 for line in lines for h in line["removed"] if h["head"][0] == k) for k in "EAD"}
    assert lines[-1]["heads_left"] == {k: 4 - removed[k] for k in "EAD"}
    assert sum(removed.values()) == 6


def test_removal_mid_training_carries_the_ema_model(data_dir):
    extra = ["--dropout", "0", "--attention-dropout", "0", "--store-ema", "--ema-start-update", "0",
             "--ema-decay", "0.9"]
    task, model, cfg, criterion, _, sample = _setup(data_dir, extra)
    trainer = _trainer(task, model, criterion, cfg)
    for _ in range(2):
        trainer.train_step([sample])
    ema = trainer.ema.get_model()
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    heads = HeadSet([("E", 1, 2), ("A", 2, 1), ("D", 3, 4)])
    shrink_trainer(trainer, heads, model_cfg=cfg.model)
    assert removed_heads(trainer.ema.get_model()) == heads
    trainer.train_step([sample])
    after, new = trainer.ema.get_model().state_dict(), model.state_dict()
    for k, v in after.items():
        if k.endswith("head_index"):
            assert torch.equal(v, new[k])
        elif v.is_floating_point() and "version" not in k:
            # one EMA step from the sliced shadow weights: 0.9 * old + 0.1 * new
            old = _by_hand(before[k], k, v.shape, model)
            assert torch.allclose(v, 0.9 * old + 0.1 * new[k], atol=1e-6), k


def test_slice_importance_ranks_and_is_compared_with_training_importance(tiny, tmp_path):
    save = tmp_path / "slice"
    run(train_cmd(tiny, save, "--prune-schedule", "D:50%", "--max-epoch", "1",
                  "--prune-importance", "slice", "--accumulate-head-importance",
                  "--prune-curve-importance-sentences", "32"))
    (line,) = read(save, "head_pruning.jsonl")
    assert line["importance_source"] == "slice" and line["heads_left"] == {"E": 8, "A": 8, "D": 4}
    (imp,) = read(save, "head_importance.jsonl")
    assert -1.0 <= imp["spearman_vs_slice"] <= 1.0
    assert all(r["head"].startswith("D:") for r in line["removed"])  # the schedule names D only
