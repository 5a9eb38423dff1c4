"""Decode a subset the way fairseq-generate does, many times over, cheaply.

``SubsetDecoder`` builds the batches and the sequence generator once and keeps them;
each ``translate()`` then costs one beam search over the subset, whatever masks are
set on the model in between. Hypotheses and references are post-processed exactly as
fairseq-generate prints its H- and T- lines (same batching, same --remove-bpe, same
--tokenizer/--bpe decoding), so scores equal fairseq-generate + sacrebleu.
"""

import copy
from dataclasses import dataclass
from typing import List, Optional

import torch
from fairseq import utils
from fairseq.logging import progress_bar

from ..errors import HeadPruneError


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


def batches_for(cfg, task, models, subset: str, shard=(1, 0)) -> List[dict]:
    """Materialised batches of ``subset`` as fairseq-generate makes them."""
    try:
        task.dataset(subset)
    except KeyError:
        task.load_dataset(subset)
    dataset = task.dataset(subset)
    if len(dataset) == 0:
        raise HeadPruneError(f"subset {subset!r} is empty")
    try:
        itr = task.get_batch_iterator(
            dataset=dataset,
            max_tokens=cfg.dataset.max_tokens,
            max_sentences=cfg.dataset.batch_size,
            max_positions=utils.resolve_max_positions(
                task.max_positions(), *[m.max_positions() for m in models]
            ),
            ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
            required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
            seed=cfg.common.seed,
            num_shards=shard[0],
            shard_id=shard[1],
            num_workers=0,
        ).next_epoch_itr(shuffle=False)
    except AssertionError as e:  # fairseq's batch_by_size: a sentence > --max-tokens
        raise HeadPruneError(f"cannot batch subset {subset!r}: {e} (raise --max-tokens)")
    return [b for b in itr if b]


def limit_sentences(batches: List[dict], max_sentences: Optional[int]) -> List[dict]:
    if not max_sentences:
        return batches
    out, n = [], 0
    for b in batches:
        if n >= max_sentences:
            break
        out.append(b)
        n += b["nsentences"]
    return out


class SubsetDecoder:
    def __init__(self, cfg, task, model, subset: str, max_sentences: Optional[int] = None,
                 batches: Optional[List[dict]] = None):
        self.cfg, self.task, self.model, self.subset = cfg, task, model, subset
        self.batches = batches if batches is not None else limit_sentences(
            batches_for(cfg, task, [model], subset), max_sentences)
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
