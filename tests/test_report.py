"""The report is built from results files alone, and its numbers are theirs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import run
from fairseq_headprune.report.markdown_report import build_report


def test_report_gathers_tables_from_results_files(tmp_path):
    curve = {"settings": {"order": "importance", "subset": "test", "reestimate": False},
             "curves": {"all": [{"fraction": 0.0, "bleu": 30.123}, {"fraction": 0.5, "bleu": 12.5}],
                        "E": [{"fraction": 0.0, "bleu": 30.123}, {"fraction": 0.5, "bleu": 29.75}]},
             "meta": {"command": "fairseq-headprune curve X", "versions": {"torch": "2"}}}
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    (tmp_path / "curve.png").write_bytes(b"png")
    text = build_report(str(tmp_path))
    assert "| 0 | 30.12 | 30.12 |" in text and "| 50 | 12.50 | 29.75 |" in text
    assert "![curve.png](curve.png)" in text and "`fairseq-headprune curve X`" in text
    assert "36.05" in text  # the paper's figure beside ours


def test_report_of_an_empty_folder_fails_cleanly(tmp_path):
    p = subprocess.run(["fairseq-headprune", "report", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "holds no fairseq-headprune results" in p.stderr.strip().splitlines()[-1]


# ---- fairseq-headprune report DIR --redraw ---------------------------------------

GEN = ["--cpu", "--beam", "2", "--remove-bpe", "--max-tokens", "4000", "--batch-size", "16"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pngs(folder):
    return {f: os.path.getsize(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
            if f.endswith(".png")}


@pytest.fixture(scope="module")
def results(data_dir, trained_ckpt, tmp_path_factory):
    """A results folder made by the real commands: importance, curve, a two-set ablation
    of two heads (heatmaps + cross-domain scatter) and plot-dynamics of a training log
    (written here from the curve's points: three 'epochs', loss renamed as it will be)."""
    out = tmp_path_factory.mktemp("results")
    run(["fairseq-headprune", "importance", data_dir, "--path", trained_ckpt, *GEN,
         "--importance-subset", "valid", "--results-dir", str(out)])
    run(["fairseq-headprune", "curve", data_dir, "--path", trained_ckpt, *GEN,
         "--gen-subset", "valid", "--importance", str(out / "importance.json"),
         "--prune-step", "0.5", "--max-eval-sentences", "40", "--results-dir", str(out)])
    run(["fairseq-headprune", "ablate", data_dir, "--path", trained_ckpt, *GEN,
         "--gen-subset", "valid,test", "--heads", "E:1:1-2", "--bootstrap-samples", "50",
         "--bootstrap-workers", "0", "--max-eval-sentences", "16", "--no-save-hyps",
         "--results-dir", str(out)])
    points = json.loads((out / "curve.json").read_text())["curves"]["all"]
    save = tmp_path_factory.mktemp("save")
    lines = []
    for epoch in (1, 2, 3):
        curve = [dict({k: v for k, v in p.items() if k != "loss"}, loss_bits=p["loss"] / 0.693,
                      bleu=p["bleu"] * (1 - 0.5 * p["fraction"] / epoch)) for p in points]
        lines.append({"epoch": epoch, "updates": 4 * epoch, "end_of_epoch": True, "curve": curve,
                      "unpruned": {k: curve[0][k] for k in ("bleu", "sacrebleu", "loss_bits")}})
    (save / "head_dynamics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    run(["fairseq-headprune", "plot-dynamics", str(save), "--out-dir", str(out), "--levels", "50"])
    return out


def test_redraw_rewrites_every_png_from_the_results_files(results):
    before = pngs(results)
    assert set(before) == {
        "importance_E.png", "importance_A.png", "importance_D.png", "curve.png",
        "ablation_E.png", "ablation.test_E.png", "cross_domain.png",
        "dynamics_by_epoch.png", "dynamics_by_level.png"}
    assert (results / "dynamics.csv").read_text().splitlines()[0].endswith(",loss_bits")
    for f in before:
        os.unlink(results / f)
    p = run(["fairseq-headprune", "report", str(results), "--redraw"])
    assert "redrew 9 plots" in p.stdout
    after = pngs(results)
    assert set(after) == set(before)
    for f, size in after.items():
        assert size > 5000, f
        assert (results / f).read_bytes()[:8] == PNG_MAGIC
    text = (results / "report.md").read_text()
    for f in ("importance_E.png", "curve.png", "ablation_E.png", "cross_domain.png",
              "dynamics_by_epoch.png"):
        assert f"]({f})" in text

    # no model is loaded: the same redraw with torch.load refused
    for f in after:
        os.unlink(results / f)
    code = ("import sys, torch\n"
            "def refuse(*a, **k): raise SystemExit('torch.load called')\n"
            "torch.load = refuse\n"
            "from fairseq_headprune.cli.main import main\n"
            f"sys.exit(main(['report', {str(results)!r}, '--redraw']))\n")
    run([sys.executable, "-c", code])
    assert set(pngs(results)) == set(before)


def test_redraw_functions_return_what_they_drew(results):
    from fairseq_headprune.report import redraw

    assert [os.path.basename(p) for p in redraw.importance(str(results))] == [
        "importance_E.png", "importance_A.png", "importance_D.png"]
    assert [os.path.basename(p) for p in redraw.curve(str(results))] == ["curve.png"]
    assert redraw.curve(str(results / "specs")) == []  # no results there: nothing drawn


@pytest.mark.parametrize("name,content", [
    ("curve.json", {"curves": 5}),
    ("importance.json", {"E": 5}),
    ("ablation.json", {"heads": 5}),
    ("cross_domain.json", {"delta_a": [1.0], "delta_b": "x"}),
    ("dynamics.json", {"lines": 5}),
])
def test_redraw_of_a_results_file_of_the_wrong_shape(tmp_path, name, content):
    (tmp_path / name).write_text(json.dumps(content))
    p = subprocess.run(["fairseq-headprune", "report", str(tmp_path), "--redraw"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errors = [l for l in p.stderr.splitlines() if "error" in l.lower()]
    assert len(errors) == 1 and errors[0] == p.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("fairseq-headprune: error: ")
    assert repr(str(tmp_path / name)) in errors[0]


@pytest.mark.parametrize("name,content", [
    ("curve.json", {"curves": 5}),
    ("importance.json", {"E": 5}),
    ("ablation.json", {"heads": 5}),
    ("cross_domain.json", {"delta_a": [1.0], "delta_b": "x"}),
    ("curve.json", "not json {"),
])
def test_report_of_a_results_file_of_the_wrong_shape(tmp_path, name, content):
    """Plain report (no --redraw) checks every file it reads: one line, no section
    silently left out."""
    (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    p = subprocess.run(["fairseq-headprune", "report", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-headprune: error: ") and repr(str(tmp_path / name)) in last
    assert not (tmp_path / "report.md").exists()


def test_dynamics_finding_needs_every_later_epoch(tmp_path):
    """'From epoch E on' is the first epoch after which every epoch keeps >= 85% of the
    unpruned BLEU with 40% of heads masked; a good epoch 1 followed by bad ones is not."""
    from fairseq_headprune.report.findings import _dynamics

    def line(epoch, base, at40):
        return {"epoch": epoch, "unpruned": {"bleu": base},
                "curve": [{"fraction": 0.0, "bleu": base}, {"fraction": 0.4, "bleu": at40}]}

    dyn = {"lines": [line(1, 5.0, 4.5), line(2, 10.0, 5.0), line(3, 20.0, 17.0), line(4, 30.0, 27.0)]}
    (tmp_path / "dynamics.json").write_text(json.dumps(dyn))
    ours = _dynamics(str(tmp_path))[2]
    assert ours == "from epoch 3 on; share kept with 40% masked, by epoch: 1: 90%, 2: 50%, 3: 85%, 4: 90%"
    dyn["lines"].append(line(5, 30.0, 24.0))
    (tmp_path / "dynamics.json").write_text(json.dumps(dyn))
    assert _dynamics(str(tmp_path))[2].startswith("not from any epoch to the end (5 epochs); ")
