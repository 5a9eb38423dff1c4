"""Decode a subset the way fairseq-generate does, many times over, cheaply.

``SubsetDecoder`` keeps its batches and builds the sequence generator once; each
``translate()`` then costs one beam search over the batches, whatever masks are set
on the model in between (``evaluate.MaskEvaluator`` sets them). Hypotheses and
references are post-processed exactly as fairseq-generate prints its H- and T- lines (same batching, same --remove-bpe, same
--tokenizer/--bpe decoding), so scores equal fairseq-generate + sacrebleu.
"""

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from fairseq import utils
from fairseq.logging import progress_bar

from ..models.head_model import generation_mode


@dataclass
class Translations:
    ids: List[int]
    hyps: List[str]
    refs: List[str]
    ntokens: int = 0  # target tokens generated (incl. EOS), for speed figures


def symbols_to_strip(generator):
    extra = {generator.eos}
    if hasattr(generator, "symbols_to_strip_from_output"):
        extra = generator.symbols_to_strip_from_output
    return extra


class SubsetDecoder:
    def __init__(self, cfg, task, model, subset: str, batches: List[dict]):
        """``batches``: collated samples (``data.select`` + ``data.collate``)."""
        self.cfg, self.task, self.model, self.subset = cfg, task, model, subset
        self.batches = batches
        self.generator = task.build_generator([model], cfg.generation)
        # fairseq's post_process_prediction adds the words it prints to the dictionary
        # it is given (encode_line(add_if_not_exist=True)): post-process with a copy, so
        # that the task's dictionary, and the vocabulary size of the next generator
        # built from it, never change.
        self.tgt_dict = copy.deepcopy(task.target_dictionary)
        self.tokenizer = task.build_tokenizer(cfg.tokenizer)
        self.bpe = task.build_bpe(cfg.bpe)
        self.use_cuda = next(model.parameters()).is_cuda
        self.nsentences = sum(b["nsentences"] for b in self.batches)

    def _decode_fn(self, x: str) -> str:
        if self.bpe is not None:
            x = self.bpe.decode(x)
        if self.tokenizer is not None:
            x = self.tokenizer.decode(x)
        return x

    def translate(self, desc: Optional[str] = None, progress: bool = True) -> Translations:
        return self.translate_copies(1, desc=desc, progress=progress)[0]

    def translate_copies(self, copies: int, before_batch: Optional[Callable[[int], None]] = None,
                         desc: Optional[str] = None, progress: bool = True) -> List[Translations]:
        """One beam search over the batches, each batch repeated ``copies`` times
        (``tile``); ``before_batch(n)`` is called with the batch's sentence count before
        it is decoded (it sets one row mask per copy). One Translations per copy."""
        post = self.cfg.common_eval.post_process
        strip = symbols_to_strip(self.generator)
        out = [{} for _ in range(copies)]
        ntokens = [0] * copies
        bar = progress_bar.progress_bar(
            self.batches, log_format="tqdm", prefix=desc or self.subset, default_log_format="tqdm",
        ) if progress else self.batches
        with torch.no_grad(), generation_mode(self.model):
            for sample in bar:
                if self.use_cuda:
                    sample = utils.move_to_cuda(sample)
                ids = sample["id"].tolist()
                if before_batch is not None:
                    before_batch(len(ids))
                hypos = self.task.inference_step(self.generator, [self.model], tile(sample, copies))
                for i, sid in enumerate(ids):
                    target = utils.strip_pad(sample["target"][i, :], self.tgt_dict.pad())
                    ref = self._decode_fn(self.tgt_dict.string(
                        target.int().cpu(), post, escape_unk=True, extra_symbols_to_ignore=strip))
                    for c in range(copies):
                        best = hypos[c * len(ids) + i][0]
                        ntokens[c] += best["tokens"].numel()
                        _, hyp, _ = utils.post_process_prediction(
                            hypo_tokens=best["tokens"].int().cpu(), src_str="", alignment=None,
                            align_dict=None, tgt_dict=self.tgt_dict, remove_bpe=post,
                            extra_symbols_to_ignore=strip,
                        )
                        out[c][sid] = (self._decode_fn(hyp), ref)
        result = []
        for c in range(copies):
            ids = sorted(out[c])
            result.append(Translations(ids, [out[c][i][0] for i in ids],
                                       [out[c][i][1] for i in ids], ntokens[c]))
        return result


def tile(sample, copies: int):
    """The batch repeated ``copies`` times along the sentence axis (copy c of sentence
    i at row c * n + i)."""
    if copies == 1:
        return sample
    return utils.apply_to_sample(lambda t: t.repeat(copies, *([1] * (t.dim() - 1))), sample)


def sentence_losses(model, batches, use_cuda=False, copies: int = 1,
                    before_batch: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Teacher-forced summed NLL (nats) per sentence, indexed by sentence id
    ([copies, sentences]: each batch repeated ``copies`` times, as in
    ``SubsetDecoder.translate_copies``)."""
    from ..criterions.sentence_nll import sentence_nll

    was_training = model.training
    model.eval()
    ids, losses = [], []
    with torch.no_grad():
        for sample in batches:
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            n = sample["id"].numel()
            if before_batch is not None:
                before_batch(n)
            losses.append(sentence_nll(model, tile(sample, copies)).float().cpu().view(copies, n))
            ids.append(sample["id"].cpu())
    model.train(was_training)
    ids, losses = torch.cat(ids), torch.cat(losses, dim=1)
    return losses[:, ids.argsort()]
