"""The real fairseq command-line tools with the user dir: stock-identical output,
--mask-heads == --prune-heads, clean one-line errors, stock archs, pruned training."""

import json
import os
import subprocess

import pytest

from conftest import ROOT, run, train

USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]


def generate(data, ckpt, *extra, subset="test", user=True, env=None):
    cmd = ["fairseq-generate", data, "--path", ckpt, "--gen-subset", subset, "--beam", "5",
           "--remove-bpe", "--cpu", "--max-tokens", "4000", *extra]
    if user:
        cmd += USER
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, **(env or {})))
    return p


def hyps(p):
    assert p.returncode == 0, p.stderr[-3000:]
    return [l for l in p.stdout.splitlines() if l.startswith(("H-", "D-"))]


def test_generate_prints_exactly_what_stock_prints(data_dir, trained_ckpt):
    # Stock fairseq cannot load its own checkpoints under torch >= 2.6 without
    # switching weights-only loading off; our package allow-lists instead.
    stock = generate(data_dir, trained_ckpt, user=False,
                     env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    ours = generate(data_dir, trained_ckpt)
    assert stock.returncode == 0 and ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout == stock.stdout
    assert "BLEU4" in ours.stdout


@pytest.mark.parametrize("spec", ["E:1:1,3 A:2:* D:1:2-4", "E:*:2 A:1:1-3", "D:2:* A:2:4"])
def test_mask_heads_and_prune_heads_give_identical_hypotheses(data_dir, trained_ckpt, spec):
    masked = hyps(generate(data_dir, trained_ckpt, "--mask-heads", spec))
    pruned = hyps(generate(data_dir, trained_ckpt, "--prune-heads", spec))
    full = hyps(generate(data_dir, trained_ckpt))
    assert masked == pruned
    assert masked != full  # the spec changes the translations at all


def test_spec_file_and_duplicates(data_dir, trained_ckpt, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"heads": {"E": {"1": [1, 3]}, "A": {"2": [1, 2, 3, 4]}}}))
    a = hyps(generate(data_dir, trained_ckpt, "--mask-heads", f"@{path}"))
    b = hyps(generate(data_dir, trained_ckpt, "--mask-heads", "E:1:1,3;A:2:* E:1:3"))
    assert a == b


BAD = [
    ("--mask-heads", "X:1:1", "unknown attention kind 'X'"),
    ("--mask-heads", "E:1", "malformed head entry 'E:1'"),
    ("--prune-heads", "E:9:1", "layer 9 in entry 'E:9:1' is out of range: this model's E layers are 1-2"),
    ("--mask-heads", "A:1:5", "head 5 in entry 'A:1:5' is out of range: A layer 1 of this model has heads 1-4"),
    ("--mask-heads", "E:0:1", "numbered from 1"),
    ("--mask-heads", "D:1:x", "bad head 'x'"),
    ("--mask-heads", "@/no/such/spec.json", "head spec file '/no/such/spec.json' does not exist"),
]


@pytest.mark.parametrize("flag,spec,message", BAD)
def test_bad_specs_fail_with_one_clean_line(data_dir, trained_ckpt, flag, spec, message):
    p = generate(data_dir, trained_ckpt, flag, spec)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-headprune: error: ") and message in last, last


def test_spec_file_that_does_not_fit_the_model(data_dir, trained_ckpt, tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"heads": {"D": {"6": [1]}}}))
    p = generate(data_dir, trained_ckpt, "--prune-heads", f"@{path}")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "layer 6" in p.stderr and "1-2" in p.stderr


def test_validate_and_interactive_accept_the_flags(data_dir, trained_ckpt):
    def valid_loss(*extra):
        p = run(["fairseq-validate", data_dir, "--path", trained_ckpt, "--cpu",
                 "--max-tokens", "4000", "--valid-subset", "test", *USER, *extra])
        line = [l for l in (p.stdout + p.stderr).splitlines() if "valid on 'test' subset" in l][-1]
        return float(line.split("| loss ")[1].split()[0])
    full = valid_loss()
    masked = valid_loss("--mask-heads", "A:2:1-3")
    pruned = valid_loss("--prune-heads", "A:2:1-3")
    assert masked == pruned and masked != full
    src = "ein mann fährt fahrrad .\nzwei hunde spielen im schnee .\n"
    outs = []
    for flag in ("--mask-heads", "--prune-heads"):
        p = subprocess.run(["fairseq-interactive", data_dir, "--path", trained_ckpt, "--cpu",
                            "--beam", "3", "--source-lang", "de", "--target-lang", "en",
                            *USER, flag, "E:1:2 A:1:1"],
                           input=src, capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-2000:]
        outs.append([l for l in p.stdout.splitlines() if l.startswith("H-")])
    assert outs[0] == outs[1] and len(outs[0]) == 2


def test_stock_archs_load_under_the_task(data_dir, tmp_path):
    """transformer_vaswani_wmt_en_fr_big (the paper's WMT model, small dimensions) and
    transformer_iwslt_de_en, trained by stock fairseq, load with no conversion."""
    small = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32",
             "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
             "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
             "--decoder-attention-heads", "4"]
    for arch in ("transformer_vaswani_wmt_en_fr_big", "transformer_iwslt_de_en"):
        save = str(tmp_path / arch)
        run(["fairseq-train", data_dir, "--task", "translation", "--arch", arch, *small,
             "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "3",
             "--criterion", "cross_entropy", "--save-dir", save, "--cpu", "--no-progress-bar",
             "--no-epoch-checkpoints"])
        ckpt = os.path.join(save, "checkpoint_last.pt")
        short = ["--max-len-a", "0", "--max-len-b", "12"]  # an untrained model babbles
        full = hyps(generate(data_dir, ckpt, *short))
        stock = hyps(generate(data_dir, ckpt, *short, user=False,
                              env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}))
        assert full == stock
        assert hyps(generate(data_dir, ckpt, *short, "--mask-heads", "A:1:1,2")) == \
            hyps(generate(data_dir, ckpt, *short, "--prune-heads", "A:1:1,2"))


def test_training_with_removed_heads_saves_a_smaller_model_that_reloads(data_dir, trained_ckpt, tmp_path):
    from helpers import load
    from fairseq_headprune.models import removed_heads

    save = str(tmp_path / "pruned")
    spec = "E:1:1-2 A:2:* D:1:3"
    train(data_dir, save, extra=["--prune-heads", spec], task="translation_headprune", updates=20)
    ckpt = os.path.join(save, "checkpoint_last.pt")
    # no spec needed: the removed heads are recorded in the checkpoint
    _, model = load(ckpt, data_dir)
    assert removed_heads(model).to_spec() == "E:1:1-2 A:2:1-4 D:1:3"
    _, full = load(trained_ckpt, data_dir)
    n = lambda m: sum(p.numel() for p in m.parameters())
    per_head = 4 * 64 * 16 + 3 * 16
    assert n(full) - n(model) == 7 * per_head
    assert len(hyps(generate(data_dir, ckpt))) > 0
    # resuming the pruned run (same flags) continues from the smaller checkpoint
    train(data_dir, save, extra=["--prune-heads", spec], task="translation_headprune", updates=30)
    _, model = load(ckpt, data_dir)
    assert removed_heads(model).to_spec() == "E:1:1-2 A:2:1-4 D:1:3"


def test_unexpected_pickled_global_is_still_refused(tmp_path):
    import torch
    import fairseq_headprune  # noqa: F401 (installs the allow-list)

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"hook": os.system}}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path)
    # while a real fairseq checkpoint loads under the same protection
    import argparse
    torch.save({"args": argparse.Namespace(arch="x"), "model": {}}, tmp_path / "ok.pt")
    assert torch.load(tmp_path / "ok.pt")["args"].arch == "x"
