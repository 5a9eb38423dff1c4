"""fairseq-headprune ablate: deltas equal fairseq-generate --mask-heads + sacrebleu,
p-values equal sacrebleu's paired bootstrap, kill-and-resume equals an uninterrupted
run, cross-domain statistics, the loss proxy against fairseq-validate, reports."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run

GEN = ["--beam", "5", "--remove-bpe", "--cpu", "--max-tokens", "4000"]
USER = ["--user-dir", os.path.join(ROOT, "fairseq_headprune"), "--task", "translation_headprune"]
ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def ablate_cmd(data, ckpt, out, *extra):
    return ["fairseq-headprune", "ablate", data, "--path", ckpt, "--results-dir", str(out),
            *GEN, *extra]


def ablate(data, ckpt, out, *extra, env=None, expect=0):
    p = subprocess.run(ablate_cmd(data, ckpt, out, *extra), capture_output=True, text=True,
                       cwd=ROOT, env=dict(ENV, **(env or {})))
    assert p.returncode == expect, f"rc {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def load(path):
    with open(path) as f:
        return json.load(f)


def results(obj):
    """Everything but provenance and wall-clock figures."""
    return {k: v for k, v in obj.items() if k not in ("meta", "timing")}


def last_line(p):
    return p.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def full_a(data_dir, trained_ckpt, tmp_path_factory):
    """An uninterrupted ablation of all encoder-decoder heads (8) on test."""
    out = tmp_path_factory.mktemp("ablate_full_a")
    p = ablate(data_dir, trained_ckpt, out, "--kinds", "A")
    assert "heads significant" in p.stdout
    return out


# ------------------------------------------------------------ equal to stock tools
def generate(data, ckpt, *extra):
    p = run(["fairseq-generate", data, "--path", ckpt, "--gen-subset", "test", *GEN, *USER,
             *extra])
    hyps, refs = {}, {}
    for line in p.stdout.splitlines():
        if line.startswith("H-"):
            sid, _, text = line[2:].split("\t")
            hyps[int(sid)] = text
        elif line.startswith("T-"):
            sid, text = line[2:].split("\t")
            refs[int(sid)] = text
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def test_delta_and_p_value_equal_fairseq_generate_and_sacrebleu(data_dir, trained_ckpt,
                                                               tmp_path, monkeypatch):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    shape_heads = [(k, l, h) for k in "EAD" for l in (1, 2) for h in range(1, 5)]
    heads = random.Random(2024).sample(shape_heads, 2)
    spec = " ".join(f"{k}:{l}:{h}" for k, l, h in heads)
    # one bootstrap worker process (the default where there are more than 2 CPUs)
    ablate(data_dir, trained_ckpt, tmp_path, "--heads", spec, "--bootstrap-workers", "1")
    obj = load(tmp_path / "ablation.json")
    assert obj["complete"] and [(r["kind"], r["layer"], r["head"]) for r in obj["heads"]] == \
        sorted(heads, key=lambda t: ("EAD".index(t[0]), t[1], t[2]))

    base_hyps, refs = generate(data_dir, trained_ckpt)
    bleu = BLEU(tokenize="none", force=True)
    base_score = bleu.corpus_score(base_hyps, [refs]).score
    assert obj["baseline"]["score"] == pytest.approx(base_score, abs=1e-9)
    assert obj["baseline"]["hyps"] == base_hyps and obj["baseline"]["refs"] == refs
    monkeypatch.setenv("SACREBLEU_SEED", "12345")
    for rec in obj["heads"]:
        hyps, refs2 = generate(data_dir, trained_ckpt, "--mask-heads", rec["spec"])
        assert refs2 == refs
        score = bleu.corpus_score(hyps, [refs]).score
        assert rec["score"] == pytest.approx(score, abs=1e-9)
        assert rec["delta"] == pytest.approx(score - base_score, abs=1e-9)
        _, res = PairedTest([("full", base_hyps), ("ablated", hyps)],
                            {"BLEU": BLEU(tokenize="none", force=True)}, references=[refs],
                            test_type="bs", n_samples=1000)()
        assert rec["p_value"] == res["BLEU"][1].p_value
        assert rec["significant"] == (rec["p_value"] < 0.01 and hyps != base_hyps)
        saved = (tmp_path / "ablation_hyps" / (rec["spec"].replace(":", "_") + ".txt"))
        assert saved.read_text().splitlines() == hyps


# ------------------------------------------------------------ resume
def test_kill_and_resume_equals_uninterrupted(data_dir, trained_ckpt, full_a, tmp_path):
    # 1) the test hook stops after 2 heads
    p = ablate(data_dir, trained_ckpt, tmp_path, "--kinds", "A",
               env={"HEADPRUNE_ABLATE_STOP_AFTER": "2"}, expect=130)
    assert "2 of 8 heads done" in last_line(p) and "rerun the same command" in last_line(p)
    part = load(tmp_path / "ablation.json")
    assert len(part["heads"]) == 2 and not part["complete"]
    assert part["heads"] == load(full_a / "ablation.json")["heads"][:2]

    # 2) a real SIGTERM half way through the rest
    proc = subprocess.Popen(ablate_cmd(data_dir, trained_ckpt, tmp_path, "--kinds", "A"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(load(tmp_path / "ablation.json")["heads"]) >= 4:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted (SIGTERM)" in err.strip().splitlines()[-1]
    part = load(tmp_path / "ablation.json")
    assert 4 <= len(part["heads"]) < 8 and not part["complete"]

    # 3) the same command finishes the job
    ablate(data_dir, trained_ckpt, tmp_path, "--kinds", "A")
    resumed = load(tmp_path / "ablation.json")
    full = load(full_a / "ablation.json")
    assert resumed["complete"] and resumed["timing"]["runs"] == 3
    assert results(resumed) == results(full)
    for name in os.listdir(full_a / "ablation_hyps"):
        assert (tmp_path / "ablation_hyps" / name).read_text() == \
            (full_a / "ablation_hyps" / name).read_text()
    assert (tmp_path / "ablation.md").read_text() == (full_a / "ablation.md").read_text()
    assert (tmp_path / "ablation.csv").read_text() == (full_a / "ablation.csv").read_text()


def test_other_settings_are_refused_alpha_is_reapplied(data_dir, trained_ckpt, full_a,
                                                      tmp_path):
    out = tmp_path / "r"
    shutil.copytree(full_a, out)
    p = ablate(data_dir, trained_ckpt, out, "--kinds", "A", "--beam", "4", expect=2)
    line = last_line(p)
    assert "Traceback" not in p.stderr
    assert "other settings (generation.beam: 5 there, 4 now)" in line and "--overwrite" in line

    # a new alpha only re-marks significance: nothing is decoded again
    ablate(data_dir, trained_ckpt, out, "--kinds", "A", "--alpha", "0.05")
    new, old = load(out / "ablation.json"), load(full_a / "ablation.json")
    assert new["alpha"] == 0.05 and new["timing"]["decodes"] == old["timing"]["decodes"]
    for a, b in zip(new["heads"], old["heads"]):
        assert a["p_value"] == b["p_value"] and a["significant"] == (a["p_value"] < 0.05)
    assert sum(r["significant"] for r in new["heads"]) >= sum(r["significant"] for r in old["heads"])

    ablate(data_dir, trained_ckpt, out, "--heads", "A:1:1", "--beam", "4", "--overwrite")
    new = load(out / "ablation.json")
    assert [r["spec"] for r in new["heads"]] == ["A:1:1"]
    assert new["settings"]["generation"]["beam"] == 4


# ------------------------------------------------------------ cross-domain
def fake(deltas, sig=(), metric="bleu", kind="E"):
    return {"settings": {"metric": metric}, "baseline": {"score": 30.0},
            "heads": [{"kind": kind, "layer": 1, "head": i + 1, "delta": d,
                       "significant": i in sig} for i, d in enumerate(deltas)]}


def test_cross_domain_statistics_on_known_vectors():
    from scipy.stats import pearsonr, spearmanr

    from fairseq_headprune.analysis.ablation import cross_domain
    from fairseq_headprune.errors import HeadPruneError

    c = cross_domain(fake([1, 2, 3, 4], sig=(0, 1)), fake([1, 3, 2, 4], sig=(1, 3)), "in", "out")
    assert c["pearson"] == pytest.approx(0.8) and c["spearman"] == pytest.approx(0.8)
    assert c["significant_both"] == "E:1:2" and c["significant_only_a"] == "E:1:1"
    assert c["significant_only_b"] == "E:1:4" and c["n"] == 4
    x, y = [0.3, -2.0, 0.1, -0.5, 0.0], [0.2, -1.0, -0.3, -0.6, 0.0]
    c = cross_domain(fake(x), fake(y))
    assert c["pearson"] == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert c["spearman"] == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert c["per_kind"]["E"]["pearson"] == pytest.approx(c["pearson"])
    assert cross_domain(fake([1, 1, 1]), fake([1, 2, 3]))["pearson"] is None  # constant

    with pytest.raises(HeadPruneError, match=r"different heads \(only in a: E:1:4; only in b: none\)"):
        cross_domain(fake([1, 2, 3, 4]), fake([1, 2, 3]))
    with pytest.raises(HeadPruneError, match="only in b: A:1:1-3"):
        cross_domain(fake([1, 2, 3]), fake([1, 2, 3], kind="A"))
    with pytest.raises(HeadPruneError, match="scored with 'bleu'.*'chrf'"):
        cross_domain(fake([1, 2]), fake([1, 2], metric="chrf"))


def test_compare_files_with_mismatched_heads_is_one_clean_line(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(fake([1, 2, 3])))
    b.write_text(json.dumps(fake([1, 2])))
    p = subprocess.run([sys.executable, "-m", "fairseq_headprune.report.ablation_report",
                        "--compare", str(a), str(b), "--out", str(tmp_path / "c.json")],
                       capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert re.search(r"error: the two ablations cover different heads \(only in .*a\.json: E:1:3",
                     last_line(p)), p.stderr[-2000:]


def test_cross_domain_two_subsets_and_second_data_dir(data_dir, trained_ckpt, tmp_path):
    fast = ["--max-eval-sentences", "40", "--batch-size", "20"]
    out1 = tmp_path / "two"
    p = ablate(data_dir, trained_ckpt, out1, "--gen-subset", "test,test3", "--heads", "A:2:*",
               *fast)
    a, b = load(out1 / "ablation.json"), load(out1 / "ablation.test3.json")
    assert a["settings"]["subset"] == "test" and b["settings"]["subset"] == "test3"
    assert a["baseline"]["refs"] != b["baseline"]["refs"]
    c = load(out1 / "cross_domain.json")
    da, db = [r["delta"] for r in a["heads"]], [r["delta"] for r in b["heads"]]
    assert c["delta_a"] == da and c["delta_b"] == db and c["heads"] == [r["spec"] for r in a["heads"]]
    assert c["pearson"] == pytest.approx(float(np.corrcoef(da, db)[0, 1]), abs=1e-12)
    assert (out1 / "cross_domain.png").read_bytes()[:4] == b"\x89PNG"
    assert "cross-domain test vs test3 (4 heads, bleu): change in BLEU (tokenized)" in p.stdout
    assert "Pearson r " in p.stdout

    # the out-of-domain set from another directory with the same dictionaries
    dir2 = tmp_path / "ood"
    dir2.mkdir()
    for name in os.listdir(data_dir):
        if name.startswith("dict."):
            os.symlink(os.path.join(data_dir, name), dir2 / name)
        elif name.startswith("test3."):
            os.symlink(os.path.join(data_dir, name), dir2 / name.replace("test3.", "test."))
    out2 = tmp_path / "dirs"
    ablate(data_dir, trained_ckpt, out2, "--compare-data", str(dir2), "--compare-subset", "test",
           "--heads", "A:2:1,3", *fast)
    other = load(out2 / "ablation.compare.test.json")
    assert other["settings"]["data"] == str(dir2)
    assert other["baseline"]["hyps"] == b["baseline"]["hyps"]
    assert [r["delta"] for r in other["heads"]] == [db[0], db[2]]
    assert load(out2 / "cross_domain.json")["b"] == "compare.test"

    # a directory whose dictionary differs
    dir3 = tmp_path / "otherdict"
    shutil.copytree(dir2, dir3, symlinks=False)
    os.unlink(dir3 / "dict.en.txt")
    lines = open(os.path.join(data_dir, "dict.en.txt")).read().splitlines()
    (dir3 / "dict.en.txt").write_text("\n".join(lines[:-5]) + "\n")
    p = ablate(data_dir, trained_ckpt, tmp_path / "bad", "--compare-data", str(dir3),
               "--heads", "A:2:1", *fast, expect=2)
    assert "target dictionary differs" in last_line(p) and "Traceback" not in p.stderr


# ------------------------------------------------------------ loss proxy
def validate_loss(data, ckpt, *extra):
    """fairseq-validate's nll_loss (bits per target token; validate uses the criterion
    saved in the checkpoint, label_smoothed_cross_entropy, whose nll_loss is the plain NLL)."""
    p = run(["fairseq-validate", data, "--path", ckpt, "--valid-subset", "test", "--cpu",
             "--max-tokens", "4000", *USER, *extra])
    m = re.search(r"\| nll_loss ([0-9.]+) \|", p.stdout + p.stderr)
    assert m, (p.stdout + p.stderr)[-2000:]
    return float(m.group(1))


def test_loss_proxy_against_fairseq_validate_and_agreement(data_dir, trained_ckpt, full_a,
                                                           tmp_path):
    out = tmp_path / "r"
    shutil.copytree(full_a, out)
    p = ablate(data_dir, trained_ckpt, out, "--kinds", "A", "--metric", "loss")
    obj = load(out / "ablation_loss.json")
    assert obj["complete"] and len(obj["heads"]) == 8
    assert obj["baseline"]["score"] == pytest.approx(validate_loss(data_dir, trained_ckpt),
                                                     abs=6e-4)
    rec = {r["spec"]: r for r in obj["heads"]}["A:2:4"]
    masked = validate_loss(data_dir, trained_ckpt, "--mask-heads", "A:2:4")
    assert rec["score"] == pytest.approx(masked, abs=6e-4)

    bleu = load(out / "ablation.json")
    agree = load(out / "agreement.json")
    x = [r["delta"] for r in obj["heads"]]
    y = [r["delta"] for r in bleu["heads"]]
    assert agree["n"] == 8 and agree["metric"] == "bleu"
    assert agree["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    assert "loss vs bleu over 8 heads: Pearson" in p.stdout
    assert (out / "ablation_loss_A.png").exists() and (out / "ablation_loss.md").exists()


def test_loss_bootstrap_is_sacrebleus_statistic():
    from fairseq_headprune.analysis.significance import loss_paired_bootstrap

    rng = np.random.default_rng(0)
    n, ns = 50, 200
    base = rng.uniform(5, 30, n)
    ntok = rng.integers(5, 20, n)
    system = base + rng.normal(0.3, 1.0, n)
    # sacrebleu's loop, written out: same RNG draws, |diff| statistic, centred, '>' count
    idx = np.random.default_rng(777).choice(n, size=(ns, n), replace=True)
    real = abs(system.sum() / ntok.sum() - base.sum() / ntok.sum())
    diffs = np.array([abs(system[i].sum() / ntok[i].sum() - base[i].sum() / ntok[i].sum())
                      for i in idx])
    expected = (np.sum(diffs - diffs.mean() > real) + 1) / (ns + 1)
    assert loss_paired_bootstrap(base, system, ntok, ns, 777) == pytest.approx(expected, abs=1e-12)
    assert loss_paired_bootstrap(base, base + 5.0, ntok, ns, 777) == pytest.approx(1 / (ns + 1))


# ------------------------------------------------------------ reports and errors
def test_reports_are_drawn_from_the_json(full_a, tmp_path):
    from fairseq_headprune.report.ablation_report import write_ablation_reports

    obj = load(full_a / "ablation.json")
    rows = (full_a / "ablation.csv").read_text().splitlines()
    assert rows[0] == "kind,layer,head,score,delta,p_value,significant,identical"
    assert len(rows) == 9
    for row, rec in zip(rows[1:], obj["heads"]):
        k, l, h, score, delta, p, sig, _ = row.split(",")
        assert (k, int(l), int(h)) == (rec["kind"], rec["layer"], rec["head"])
        assert float(delta) == pytest.approx(rec["delta"], abs=1e-6)
        assert float(p) == pytest.approx(rec["p_value"], abs=1e-6) and int(sig) == rec["significant"]
    md = (full_a / "ablation.md").read_text()
    assert "## encoder-decoder attention (A)" in md and "| Layer | 1 | 2 | 3 | 4 |" in md
    for rec in obj["heads"]:
        cell = f"{rec['delta']:+.2f}"
        assert (f"**{cell}**" in md) == rec["significant"]
    assert (full_a / "ablation_A.png").read_bytes()[:4] == b"\x89PNG"
    assert not (full_a / "ablation_E.png").exists()
    # regenerating from the JSON alone gives the same tables
    shutil.copy(full_a / "ablation.json", tmp_path / "x.json")
    write_ablation_reports(str(tmp_path / "x.json"))
    assert (tmp_path / "x.md").read_text() == md
    assert (tmp_path / "x.csv").read_text() == (full_a / "ablation.csv").read_text()
    t = obj["timing"]
    assert t["decodes"] == 9 and t["ratio"] > 0 and set(t["decode_s"]) == {
        "full", *[r["spec"] for r in obj["heads"]]}


@pytest.mark.parametrize("extra,message", [
    (["--metric", "bleu4"], "argument --metric: invalid choice: 'bleu4' (choose from 'bleu', "
                            "'sacrebleu', 'chrf', 'accuracy', 'f1', 'mcc', 'loss')"),
    (["--heads", "A:3:1"], "layer 3 in entry 'A:3:1' is out of range"),
])
def test_bad_arguments_fail_with_one_clean_line(data_dir, trained_ckpt, tmp_path, extra, message):
    p = ablate(data_dir, trained_ckpt, tmp_path, *extra, expect=2)
    assert "Traceback" not in p.stderr
    assert last_line(p).startswith("fairseq-headprune") and message in last_line(p)
