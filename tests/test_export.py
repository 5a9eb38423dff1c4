"""fairseq-headprune export: a smaller checkpoint that stock fairseq tools load, that
translates exactly as masking, whose parameter count drops by exactly (heads removed x
per-head parameters), that fine-tunes and resumes with the smaller shapes, and bad
input that fails cleanly without leaving a file."""

import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, train

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]
SPEC = "E:1:1,3 A:2:* D:1:2-4"
# The tiny model: d=64, 4 heads -> head_dim 16; q/k/v/out_proj with biases. Counted by
# hand: a head owns 16 rows of q, k, v (64 weights + 1 bias each) and 16 columns of
# out_proj (64 weights each); out_proj's bias is shared.
D_MODEL, HEAD_DIM = 64, 16
PER_HEAD = 3 * HEAD_DIM * (D_MODEL + 1) + HEAD_DIM * D_MODEL  # 4144


def export(data, ckpt, *extra, check=True):
    cmd = ["fairseq-headprune", "export", data, "--path", ckpt, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def generate(data, ckpt, *extra):
    p = subprocess.run(["fairseq-generate", data, "--path", ckpt, "--gen-subset", "test",
                        "--beam", "5", "--remove-bpe", "--cpu", "--max-tokens", "4000",
                        *USER, *extra], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return [l for l in p.stdout.splitlines() if l.startswith(("H-", "D-"))]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def exported(data_dir, trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    new = str(out / "new.pt")
    p = export(data_dir, trained_ckpt, "--prune-heads", SPEC, "--out", new)
    return new, out, p


def test_export_counts_and_reloads_smaller(data_dir, trained_ckpt, exported):
    from helpers import load
    from fairseq_headprune.models import removed_heads

    new, out, p = exported
    report = json.loads((out / "new.export.json").read_text())
    removed = 2 + 4 + 3
    _, full = load(trained_ckpt, data_dir)
    _, small = load(new, data_dir)  # no spec: the removals are in the checkpoint
    assert removed_heads(small).to_spec() == "E:1:1,3 A:2:1-4 D:1:2-4"
    assert n_params(full) - n_params(small) == removed * PER_HEAD == 37296
    par = report["parameters"]
    assert par["total"] == {
        "before": n_params(full), "after": n_params(small), "removed": 37296,
        "share_removed": {"fraction": 37296 / n_params(full),
                          "exact": f"37296/{n_params(full)}",
                          "reduced": par["total"]["share_removed"]["reduced"]}}
    for kind, k in (("E", 2), ("A", 4), ("D", 3)):
        assert par["heads"][kind] == {"before": 8, "after": 8 - k, "removed": k,
                                      "share_removed": par["heads"][kind]["share_removed"]}
        assert par["attention"][kind]["removed"] == k * PER_HEAD
        # attention parameters of a kind: 2 layers x (4 d^2 weights + 4 d biases)
        assert par["attention"][kind]["before"] == 2 * 4 * D_MODEL * (D_MODEL + 1)
    assert par["heads"]["all"]["share_removed"]["exact"] == "9/24"
    assert report["verified_reload"] is True
    assert "removed heads: 9 of 24 (9/24)" in p.stdout
    assert "-37,296" in p.stdout
    # the spec file next to the checkpoint names the same heads
    heads = json.loads((out / "new.heads.json").read_text())
    assert heads["spec"] == "E:1:1,3 A:2:1-4 D:1:2-4" and heads["count"] == 9
    # the checkpoint: removals recorded in its config, no optimizer state left over
    import torch
    state = torch.load(new)
    assert state["cfg"]["model"].pruned_heads == "E:1:1,3 A:2:1-4 D:1:2-4"
    assert "last_optimizer_state" not in state
    assert state["model"]["decoder.layers.1.encoder_attn.q_proj.weight"].shape == (0, D_MODEL)
    assert state["model"]["encoder.layers.0.self_attn.head_index"].tolist() == [1, 3]
    assert os.stat(new).st_mode & 0o777 != 0o600  # not mkstemp's private mode


def test_exported_checkpoint_translates_as_masking(data_dir, trained_ckpt, exported):
    new, out, _ = exported
    pruned = generate(data_dir, new)  # no spec at all
    masked = generate(data_dir, trained_ckpt, "--mask-heads", f"@{out / 'new.heads.json'}")
    assert len(pruned) == 240 and pruned == masked


def importance_file(path, scores):
    path.write_text(json.dumps({**scores, "meta": {"by": "hand"}}))
    return str(path)


# Importance by hand: head (k, l, h) gets a distinct score; lowest first below.
SCORES = {
    "E": [[0.9, 0.1, 0.8, 0.2], [0.5, 0.55, 0.6, 0.65]],
    "A": [[0.3, 0.35, 0.95, 0.05], [0.7, 0.75, 0.15, 0.25]],
    "D": [[0.4, 0.45, 0.85, 0.01], [0.02, 0.03, 0.04, 0.99]],
}


def lowest(n, kinds="EAD"):
    flat = [(v, k, l + 1, h + 1) for k in kinds for l, row in enumerate(SCORES[k])
            for h, v in enumerate(row)]
    return sorted((k, l, h) for _, k, l, h in sorted(flat)[:n])


def test_prune_ratio_and_file_size(data_dir, trained_ckpt, exported, tmp_path):
    from fairseq_headprune.heads import HeadSet

    imp = importance_file(tmp_path / "imp.json", SCORES)
    half = str(tmp_path / "half.pt")
    export(data_dir, trained_ckpt, "--prune-ratio", "0.5", "--importance", imp, "--out", half)
    got = json.loads((tmp_path / "half.heads.json").read_text())
    assert got["spec"] == HeadSet(lowest(12)).to_spec() and got["count"] == 12
    rep = json.loads((tmp_path / "half.export.json").read_text())
    assert rep["parameters"]["total"]["removed"] == 12 * PER_HEAD
    assert rep["parameters"]["heads"]["all"]["share_removed"]["exact"] == "12/24"
    # only A heads, at least one left per layer: 0.5 x 8 = 4 heads, the floor keeps
    # A:1:3 (0.95) and A:2:2 (0.75)
    a_only = str(tmp_path / "a.pt")
    export(data_dir, trained_ckpt, "--prune-ratio", "0.5", "--importance", imp,
           "--kinds", "A", "--min-heads-per-layer", "1", "--out", a_only)
    got = json.loads((tmp_path / "a.heads.json").read_text())
    assert got["spec"] == HeadSet(lowest(4, "A")).to_spec() == "A:1:1,4 A:2:3-4"
    # ratio 0: same checkpoint format, nothing removed; the file with 9 heads removed
    # is smaller by their fp32 weights (give or take the small head_index buffers)
    none = str(tmp_path / "none.pt")
    export(data_dir, trained_ckpt, "--prune-ratio", "0", "--importance", imp, "--out", none)
    saved = os.path.getsize(none) - os.path.getsize(exported[0])
    assert abs(saved - 9 * PER_HEAD * 4) < 4096, saved
    assert os.path.getsize(none) < os.path.getsize(trained_ckpt)  # no optimizer state


def test_finetune_and_resume_the_smaller_model(data_dir, trained_ckpt, exported, tmp_path):
    import torch
    from helpers import load
    from fairseq_headprune.models import removed_heads

    new, _, _ = exported
    _, full = load(trained_ckpt, data_dir)
    small = sum(p.numel() for p in full.parameters()) - 9 * PER_HEAD
    save = str(tmp_path / "ft")

    def finetune(updates, *extra):
        p = train(data_dir, save, task="translation_headprune", updates=updates,
                  extra=["--lr", "1e-4", "--warmup-updates", "1", *extra])
        log = p.stdout + p.stderr
        assert f"num. shared model params: {small:,}" in log, log[-3000:]
        return log

    log = finetune(3, "--finetune-from-model", new)
    assert "loading pretrained model from" in log
    ckpt = os.path.join(save, "checkpoint_last.pt")
    state = torch.load(ckpt)
    assert state["cfg"]["model"].pruned_heads == "E:1:1,3 A:2:1-4 D:1:2-4"
    # the optimizer holds state for the smaller parameters only
    adam = state["last_optimizer_state"]["state"]
    assert sum(s["exp_avg"].numel() for s in adam.values()) == small
    _, model = load(ckpt, data_dir)
    assert removed_heads(model).to_spec() == "E:1:1,3 A:2:1-4 D:1:2-4"
    assert n_params(model) == small
    # resume (checkpoint_last.pt, optimizer state restored) to 5 updates
    log = finetune(5)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ 3 updates\)", log)
    assert torch.load(ckpt)["optimizer_history"][-1]["num_updates"] == 5
    # --restore-file on the exported checkpoint itself (no optimizer state in it)
    save = str(tmp_path / "restore")
    finetune(2, "--restore-file", new, "--reset-dataloader")
    _, model = load(os.path.join(save, "checkpoint_last.pt"), data_dir)
    assert n_params(model) == small


def assert_clean_failure(p, message, folder):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-headprune: error: ") and message in last, last
    assert_no_file(folder)


def assert_no_file(folder):
    leftovers = [f for f in os.listdir(folder) if not f.endswith(".json.in")]
    assert leftovers == [], leftovers


def export_in_process(data, ckpt, *extra):
    from fairseq_headprune.cli.main import main

    return main(["export", data, "--path", ckpt, *extra])


def test_bad_input_fails_cleanly_and_leaves_no_file(data_dir, trained_ckpt, tmp_path):
    from fairseq_headprune.errors import HeadPruneError

    imp = importance_file(tmp_path / "imp.json.in", SCORES)
    out = str(tmp_path / "x.pt")
    # the command line: one line, exit status 2, no traceback, no file
    p = export(data_dir, trained_ckpt, "--prune-ratio", "1.5", "--importance", imp,
               "--out", out, check=False)
    assert p.returncode == 2
    assert_clean_failure(p, "--prune-ratio 1.5 is outside [0, 1]", tmp_path)
    # the same checks in-process (fast): the message names the bad value
    cases = [
        (["--prune-ratio", "-0.1", "--importance", imp], "--prune-ratio -0.1 is outside [0, 1]"),
        (["--prune-ratio", "0.5", "--importance", str(tmp_path / "nope.json")],
         "importance file '%s' does not exist" % (tmp_path / "nope.json")),
        (["--prune-ratio", "0.5"], "--prune-ratio needs --importance"),
        (["--prune-heads", "E:9:1"], "layer 9 in entry 'E:9:1' is out of range"),
        (["--prune-heads", "E:1:1", "--prune-ratio", "0.5", "--importance", imp],
         "exactly one of"),
        (["--prune-heads", "E:1:1", "--mask-heads", "E:1:2"], "--mask-heads is not saved"),
    ]
    for extra, message in cases:
        with pytest.raises(HeadPruneError, match=re.escape(message)):
            export_in_process(data_dir, trained_ckpt, *extra, "--out", out)
        assert_no_file(tmp_path)
    missing = str(tmp_path / "missing" / "x.pt")
    with pytest.raises(HeadPruneError, match="folder .*missing' does not exist"):
        export_in_process(data_dir, trained_ckpt, "--prune-heads", "E:1:1", "--out", missing)
    assert_no_file(tmp_path)


def test_failed_write_leaves_no_file(tmp_path):
    from fairseq_headprune.analysis.export import write_checkpoint

    with pytest.raises(Exception):
        write_checkpoint({"model": {}, "bad": lambda: 0}, str(tmp_path / "x.pt"))
    assert os.listdir(tmp_path) == []


def test_spec_naming_a_kind_the_model_lacks(data_dir, tmp_path):
    """A decoder without cross-attention has no A heads."""
    from fairseq_headprune.errors import HeadPruneError

    save = str(tmp_path / "nocross")
    train(data_dir, save, extra=["--no-cross-attention"], updates=1)
    ckpt = os.path.join(save, "checkpoint_last.pt")
    folder = tmp_path / "out"
    folder.mkdir()
    p = export(data_dir, ckpt, "--prune-heads", "E:1:1 A:1:2", "--out", str(folder / "x.pt"),
               check=False)
    assert_clean_failure(p, "names encoder-decoder attention (A), which this model does not have",
                         folder)
    imp = importance_file(tmp_path / "imp.json", {"E": SCORES["E"], "D": SCORES["D"]})
    with pytest.raises(HeadPruneError, match=r"--kinds A: this model has no encoder-decoder "
                                             r"attention \(A; allowed: E,D\)"):
        export_in_process(data_dir, ckpt, "--prune-ratio", "0.5", "--importance", imp,
                          "--kinds", "A", "--out", str(folder / "x.pt"))
    assert_no_file(folder)


def shared_groups(weights):
    """Names of the tensors that are one tensor (same storage), empty ones left out."""
    groups = {}
    for name, t in weights.items():
        if torch_numel(t):
            groups.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def torch_numel(t):
    return t.numel() if hasattr(t, "numel") else 0


def unique_bytes(weights):
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in weights.values() if torch_numel(t)}
    return sum(seen.values())


def check_export_shares_as_source(data, src, out):
    """The exported file shares tensors exactly as the source does (tied embeddings
    saved once), and holds the source's model bytes less the removed heads' fp32 weights
    (plus the small int64 head_index buffers); the file is not much bigger than that."""
    import torch

    export(data, src, "--prune-heads", SPEC, "--out", out)
    before = torch.load(src, map_location="cpu", weights_only=True)["model"]
    after = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert shared_groups(after) == shared_groups(before)
    index_bytes = sum(t.numel() * t.element_size() for k, t in after.items()
                      if k.endswith(".head_index"))
    assert unique_bytes(before) - unique_bytes(after) == 9 * PER_HEAD * 4 - index_bytes
    assert os.path.getsize(out) < unique_bytes(after) + 64 * 1024
    return before, after


def test_export_keeps_tied_embeddings_tied(data_dir, tmp_path):
    """--share-decoder-input-output-embed: decoder.embed_tokens.weight and
    decoder.output_projection.weight are one tensor in the source and in the export
    (the old export saved a copy of each: the file grew by the embedding's size)."""
    save = str(tmp_path / "tied")
    train(data_dir, save, ["--share-decoder-input-output-embed"], updates=5)
    before, after = check_export_shares_as_source(
        data_dir, os.path.join(save, "checkpoint_last.pt"), str(tmp_path / "tied.pt"))
    tied = ["decoder.embed_tokens.weight", "decoder.output_projection.weight"]
    assert tied in shared_groups(before) and tied in shared_groups(after)


def test_export_of_untied_model_shares_nothing(data_dir, trained_ckpt, tmp_path):
    check_export_shares_as_source(data_dir, trained_ckpt, str(tmp_path / "stock.pt"))
