"""The report is built from results files alone, and its numbers are theirs."""

import json
import subprocess

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
