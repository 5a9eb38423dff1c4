from .translation_headprune import TranslationHeadPruneTask  # noqa: F401
