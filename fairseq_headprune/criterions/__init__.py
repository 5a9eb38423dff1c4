from .sentence_nll import SentenceNllCriterion, sentence_nll  # noqa: F401
