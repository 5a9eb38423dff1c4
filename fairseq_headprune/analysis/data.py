"""The one selector of evaluation and importance data.

``select(task, models, DataSpec(...))`` gives the sentences of a subset and fairseq's
batches of them. Without a cap these are the batches fairseq-generate makes (so scores
equal fairseq-generate + sacrebleu), except that no sentence is dropped: fairseq
drops a last batch that is not a multiple of --required-batch-size-multiple. A sentence cap (``max_sentences``) takes a
seeded random sample of whole sentences, the same every run and every epoch, and then
batches it the same way; it never means "the first batches", which fairseq sorts by
length (the shortest sentences). ``max_batches`` keeps N of those batches, chosen in a
seeded random order. Data-parallel workers take every N-th batch (``Selection.shard``).

Nothing here builds a fairseq epoch iterator: ``task.get_batch_iterator`` caches
iterators per dataset, and one built on the training split mid-training would replace
the trainer's own.
"""

import os
import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import HeadPruneError


@dataclass(frozen=True)
class DataSpec:
    """Which sentences of which subset, batched how (fairseq's batching options)."""

    subset: str
    max_sentences: Optional[int] = None  # None: all sentences
    max_batches: Optional[int] = None  # None: all batches
    seed: int = 1  # of the sentence sample and of the batch order under max_batches
    max_tokens: Optional[int] = None
    batch_size: Optional[int] = None
    required_batch_size_multiple: int = 1
    skip_invalid_size_inputs: bool = False
    batching_seed: int = 1  # fairseq's --seed: orders equal-length sentences

    def __post_init__(self):
        for name in ("max_sentences", "max_batches"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise HeadPruneError(f"{name.replace('_', '-')} {value!r} is not allowed "
                                     f"(a whole number >= 1, or unset for all)")
        if self.max_tokens is None and self.batch_size is None:
            raise HeadPruneError("set --max-tokens or --batch-size to batch the data")


def is_classification_folder(folder: str) -> bool:
    """fairseq's sentence_prediction layout (RoBERTa GLUE): ``input0/`` and ``label/``."""
    return os.path.isdir(os.path.join(folder, "input0"))


def splits_in(folder: str) -> List[str]:
    """The splits of a binarized fairseq data folder, from its ``SPLIT.SRC-TGT.LANG.idx``
    files, or in the sentence_prediction layout its ``input0/SPLIT.idx`` files (sorted)."""
    pattern = r"^(.+)\.[^.]+-[^.]+\.[^.]+\.idx$"
    if is_classification_folder(folder):
        folder, pattern = os.path.join(folder, "input0"), r"^(.+)\.idx$"
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted({m.group(1) for m in (re.match(pattern, n) for n in names) if m})


def describe_splits(folder: str) -> str:
    splits = splits_in(folder)
    return (f"its splits: {', '.join(splits)}" if splits
            else "it holds no binarized splits (SPLIT.SRC-TGT.LANG.idx files, or "
                 "input0/SPLIT.idx for a classification task)")


def check_classification_folder(folder: str, option: str = "data folder") -> None:
    """One line if ``folder`` is not in fairseq's sentence_prediction layout."""

    _check_is_folder(folder, option)
    for sub in ("input0", "label"):
        if not os.path.isfile(os.path.join(folder, sub, "dict.txt")):
            raise HeadPruneError(
                f"{option} {folder!r} has no {sub}/dict.txt (allowed: a sentence_prediction "
                f"data folder as fairseq's RoBERTa GLUE preprocessing writes it: input0/, "
                f"[input1/,] label/, each with dict.txt)")


def _check_is_folder(folder: str, option: str) -> None:

    if not os.path.exists(folder):
        raise HeadPruneError(f"{option} {folder!r} does not exist (allowed: a folder written "
                             f"by fairseq-preprocess)")
    if not os.path.isdir(folder):
        raise HeadPruneError(f"{option} {folder!r} is not a folder (allowed: a folder written "
                             f"by fairseq-preprocess)")


def check_data_folder(folder: str, source_lang=None, target_lang=None,
                      option: str = "data folder") -> None:
    """One line if ``folder`` is not a fairseq translation data folder: missing, not a
    folder, no language pair to infer, or a dictionary missing."""
    _check_is_folder(folder, option)
    names = sorted(os.listdir(folder))
    if source_lang is None or target_lang is None:
        from fairseq.data import data_utils

        pair = data_utils.infer_language_pair(folder)
        if pair == (None, None) or pair is None:
            raise HeadPruneError(
                f"{option} {folder!r} holds no binarized fairseq data to infer the language "
                f"pair from (no SPLIT.SRC-TGT.LANG.idx files; it has: "
                f"{', '.join(names[:10]) or 'nothing'}); pass --source-lang/--target-lang or "
                f"a folder written by fairseq-preprocess")
        source_lang, target_lang = source_lang or pair[0], target_lang or pair[1]
    dicts = [n for n in names if n.startswith("dict.") and n.endswith(".txt")]
    for lang in (source_lang, target_lang):
        if not os.path.isfile(os.path.join(folder, f"dict.{lang}.txt")):
            raise HeadPruneError(
                f"{option} {folder!r} has no dictionary dict.{lang}.txt (dictionaries there: "
                f"{', '.join(dicts) or 'none'}; {describe_splits(folder)})")


def load_subset(task, subset: str, task_cfg=None):
    """The task's dataset ``subset``, loaded if needed, with one-line errors."""
    try:
        return task.dataset(subset)
    except KeyError:
        pass
    data = getattr(task.cfg, "data", "?")
    folder = data.split(":")[0] if isinstance(data, str) else data
    found = splits_in(folder) if isinstance(folder, str) else []
    if found and subset not in found:  # (no .idx files at all: raw text, fairseq decides)
        raise HeadPruneError(f"subset {subset!r} is not in {folder!r} ({describe_splits(folder)})")
    try:
        if task_cfg is not None:
            task.load_dataset(subset, task_cfg=task_cfg)
        else:
            task.load_dataset(subset)
    except FileNotFoundError as e:
        raise HeadPruneError(f"subset {subset!r} not found in {data!r}: {e} "
                             f"({describe_splits(folder)})")
    except ValueError as e:  # fairseq cannot mmap an empty split
        raise HeadPruneError(f"subset {subset!r} of {data!r} cannot be loaded: {e} (empty split?)")
    return task.dataset(subset)


def _max_positions(task, models):
    from fairseq import utils

    return utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])


def ordered_valid_indices(task, dataset, models, spec: DataSpec) -> np.ndarray:
    """Indices in fairseq's batching order, too-long sentences removed or refused.
    Mirrors the first steps of ``FairseqTask.get_batch_iterator`` (fairseq 0.12.3:
    ``numpy_seed(seed + epoch)`` around ``ordered_indices``, epoch 1, then
    ``filter_indices_by_size``), without building an iterator."""
    from fairseq.data import data_utils

    with data_utils.numpy_seed(spec.batching_seed + 1):
        indices = dataset.ordered_indices()
    max_positions = _max_positions(task, models)
    if max_positions is not None:
        indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
        if len(ignored) and not spec.skip_invalid_size_inputs:
            raise HeadPruneError(
                f"sentence {ignored[0]} of subset {spec.subset!r} is longer than the model "
                f"allows ({max_positions}); pass --skip-invalid-size-inputs-valid-test to skip "
                f"such sentences")
    return np.asarray(indices, dtype=np.int64)


def sample_sentences(indices: np.ndarray, n: Optional[int], seed: int) -> np.ndarray:
    """``indices`` restricted to a seeded random sample of ``n`` of them (order kept)."""
    if n is None or n >= len(indices):
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), size=n, replace=False)
    keep = np.zeros(len(indices), dtype=bool)
    keep[chosen] = True
    return indices[keep]


@dataclass
class Selection:
    spec: DataSpec
    batches: List[List[int]]  # dataset indices, fairseq's batches
    available: int  # sentences of the subset that could be used

    @property
    def ids(self) -> List[int]:
        return sorted(int(i) for b in self.batches for i in b)

    @property
    def nsentences(self) -> int:
        return sum(len(b) for b in self.batches)

    def shard(self, world: int = 1, rank: int = 0) -> List[List[int]]:
        """This worker's batches: every ``world``-th, starting at ``rank``."""
        return list(self.batches[rank::world])

    def describe(self) -> dict:
        """What results files record about the data they were computed on."""
        capped = self.nsentences < self.available
        return {"subset": self.spec.subset, "sentences": self.nsentences,
                "of": self.available,
                "sample": ("seeded random sample of whole sentences" if capped
                           else "all sentences"),
                "seed": self.spec.seed if capped else None,
                "batches": len(self.batches),
                "spec": asdict(self.spec)}


def select(task, models: Sequence, spec: DataSpec, task_cfg=None) -> Selection:
    """The sentences and batches of ``spec`` (see the module docstring)."""
    dataset = load_subset(task, spec.subset, task_cfg)
    if len(dataset) == 0:
        raise HeadPruneError(f"subset {spec.subset!r} is empty")
    indices = ordered_valid_indices(task, dataset, models, spec)
    available = len(indices)
    indices = sample_sentences(indices, spec.max_sentences, spec.seed)
    try:
        batches = dataset.batch_by_size(
            indices, max_tokens=spec.max_tokens, max_sentences=spec.batch_size,
            required_batch_size_multiple=spec.required_batch_size_multiple)
    except AssertionError as e:  # fairseq's batch_by_size: a sentence > --max-tokens
        raise HeadPruneError(f"cannot batch subset {spec.subset!r}: {e} (raise --max-tokens)")
    batches = [[int(i) for i in b] for b in batches if len(b)]
    # fairseq's batch_by_size drops a last batch whose size is not a multiple of
    # --required-batch-size-multiple (fairseq issue #5036, still in 0.12.3), so
    # fairseq-generate silently skips up to N-1 sentences; here they form a last batch
    covered = {i for b in batches for i in b}
    rest = [int(i) for i in indices if int(i) not in covered]
    if rest:
        batches.append(rest)
    if spec.max_batches is not None and spec.max_batches < len(batches):
        order = np.random.default_rng(spec.seed).permutation(len(batches))
        batches = [batches[i] for i in sorted(order[:spec.max_batches])]
    if not batches:
        raise HeadPruneError(f"subset {spec.subset!r} gave no batches")
    return Selection(spec, batches, available)


def collate(task, subset: str, index_batches: Sequence[Sequence[int]]) -> List[dict]:
    """fairseq samples (``net_input``, ``target``, ``id``, ...) of index batches."""
    dataset = task.dataset(subset)
    return [dataset.collater([dataset[i] for i in b]) for b in index_batches]
