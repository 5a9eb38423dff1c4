"""Significance and correlation, one implementation for every command.

* ``paired_bootstrap``: sacrebleu's paired bootstrap resampling (Koehn 2004) of a system
  against a baseline, for any of the decoding metrics of ``scoring``.
* ``loss_paired_bootstrap``: the same statistic, over sentences, for a corpus loss.
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
    diffs = np.abs(sys_[idx].sum(1) / t - base[idx].sum(1) / t)
    stats = diffs - diffs.mean()
    return float((np.sum(stats > real) + 1) / (n_samples + 1))


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
