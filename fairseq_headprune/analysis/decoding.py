"""Decode a subset the way fairseq-generate does, many times over, cheaply.

``SubsetDecoder`` keeps its batches and builds the sequence generator once; each
``translate()`` then costs one beam search over the batches, whatever masks are set
on the model in between (``evaluate.MaskEvaluator`` sets them). Hypotheses and
references are post-processed exactly as fairseq-generate prints its H- and T- lines (same batching, same --remove-bpe, same
--tokenizer/--bpe decoding), so scores equal fairseq-generate + sacrebleu.
"""

import copy
from dataclasses import dataclass
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.logging import progress_bar


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
        post = self.cfg.common_eval.post_process
        strip = symbols_to_strip(self.generator)
        out = {}
        ntokens = 0
        bar = progress_bar.progress_bar(
            self.batches, log_format="tqdm", prefix=desc or self.subset, default_log_format="tqdm",
        ) if progress else self.batches
        with torch.no_grad():
            for sample in bar:
                if self.use_cuda:
                    sample = utils.move_to_cuda(sample)
                hypos = self.task.inference_step(self.generator, [self.model], sample)
                for i, sid in enumerate(sample["id"].tolist()):
                    target = utils.strip_pad(sample["target"][i, :], self.tgt_dict.pad())
                    ref = self.tgt_dict.string(target.int().cpu(), post, escape_unk=True,
                                               extra_symbols_to_ignore=strip)
                    best = hypos[i][0]
                    ntokens += best["tokens"].numel()
                    _, hyp, _ = utils.post_process_prediction(
                        hypo_tokens=best["tokens"].int().cpu(), src_str="", alignment=None,
                        align_dict=None, tgt_dict=self.tgt_dict, remove_bpe=post,
                        extra_symbols_to_ignore=strip,
                    )
                    out[sid] = (self._decode_fn(hyp), self._decode_fn(ref))
        ids = sorted(out)
        return Translations(ids, [out[i][0] for i in ids], [out[i][1] for i in ids], ntokens)


def sentence_losses(model, batches, use_cuda=False) -> torch.Tensor:
    """Teacher-forced summed NLL (nats) per sentence, indexed by sentence id."""
    from ..criterions.sentence_nll import sentence_nll

    was_training = model.training
    model.eval()
    ids, losses = [], []
    with torch.no_grad():
        for sample in batches:
            if use_cuda:
                sample = utils.move_to_cuda(sample)
            losses.append(sentence_nll(model, sample).float().cpu())
            ids.append(sample["id"].cpu())
    model.train(was_training)
    ids, losses = torch.cat(ids), torch.cat(losses)
    return losses[ids.argsort()]
