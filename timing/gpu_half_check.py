"""Half precision on a CUDA GPU: the checks of tests/test_half_precision.py (same
measurements, same bounds), run with float16 and bfloat16 models on the GPU against a
float32 model on the GPU (TF32 off). One PASS/FAIL line per check; exit status 1 on any
FAIL. About a minute, most of it imports and model loading.

    python timing/gpu_half_check.py [DATA CKPT] [--allow-cpu]

What it checks, for --fp16 and --bf16 sessions (``fairseq-headprune``'s own option
parsing and model loading):
  * masks == removal: teacher-forced log-probs of 20 sentences, masked vs removed heads
    (every kind, a whole layer), and masked half vs masked float32;
  * importance with loss scaling through the importance command's code (default scale
    128 for --fp16), against float32: relative error, order of separated heads;
    float16 underflow at scale 1 rescued by a scale; an overflowing batch skipped and
    counted; all batches overflowing is one line; bfloat16 unaffected by the scale;
  * beam search (beam 4) through the package's evaluator: hypotheses vs float32,
    masked vs removed, teacher-forced loss.

DATA and CKPT default to the tests' cache (``tests/conftest.py`` builds it):
``$HEADPRUNE_TEST_CACHE/data/m30k/bin`` and ``.../ckpt/stock/checkpoint_last.pt``,
with HEADPRUNE_TEST_CACHE defaulting to ``.gpucheck`` in the repository root.
``--allow-cpu`` runs the same checks on CPU where there is no GPU (a dry run).

Preparing a run on the device machine (it has torch and pytest, not fairseq; nothing
can be downloaded there), from the repository root here:

    echo /.gpucheck/ >> .git/info/exclude
    mkdir -p .gpucheck/whl .gpucheck/data/m30k .gpucheck/ckpt/stock
    cp -r /work/testcache/data/m30k/bin .gpucheck/data/m30k/
    cp /work/testcache/ckpt/stock/checkpoint_last.pt .gpucheck/ckpt/stock/
    P="--only-binary=:all: --python-version 3.12 --implementation cp"
    P="$P --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64"
    pip download -q --no-deps $P -d .gpucheck/whl ve-fairseq==0.12.3 hydra-core==1.3.8 \\
        omegaconf==2.3.1 bitarray==3.12.3 sacremoses==0.2.0
    pip wheel -q --no-deps -w .gpucheck/whl antlr4-python3-runtime==4.9.3   # no wheel on PyPI

(about 30 MB in all), then ``run`` with carry [".gpucheck"] and the command

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \\
        .gpucheck/whl/*.whl && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
        python3 timing/gpu_half_check.py
"""

import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # bit-exact reruns (cuBLAS)
os.environ.setdefault("PYTHONWARNINGS", "ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main(argv):
    t0 = time.time()
    allow_cpu = "--allow-cpu" in argv
    paths = [a for a in argv if a != "--allow-cpu"]
    cache = os.environ.get("HEADPRUNE_TEST_CACHE", os.path.join(ROOT, ".gpucheck"))
    data, ckpt = paths if len(paths) == 2 else (
        os.path.join(cache, "data", "m30k", "bin"),
        os.path.join(cache, "ckpt", "stock", "checkpoint_last.pt"))

    import logging
    import tempfile
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, device: "
          f"{torch.cuda.get_device_name(0) if cuda else 'cpu (no CUDA)'}", flush=True)
    if not cuda and not allow_cpu:
        print("FAIL no CUDA device (--allow-cpu runs the checks on CPU)")
        return 1
    if cuda:  # the reference is float32, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    for p in (data, ckpt):
        if not os.path.exists(p):
            print(f"FAIL {p} does not exist (see this script's docstring)")
            return 1

    import test_half_precision as T

    device = () if cuda else ("--cpu",)
    failures = 0

    def report(group, fn):
        nonlocal failures
        t = time.time()
        try:
            checks = fn()
        except Exception as e:  # one line per broken group, the others still run
            failures += 1
            first = (str(e).strip().splitlines() or [""])[0][:300]
            print(f"FAIL {group}: {type(e).__name__}: {first}", flush=True)
            return
        for ok, what in checks:
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {what}", flush=True)
        print(f"     ({group}: {time.time() - t:.1f} s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        sess = T.sessions(data, ckpt, os.path.join(tmp, "res"), device=device)
        where = {name: str(next(s.model.parameters()).device) + " " + str(next(s.model.parameters()).dtype)
                 for name, s in sess.items()}
        print(f"sessions: {where} ({time.time() - t0:.1f} s)", flush=True)
        measured = T.MEASURED

        def group(key, measure, checks):
            def run():
                measured[key] = e = measure(sess)
                return list(dict.fromkeys(c for n in T.HALF for c in checks(e, n)))
            return run

        report("forward", group("forward", T.forward_errors, T.forward_checks))
        report("importance", group("importance", T.importance_errors, T.importance_checks))
        report("underflow", lambda: T.underflow_checks(sess))
        report("overflow", lambda: T.overflow_checks(sess))
        report("decode", group("decode", T.decode_agreement, T.decode_checks))
    for key, value in T.MEASURED.items():
        print(f"measured {key}: {value}")
    print(f"{'ALL PASS' if not failures else f'{failures} FAIL'} in {time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
