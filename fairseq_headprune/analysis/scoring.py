"""Scores with sacrebleu, and sacrebleu's paired bootstrap.

* ``bleu`` (default, the paper's metric): tokenized BLEU, i.e. sacrebleu with
  tokenize=none on Moses-tokenized hypotheses and references (what fairseq-generate
  --remove-bpe prints for data prepared with data-prep/).
* ``sacrebleu``: detokenized BLEU (sacremoses detokenizer, then sacrebleu's 13a).
* ``chrf``: chrF on the detokenized text.
"""

import contextlib
import os
from functools import lru_cache
from typing import Dict, List, Sequence

from ..errors import HeadPruneError

METRICS = ("bleu", "sacrebleu", "chrf")


@lru_cache(maxsize=8)
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    detok = _detokenizer(lang or "en")
    return [detok.detokenize(line.split()) for line in lines]


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(tokenize="none", force=True)
    if name == "sacrebleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    raise HeadPruneError(f"unknown metric {name!r} (allowed: {', '.join(METRICS)})")


def _prepare(name: str, lines: Sequence[str], lang: str) -> List[str]:
    return list(lines) if name == "bleu" else detokenize(lines, lang)


def score(name: str, hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> Dict:
    """{'metric', 'score', 'signature'} of a corpus."""
    if len(hyps) != len(refs):
        raise HeadPruneError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise HeadPruneError("nothing to score: the evaluation subset is empty")
    metric = _metric(name)
    result = metric.corpus_score(_prepare(name, hyps, lang), [_prepare(name, refs, lang)])
    return {"metric": name, "score": float(result.score),
            "signature": str(metric.get_signature())}


@contextlib.contextmanager
def _sacrebleu_seed(seed: int):
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap(name: str, baseline: Sequence[str], system: Sequence[str],
                     refs: Sequence[str], lang: str = "en", n_samples: int = 1000,
                     seed: int = 12345) -> Dict:
    """sacrebleu's paired bootstrap resampling (Koehn 2004) of system vs baseline.
    Returns {'baseline', 'score', 'delta', 'p_value'}; seed must be non-zero (sacrebleu
    treats 0 as 'unseeded')."""
    from sacrebleu.significance import PairedTest

    if not seed:
        raise HeadPruneError("bootstrap seed 0 means 'unseeded' to sacrebleu (use a non-zero seed)")
    refs_p = _prepare(name, refs, lang)
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("baseline", _prepare(name, baseline, lang)), ("system", _prepare(name, system, lang))],
            {name: _metric(name)}, references=[refs_p], test_type="bs", n_samples=n_samples,
        )
        _, results = test()
    # sacrebleu keys results by the score's own name ('BLEU', 'chrF2'), not ours
    base, sys_ = next(v for k, v in results.items() if k != "System")
    return {"baseline": float(base.score), "score": float(sys_.score),
            "delta": float(sys_.score - base.score), "p_value": float(sys_.p_value)}
