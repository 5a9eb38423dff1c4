"""The prune-while-training comparison (recipes/prune-while-training.sh): one table and
one plot from the arms' JSON files (cli/arm_summary.py), with the training-importance
rank agreement and the published figures beside, labelled as theirs.

    python -m fairseq_headprune.report.train_pruning ARMS_DIR --out DIR
        [--train-importance head_importance.jsonl --eval-importance importance.json]
        [--command TEXT] [--seconds N]
"""

import argparse
import glob
import json
import os
import sys
from typing import List, Optional

from ..results import read_json, write_text
from .plots import _plt, _save

# Published figures: their models, their data; quoted from this project's notes
# (docs PAPER.md / PEERS.md), not re-measured here.
PUBLISHED = [
    ("Michel et al. 2019", "IWSLT14 de-en, 6+6 layers, 8 heads (Fig. 6)",
     "from about epoch 10 on, 40% of all heads masked without retraining keeps 85-90% of the "
     "unpruned BLEU (34.9 at epoch 40)"),
    ("Voita et al. 2019", "WMT en-ru, encoder heads only (L0 gates trained from a converged model)",
     "38 of 48 encoder heads pruned for -0.15 BLEU"),
    ("DSP, Li et al. 2021", "IWSLT14 de-en (masks learned during training, nothing removed)",
     "their table is not in this project's offline notes; see the paper"),
]


def load_arms(folder: str) -> List[dict]:
    return [read_json(p, "arm summary") for p in sorted(glob.glob(os.path.join(folder, "*.json")))]


def _kept(arm) -> int:
    return sum(arm["heads_kept"].values())


def _total(arm) -> int:
    return sum(arm["heads_total"].values())


def _baseline_heads(arms) -> int:
    """Heads of the full model (a): the denominator for every arm, (e) included."""
    full = next((a for a in arms if a["arm"] == "a"), None)
    return _total(full) if full else max(_total(a) for a in arms)


def rank_agreement_line(train_path: Optional[str], eval_path: Optional[str]) -> Optional[str]:
    if not (train_path and eval_path and os.path.exists(train_path) and os.path.exists(eval_path)):
        return None
    from ..analysis.ranking import rank_agreement
    from ..heads import KINDS

    with open(train_path) as f:
        last = [json.loads(l) for l in f if l.strip()][-1]
    ev = read_json(eval_path, "importance file")
    rho = rank_agreement({k: last["importance"][k] for k in KINDS if k in last["importance"]},
                         {k: ev[k] for k in KINDS if k in ev})
    return (f"Importance accumulated during the last training epoch of (a) (dropout on, "
            f"label-smoothed loss, weights changing) against importance measured on the final "
            f"checkpoint in evaluation mode on {ev.get('counts', {}).get('sentences', '?')} training "
            f"sentences: Spearman rank correlation {rho:.3f} over all heads." if rho is not None else None)


def plot(arms: List[dict], path: str) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    full = next((a for a in arms if a["arm"] == "a"), None)
    base = _baseline_heads(arms)
    for ax, which in zip(axes, ("heads", "speed")):
        for a in arms:
            x = 100.0 * _kept(a) / base if which == "heads" else (
                1.0 if a["arm"] == "a" else (a["speed"] or {}).get("speedup"))
            if x is None:
                continue
            ax.scatter([x], [a["bleu"]], s=40, color=f"C{'abcde'.index(a['arm'])}",
                       label=f"({a['arm']}) {a['label']}")
            ax.annotate(f"({a['arm']})", (x, a["bleu"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        if full is not None:
            ax.axhline(full["bleu"], color="grey", linestyle="--", linewidth=1, label="BLEU of the full model (a)")
        ax.set_ylabel("BLEU (test, beam 5, tokenized)")
        ax.grid(alpha=0.3)
        if which == "heads":
            ax.set_xlabel("attention heads kept (% of the full model's)")
            ax.set_title("BLEU against heads kept")
        else:
            ax.set_xlabel("decode speed-up over (a) (beam 5, measured; (e) not timed)")
            ax.set_title("BLEU against measured decode speed")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.12))
    return _save(fig, path)


def markdown(arms: List[dict], rank_line: Optional[str], command: Optional[str],
             seconds: Optional[float], png: str) -> str:
    out = ["# Pruning while training, against the alternatives", ""]
    out += ["Every arm trains for the same number of epochs on the same data; BLEU is tokenized "
            "BLEU of fairseq-generate (beam 5) on the test set. Decode speed-up: the arm's "
            "heads removed from the full model, timed against it in one process (beam 5, a "
            "fixed number of tokens per sentence), with the cost-model estimate beside.", ""]
    out += ["| arm | what | heads kept: E / A / D (share of the full model's) | parameters | BLEU | decode speed-up (estimate) |",
            "|---|---|---|---|---|---|"]
    base = _baseline_heads(arms)
    for a in arms:
        k = a["heads_kept"]
        heads = " / ".join(str(k.get(x, "-")) for x in ("E", "A", "D")) + f" ({100 * _kept(a) / base:.0f}%)"
        sp = a.get("speed")
        speed = "1 (baseline)" if a["arm"] == "a" else (
            f"{sp['speedup']:.3f}x ({sp['estimate']:.3f}x)" if sp else "not timed")
        out.append(f"| ({a['arm']}) | {a['label']} | {heads} | {a['parameters']:,} | {a['bleu']:.2f} | {speed} |")
    if any(a["arm"] == "e" for a in arms):
        out += ["", "(e) has as many parameters as (a): with half the heads per layer each head is "
                "twice as wide, so its projections are the same size; it is a different "
                "architecture, so it is not timed against (a)."]
    out += ["", f"![BLEU against heads kept and decode speed]({os.path.basename(png)})", ""]
    if rank_line:
        out += [rank_line, ""]
    out += ["## Published figures (their models and data, not re-measured here)", ""]
    out += [f"- {who} ({setup}): {what}." for who, setup, what in PUBLISHED]
    out += [""]
    if command:
        out += [f"Made by `{command}`" + (f" in {seconds / 60:.1f} minutes." if seconds else "."), ""]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arms")
    p.add_argument("--out", required=True)
    p.add_argument("--train-importance", default=None)
    p.add_argument("--eval-importance", default=None)
    p.add_argument("--command", default=None)
    p.add_argument("--seconds", type=float, default=None)
    a = p.parse_args(argv)
    from ..cli.common import setup_logging

    setup_logging()
    arms = load_arms(a.arms)
    os.makedirs(a.out, exist_ok=True)
    png = plot(arms, os.path.join(a.out, "bleu_vs_heads.png"))
    text = markdown(arms, rank_agreement_line(a.train_importance, a.eval_importance), a.command,
                    a.seconds, png)
    write_text(os.path.join(a.out, "report.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
