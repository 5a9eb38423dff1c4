"""The one evaluator of a head mask: decode + metrics + teacher-forced loss of one
selection of sentences, cached by mask.

Every mask it is given is composed with the fixed mask of the run (``--mask-heads``);
heads removed from the model (``--prune-heads``, or removed in the checkpoint) are
absent anyway. After each evaluation the model is left with the fixed mask alone, so
the next importance pass or evaluation sees the model the user asked for. Used by
``curve``, ``one-head``, ``ablate`` and the per-epoch training dynamics.

With data-parallel workers (``workers.Workers``) each worker decodes its share of the
batches; hypotheses, references and per-sentence losses are gathered into the order of
the selected sentence ids, so every worker returns the numbers one worker would.
"""

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..heads import HeadSet
from ..models.head_model import set_head_mask, set_row_masks
from . import scoring
from .data import Selection, collate
from .decoding import SubsetDecoder, Translations, sentence_losses
from .workers import SingleWorker, Workers


# Default size of a multi-mask decode, in beam rows (sentences x beam x masks): see
# auto_masks_per_batch and timing/bench_mask_batching.py for how it was chosen.
AUTO_ROWS = 512
MAX_MASKS_PER_BATCH = 16


@dataclass
class Losses:
    ids: List[int]
    nll: List[float]  # summed NLL per sentence, nats
    ntokens: List[int]  # target tokens per sentence (EOS included)

    @property
    def corpus(self) -> float:
        """Corpus loss in ``scoring.LOSS_UNIT``."""
        return scoring.corpus_loss(sum(self.nll), sum(self.ntokens))


class MaskEvaluator:
    metrics = ("bleu", "sacrebleu")  # the scores' metrics, the first the main one
    loss_unit = scoring.LOSS_UNIT

    def __init__(self, model, task, selection: Selection, gen_cfg, lang: str = "en",
                 fixed: HeadSet = HeadSet(), workers: Optional[Workers] = None,
                 cache: bool = True, progress: bool = True, masks_per_batch: Optional[int] = None):
        """``gen_cfg``: what fairseq-generate reads (``generation``, ``tokenizer``,
        ``bpe``, ``common_eval.post_process``). ``masks_per_batch``: how many masks one
        decode evaluates (``prefetch``); None: ``auto_masks_per_batch``."""
        self.model, self.task, self.selection = model, task, selection
        self.lang, self.fixed = lang, fixed
        self.w = workers or SingleWorker()
        self.subset = selection.spec.subset
        self.ids = selection.ids
        self.pos = {sid: p for p, sid in enumerate(self.ids)}
        self.batches = collate(task, self.subset, selection.shard(self.w.world, self.w.rank))
        self.decoder = SubsetDecoder(gen_cfg, task, model, self.subset, batches=self.batches)
        self.use_cuda = self.decoder.use_cuda
        self.cache, self.progress = cache, progress
        self.masks_per_batch = masks_per_batch or auto_masks_per_batch(
            self.batches, gen_cfg.generation.beam)
        self._translations: Dict[HeadSet, Translations] = {}
        self._losses: Dict[HeadSet, Losses] = {}
        self._refs: Optional[List[str]] = None
        self._ntokens: Optional[List[int]] = None

    @property
    def nsentences(self) -> int:
        return len(self.ids)

    def key(self, mask: HeadSet) -> HeadSet:
        return (mask or HeadSet()) | self.fixed

    @contextlib.contextmanager
    def _rows(self, keys: Sequence[HeadSet]):
        """A callback setting one row mask per copy of each batch; the fixed mask
        alone after."""
        try:
            yield lambda n: set_row_masks(self.model, keys, n)
        finally:
            set_head_mask(self.model, self.fixed or None)

    def _gather(self, local: Dict[int, str]) -> List[str]:
        return self.w.gather_strings({self.pos[i]: s for i, s in local.items()}, len(self.ids))

    def _groups(self, keys: List[HeadSet]) -> List[List[HeadSet]]:
        k = max(1, int(self.masks_per_batch))
        return [keys[i:i + k] for i in range(0, len(keys), k)]

    def _many(self, masks: Sequence[HeadSet], cached: Dict, run) -> List:
        keys = [self.key(m) for m in masks]
        todo = list(dict.fromkeys(k for k in keys if k not in cached))
        fresh = {}
        for group in self._groups(todo):
            fresh.update(zip(group, run(group)))
        return [cached[k] if k in cached else fresh[k] for k in keys]

    def translate_many(self, masks: Sequence[HeadSet], desc: Optional[str] = None) -> List[Translations]:
        """``translate`` of each mask, ``masks_per_batch`` masks per decode."""
        return self._many(masks, self._translations, lambda g: self._translate_group(g, desc))

    def losses_many(self, masks: Sequence[HeadSet]) -> List["Losses"]:
        """``losses`` of each mask, ``masks_per_batch`` masks per forward pass."""
        return self._many(masks, self._losses, self._loss_group)

    def prefetch(self, masks: Sequence[HeadSet], losses: bool = True):
        """Evaluate every mask not cached yet, several per decode, so that later
        ``translate``/``losses``/``scores`` of them read the cache."""
        if self.cache:
            self.translate_many(masks)
            if losses:
                self.losses_many(masks)

    def _translate_group(self, keys: List[HeadSet], desc: Optional[str] = None) -> List[Translations]:
        label = desc or " ".join(k.to_spec() or "full" for k in keys)
        with self._rows(keys) as before_batch:
            trs = self.decoder.translate_copies(len(keys), before_batch,
                                                desc=f"{self.subset} {label}"[:60],
                                                progress=self.progress)
        out = []
        for key, tr in zip(keys, trs):
            hyps = self._gather(dict(zip(tr.ids, tr.hyps)))
            if self._refs is None:
                self._refs = self._gather(dict(zip(tr.ids, tr.refs)))
            ntok = torch.tensor([tr.ntokens], dtype=torch.int64)
            t = Translations(list(self.ids), hyps, list(self._refs), int(self.w.all_reduce(ntok)[0]))
            if self.cache:
                self._translations[key] = t
            out.append(t)
        return out

    def translate(self, mask: HeadSet = HeadSet(), desc: Optional[str] = None) -> Translations:
        """Hypotheses and references of every selected sentence, in id order."""
        return self.translate_many([mask], desc)[0]

    def _sentence_ntokens(self) -> List[int]:
        if self._ntokens is None:
            local = torch.zeros(len(self.ids), dtype=torch.int64)
            pad = self.model.decoder.dictionary.pad()
            for b in self.batches:
                for sid, n in zip(b["id"].tolist(), b["target"].ne(pad).sum(1).tolist()):
                    local[self.pos[sid]] = n
            self._ntokens = [int(x) for x in self.w.all_reduce(local).tolist()]
        return self._ntokens

    def _loss_group(self, keys: List[HeadSet]) -> List[Losses]:
        local = torch.zeros(len(keys), len(self.ids), dtype=torch.float64)
        if self.batches:
            with self._rows(keys) as before_batch:
                values = sentence_losses(self.model, self.batches, self.use_cuda,
                                         copies=len(keys), before_batch=before_batch)
            sids = sorted(int(i) for b in self.batches for i in b["id"].tolist())
            cols = torch.tensor([self.pos[sid] for sid in sids], dtype=torch.long)
            local[:, cols] = values.double()
        local = self.w.all_reduce(local)
        out = []
        for key, row in zip(keys, local.tolist()):
            loss = Losses(list(self.ids), row, self._sentence_ntokens())
            if self.cache:
                self._losses[key] = loss
            out.append(loss)
        return out

    def losses(self, mask: HeadSet = HeadSet()) -> Losses:
        """Teacher-forced summed NLL of each selected sentence's reference."""
        return self.losses_many([mask])[0]

    def scores(self, mask: HeadSet = HeadSet()) -> Dict:
        """{'bleu', 'sacrebleu', 'loss' (``scoring.LOSS_UNIT``), signatures} of ``mask``."""
        tr = self.translate(mask)
        bleu = scoring.score("bleu", tr.hyps, tr.refs, self.lang)
        sacre = scoring.score("sacrebleu", tr.hyps, tr.refs, self.lang)
        return {"bleu": bleu["score"], "sacrebleu": sacre["score"],
                "loss": self.losses(mask).corpus,
                "bleu_signature": bleu["signature"], "sacrebleu_signature": sacre["signature"]}

    __call__ = scores


def auto_masks_per_batch(batches, beam: int, rows: int = AUTO_ROWS) -> int:
    """Masks per decode by default: as many copies of the largest batch as fit in
    ``rows`` beam rows (at least 1, at most ``MAX_MASKS_PER_BATCH``)."""
    largest = max((b["id"].numel() for b in batches), default=1)
    return max(1, min(MAX_MASKS_PER_BATCH, rows // max(1, largest * max(1, beam))))
