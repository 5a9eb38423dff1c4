"""Scores with sacrebleu (corpus BLEU, detokenized BLEU, chrF) and the loss unit.

* ``bleu`` (default, the paper's metric): tokenized BLEU, i.e. sacrebleu with
  tokenize=none on Moses-tokenized hypotheses and references (what fairseq-generate
  --remove-bpe prints for data prepared with data-prep/).
* ``sacrebleu``: detokenized BLEU (sacremoses detokenizer, then sacrebleu's 13a).
* ``chrf``: chrF on the detokenized text.

Classifiers (``sentence_prediction_headprune``): a "hypothesis" is the predicted label
and a "reference" the gold label, both as the label dictionary's strings; ``accuracy``
(the paper's MNLI metric), ``f1`` of the positive label ``1`` and ``mcc`` (Matthews
correlation), the metrics fairseq's sentence_prediction criterion reports
(scikit-learn's definitions), computed from one confusion matrix so that a paired
bootstrap can resample them (``confusion``, ``from_confusion``).

Loss, everywhere in the package: teacher-forced NLL of the references in bits per
target token (base 2, as fairseq's logs print ``loss``), named ``LOSS_UNIT`` in files.
Significance tests are in ``significance``.
"""

import math
from functools import lru_cache
from typing import Dict, List, Sequence

from ..errors import HeadPruneError

METRICS = ("bleu", "sacrebleu", "chrf")
CLASS_METRICS = ("accuracy", "f1", "mcc")
METRIC_LABELS = {"bleu": "BLEU", "sacrebleu": "sacreBLEU", "chrf": "chrF", "accuracy": "accuracy",
                 "f1": "F1", "mcc": "MCC", "loss": "loss"}
POSITIVE_LABEL = "1"  # f1's positive class (GLUE's convention, fairseq's f1_score default)
LOSS_UNIT = "bits per target token (teacher-forced NLL, base 2)"


def corpus_loss(nll_nats: float, ntokens: int) -> float:
    """Summed NLL in nats over ``ntokens`` target tokens -> bits per token."""
    return float(nll_nats) / max(int(ntokens), 1) / math.log(2)


@lru_cache(maxsize=8)
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    detok = _detokenizer(lang or "en")
    return [detok.detokenize(line.split()) for line in lines]


def label_classes(*label_lists: Sequence[str]) -> List[str]:
    """Every label seen, sorted (the confusion matrix's row and column order)."""
    return sorted({x for labels in label_lists for x in labels})


def confusion(hyps: Sequence[str], refs: Sequence[str], classes: Sequence[str],
              rows=None):
    """Confusion counts [gold, predicted] of the examples, or of each resample when
    ``rows`` ([n_samples, n] example indices) is given: [n_samples, C, C]."""
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    c = len(classes)
    cell = np.asarray([index[r] * c + index[h] for h, r in zip(hyps, refs)], dtype=np.int64)
    if rows is None:
        return np.bincount(cell, minlength=c * c).reshape(c, c)
    picked = cell[rows] + (np.arange(len(rows))[:, None] * c * c)
    return np.bincount(picked.ravel(), minlength=len(rows) * c * c).reshape(len(rows), c, c)


def from_confusion(name: str, counts, classes: Sequence[str]):
    """``name`` of confusion counts ([C, C] or [n, C, C]), as scikit-learn computes it
    (accuracy_score, f1_score of ``POSITIVE_LABEL``, matthews_corrcoef; 0 where those
    are 0 by convention), in percent like BLEU."""
    import numpy as np

    m = np.asarray(counts, dtype=np.float64)
    total = m.sum((-2, -1))
    if name == "accuracy":
        value = np.trace(m, axis1=-2, axis2=-1) / total
    elif name == "f1":
        if POSITIVE_LABEL not in classes:
            value = np.zeros_like(total)
        else:
            p = list(classes).index(POSITIVE_LABEL)
            tp = m[..., p, p]
            denom = m[..., p, :].sum(-1) + m[..., :, p].sum(-1)  # 2tp + fn + fp
            value = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    elif name == "mcc":
        t, q = m.sum(-1), m.sum(-2)  # per class: gold, predicted
        correct = np.trace(m, axis1=-2, axis2=-1)
        cov_tp = correct * total - (t * q).sum(-1)
        cov_pp = total ** 2 - (q * q).sum(-1)
        cov_tt = total ** 2 - (t * t).sum(-1)
        denom = np.sqrt(cov_tt * cov_pp)
        value = np.divide(cov_tp, denom, out=np.zeros_like(denom), where=denom > 0)
    else:
        raise HeadPruneError(f"unknown metric {name!r} (allowed: {', '.join(CLASS_METRICS)})")
    return 100.0 * value


def class_scores(names: Sequence[str], hyps: Sequence[str], refs: Sequence[str]) -> Dict:
    """{name: score's dict} of classifier metrics, from one confusion matrix."""
    if len(hyps) != len(refs):
        raise HeadPruneError(f"{len(hyps)} predictions but {len(refs)} labels")
    if not hyps:
        raise HeadPruneError("nothing to score: the evaluation subset is empty")
    classes = label_classes(hyps, refs)
    counts = confusion(hyps, refs, classes)
    return {n: {"metric": n, "score": float(from_confusion(n, counts, classes)),
                "signature": CLASS_SIGNATURE.format(name=n, classes=",".join(classes))}
            for n in names}


def metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(tokenize="none", force=True)
    if name == "sacrebleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    raise HeadPruneError(f"unknown metric {name!r} (allowed: {', '.join(METRICS)})")


CLASS_SIGNATURE = "{name}|labels:{classes}|sklearn-definition|percent"


def prepare(name: str, lines: Sequence[str], lang: str) -> List[str]:
    return list(lines) if name == "bleu" else detokenize(lines, lang)


def score(name: str, hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> Dict:
    """{'metric', 'score', 'signature'} of a corpus."""
    if name in CLASS_METRICS:  # (checks its inputs itself)
        return class_scores([name], hyps, refs)[name]
    if len(hyps) != len(refs):
        raise HeadPruneError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise HeadPruneError("nothing to score: the evaluation subset is empty")
    m = metric(name)
    result = m.corpus_score(prepare(name, hyps, lang), [prepare(name, refs, lang)])
    return {"metric": name, "score": float(result.score), "signature": str(m.get_signature())}
