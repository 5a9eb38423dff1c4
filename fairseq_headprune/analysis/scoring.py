"""Scores with sacrebleu (corpus BLEU, detokenized BLEU, chrF) and the loss unit.

* ``bleu`` (default, the paper's metric): tokenized BLEU, i.e. sacrebleu with
  tokenize=none on Moses-tokenized hypotheses and references (what fairseq-generate
  --remove-bpe prints for data prepared with data-prep/).
* ``sacrebleu``: detokenized BLEU (sacremoses detokenizer, then sacrebleu's 13a).
* ``chrf``: chrF on the detokenized text.

Loss, everywhere in the package: teacher-forced NLL of the references in bits per
target token (base 2, as fairseq's logs print ``loss``), named ``LOSS_UNIT`` in files.
Significance tests are in ``significance``.
"""

import math
from functools import lru_cache
from typing import Dict, List, Sequence

from ..errors import HeadPruneError

METRICS = ("bleu", "sacrebleu", "chrf")
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


def metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(tokenize="none", force=True)
    if name == "sacrebleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    raise HeadPruneError(f"unknown metric {name!r} (allowed: {', '.join(METRICS)})")


def prepare(name: str, lines: Sequence[str], lang: str) -> List[str]:
    return list(lines) if name == "bleu" else detokenize(lines, lang)


def score(name: str, hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> Dict:
    """{'metric', 'score', 'signature'} of a corpus."""
    if len(hyps) != len(refs):
        raise HeadPruneError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise HeadPruneError("nothing to score: the evaluation subset is empty")
    m = metric(name)
    result = m.corpus_score(prepare(name, hyps, lang), [prepare(name, refs, lang)])
    return {"metric": name, "score": float(result.score), "signature": str(m.get_signature())}
