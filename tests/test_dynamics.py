"""Training dynamics inside fairseq-train (paper §6, Fig. 6): per-epoch lines equal an
independent `fairseq-headprune curve` of that epoch's checkpoint, 2 gloo workers equal
1 worker, resume neither repeats nor loses an epoch, fixed masks train with the heads
off, the Hydra config runs, plot-dynamics draws.

Runs on a tiny data dir (train = the 120 Multi30k valid pairs, valid = the 120 test
pairs), fine-tuning the session's trained model, 1 thread per process."""

import json
import os
import shutil

import pytest
import torch

from conftest import ROOT, TINY_ARCH, run, run_gloo_workers
from fairseq_headprune.analysis import dynamics as dyn
from fairseq_headprune.analysis.data import select
from fairseq_headprune.tasks import dynamics_hooks as dyn_hooks

USER_DIR = os.path.join(ROOT, "fairseq_headprune")
SENT, IMP_SENT, BEAM, BSZ = 16, 64, 2, 8
DYN = ["--prune-curve-every-epoch", "--prune-curve-sentences", str(SENT), "--prune-curve-beam",
       str(BEAM), "--prune-curve-importance-sentences", str(IMP_SENT), "--batch-size-valid", str(BSZ)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # 2 shared cores: threads only thrash
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="module")
def tiny(tiny_data):
    return tiny_data


def train_cmd(tiny, init, save, *extra):
    return ["fairseq-train", tiny, "--save-dir", str(save), "--task", "translation_headprune",
            "--user-dir", USER_DIR, *TINY_ARCH, "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--dropout", "0.1", "--max-tokens", "1000", "--cpu", "--seed", "1", "--no-progress-bar",
            "--log-interval", "100", "--num-workers", "0", "--finetune-from-model", init, *DYN, *extra]


def lines_of(save):
    return dyn.read_lines(os.path.join(str(save), dyn.DEFAULT_FILE))


def without_timing(lines):
    return [{k: v for k, v in l.items() if k != "timing"} for l in lines]


@pytest.fixture(scope="module")
def two_epochs(tiny, trained_ckpt, tmp_path_factory):
    save = tmp_path_factory.mktemp("dyn_a")
    p = run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "2"))
    return save, p.stderr + p.stdout


def independent_curve(tiny, ckpt, out, step="0.1"):
    """fairseq-headprune curve on a checkpoint, with the settings of the training run."""
    run(["fairseq-headprune", "curve", tiny, "--path", str(ckpt), "--user-dir", USER_DIR,
         "--task", "translation_headprune", "--cpu", "--gen-subset", "valid",
         "--max-eval-sentences", str(SENT), "--beam", str(BEAM), "--max-len-a", "1.2",
         "--max-len-b", "10", "--remove-bpe", "--max-tokens", "1000", "--batch-size", str(BSZ),
         "--importance-subset", "train", "--importance-max-sentences", str(IMP_SENT),
         "--importance-seed", "1", "--prune-step", step, "--results-dir", str(out)])
    curve = json.loads((out / "curve.json").read_text())["curves"]["all"]
    return curve, json.loads((out / "importance.json").read_text())


def assert_same(line, curve, importance):
    """A dynamics line equals an independent single-process evaluation."""
    for kind in ("E", "A", "D"):
        for mine, ref in zip(line["importance"][kind], importance[kind]):
            assert mine == pytest.approx(ref, rel=1e-5, abs=1e-12)
        for mine, ref in zip(line["importance"]["raw_sums"]["sentence"][kind],
                             importance["raw_sums"]["sentence"][kind]):
            assert mine == pytest.approx(ref, rel=1e-5, abs=1e-12)
    assert line["importance"]["counts"]["sentences"] == importance["counts"]["sentences"] == IMP_SENT
    ours = {p["fraction"]: p for p in line["curve"]}
    for ref in curve:
        p = ours[ref["fraction"]]
        assert p["spec"] == ref["spec"]
        assert p["bleu"] == pytest.approx(ref["bleu"], abs=1e-9)
        assert p["sacrebleu"] == pytest.approx(ref["sacrebleu"], abs=1e-9)
        assert p["loss"] == pytest.approx(ref["loss"], rel=1e-6)


def test_two_epochs_two_lines_equal_to_each_checkpoint(two_epochs, tiny, tmp_path):
    save, log = two_epochs
    lines = lines_of(save)
    assert [l["epoch"] for l in lines] == [1, 2]
    assert all(l["end_of_epoch"] and l["workers"] == 1 for l in lines)
    assert [len(l["curve"]) for l in lines] == [11, 11]
    assert [p["masked"] for p in lines[0]["curve"]] == [0, 2, 5, 7, 10, 12, 14, 17, 19, 22, 24]
    assert lines[0]["updates"] < lines[1]["updates"]
    for l in lines:
        assert l["unpruned"]["bleu"] == l["curve"][0]["bleu"] > 5
        assert l["eval_sentences"] == SENT
    # every point of epoch 1, and the 0%/100% points of epoch 2, against its checkpoint
    curve, importance = independent_curve(tiny, save / "checkpoint1.pt", tmp_path / "e1")
    assert len(curve) == 11
    assert_same(lines[0], curve, importance)
    curve, importance = independent_curve(tiny, save / "checkpoint2.pt", tmp_path / "e2", step="1.0")
    assert curve[0]["bleu"] == pytest.approx(lines[1]["unpruned"]["bleu"], abs=1e-9)
    assert_same(lines[1], curve, importance)
    # the checkpoint's task state holds every epoch's importance so far
    state = torch.load(save / "checkpoint2.pt", map_location="cpu", weights_only=False)["task_state"]
    hist = state["head_dynamics"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["E"] == lines[1]["importance"]["E"]
    # logged: the figure and the overhead, and in fairseq's validation stats
    assert "head dynamics (epoch 2): unpruned BLEU" in log and "% of the epoch" in log
    assert "hd_bleu" in log and "hd_overhead" in log


def train_epoch_stats(log):
    """fairseq-train's end-of-epoch training stats: {epoch: (num_updates, loss)}."""
    out = {}
    for text in log.splitlines():
        if "| train |" in text and "| epoch " in text:
            fields = dict(f.strip().split(" ", 1) for f in text.split("| train |", 1)[1].split("|")
                          if " " in f.strip())
            out[int(fields["epoch"])] = (int(fields["num_updates"]), fields["loss"])
    return out


def test_interval_updates_mid_epoch_lines_leave_training_alone(two_epochs, tiny, trained_ckpt, tmp_path):
    """--prune-curve-interval-updates 1 with a validation after every update: 3 interval
    lines inside each 4-update epoch plus the 2 epoch lines. The importance slice is
    taken from the training split mid-epoch; it must not touch the trainer's epoch
    iterator (it used to replace the one the task watches for epoch ends: crash at the
    next validation), nor change the training (same updates and losses as without)."""
    save = tmp_path / "iv"
    p = run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "2", "--prune-curve-step", "0.5",
                      "--prune-curve-interval-updates", "1", "--validate-interval-updates", "1"))
    log = p.stderr + p.stdout
    lines = lines_of(save)
    assert [(l["epoch"], l["updates"], l["end_of_epoch"]) for l in lines] == [
        (1, 1, False), (1, 2, False), (1, 3, False), (1, 4, True),
        (2, 5, False), (2, 6, False), (2, 7, False), (2, 8, True)]
    assert all(len(l["curve"]) == 3 and l["eval_sentences"] == SENT for l in lines)
    assert all(l["importance"]["counts"]["sentences"] == IMP_SENT for l in lines)
    assert "head dynamics (epoch 1, update 2)" in log
    # the training is the one without the interval lines (two_epochs: same command)
    ref_save, ref_log = two_epochs
    ref = lines_of(ref_save)
    assert train_epoch_stats(log) == train_epoch_stats(ref_log) == {
        1: (4, train_epoch_stats(ref_log)[1][1]), 2: (8, train_epoch_stats(ref_log)[2][1])}
    for mine, theirs in zip([l for l in lines if l["end_of_epoch"]], ref):
        assert (mine["epoch"], mine["updates"]) == (theirs["epoch"], theirs["updates"])
        assert mine["importance"]["E"] == theirs["importance"]["E"]
        assert mine["unpruned"] == theirs["unpruned"]
        at = {p["fraction"]: p for p in theirs["curve"]}
        for point in mine["curve"]:
            assert point["bleu"] == at[point["fraction"]]["bleu"]
    state = torch.load(save / "checkpoint2.pt", map_location="cpu", weights_only=False)["task_state"]
    assert [h["updates"] for h in state["head_dynamics"]] == list(range(1, 9))


def test_selection_builds_no_iterator_and_only_the_trainers_is_watched(data_dir, monkeypatch):
    """select_batches batches the split itself (fairseq's get_batch_iterator steps, same
    batches as before), and the task's watched iterator is the one Trainer.get_train_iterator
    makes, not another iterator over the training split."""
    from fairseq import utils
    from fairseq.trainer import Trainer

    from helpers import build

    task, model, _ = build(data_dir, extra=["--prune-curve-interval-updates", "1"])
    task.load_dataset("valid")
    train = task.dataset("valid")
    monkeypatch.setattr(task.cfg, "train_subset", "valid")
    settings = dyn.DynamicsSettings(seed=3, max_tokens=1000, required_batch_size_multiple=8)
    reference = task.get_batch_iterator(  # what select_batches used to build
        dataset=train, max_tokens=1000, seed=3, required_batch_size_multiple=8,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        disable_iterator_cache=True).frozen_batches

    class FakeTrainer(Trainer):
        def __init__(self):  # noqa: D107  (only get_train_iterator's frame is needed)
            pass

        def get_train_iterator(self, epoch):
            return task.get_batch_iterator(dataset=train, max_tokens=1000, epoch=epoch)

    theirs = FakeTrainer().get_train_iterator(1)
    state = task._dynamics()
    assert state.train_itr is theirs and state.train_itr_from_trainer
    other = task.get_batch_iterator(dataset=train, max_tokens=500, disable_iterator_cache=True)
    assert state.train_itr is theirs and other is not theirs
    monkeypatch.setattr(task, "get_batch_iterator", None)  # the selector must not call it
    batches = select(task, [model], dyn.data_spec(settings, "valid", None)).batches
    assert batches == [[int(i) for i in b] for b in reference]
    sample = select(task, [model], dyn.data_spec(settings, "valid", 64))
    assert sample.nsentences == 64 and sample.describe()["seed"] == 3
    assert state.train_itr is theirs
    assert not dyn_hooks.epoch_exhausted(theirs)  # no epoch started yet: no crash
    itr = theirs.next_epoch_itr(shuffle=False)
    for _ in itr:
        pass
    assert dyn_hooks.epoch_exhausted(theirs)


def test_resume_neither_repeats_nor_loses_an_epoch(two_epochs, tiny, trained_ckpt, tmp_path):
    """fairseq-train's own resume is not bit-identical on this fairseq (plain runs, no
    option: epoch-2 weights differ by ~1e-3 after a resume), so the resumed epoch 2 is
    checked against its own checkpoint; epoch 1 against the uninterrupted run."""
    ref = without_timing(lines_of(two_epochs[0]))
    save = tmp_path / "b"
    run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "1"))
    assert without_timing(lines_of(save)) == ref[:1]
    run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "2"))  # resumes checkpoint_last
    resumed = without_timing(lines_of(save))
    assert [l["epoch"] for l in resumed] == [1, 2] and resumed[0] == ref[0]
    curve, importance = independent_curve(tiny, save / "checkpoint2.pt", tmp_path / "e2", step="1.0")
    assert_same(resumed[1], curve, importance)
    # killed while epoch 2 was being scored: its line is missing, checkpoint_last = epoch 1
    path = save / dyn.DEFAULT_FILE
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    shutil.copy(save / "checkpoint1.pt", save / "checkpoint_last.pt")
    run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "2"))
    assert without_timing(lines_of(save)) == resumed
    # killed after the line of epoch 2 was written but before its checkpoint: no duplicate
    shutil.copy(save / "checkpoint1.pt", save / "checkpoint_last.pt")
    run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "2"))
    assert without_timing(lines_of(save)) == resumed
    state = torch.load(save / "checkpoint2.pt", map_location="cpu", weights_only=False)["task_state"]
    assert [h["epoch"] for h in state["head_dynamics"]] == [1, 2]  # rebuilt from the file


def test_two_gloo_workers_equal_one_worker(tiny, trained_ckpt, tmp_path):
    save = tmp_path / "c"
    outs = run_gloo_workers(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "1"))
    lines = lines_of(save)
    assert [l["epoch"] for l in lines] == [1] and lines[0]["workers"] == 2
    assert "2 worker(s)" in outs[0]
    curve, importance = independent_curve(tiny, save / "checkpoint1.pt", tmp_path / "one")
    assert_same(lines[0], curve, importance)


def test_fixed_mask_trains_with_the_head_off(tiny, trained_ckpt, tmp_path):
    save = tmp_path / "m"
    run(train_cmd(tiny, trained_ckpt, save, "--max-epoch", "1", "--mask-heads", "E:1:1",
                  "--save-interval-updates", "1", "--prune-curve-step", "0.5"))
    first = torch.load(save / "checkpoint_1_1.pt", map_location="cpu", weights_only=False)["model"]
    last = torch.load(save / "checkpoint1.pt", map_location="cpu", weights_only=False)["model"]
    w = "encoder.layers.0.self_attn.{}.weight"
    d = 16  # head dim
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(first[w.format(proj)][:d], last[w.format(proj)][:d])  # head 1: frozen
        assert not torch.equal(first[w.format(proj)][d:], last[w.format(proj)][d:])
    assert torch.equal(first[w.format("out_proj")][:, :d], last[w.format("out_proj")][:, :d])
    (line,) = lines_of(save)
    assert line["fixed_masked"] == "E:1:1"
    assert [p["masked"] for p in line["curve"]] == [0, 12, 23]  # 23 candidates
    assert all("E:1:1" not in p["spec"].split() for p in line["curve"])


def test_hydra_config_loads_and_trains(tiny, tmp_path):
    save = tmp_path / "h"
    run(["fairseq-hydra-train", "--config-dir", os.path.join(ROOT, "configs"),
         "--config-name", "iwslt14_de_en_dynamics", f"task.data={tiny}", f"common.user_dir={USER_DIR}",
         "common.cpu=true", f"checkpoint.save_dir={save}", f"hydra.run.dir={tmp_path}/hydra",
         "model.encoder.layers=1", "model.decoder.layers=1", "model.encoder.embed_dim=32",
         "model.decoder.embed_dim=32", "model.encoder.ffn_embed_dim=32", "model.decoder.ffn_embed_dim=32",
         "model.encoder.attention_heads=2", "model.decoder.attention_heads=2", "optimization.max_epoch=1",
         "dataset.max_tokens=1000", "dataset.batch_size_valid=8", "task.prune_curve_sentences=8",
         "task.prune_curve_beam=1", "task.prune_curve_importance_sentences=16", "task.prune_curve_step=0.5"])
    (line,) = lines_of(save)
    assert len(line["curve"]) == 3 and line["settings"]["beam"] == 1
    assert [len(r) for r in line["importance"]["E"]] == [2]


def test_plot_dynamics(two_epochs, tmp_path):
    save, _ = two_epochs
    run(["fairseq-headprune", "plot-dynamics", str(save), "--out-dir", str(tmp_path)])
    rows = (tmp_path / "dynamics.csv").read_text().splitlines()
    assert len(rows) == 1 + 22 and rows[0].endswith(",loss_bits_per_token")
    first = rows[1].split(",")
    assert first[:3] == ["1", str(lines_of(save)[0]["updates"]), "0.0"] and float(first[5]) == 1.0
    for name in ("dynamics_by_epoch.png", "dynamics_by_level.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_merge_line_replaces_and_drops():
    def line(epoch, updates, end=True):
        return {"epoch": epoch, "updates": updates, "end_of_epoch": end, "v": (epoch, updates)}

    lines = [line(1, 4), line(2, 8), line(3, 12)]
    out = dyn.merge_line(lines, line(2, 8))
    assert [l["epoch"] for l in out] == [1, 2, 3]
    out = dyn.merge_line(lines, line(2, 8), drop_after_updates=4)  # restored epoch 1
    assert [l["epoch"] for l in out] == [1, 2]
    out = dyn.merge_line(lines, line(2, 6, end=False))
    assert [(l["updates"], l["end_of_epoch"]) for l in out] == [(4, True), (6, False), (8, True), (12, True)]


def test_gather_strings_single_worker():
    from fairseq_headprune.analysis.workers import SingleWorker

    assert SingleWorker().gather_strings({1: "b ü", 0: "", 2: "c"}, 3) == ["", "b ü", "c"]
