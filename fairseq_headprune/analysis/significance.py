"""Significance and correlation, one implementation for every command.

* ``paired_bootstrap``: sacrebleu's paired bootstrap resampling (Koehn 2004) of a system
  against a baseline, for any of the decoding metrics of ``scoring``.
* ``loss_paired_bootstrap``: the same statistic, over sentences, for a corpus loss.
* classifiers' ``accuracy``/``f1``/``mcc``: the same statistic over examples (the
  metric of each resample from its confusion matrix), and the paper's paired t-test
  of the per-example correctness (``paired_ttest``, scipy's ``ttest_rel``).
* ``significant``: p < alpha AND the outputs differ AND the score differs. sacrebleu's
  test returns p = 1/(n_samples+1) whenever the real difference is 0 and the resampled
  differences are all 0 too (its statistic is |resampled diff| minus its mean, compared
  with '>' against the real difference): for two identical systems, and for systems
  whose every resample scores the same (e.g. BLEU 0 on a few sentences). A change of
  exactly nothing must never count as significant, whatever the p-value.
* ``pearson``/``spearman``: scipy.stats, None where undefined (a constant vector).
"""

import contextlib
import os
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import HeadPruneError
from . import scoring

DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 12345  # sacrebleu's


def check_settings(alpha: float, n_samples: int, seed: int):
    """One rule for --alpha, --bootstrap-samples and --bootstrap-seed everywhere."""
    if not 0 < alpha < 1:
        raise HeadPruneError(f"--alpha {alpha!r} is out of range (allowed: 0 < alpha < 1)")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise HeadPruneError(f"--bootstrap-samples {n_samples!r} is not allowed (a whole number >= 1)")
    if not seed:
        raise HeadPruneError("--bootstrap-seed 0 means 'unseeded' to sacrebleu (use a non-zero seed)")


def significant(p_value: float, alpha: float, identical: bool, delta: float) -> bool:
    return bool(p_value < alpha and not identical and delta != 0)


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
                     refs: Sequence[str], lang: str = "en", n_samples: int = DEFAULT_SAMPLES,
                     seed: int = DEFAULT_SEED) -> Dict:
    """sacrebleu's paired bootstrap of ``system`` vs ``baseline``. Returns {'baseline',
    'score', 'delta', 'p_value', 'identical'}; seed must be non-zero (sacrebleu treats
    0 as 'unseeded')."""
    from sacrebleu.significance import PairedTest

    if not seed:
        raise HeadPruneError("bootstrap seed 0 means 'unseeded' to sacrebleu (use a non-zero seed)")
    if name in scoring.CLASS_METRICS:
        return class_paired_bootstrap(name, baseline, system, refs, n_samples, seed)
    refs_p = scoring.prepare(name, refs, lang)
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("baseline", scoring.prepare(name, baseline, lang)),
             ("system", scoring.prepare(name, system, lang))],
            {name: scoring.metric(name)}, references=[refs_p], test_type="bs", n_samples=n_samples,
        )
        _, results = test()
    # sacrebleu keys results by the score's own name ('BLEU', 'chrF2'), not ours
    base, sys_ = next(v for k, v in results.items() if k != "System")
    return {"baseline": float(base.score), "score": float(sys_.score),
            "delta": float(sys_.score - base.score), "p_value": float(sys_.p_value),
            "identical": list(baseline) == list(system)}


def bootstrap_indices(n: int, n_samples: int, seed: int) -> np.ndarray:
    """The resampled sentence indices sacrebleu's paired bootstrap draws for ``seed``."""
    return np.random.default_rng(seed).choice(n, size=(n_samples, n), replace=True)


def loss_paired_bootstrap(base_nll: Sequence[float], sys_nll: Sequence[float],
                          ntokens: Sequence[int], n_samples: int = DEFAULT_SAMPLES,
                          seed: int = DEFAULT_SEED) -> float:
    """p-value of a corpus-loss difference, by sacrebleu's paired bootstrap statistic:
    resample sentences (same RNG and draws as sacrebleu for this seed), corpus loss =
    sum NLL / sum tokens, stats = |sys - base| per resample minus its mean, p =
    (#(stats > |real difference|) + 1) / (n_samples + 1)."""
    base = np.asarray(base_nll, float)
    sys_ = np.asarray(sys_nll, float)
    tok = np.asarray(ntokens, float)
    idx = bootstrap_indices(len(base), n_samples, seed)
    real = abs(sys_.sum() / tok.sum() - base.sum() / tok.sum())
    t = tok[idx].sum(1)
    return _bootstrap_p(base[idx].sum(1) / t, sys_[idx].sum(1) / t, real, n_samples)


def _bootstrap_p(base_scores, sys_scores, real: float, n_samples: int) -> float:
    """sacrebleu's p-value from the resamples' scores: stats = |sys - base| minus its
    mean, p = (#(stats > |real difference|) + 1) / (n_samples + 1)."""
    diffs = np.abs(np.asarray(sys_scores) - np.asarray(base_scores))
    stats = diffs - diffs.mean()
    return float((np.sum(stats > abs(real)) + 1) / (n_samples + 1))


def class_paired_bootstrap(name: str, baseline: Sequence[str], system: Sequence[str],
                           refs: Sequence[str], n_samples: int = DEFAULT_SAMPLES,
                           seed: int = DEFAULT_SEED) -> Dict:
    """``paired_bootstrap`` of a classifier's metric (``scoring.CLASS_METRICS``):
    sacrebleu's resamples and statistic, each resample scored from its confusion
    matrix. Also returns the paired t-test's p-value (``p_ttest``)."""
    if not len(refs) == len(baseline) == len(system) or not refs:
        raise HeadPruneError(f"paired test needs as many predictions as labels "
                             f"({len(baseline)}, {len(system)}, {len(refs)})")
    classes = scoring.label_classes(baseline, system, refs)
    idx = bootstrap_indices(len(refs), n_samples, seed)
    score = lambda hyps, rows=None: scoring.from_confusion(
        name, scoring.confusion(hyps, refs, classes, rows), classes)
    base, sys_ = float(score(baseline)), float(score(system))
    p = _bootstrap_p(score(baseline, idx), score(system, idx), sys_ - base, n_samples)
    right = lambda hyps: [h == r for h, r in zip(hyps, refs)]
    return {"baseline": base, "score": sys_, "delta": sys_ - base, "p_value": p,
            "p_ttest": paired_ttest(right(baseline), right(system)),
            "identical": list(baseline) == list(system)}


def paired_ttest(base: Sequence[float], system: Sequence[float]) -> float:
    """Two-sided paired t-test (scipy.stats.ttest_rel) of per-example values; 1.0 when
    every difference is 0 (scipy's NaN: nothing changed, nothing to test)."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(base, float), np.asarray(system, float)
    if len(a) < 2 or not np.any(a != b):
        return 1.0
    p = float(ttest_rel(b, a).pvalue)
    return p if np.isfinite(p) else 1.0


def _defined(x, y) -> bool:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Pearson r (scipy.stats.pearsonr); None when a vector is constant or shorter than 2."""
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0]) if _defined(x, y) else None


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman rho (scipy.stats.spearmanr, ties share ranks); None when undefined."""
    from scipy.stats import rankdata, spearmanr

    if len(x) < 2 or not _defined(rankdata(x), rankdata(y)):
        return None
    return float(spearmanr(x, y)[0])
