"""fairseq-headprune: which attention heads does a fairseq Transformer need?

Importing the package registers its task (``translation_headprune``), criterion
(``headprune_nll``) and attention module with fairseq, with or without ``--user-dir``.
``heads`` (the spec grammar) and ``report`` also work where torch and fairseq are not
installed.
"""

import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec("fairseq") is not None:
    from . import criterions, models, modules, tasks  # noqa: F401  (registration)
