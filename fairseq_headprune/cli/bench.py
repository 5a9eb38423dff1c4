"""``fairseq-headprune bench DATA --path CKPT (--prune-heads SPEC | --prune-ratio R
--importance FILE) --results-dir DIR [--batch-sizes 1,4,16,64] [--beams 1,5]``

Times, in one process and side by side, three variants of the same model: ``full``
(as loaded), ``masked`` (the heads masked) and ``removed`` (the heads physically
removed): encoder forwards per batch size, beam search per beam; warm-up, then
interleaved repeats; beside each speed-up the cost-model estimate and measured/estimate
(analysis/bench.py, analysis/speed.py; rates calibrated by a microbenchmark at the start,
or ``--cost-throughput default``). Peak memory per variant on CUDA; on CPU "n/a". Writes
bench.json, bench.csv and bench.png (drawn from bench.json by report/bench.py).
"""

import logging
import sys

from ..analysis.bench import PARTS, THROUGHPUTS, VARIANTS
from ..errors import HeadPruneError

logger = logging.getLogger("fairseq_headprune.bench")


def _int_list(text, what):
    try:
        vals = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise HeadPruneError(f"{what} {text!r} is not a comma list of positive integers "
                             f"(e.g. 1,4,16,64)")
    return vals


def add_args(group):
    from .common import nonnegative_int, positive_int
    from .export import add_selection_args

    add_selection_args(group)
    group.add_argument("--batch-sizes", default="1,4,16,64", metavar="LIST",
                       help="sentences per batch (default 1,4,16,64)")
    group.add_argument("--beams", default="1,5", metavar="LIST", help="beam sizes (default 1,5)")
    group.add_argument("--bench-sentences", type=positive_int, default=128, metavar="N",
                       help="sentences of --gen-subset to time (at least the largest batch)")
    group.add_argument("--repeats", type=positive_int, default=5, metavar="N", help="timed rounds")
    group.add_argument("--warmup", type=nonnegative_int, default=1, metavar="N", help="untimed rounds")
    group.add_argument("--parts", default="encoder,decode", metavar="LIST",
                       help="what to time: encoder, decode or both")
    group.add_argument("--variants", default="full,masked,removed", metavar="LIST",
                       help="variants to time (full is always included)")
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="torch CPU threads (default: torch's choice); 1 gives steadier "
                            "timings on a shared machine")
    group.add_argument("--fixed-length", type=positive_int, default=None, metavar="L",
                       help="decode exactly L tokens (+EOS) per hypothesis (sets --min-len L "
                            "--max-len-a 0 --max-len-b L) so that all variants do the same "
                            "number of steps; default: free decoding, as fairseq-generate")
    group.add_argument("--cost-throughput", choices=THROUGHPUTS, default="calibrate",
                       help="rates of the cost model that estimates each speed-up: "
                            "'calibrate' (default) measures a GEMM, a batched attention "
                            "matmul and a copy once at the start (under a second); "
                            "'default' takes the fixed rates of analysis/speed.py")


def check_args(args):
    from .export import check_selection

    check_selection(args)
    if args.mask_heads:
        raise HeadPruneError("bench masks the heads it removes itself; drop --mask-heads")
    args.batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    args.beams = _int_list(args.beams, "--beams")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise HeadPruneError(f"--parts {args.parts!r}: allowed encoder, decode")
    args.parts = parts
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise HeadPruneError(f"--variants {args.variants!r}: allowed {', '.join(VARIANTS)}")
    args.variants = ["full"] + [v for v in VARIANTS[1:] if v in variants]


def main(argv):
    import torch

    from ..analysis.bench import BenchSettings, CSV_HEADER, bench, csv_rows
    from ..analysis.data import load_subset
    from ..analysis.export import select_heads
    from ..heads import HeadSpec, parse_kinds
    from ..models.head_model import removed_heads
    from ..report.bench import redraw, summary_text
    from ..results import write_csv, write_json
    from .common import open_session, out_path, parse_args

    args = parse_args("bench", argv, add_args)
    check_args(args)
    parse_kinds(args.kinds)  # a bad --kinds before the model loads
    spec = HeadSpec.parse(args.prune_heads) if args.prune_heads else None
    args.prune_heads = None  # the task must load the model as it is
    session = open_session(args)
    kinds = session.kinds(args.kinds)
    heads, _ = select_heads(session.model, spec, args.importance, args.prune_ratio, kinds,
                            args.min_heads_per_layer)
    heads = heads - removed_heads(session.model)
    if not heads:
        raise HeadPruneError("no heads to remove: the spec/ratio selects none "
                             "(or only heads the checkpoint has already removed)")
    if args.bench_sentences < max(args.batch_sizes):
        logger.warning(f"--bench-sentences {args.bench_sentences} is below the largest batch "
                       f"size {max(args.batch_sizes)}: that batch will be smaller")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    subset = session.cfg.dataset.gen_subset
    load_subset(session.task, subset, session.saved_cfg.task)
    obj = bench(session.task, subset, session.model, heads, session.cfg.generation,
                BenchSettings.from_args(args), session.use_cuda)
    obj["meta"] = session.meta(subcommand="bench")
    write_json(out_path(args, "bench.json"), obj)
    write_csv(out_path(args, "bench.csv"), CSV_HEADER, csv_rows(obj["rows"]))
    redraw(args.results_dir)  # bench.png, from bench.json
    print(summary_text(obj))
    print(f"results: {out_path(args, 'bench.json')}, bench.csv, bench.png")
    sys.stdout.flush()
    return 0
