"""compare-budgets: every row is the model that prune writes for the same budget, order
and repair (same heads; BLEU equal to fairseq-generate + sacrebleu on that checkpoint),
the baseline is the unpruned model's, random seeds are rows of their own, an
interrupted comparison resumes, the plot is redrawn from the results file alone, and
bad lists fail with one line."""

import json
import os
import subprocess

import pytest

from conftest import run
from test_curve import GEN, generate_bleu

FLAGS = [*GEN, "--budgets", "heads:50%", "--orders", "weight-norm,random", "--order-seed", "1,2",
         "--repairs", "none,lstsq", "--calibration-subset", "valid", "--calibration-sentences", "50",
         "--no-speed"]


@pytest.fixture(scope="module")
def compared(data_dir, trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("budgets")
    run(["fairseq-headprune", "compare-budgets", data_dir, "--path", trained_ckpt,
         "--results-dir", str(out), *FLAGS])
    return out, json.loads((out / "budgets.json").read_text())


def test_rows_are_the_models_prune_writes(data_dir, trained_ckpt, compared, tmp_path):
    out, obj = compared
    rows = {r["key"]: r for r in obj["rows"]}
    assert sorted(rows) == sorted(f"heads:50%|{o}|{r}" for o in ("weight-norm", "random@seed1",
                                                                 "random@seed2")
                                  for r in ("none", "lstsq"))
    assert obj["baseline"]["bleu"] == pytest.approx(generate_bleu(data_dir, trained_ckpt), abs=1e-9)
    assert obj["baseline"]["heads"] == 24
    for key, extra in (("heads:50%|weight-norm|lstsq", ["--order", "weight-norm"]),
                       ("heads:50%|random@seed2|none", ["--order", "random", "--order-seed", "2"])):
        row = rows[key]
        ckpt = tmp_path / f"{row['order']}{row['seed']}.pt"
        run(["fairseq-headprune", "prune", data_dir, "--path", trained_ckpt, "--cpu", "--out", str(ckpt),
             "--budget", "heads:50%", "--repair", row["repair"], "--calibration-subset", "valid",
             "--calibration-sentences", "50", *extra])
        exported = json.loads(ckpt.with_suffix(".export.json").read_text())
        assert exported["removed_in_all"]["spec"] == row["spec"] and row["removed"] == 12
        assert exported["parameters"]["total"]["after"] == row["parameters"]
        assert row["bleu"] == pytest.approx(generate_bleu(data_dir, str(ckpt)), abs=1e-9), key
    assert rows["heads:50%|random@seed1|none"]["spec"] != rows["heads:50%|random@seed2|none"]["spec"]
    md = (out / "budgets.md").read_text()
    assert "| heads:50% | random (mean of 2 seeds) | 12 |" in md


def test_latency_batch_leaves_the_decoding_batches_alone(data_dir, trained_ckpt, compared, tmp_path):
    """A latency table at its own batch (--latency-batch-size) leaves BLEU decoded in
    fairseq's batches: the same rows as without a table (--batch-size would set both)."""
    _, obj = compared
    flags = [f for f in FLAGS if f != "--no-speed"]
    run(["fairseq-headprune", "compare-budgets", data_dir, "--path", trained_ckpt,
         "--results-dir", str(tmp_path), *flags, "--latency-batch-size", "2", "--latency-length", "3",
         "--latency-repeats", "1"])
    timed = json.loads((tmp_path / "budgets.json").read_text())
    assert timed["settings"]["latency"]["batch_size"] == 2 and timed["latency_table"]["sentences"] == 2
    assert {r["key"]: r["bleu"] for r in timed["rows"]} == {r["key"]: r["bleu"] for r in obj["rows"]}


def test_resume_and_redraw(data_dir, trained_ckpt, compared):
    out, obj = compared
    partial = dict(obj, rows=obj["rows"][:2])
    (out / "budgets.json").write_text(json.dumps(partial))
    (out / "budgets.png").unlink()
    p = run(["fairseq-headprune", "compare-budgets", data_dir, "--path", trained_ckpt,
             "--results-dir", str(out), *FLAGS])
    assert "2 rows done" in p.stderr
    again = json.loads((out / "budgets.json").read_text())
    assert [r["key"] for r in again["rows"]] == [r["key"] for r in obj["rows"]]
    assert [r["bleu"] for r in again["rows"]] == [r["bleu"] for r in obj["rows"]]
    os.unlink(out / "budgets.png")
    p = run(["fairseq-headprune", "report", str(out), "--redraw"])
    assert "budgets.png" in p.stdout and (out / "budgets.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--orders", "importance,size"], "--orders 'importance,size': unknown 'size'"),
    (["--budgets", "heads:50%,heads:50%"], "empty or repeated"),
    (["--budgets", "heads:50%,cost:3%"], "unknown unit 'cost'"),
    (["--orders", "ablation"], "--orders ablation needs --ablation FILE"),
    (["--budgets", "latency:1.2x", "--no-speed"], "latency budgets need the latency table"),
])
def test_bad_lists(data_dir, trained_ckpt, tmp_path, extra, message):
    p = subprocess.run(["fairseq-headprune", "compare-budgets", data_dir, "--path", trained_ckpt,
                        "--cpu", "--results-dir", str(tmp_path / "r"), *extra],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert message in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()
