"""What every model-reading subcommand shares: fairseq's own generation parser (so
``DATA --path CKPT --gen-subset --beam --lenpen --max-tokens --remove-bpe --cpu
--fp16 ...`` mean what they mean to fairseq-generate), the options that mean the same
in every command, with one range rule each (the argparse ``type=`` helpers below, so
argparse itself prints the one line), and the model session (analysis/session.py)."""

import argparse
import logging
import math
import os
import re
import sys
from typing import Callable, List, Optional

from ..analysis.session import Session
from ..errors import HeadPruneError
from ..results import check_folder, claim_folder

logger = logging.getLogger("fairseq_headprune")
TASKS = ("translation_headprune", "sentence_prediction_headprune")


def setup_logging():
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


# -- argparse type= helpers: one rule per option, in every command -----------------------
# A bad value gives "OPTION VALUE is ... (allowed: ...)": parse_args turns argparse's
# errors into HeadPruneError, so in-process callers get the exception and the command
# line gets the package's one line.

def _number(kind, test, allowed, problem="is not allowed"):
    def convert(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or not test(value):
            raise argparse.ArgumentTypeError(f"{text} {problem} (allowed: {allowed})")
        return value
    return convert


positive_int = _number(int, lambda v: v >= 1, "a whole number >= 1")
nonnegative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
fraction_open = _number(float, lambda v: 0 < v < 1, "a number with 0 < x < 1", "is out of range")
fraction_closed = _number(float, lambda v: 0 <= v <= 1, "a number with 0 <= x <= 1", "is outside [0, 1]")
sample_size = _number(int, lambda v: v >= 1, "a whole number >= 1; leave the option out for all")
_masks_per_batch = _number(int, lambda v: 1 <= v <= 64, "auto or a whole number from 1 to 64")


def seed_list(text):
    """'1' or '1,2,3' -> [1, 2, 3] (distinct integers)."""
    try:
        seeds = [int(x) for x in str(text).split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text} is not allowed (allowed: a seed or a comma "
                                         f"list of distinct seeds, e.g. 1 or 1,2,3,4,5)")
    return seeds


def masks_per_batch(text):
    return None if str(text) == "auto" else _masks_per_batch(text)


def _parser_error(message):
    m = re.match(r"argument (\S+?): (.+\(allowed: [^()]*\))$", message)
    if m:  # one of the helpers above: "--opt VALUE is ... (allowed: ...)"
        message = f"{m.group(1).split('/')[0]} {m.group(2)}"
    raise HeadPruneError(message)


def require_heads(text: Optional[str], option: str) -> None:
    """One rule where a head spec is required: an empty or blank one is refused."""
    if text is not None and not str(text).replace(";", " ").strip():
        raise HeadPruneError(f"{option} {text!r} is empty (allowed: heads as KIND:LAYERS:HEADS, "
                             f"e.g. E:1:6,8, or @file.json)")


def _check_fairseq_numbers(parser, args):
    """fairseq's own options: --beam >= 1, and no NaN or infinite number anywhere."""
    if getattr(args, "beam", 1) < 1:
        raise HeadPruneError(f"--beam {args.beam} is not allowed (allowed: a whole number >= 1)")
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if (isinstance(value, float) and not math.isfinite(value) and value != action.default
                and action.option_strings):
            raise HeadPruneError(f"{action.option_strings[-1]} {value} is not allowed (allowed: a finite number)")


def parse_args(prog: str, argv: List[str], add_args: Callable[[argparse.ArgumentParser], None]):
    """fairseq's generation parser + this subcommand's options, every check that
    needs no model done."""
    from fairseq import options

    parser = options.get_generation_parser(default_task="translation_headprune")
    parser.prog = f"fairseq-headprune {prog}"
    parser.error = _parser_error  # one line, no usage dump; HeadPruneError in-process
    group = parser.add_argument_group(f"fairseq-headprune {prog}")
    group.add_argument("--results-dir", required=True, metavar="DIR",
                       help="folder for JSON, CSV and PNG results (created when there is "
                            "something to write; one run at a time)")
    add_args(group)
    try:
        args = options.parse_args_and_arch(parser, argv)
    except ValueError as e:  # fairseq's own refusal of --fp16 with --bf16/--tpu
        from ..precision import fairseq_parse_error

        error = fairseq_parse_error(e)
        if error is None:
            raise
        raise error from None
    if args.task not in TASKS:
        raise HeadPruneError(f"--task {args.task!r} is not supported here (allowed: "
                             f"{', '.join(TASKS)}; the checkpoint's own task decides which)")
    if args.path is None:
        raise HeadPruneError("--path CHECKPOINT is required")
    _check_fairseq_numbers(parser, args)
    check_folder(args.results_dir)
    args._headprune_command = " ".join([parser.prog] + list(argv))
    return args


def claim_results_dir(args) -> str:
    return claim_folder(args.results_dir, getattr(args, "_headprune_command", None))


def open_session(args) -> Session:
    """The model session of a command. An existing results folder is claimed before
    the model loads (another run there: one line at once); a new one is created
    after it loaded, so that a bad checkpoint leaves no folder behind."""
    if os.path.isdir(args.results_dir):
        claim_results_dir(args)
    session = Session(args)  # a bad checkpoint is one line there (fairseq_fixes)
    claim_results_dir(args)
    return session


def out_path(args, name: str) -> str:
    return os.path.join(args.results_dir, name)


def add_eval_args(group):
    """The one definition of the evaluation-data cap, for every command."""
    group.add_argument("--max-eval-sentences", type=sample_size, default=None, metavar="N",
                       help="evaluate a seeded random sample of N sentences of the "
                            "evaluation subset (default: all; never the shortest first)")
    group.add_argument("--eval-seed", type=int, default=1, metavar="SEED",
                       help="seed of that sample (default 1)")
    group.add_argument("--masks-per-batch", type=masks_per_batch, default=None, metavar="K|auto",
                       help="head masks evaluated in one decode: each batch is repeated K "
                            "times, each copy with its own mask; the results are those of "
                            "one mask at a time (default auto: as many as fit in 512 beam "
                            "rows per batch, at most 16)")


def eval_selection(session: Session, args, subset: str, max_sentences: Optional[int] = None):
    """The seeded --eval-seed sample of ``subset``: ``max_sentences`` sentences, default
    --max-eval-sentences (none: all)."""
    return session.select(session.data_spec(subset, max_sentences or args.max_eval_sentences,
                                            seed=args.eval_seed))


def add_bootstrap_args(group):
    from ..analysis.significance import DEFAULT_SAMPLES, DEFAULT_SEED

    group.add_argument("--alpha", type=fraction_open, default=0.01,
                       help="significance level of the paired bootstrap (default 0.01)")
    group.add_argument("--bootstrap-samples", type=positive_int, default=DEFAULT_SAMPLES, metavar="N",
                       help=f"paired bootstrap resamples (default {DEFAULT_SAMPLES})")
    group.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, metavar="SEED",
                       help=f"paired bootstrap seed, non-zero (default {DEFAULT_SEED}, sacrebleu's)")


def check_bootstrap_args(args):
    from ..analysis.significance import check_settings

    check_settings(args.alpha, args.bootstrap_samples, args.bootstrap_seed)
