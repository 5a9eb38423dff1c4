# fairseq's tools reach this package through --user-dir, which imports tasks/: the fixes
# to their checkpoint-loading paths and the one-line error hook (fairseq_fixes.py) are
# installed here, before the task they serve is registered.
from .. import fairseq_fixes

fairseq_fixes.install()

from .translation_headprune import TranslationHeadPruneTask  # noqa: E402,F401
from .sentence_prediction_headprune import SentencePredictionHeadPruneTask  # noqa: E402,F401
