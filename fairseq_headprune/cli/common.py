"""What every model-reading subcommand shares: fairseq's own generation parser (so
``DATA --path CKPT --gen-subset --beam --lenpen --max-tokens --remove-bpe --cpu
--fp16 ...`` mean what they mean to fairseq-generate), model loading as
fairseq-generate does it, and provenance for every results file."""

import argparse
import datetime
import logging
import os
import sys
from typing import Callable, List, Optional

import torch

from .. import __version__
from ..errors import HeadPruneError

logger = logging.getLogger("fairseq_headprune")


def setup_logging():
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def parse_args(prog: str, argv: List[str], add_args: Callable[[argparse.ArgumentParser], None]):
    """fairseq's generation parser + this subcommand's options."""
    from fairseq import options

    parser = options.get_generation_parser(default_task="translation_headprune")
    parser.prog = f"fairseq-headprune {prog}"
    group = parser.add_argument_group(f"fairseq-headprune {prog}")
    group.add_argument("--results-dir", required=True, metavar="DIR",
                       help="folder for JSON, CSV and PNG results (created if missing)")
    add_args(group)
    args = options.parse_args_and_arch(parser, argv)
    if args.task != "translation_headprune":
        raise HeadPruneError(f"--task {args.task!r} is not supported here (allowed: translation_headprune)")
    if args.path is None:
        raise HeadPruneError("--path CHECKPOINT is required")
    return args


class Context:
    """A loaded model and task, ready for analysis."""

    def __init__(self, args):
        from fairseq import checkpoint_utils, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        self.args = args
        if args.max_tokens is None and args.batch_size is None:
            args.max_tokens = 12000  # fairseq-generate's default
        self.cfg = cfg = convert_namespace_to_omegaconf(args)
        utils.import_user_module(cfg.common)
        self.results_dir = args.results_dir
        os.makedirs(self.results_dir, exist_ok=True)
        paths = utils.split_paths(cfg.common_eval.path)
        if len(paths) != 1:
            raise HeadPruneError(f"--path names {len(paths)} checkpoints; give exactly one")
        if not os.path.isfile(paths[0]):
            raise HeadPruneError(f"checkpoint {paths[0]!r} does not exist")
        self.task = tasks.setup_task(cfg.task)
        overrides = eval(cfg.common_eval.model_overrides)
        logger.info(f"loading model from {paths[0]}")
        models, self.saved_cfg = checkpoint_utils.load_model_ensemble(
            paths, arg_overrides=overrides, task=self.task
        )
        self.model = models[0]
        self.use_cuda = torch.cuda.is_available() and not cfg.common.cpu
        if cfg.common.fp16:
            self.model.half()
        if self.use_cuda:
            self.model.cuda()
        self.model.eval()
        self._batches = {}

    @property
    def target_lang(self) -> str:
        return self.cfg.task.target_lang or "en"

    def load_subset(self, subset: str):
        try:
            self.task.dataset(subset)
        except KeyError:
            try:
                self.task.load_dataset(subset, task_cfg=self.saved_cfg.task)
            except FileNotFoundError as e:
                raise HeadPruneError(f"subset {subset!r} not found in {self.cfg.task.data}: {e}")
            except ValueError as e:  # fairseq cannot mmap an empty split
                raise HeadPruneError(
                    f"subset {subset!r} of {self.cfg.task.data} cannot be loaded: {e} (empty split?)")

    def batches(self, subset: str, max_sentences: Optional[int] = None,
                max_batches: Optional[int] = None, shard=(1, 0)):
        from ..analysis.decoding import batches_for, limit_sentences

        key = (subset, shard)
        if key not in self._batches:
            self.load_subset(subset)
            self._batches[key] = batches_for(self.cfg, self.task, [self.model], subset, shard)
        out = limit_sentences(self._batches[key], max_sentences)
        if max_batches:
            out = out[:max_batches]
        if not out:
            raise HeadPruneError(f"subset {subset!r} gave no batches")
        return out

    def decoder(self, subset: str, max_sentences: Optional[int] = None):
        from ..analysis.decoding import SubsetDecoder

        return SubsetDecoder(self.cfg, self.task, self.model, subset,
                             batches=self.batches(subset, max_sentences))

    def path(self, name: str) -> str:
        return os.path.join(self.results_dir, name)

    def meta(self, **extra) -> dict:
        import fairseq

        a = self.args
        meta = {
            "command": "fairseq-headprune " + " ".join(sys.argv[1:]),
            "checkpoint": os.path.abspath(a.path),
            "data": os.path.abspath(a.data),
            "source_lang": self.cfg.task.source_lang,
            "target_lang": self.cfg.task.target_lang,
            "generation": {"beam": a.beam, "lenpen": a.lenpen, "max_len_a": a.max_len_a,
                           "max_len_b": a.max_len_b, "remove_bpe": a.post_process,
                           "max_tokens": a.max_tokens, "batch_size": a.batch_size},
            "fp16": bool(a.fp16),
            "device": "cuda" if self.use_cuda else "cpu",
            "versions": {"fairseq_headprune": __version__, "fairseq": fairseq.__version__,
                         "torch": torch.__version__},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        meta.update(extra)
        return meta
