"""Every recipe runs end to end in its tiny mode on local data, so a broken script
fails CI: the demo (Multi30k), the IWSLT14 dynamics recipe (--local-tok) and the WMT14
analysis (a stand-in for the pretrained model: same architecture, small dimensions)."""

import json
import os
import shutil

import pytest

from conftest import ROOT, SHARED, run
from test_data_prep import flores, wmt_inputs, write  # noqa: F401  (fixture)


def recipe(name, *args):
    return run(["bash", os.path.join(ROOT, "recipes", name), *map(str, args)])


def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    p = recipe("demo.sh", "--tiny", "--out", out)
    assert "masked and pruned hypotheses are identical" in p.stdout
    res = out / "results"
    # fairseq-generate scores all 30 test sentences (its default batch multiple of 8
    # dropped 6), and the exported checkpoint scores the curve's 50% point
    hyps = [l for l in (res / "generate.mask.txt").read_text().splitlines() if l.startswith("H-")]
    assert len(hyps) == 30
    assert "the curve's 50% point, where those heads were masked" in p.stdout
    report = (res / "report.md").read_text()
    for section in ("Head importance", "Pruning curves", "Keeping one head per layer",
                    "Single-head ablation", "Exported pruned checkpoints", "Speed"):
        assert f"## {section}" in report, section
    curve = json.loads((res / "curve.json").read_text())
    assert set(curve["curves"]) == {"E", "A", "D", "all"}
    assert f"| 0 | {curve['curves']['all'][0]['bleu']:.2f} |" in report
    # re-running skips what is done and still succeeds
    again = recipe("demo.sh", "--tiny", "--out", out)
    assert "skip (done)" in again.stdout + again.stderr


def test_demo_on_a_given_model(data_dir, trained_ckpt, tmp_path):
    """--model CKPT --bin DIR: no data preparation, no training; the chain on that model
    (2+2 layers, 4 heads: its own spec), the full model's BLEU that of fairseq-generate."""
    out = tmp_path / "given"
    p = recipe("demo.sh", "--tiny", "--model", trained_ckpt, "--bin", data_dir, "--out", out)
    assert "given:" in p.stdout and "fairseq-train" not in p.stdout
    assert not (out / "data").exists() and not (out / "checkpoints").exists()
    res = out / "results"
    full = (res / "generate.full.txt").read_text().strip().splitlines()[-1]
    curve = json.loads((res / "curve.json").read_text())
    assert f"BLEU4 = {curve['curves']['all'][0]['bleu']:.2f}" in full
    abl = json.loads((res / "ablation.json").read_text())
    assert len(abl["heads"]) == 8  # every A head of the given model
    assert "## Speed" in (res / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent.pt", "--bin", "x"], "--model /nonexistent.pt does not exist"),
    (["--bin", "x"], "--bin is for --model"),
])
def test_demo_refuses_bad_model_options(tmp_path, args, message):
    import subprocess

    p = subprocess.run(["bash", os.path.join(ROOT, "recipes", "demo.sh"), "--tiny", "--out",
                        str(tmp_path / "d"), *args], capture_output=True, text=True)
    assert p.returncode != 0 and message in p.stderr.strip().splitlines()[-1]


def test_multi30k_paper_tiny(tmp_path):
    """Every stage of the gallery recipe; the findings table reads the numbers the
    commands wrote; the gallery holds no checkpoint and redraws from its own files."""
    out, gal = tmp_path / "paper", tmp_path / "gallery"
    recipe("multi30k-paper.sh", "--tiny", "--out", out, "--gallery", gal)
    res = out / "results"
    findings = (res / "findings.md").read_text()
    abl = json.loads((res / "ablation.json").read_text())
    n_sig = sum(h["significant"] for h in abl["heads"])
    assert f"| {n_sig}/24 heads (p < 0.01)" in findings
    cross = json.loads((res / "cross_domain.json").read_text())
    r = cross["pearson"]  # None where a tiny model's changes on one set are all equal
    assert (f"Pearson r = {r:.2f}" if r is not None else "Pearson r undefined") in findings
    assert "(test vs test2, 24 heads)" in findings
    assert "`bash recipes/multi30k-paper.sh --tiny" in findings
    stages = [l.split("\t")[0] for l in (out / "stage-times.tsv").read_text().splitlines()]
    assert stages == ["data", "fairseq-train", "importance", "curves", "keep-one-head", "ablation",
                      "export", "budgets", "dynamics", "report", "report"]  # (+ after provenance)
    assert "Run time, minutes per stage: data " in findings
    bud = json.loads((res / "budgets.json").read_text())
    plain = next(r for r in bud["rows"] if r["key"] == "heads:50%|importance|none")
    assert f"no repair: {plain['bleu']:.2f}" in findings
    assert json.loads((res / "prune-half.time.json").read_text())["budget"] == "heads:50%"
    assert "chosen on 8 of 24 sentences of `test`" in (res / "one_head.md").read_text()
    report = (res / "report.md").read_text()
    for section in ("The paper's findings against ours", "Single-head ablation", "Cross-domain",
                    "Budgets without retraining", "Training dynamics", "Speed"):
        assert f"## {section}" in report, section
    title = "# Are sixteen heads really better than one? Multi30k de-en, Transformer 2+2 layers x 4 heads, d=32\n"
    assert report.startswith(title)
    r = cross["pearson"]
    assert f"Pearson r {'undefined' if r is None else f'{r:.2f}'}, Spearman" in report
    # the dynamics table: epoch 2's unpruned BLEU and its BLEU with half the heads masked
    dyn = json.loads((res / "dynamics.json").read_text())["lines"][1]
    half = next(p["bleu"] for p in dyn["curve"] if p["fraction"] == 0.5)
    rel = f" ({100 * half / dyn['unpruned']['bleu']:.0f}%)" if dyn["unpruned"]["bleu"] else ""
    assert f"| 2 | {dyn['updates']:,} | {dyn['unpruned']['bleu']:.2f} | {half:.2f}{rel} |" in report
    heads = json.loads((res / "prune-half.export.json").read_text())["parameters"]["heads"]
    kept = ", ".join(f"{k} {heads[k]['before']} -> {heads[k]['after']}" for k in "EAD")
    assert f"| `prune-half.pt` | {kept} |" in report
    assert not list(gal.glob("*.pt")) and (gal / "random" / "curve.json").exists()
    for png in gal.glob("*.png"):
        png.unlink()
    p = run(["fairseq-headprune", "report", str(gal), "--redraw"])
    for name in ("curve.png", "budgets.png", "bench.png", "dynamics_by_epoch.png", "ablation_E.png"):
        assert (gal / name).stat().st_size > 1000, name
    redrawn = (gal / "report.md").read_text()
    assert redrawn.startswith(title)  # a redraw keeps the title
    sections = [l for l in report.splitlines() if l.startswith("## ")]
    assert [l for l in redrawn.splitlines() if l.startswith("## ")] == sections  # and every section


def test_run_time_summed_over_resumed_runs(tmp_path):
    """provenance: a stage's minutes add up over the runs that built the results (a
    stage stopped half-way counts both parts), in the order stages first ran."""
    (tmp_path / "stage-times.tsv").write_text(
        "data\t60\nfairseq-train\t120\ndata\t6\nfairseq-train\t30\nreport\t36\n")
    script = f"OUT={tmp_path}; source {ROOT}/recipes/lib.sh; provenance {tmp_path}/f.md 'ARGS' 3"
    run(["bash", "-c", script])
    text = (tmp_path / "f.md").read_text()
    assert "`bash recipes/bash.sh ARGS` (training: 3 epochs)" in text
    assert ("Run time, minutes per stage (summed over the 2 runs that built it; every stage "
            "resumes): data 1.1, fairseq-train 2.5, report 0.6, total 4.2.") in text


def test_encoder_analysis_tiny(tmp_path):
    """The BERT half on a classifier trained by stock fairseq-train: every stage; the
    findings read the results files; the gallery holds no checkpoint and redraws."""
    out, gal = tmp_path / "enc", tmp_path / "gallery"
    recipe("encoder-analysis.sh", "--tiny", "--out", out, "--gallery", gal)
    res = out / "results"
    abl = json.loads((res / "ablation.json").read_text())
    assert abl["settings"]["metric"] == "accuracy" and len(abl["heads"]) == 8
    findings = (res / "findings.md").read_text()
    n_sig = sum(h["significant"] for h in abl["heads"])
    assert f"| {n_sig}/8 heads (p < 0.01)" in findings and "BERT" in findings
    assert "`bash recipes/encoder-analysis.sh --tiny" in findings
    report = (res / "report.md").read_text()
    for section in ("The paper's findings against ours", "Pruning curves", "Single-head ablation",
                    "Cross-domain", "Budgets without retraining", "Speed"):
        assert f"## {section}" in report, section
    assert "BERT" in report and "accuracy" in report
    assert not list(gal.glob("*.pt")) and (gal / "random" / "curve.json").exists()
    for png in gal.glob("*.png"):
        png.unlink()
    run(["fairseq-headprune", "report", str(gal), "--redraw"])
    for name in ("curve.png", "budgets.png", "bench.png", "ablation_E.png"):
        assert (gal / name).stat().st_size > 1000, name


def test_iwslt14_dynamics_tiny(tmp_path):
    if not os.path.isdir(os.path.join(SHARED, "iwslt14-test")):
        pytest.skip(f"the IWSLT14 test set (this test's stand-in corpus) not found at {SHARED}")
    tok = tmp_path / "tok"
    tok.mkdir()
    test = {lang: open(os.path.join(SHARED, "iwslt14-test", f"test.{lang}"), encoding="utf-8")
            .read().splitlines() for lang in ("de", "en")}
    for lang in ("de", "en"):  # a tiny stand-in of fairseq's tokenized IWSLT14 folder
        write(str(tok / f"train.{lang}"), test[lang][:400])
        write(str(tok / f"valid.{lang}"), test[lang][400:440])
        write(str(tok / f"test.{lang}"), test[lang][440:480])
    out = tmp_path / "iwslt"
    recipe("iwslt14-de-en-dynamics.sh", "--tiny", "--local-tok", tok, "--out", out)
    lines = (out / "checkpoints" / "head_dynamics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    assert (out / "results" / "dynamics_by_epoch.png").exists()
    assert "## Training dynamics" in (out / "results" / "report.md").read_text()


def test_wmt14_analysis_tiny(wmt_inputs, tmp_path):  # noqa: F811
    # 1. a stand-in checkpoint: transformer_vaswani_wmt_en_fr_big, small dimensions,
    #    trained a few updates by stock fairseq on the stand-in data's dictionary
    model = tmp_path / "model"
    shutil.copytree(wmt_inputs / "model", model)
    os.unlink(model / "model.pt")
    pre = tmp_path / "pre"
    run(["bash", os.path.join(ROOT, "data-prep", "prepare-wmt14-en-fr.sh"), "--local-model", str(model),
         "--local-tests", str(wmt_inputs / "tests"), "--out", str(pre)])
    run(["fairseq-train", str(pre / "bin"), "--task", "translation", "--arch",
         "transformer_vaswani_wmt_en_fr_big", "--share-all-embeddings", "--encoder-layers", "2",
         "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
         "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
         "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--optimizer", "adam",
         "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "3", "--criterion", "cross_entropy",
         "--save-dir", str(tmp_path / "ckpt"), "--cpu", "--no-epoch-checkpoints", "--train-subset", "valid",
         "--valid-subset", "test"])
    shutil.copy(tmp_path / "ckpt" / "checkpoint_last.pt", model / "model.pt")
    mtnt = tmp_path / "mtnt"
    mtnt.mkdir()
    for lang in ("en", "fr"):
        write(str(mtnt / f"test.{lang}"), flores(lang, 600, 20))
    # 2. the recipe, offline
    out = tmp_path / "wmt"
    recipe("wmt14-en-fr-analysis.sh", "--tiny", "--cpu", "--local-model", model,
           "--local-tests", wmt_inputs / "tests", "--local-mtnt", mtnt, "--out", out)
    res = out / "results"
    report = (res / "report.md").read_text()
    for section in ("Head importance", "Pruning curves", "Single-head ablation",
                    "Cross-domain comparison", "Exported pruned checkpoints", "Speed"):
        assert f"## {section}" in report, section
    assert (res / "pruned40.pt").exists() and (res / "ablation.test1.json").exists()


def test_prune_while_training_tiny(tiny_data, tmp_path):
    out = tmp_path / "pwt"  # 120 training pairs (demo.sh --tiny tests the data preparation)
    recipe("prune-while-training.sh", "--tiny", "--out", out, "--bin", tiny_data)
    arms = {a: json.loads((out / "arms" / "json" / f"{a}.json").read_text()) for a in "abcde"}
    # (b), (c), (d) keep half of the 24 heads; (e) has 2 per layer by construction
    for a in "bcd":
        assert sum(arms[a]["heads_kept"].values()) == 12 and arms[a]["speed"]["speedup"] > 0
    assert arms["e"]["heads_total"] == {"E": 4, "A": 4, "D": 4} and arms["e"]["speed"] is None
    report = (out / "report" / "report.md").read_text()
    for a in "abcde":
        assert f"| ({a}) |" in report and f"{arms[a]['bleu']:.2f}" in report
    assert "Spearman rank correlation" in report and (out / "report" / "bleu_vs_heads.png").exists()
    pruning = [json.loads(l) for l in (out / "d" / "head_pruning.jsonl").read_text().splitlines()]
    assert pruning[-1]["all_removed_spec"] == arms["d"]["removed_spec"]
