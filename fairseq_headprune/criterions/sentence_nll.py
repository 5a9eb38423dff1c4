"""Criterion ``headprune_nll``: the summed token NLL of the reference translation,
teacher-forced, padding excluded. It is the loss L(x) of the paper's importance
score and of loss-based ablation; ``sentence_nll`` gives it per sentence."""

import math

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


def sentence_nll(model, sample) -> torch.Tensor:
    """[batch] summed NLL (nats) of each sentence's reference tokens."""
    net_output = model(**sample["net_input"])
    logits = net_output[0]
    if getattr(model.decoder, "adaptive_softmax", None) is None:
        # fairseq's own log-softmax, but kept in float64 for a float64 model (exact tests)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        lprobs = torch.log_softmax(logits, dim=-1, dtype=dtype)
    else:
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
    target = sample["target"]
    pad = model.decoder.dictionary.pad() if hasattr(model, "decoder") else 1
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return nll.masked_fill(target.eq(pad), 0.0).sum(dim=1)


@register_criterion("headprune_nll", dataclass=FairseqDataclass)
class SentenceNllCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        per_sentence = sentence_nll(model, sample)
        loss = per_sentence.sum() if reduce else per_sentence
        ntokens = sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": loss.data,
            "ntokens": ntokens,
            "nsentences": sample["target"].size(0),
            "sample_size": ntokens,
        }
        return loss, ntokens, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_scalar("nll_loss", loss / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: 2 ** meters["nll_loss"].avg)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
