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
from typing import Dict, List, Optional

import torch

from ..heads import HeadSet
from ..models.head_model import set_head_mask
from . import scoring
from .data import Selection, collate
from .decoding import SubsetDecoder, Translations, sentence_losses
from .workers import SingleWorker, Workers


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
    def __init__(self, model, task, selection: Selection, gen_cfg, lang: str = "en",
                 fixed: HeadSet = HeadSet(), workers: Optional[Workers] = None,
                 cache: bool = True, progress: bool = True):
        """``gen_cfg``: what fairseq-generate reads (``generation``, ``tokenizer``,
        ``bpe``, ``common_eval.post_process``)."""
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
    def masked(self, mask: HeadSet):
        """The model with ``mask`` and the fixed mask on; the fixed mask alone after."""
        set_head_mask(self.model, self.key(mask) or None)
        try:
            yield
        finally:
            set_head_mask(self.model, self.fixed or None)

    def _gather(self, local: Dict[int, str]) -> List[str]:
        return self.w.gather_strings({self.pos[i]: s for i, s in local.items()}, len(self.ids))

    def translate(self, mask: HeadSet = HeadSet(), desc: Optional[str] = None) -> Translations:
        """Hypotheses and references of every selected sentence, in id order."""
        key = self.key(mask)
        if key in self._translations:
            return self._translations[key]
        with self.masked(mask):
            tr = self.decoder.translate(desc=desc or f"{self.subset} {key.to_spec() or 'full'}"[:60],
                                        progress=self.progress)
        hyps = self._gather(dict(zip(tr.ids, tr.hyps)))
        if self._refs is None:
            self._refs = self._gather(dict(zip(tr.ids, tr.refs)))
        ntok = torch.tensor([tr.ntokens], dtype=torch.int64)
        out = Translations(list(self.ids), hyps, list(self._refs), int(self.w.all_reduce(ntok)[0]))
        if self.cache:
            self._translations[key] = out
        return out

    def _sentence_ntokens(self) -> List[int]:
        if self._ntokens is None:
            local = torch.zeros(len(self.ids), dtype=torch.int64)
            pad = self.model.decoder.dictionary.pad()
            for b in self.batches:
                for sid, n in zip(b["id"].tolist(), b["target"].ne(pad).sum(1).tolist()):
                    local[self.pos[sid]] = n
            self._ntokens = [int(x) for x in self.w.all_reduce(local).tolist()]
        return self._ntokens

    def losses(self, mask: HeadSet = HeadSet()) -> Losses:
        """Teacher-forced summed NLL of each selected sentence's reference."""
        key = self.key(mask)
        if key in self._losses:
            return self._losses[key]
        local = torch.zeros(len(self.ids), dtype=torch.float64)
        if self.batches:
            with self.masked(mask):
                values = sentence_losses(self.model, self.batches, self.use_cuda)
            sids = sorted(int(i) for b in self.batches for i in b["id"].tolist())
            for sid, v in zip(sids, values.double().tolist()):
                local[self.pos[sid]] = v
        out = Losses(list(self.ids), self.w.all_reduce(local).tolist(), self._sentence_ntokens())
        if self.cache:
            self._losses[key] = out
        return out

    def scores(self, mask: HeadSet = HeadSet()) -> Dict:
        """{'bleu', 'sacrebleu', 'loss' (``scoring.LOSS_UNIT``), signatures} of ``mask``."""
        tr = self.translate(mask)
        bleu = scoring.score("bleu", tr.hyps, tr.refs, self.lang)
        sacre = scoring.score("sacrebleu", tr.hyps, tr.refs, self.lang)
        return {"bleu": bleu["score"], "sacrebleu": sacre["score"],
                "loss": self.losses(mask).corpus,
                "bleu_signature": bleu["signature"], "sacrebleu_signature": sacre["signature"]}

    __call__ = scores
