"""What every model-reading subcommand shares: fairseq's own generation parser (so
``DATA --path CKPT --gen-subset --beam --lenpen --max-tokens --remove-bpe --cpu
--fp16 ...`` mean what they mean to fairseq-generate), the options that mean the same
in every command, and the model session (analysis/session.py)."""

import argparse
import logging
import os
import sys
from typing import Callable, List

from ..analysis.session import Session
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


def open_session(args) -> Session:
    """The model session of a command; its results folder is created after the
    model loaded, so that a bad checkpoint leaves no empty folder behind."""
    session = Session(args)
    os.makedirs(args.results_dir, exist_ok=True)
    return session


def out_path(args, name: str) -> str:
    return os.path.join(args.results_dir, name)


def add_eval_args(group):
    """The one definition of the evaluation-data cap, for every command."""
    group.add_argument("--max-eval-sentences", type=int, default=None, metavar="N",
                       help="evaluate a seeded random sample of N sentences of the "
                            "evaluation subset (default: all; never the shortest first)")
    group.add_argument("--eval-seed", type=int, default=1, metavar="SEED",
                       help="seed of that sample (default 1)")


def eval_selection(session: Session, args, subset: str):
    if args.max_eval_sentences is not None and args.max_eval_sentences < 1:
        raise HeadPruneError(f"--max-eval-sentences {args.max_eval_sentences} is not allowed "
                             f"(a whole number >= 1; leave it out for all sentences)")
    return session.select(session.data_spec(subset, args.max_eval_sentences, seed=args.eval_seed))


def add_bootstrap_args(group):
    from ..analysis.significance import DEFAULT_SAMPLES, DEFAULT_SEED

    group.add_argument("--alpha", type=float, default=0.01,
                       help="significance level of the paired bootstrap (default 0.01)")
    group.add_argument("--bootstrap-samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                       help=f"paired bootstrap resamples (default {DEFAULT_SAMPLES})")
    group.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, metavar="SEED",
                       help=f"paired bootstrap seed, non-zero (default {DEFAULT_SEED}, sacrebleu's)")
