"""The mask evaluator of an encoder classifier (fairseq's sentence_prediction, e.g. a
RoBERTa model fine-tuned on MNLI): one forward pass of the selected examples per mask
gives each example's predicted label and its cross-entropy, cached by mask.

It answers what ``evaluate.MaskEvaluator`` answers for a translation model, so every
command runs on either: ``translate`` gives the predicted labels as hypotheses and the
gold labels as references (the label dictionary's strings), ``losses`` the summed
cross-entropy per example (one "token" per example: the corpus loss is in bits per
example), ``scores`` accuracy, F1 of label '1' (tasks labelled 0/1), MCC and the loss.
"""

from typing import Dict, List, Optional, Sequence

import torch

from ..errors import HeadPruneError
from ..heads import HeadSet
from ..models.head_model import set_head_mask
from . import scoring
from .data import Selection, collate
from .decoding import Translations
from .evaluate import Losses

LOSS_UNIT = "bits per example (cross-entropy of the gold label, base 2)"


def classification_head(model) -> str:
    """The name of the model's one classification head (fairseq's sentence_prediction
    criterion uses the one its config names; a fine-tuned model has one)."""
    heads = getattr(model, "classification_heads", None) or {}
    if len(heads) != 1:
        raise HeadPruneError(f"the model has {len(heads)} classification heads "
                             f"({', '.join(heads) or 'none'}); allowed: exactly one")
    return next(iter(heads))


def classifier_logits(model, sample) -> torch.Tensor:
    """[examples, classes] logits of the model's classification head."""
    logits, _ = model(**sample["net_input"], features_only=True,
                      classification_head_name=classification_head(model))
    return logits


def label_names(task) -> List[str]:
    """Class index -> the label's string (fairseq's RoBERTa hub ``label_fn``)."""
    d = task.label_dictionary
    return [d.string([i + d.nspecial]) for i in range(len(d) - d.nspecial)]


def metrics_of(task) -> tuple:
    """The metrics of a classification task: accuracy (the first: the main one), F1 of
    label '1' where the labels are 0/1 (GLUE's MRPC, QQP), MCC."""
    d = task.label_dictionary
    real = [n for i, n in enumerate(label_names(task))  # not fairseq's padding symbols
            if not (n.startswith("madeupword") and d.count[i + d.nspecial] == 0)]
    return scoring.CLASS_METRICS if sorted(real) == ["0", scoring.POSITIVE_LABEL] else ("accuracy", "mcc")


class ClassificationEvaluator:
    masks_per_batch = 1  # a forward pass is cheap; one mask at a time
    loss_unit = LOSS_UNIT

    def __init__(self, model, task, selection: Selection, fixed: HeadSet = HeadSet(),
                 use_cuda: bool = False, cache: bool = True, progress: bool = True):
        if getattr(task.cfg, "regression_target", False):
            raise HeadPruneError("the task is a regression (--regression-target); allowed: "
                                 "classification tasks (a label per example)")
        self.model, self.task, self.selection, self.fixed = model, task, selection, fixed
        self.subset, self.ids = selection.spec.subset, selection.ids
        self.pos = {sid: p for p, sid in enumerate(self.ids)}
        self.batches = collate(task, self.subset, selection.batches)
        self.labels = label_names(task)
        self.use_cuda, self.cache, self.progress = use_cuda, cache, progress
        self.lang = None
        self.metrics = metrics_of(task)
        self._out: Dict[HeadSet, tuple] = {}

    @property
    def nsentences(self) -> int:
        return len(self.ids)

    def key(self, mask: HeadSet) -> HeadSet:
        return (mask or HeadSet()) | self.fixed

    def _run(self, key: HeadSet, desc: Optional[str] = None):
        """(Translations, Losses) of ``key``: one forward pass of every batch."""
        from fairseq import utils

        if key in self._out:
            return self._out[key]
        n = len(self.ids)
        hyps: List[Optional[str]] = [None] * n
        refs: List[Optional[str]] = [None] * n
        nll = torch.zeros(n, dtype=torch.float64)
        set_head_mask(self.model, key or None)
        try:
            with torch.no_grad():
                for sample in self.batches:
                    if self.use_cuda:
                        sample = utils.move_to_cuda(sample)
                    logits = classifier_logits(self.model, sample).float()
                    gold = sample["target"].view(-1)
                    ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
                    for sid, p, g, l in zip(sample["id"].tolist(), logits.argmax(-1).tolist(),
                                            gold.tolist(), ce.double().tolist()):
                        i = self.pos[sid]
                        hyps[i], refs[i], nll[i] = self.labels[p], self.labels[g], l
        finally:
            set_head_mask(self.model, self.fixed or None)
        out = (Translations(list(self.ids), hyps, refs, n),
               Losses(list(self.ids), nll.tolist(), [1] * n))
        if self.cache:
            self._out[key] = out
        return out

    def translate_many(self, masks: Sequence[HeadSet], desc: Optional[str] = None) -> List[Translations]:
        return [self._run(self.key(m), desc)[0] for m in masks]

    def losses_many(self, masks: Sequence[HeadSet]) -> List[Losses]:
        return [self._run(self.key(m))[1] for m in masks]

    def prefetch(self, masks: Sequence[HeadSet], losses: bool = True):
        self.translate_many(masks)

    def translate(self, mask: HeadSet = HeadSet(), desc: Optional[str] = None) -> Translations:
        return self.translate_many([mask], desc)[0]

    def losses(self, mask: HeadSet = HeadSet()) -> Losses:
        return self.losses_many([mask])[0]

    def scores(self, mask: HeadSet = HeadSet()) -> Dict:
        """{'accuracy', 'f1' (labels 0/1), 'mcc', 'loss' (``LOSS_UNIT``)} of ``mask``,
        metrics in percent (MCC x 100, as GLUE reports it)."""
        tr, losses = self._run(self.key(mask))
        scored = scoring.class_scores(self.metrics, tr.hyps, tr.refs)  # one confusion matrix
        out = {name: scored[name]["score"] for name in self.metrics}
        out["loss"] = losses.corpus
        return out

    __call__ = scores
