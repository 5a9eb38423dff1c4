"""data-prep/prepare-{iwslt14,wmt14-en-fr,mtnt}.sh run for real on tiny local inputs built
from the shared data (never copied into the repository):

* IWSLT14: a WIT3-format de-en/ folder (train.tags with <url>/<talkid>/... lines, five
  IWSLT14.*.xml sets with <seg> lines) made of Multi30k sentences, plus pairs that
  clean-corpus-n must drop; and the --local-tok path with the shared IWSLT14 test set.
* WMT14 en-fr: a stand-in "model" (BPE codes learnt on FLORES en+fr, a joined dictionary,
  a placeholder model.pt) and FLORES devtest cut into stand-in newstest2009..2013 files.
* MTNT: a stand-in test.en-fr.tsv (id, source, target) from other FLORES lines.

Checks: line counts, the binarized data loads and decodes back to the BPE text, re-runs
change nothing, a killed run leaves no final output and its leftovers are removed by the
re-run, a failing step leaves nothing, other options are refused, and tokenized BLEU on the
scripts' tokenization equals sacrebleu(tokenize=none) on sacremoses' tokenization and a
BLEU computed from scratch."""

import gzip
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ROOT, SHARED

PREP = os.path.join(ROOT, "data-prep")
MULTI30K = os.path.join(SHARED, "multi30k")
FLORES = os.path.join(SHARED, "flores-en-fr")
IWSLT_TEST = os.path.join(SHARED, "iwslt14-test")
TESTSETS = ["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
            "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012"]
YEARS = ["2009", "2010", "2011", "2012", "2013"]
N_NEWS = 30          # pairs per stand-in newstest file
N_MTNT = 40

pytestmark = pytest.mark.skipif(
    not all(os.path.isdir(d) for d in (MULTI30K, FLORES, IWSLT_TEST)),
    reason=f"shared data not found at {SHARED}")


def _env():
    # the venv's console scripts (sacremoses, subword-nmt, fairseq-preprocess) on PATH
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, PYTHONWARNINGS="ignore")


def prep(script, *args, ok=True):
    p = subprocess.run(["bash", os.path.join(PREP, script), *map(str, args)],
                       capture_output=True, text=True, env=_env(), cwd=ROOT)
    if ok and p.returncode != 0:
        raise AssertionError(f"{script} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    if not ok and p.returncode == 0:
        raise AssertionError(f"{script} should have failed:\n{p.stderr[-3000:]}")
    return p


def lines(path):
    with open(path, "rb") as f:
        data = f.read().decode("utf-8").split("\n")
    assert data[-1] == "", f"{path} does not end with a newline"
    return data[:-1]


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(r + "\n" for r in rows)


def m30k(split, lang, n, skip=0):
    with gzip.open(os.path.join(MULTI30K, f"{split}.{lang}.gz"), "rt", encoding="utf-8") as f:
        return [x.rstrip("\n") for x in f][skip:skip + n]


def flores(lang, start, n):
    return lines(os.path.join(FLORES, f"devtest.{lang}"))[start:start + n]


def snapshot(root):
    """{path: (mtime_ns, size)} of everything under root (links not followed)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[p] = (st.st_mtime_ns, st.st_size)
    return out


def leftovers(root):
    return [p for p in snapshot(root) if ".tmp." in os.path.basename(p)
            or p.endswith(".part")]


def load_bin(bin_dir, split, src, tgt):
    """The binarized pairs as fairseq's translation task reads them, decoded to text."""
    from fairseq.data import Dictionary, data_utils
    out = {}
    for lang in (src, tgt):
        d = Dictionary.load(os.path.join(bin_dir, f"dict.{lang}.txt"))
        ds = data_utils.load_indexed_dataset(os.path.join(bin_dir, f"{split}.{src}-{tgt}.{lang}"), d)
        assert ds is not None, f"{split}.{src}-{tgt}.{lang} does not load"
        out[lang] = [d.string(ds[i]) for i in range(len(ds))]
        assert all(ds[i][-1].item() == d.eos() for i in range(len(ds)))
    return out


def tok(lang, lower, escape, dash, rows):
    """The scripts' own tokenizer (lib.sh moses_tok) on rows."""
    cmd = f'source "{PREP}/lib.sh"; moses_tok {lang} {lower} {escape} {dash}'
    p = subprocess.run(["bash", "-c", cmd], input="".join(r + "\n" for r in rows).encode(),
                       capture_output=True, env=_env(), check=True)
    return p.stdout.decode("utf-8").split("\n")[:-1]


# ---------------------------------------------------------------- IWSLT14

BAD_PAIRS = [("", "an empty source"),                                   # empty side
             ("kurz", "this target is far too long for one word"),      # ratio > 1.5
             (" ".join(["wort"] * 180), " ".join(["word"] * 180))]      # > 175 tokens


@pytest.fixture(scope="module")
def wit3(tmp_path_factory):
    """A tiny de-en/ folder in the layout of the WIT3 de-en.tgz."""
    root = tmp_path_factory.mktemp("wit3") / "de-en"
    de, en = m30k("train", "de", 230), m30k("train", "en", 230)
    for lang, sents, bad in (("de", de, [b[0] for b in BAD_PAIRS]), ("en", en, [b[1] for b in BAD_PAIRS])):
        rows = []
        for i in range(0, len(sents), 50):
            rows += [f"<url>http://www.ted.com/talks/t{i}.html</url>", "<keywords>talks, x</keywords>",
                     f"<talkid>{i}</talkid>", f"<title>Talk {i}</title>",
                     f"<description>TED Talk Subtitles and Transcript: {i}</description>"]
            rows += sents[i:i + 50]
        rows += bad + ["stray\rcarriage return"]   # must stay one line
        write(str(root / f"train.tags.de-en.{lang}"), rows)
        for k, t in enumerate(TESTSETS):
            segs = m30k("val", lang, 12, skip=12 * k)
            write(str(root / f"{t}.de-en.{lang}.xml"),
                  ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
                   '<srcset setid="iwslt2014" srclang="german">', '<doc docid="1" genre="lectures">',
                   "<url>http://www.ted.com/x</url>", "<talkid>1</talkid>", "<title>T</title>"]
                  + [f'<seg id="{i}"> {s} it’s </seg>' for i, s in enumerate(segs, 1)]
                  + ["</doc>", "</srcset>", "</mteval>"])
    return root, de, en


@pytest.fixture(scope="module")
def iwslt(wit3, tmp_path_factory):
    root, de, en = wit3
    out = tmp_path_factory.mktemp("iwslt") / "out"
    t0 = time.time()
    p = prep("prepare-iwslt14.sh", "--local", root, "--out", out, "--bpe-merges", 300)
    return out, p, time.time() - t0


def test_iwslt14_from_wit3_folder(wit3, iwslt):
    root, de, en = wit3
    out, p, seconds = iwslt
    print(f"prepare-iwslt14.sh (tiny WIT3 folder): {seconds:.1f}s")
    # title/description text stays (tags stripped), url/talkid/keywords lines go
    n_talks = math.ceil(len(de) / 50)
    tok_de = lines(out / "tok" / "train.tags.de")
    assert len(tok_de) == len(de) + 2 * n_talks + len(BAD_PAIRS) + 1
    assert tok_de[-1] == "stray carriage return"          # one line, \r is whitespace
    assert not any("url" in x or "talkid" in x or "keywords" in x for x in tok_de)
    assert "-" in " ".join(de) and "@-@" not in " ".join(tok_de)   # no -a, as fairseq's script
    # clean-corpus-n: recount independently on the tokenized pairs
    tok_en = lines(out / "tok" / "train.tags.en")
    kept = [(a, b) for a, b in zip(tok_de, tok_en) if a.split() and b.split()
            and 1 <= len(a.split()) <= 175 and 1 <= len(b.split()) <= 175
            and len(a.split()) / len(b.split()) <= 1.5 and len(b.split()) / len(a.split()) <= 1.5]
    assert len(kept) < len(tok_de) - len(BAD_PAIRS) + 1
    train, valid = lines(out / "split" / "train.de"), lines(out / "split" / "valid.de")
    assert len(train) + len(valid) == len(kept)
    assert valid == [a for i, (a, b) in enumerate(kept, 1) if i % 23 == 0]
    assert lines(out / "split" / "train.en") == [b for i, (a, b) in enumerate(kept, 1) if i % 23]
    # lowercased, escaped (tokenizer.perl default), ’ mapped to ' in the XML sets
    test_en = lines(out / "split" / "test.en")
    assert len(test_en) == 5 * 12 == len(lines(out / "split" / "test.de"))
    assert all(x == x.lower() and x.endswith("it &apos;s") for x in test_en)
    assert test_en[:12] == [x.lower() for x in tok("en", 0, 1, 0, [s + " it's" for s in m30k("val", "en", 12)])]
    # binarized: separate dictionaries, decodes back to the BPE text
    b = load_bin(str(out / "bin"), "train", "de", "en")
    assert b["de"] == lines(out / "bpe" / "train.de") and b["en"] == lines(out / "bpe" / "train.en")
    for split, n in (("valid", len(valid)), ("test", 60)):
        assert len(load_bin(str(out / "bin"), split, "de", "en")["en"]) == n
    assert lines(out / "bin" / "dict.de.txt") != lines(out / "bin" / "dict.en.txt")
    assert lines(out / "code")[0].startswith("#version")


def test_iwslt14_rerun_skips_and_other_options_refused(wit3, iwslt):
    out, _, _ = iwslt
    before = snapshot(out)
    p = prep("prepare-iwslt14.sh", "--local", "/nonexistent-not-read", "--out", out, "--bpe-merges", 300, ok=False)
    assert "missing /nonexistent-not-read" in p.stderr       # input checked before any step
    t0 = time.time()
    p = prep("prepare-iwslt14.sh", "--local", wit3[0], "--out", out, "--bpe-merges", 300)
    print(f"re-run: {time.time() - t0:.1f}s")
    assert snapshot(out) == before
    assert p.stderr.count("skip (done)") == 2 * 6 + 1 + 6 + 1 + 6 + 1
    p = prep("prepare-iwslt14.sh", "--local", wit3[0], "--out", out, "--bpe-merges", 200, ok=False)
    assert "prepared with other options" in p.stderr and snapshot(out) == before


def test_iwslt14_local_tok_killed_then_rerun(iwslt, tmp_path):
    """--local-tok with the shared IWSLT14 test set; SIGKILL the run while fairseq-preprocess
    writes, then re-run: the leftover is removed, finished steps are reused."""
    out0 = iwslt[0]
    src = tmp_path / "tok"
    for lang in ("de", "en"):
        for split in ("train", "valid"):
            write(str(src / f"{split}.{lang}"), lines(out0 / "split" / f"{split}.{lang}"))
        write(str(src / f"test.{lang}"), lines(os.path.join(IWSLT_TEST, f"test.{lang}")))
    out = tmp_path / "out"
    args = ["bash", os.path.join(PREP, "prepare-iwslt14.sh"), "--local-tok", str(src), "--out", str(out),
            "--bpe-merges", "300", "--max-test", "150"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            cwd=ROOT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(out) and any(n.startswith("bin.tmp.") for n in os.listdir(out)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before fairseq-preprocess started:\n" + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)        # like a crash: no cleanup runs
    proc.wait()
    assert not (out / "bin").exists()
    assert leftovers(out) and all(".tmp." in p for p in leftovers(out))
    before = snapshot(out / "bpe")
    p = prep(*args[1:])
    assert "remove leftover of an interrupted run" in p.stderr
    assert not leftovers(out)
    assert snapshot(out / "bpe") == before                  # BPE steps were not redone
    b = load_bin(str(out / "bin"), "test", "de", "en")
    assert len(b["de"]) == len(b["en"]) == 150
    assert lines(out / "split" / "test.en") == lines(os.path.join(IWSLT_TEST, "test.en"))[:150]


def test_shared_iwslt14_test_was_tokenized_with_dash_splits():
    """Why --dash-splits exists: the shared IWSLT14 test set round-trips (detokenize, then
    tokenize + lowercase) only with tokenizer.perl -a."""
    from sacremoses import MosesDetokenizer
    ref = lines(os.path.join(IWSLT_TEST, "test.en"))[:300]
    raw = [MosesDetokenizer("en").detokenize(x.replace(" @-@ ", "-").split(), unescape=True) for x in ref]
    assert any("@-@" in x for x in ref)
    assert tok("en", 1, 1, 1, raw) == ref
    assert tok("en", 1, 1, 0, raw) != ref


# ---------------------------------------------------------------- WMT14 en-fr

@pytest.fixture(scope="module")
def wmt_inputs(tmp_path_factory):
    """A stand-in for wmt14.en-fr.joined-dict.transformer (BPE codes learnt on FLORES
    en+fr, one joined dictionary covering every stand-in set, a placeholder model.pt) and
    FLORES devtest lines as stand-in newstest2009..2013 files."""
    if not os.path.isdir(FLORES):  # (also a fixture of test_recipes.py, not skipped there)
        pytest.skip(f"FLORES en-fr (the stand-in corpus) not found at {FLORES}")
    root = tmp_path_factory.mktemp("wmt_inputs")
    model, tests = root / "model", root / "tests"
    os.makedirs(model)
    n_all = 200 + 5 * N_NEWS + N_MTNT
    toks = {lang: tok(lang, 0, 1, 1, flores(lang, 0, n_all)) for lang in ("en", "fr")}
    write(str(root / "learn.txt"), toks["en"][:200] + toks["fr"][:200])
    subprocess.run(["subword-nmt", "learn-bpe", "-s", "400", "-i", str(root / "learn.txt"),
                    "-o", str(model / "bpecodes")], check=True, env=_env(), capture_output=True)
    write(str(root / "all.txt"), toks["en"] + toks["fr"])
    bpe = subprocess.run(["subword-nmt", "apply-bpe", "-c", str(model / "bpecodes"), "-i", str(root / "all.txt")],
                         check=True, env=_env(), capture_output=True).stdout.decode()
    counts = Counter(bpe.split())
    dict_rows = [f"{w} {c}" for w, c in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
    write(str(model / "dict.en.txt"), dict_rows)
    write(str(model / "dict.fr.txt"), dict_rows)
    (model / "model.pt").write_text("placeholder: the data scripts only link the checkpoint\n")
    for k, y in enumerate(YEARS):
        for lang in ("en", "fr"):
            write(str(tests / f"newstest{y}.{lang}"), flores(lang, 200 + k * N_NEWS, N_NEWS))
    return root


@pytest.fixture(scope="module")
def wmt(wmt_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("wmt") / "out"
    t0 = time.time()
    p = prep("prepare-wmt14-en-fr.sh", "--local-model", wmt_inputs / "model",
             "--local-tests", wmt_inputs / "tests", "--out", out)
    return out, p, time.time() - t0


def test_wmt14_stand_in(wmt_inputs, wmt):
    out, p, seconds = wmt
    print(f"prepare-wmt14-en-fr.sh (stand-in model, 5x{N_NEWS} pairs): {seconds:.1f}s")
    model = out / "model"
    assert os.path.realpath(model / "model.pt") == os.path.realpath(wmt_inputs / "model" / "model.pt")
    for f in ("bpecodes", "dict.en.txt", "dict.fr.txt"):
        assert (model / f).read_bytes() == (wmt_inputs / "model" / f).read_bytes()
    for lang in ("en", "fr"):
        assert (out / "bin" / f"dict.{lang}.txt").read_bytes() == (model / f"dict.{lang}.txt").read_bytes()
        # valid = newstest2009-2012 in order, test = newstest2013; fairseq's test-set tokenization
        raw = [x for y in YEARS for x in lines(wmt_inputs / "tests" / f"newstest{y}.{lang}")]
        expect = tok(lang, 0, 1, 1, [x.replace("’", "'") for x in raw])
        assert lines(out / "split" / f"valid.{lang}") == expect[:4 * N_NEWS]
        assert lines(out / "split" / f"test.{lang}") == expect[4 * N_NEWS:]
    for split, n in (("valid", 4 * N_NEWS), ("test", N_NEWS)):
        b = load_bin(str(out / "bin"), split, "en", "fr")
        assert b["en"] == lines(out / "bpe" / f"{split}.en") and b["fr"] == lines(out / "bpe" / f"{split}.fr")
        assert len(b["fr"]) == n
    assert "<unk>" not in " ".join(lines(out / "bpe" / "test.fr"))
    # case kept, -a dash splits, escaping
    assert any(x != x.lower() for x in lines(out / "split" / "test.en"))
    assert tok("en", 0, 1, 1, ["A well-known A&B"]) == ["A well @-@ known A &amp; B"]


def test_wmt14_rerun_and_options(wmt_inputs, wmt):
    out = wmt[0]
    before = snapshot(out)
    args = ["--local-model", wmt_inputs / "model", "--local-tests", wmt_inputs / "tests", "--out", out]
    p = prep("prepare-wmt14-en-fr.sh", *args)
    assert snapshot(out) == before and "skip (done)" in p.stderr
    p = prep("prepare-wmt14-en-fr.sh", *args, "--max-test", 7, ok=False)
    assert "prepared with other options" in p.stderr and snapshot(out) == before


def test_wmt14_failing_step_leaves_nothing(wmt_inputs, tmp_path):
    """A step that fails (newstest2009.fr is not UTF-8) leaves no output and no temporary file."""
    tests = tmp_path / "tests"
    os.makedirs(tests)
    for y in YEARS:
        for lang in ("en", "fr"):
            (tests / f"newstest{y}.{lang}").write_bytes((wmt_inputs / "tests" / f"newstest{y}.{lang}").read_bytes())
    with open(tests / "newstest2009.en", "ab") as f:
        f.write(b"latin-1\n")
    with open(tests / "newstest2009.fr", "ab") as f:
        f.write(b"caf\xe9 latin-1\n")
    out = tmp_path / "out"
    p = prep("prepare-wmt14-en-fr.sh", "--local-model", wmt_inputs / "model", "--local-tests", tests,
             "--out", out, ok=False)
    assert "not UTF-8" in p.stderr and f"step failed: {out}/tok/newstest2009.fr" in p.stderr
    assert (out / "tok" / "newstest2009.en").exists()       # finished before the failure
    assert not (out / "tok" / "newstest2009.fr").exists() and not leftovers(out)
    assert not (out / "split").exists() or not os.listdir(out / "split")
    assert not (out / "bin").exists()


# ---------------------------------------------------------------- MTNT

def test_mtnt_stand_in_added_to_wmt_bin(wmt, tmp_path):
    out_wmt = wmt[0]
    src, tgt = flores("en", 200 + 5 * N_NEWS, N_MTNT), flores("fr", 200 + 5 * N_NEWS, N_MTNT)
    write(str(tmp_path / "mtnt" / "test.en-fr.tsv"), [f"id{i}\t{s}\t{t}" for i, (s, t) in enumerate(zip(src, tgt))])
    out = tmp_path / "out"
    files = lambda root: {p: v for p, v in snapshot(root).items() if not os.path.isdir(p)}  # noqa: E731
    wmt_before = {p: v for p, v in files(out_wmt).items() if "test1." not in p}
    t0 = time.time()
    prep("prepare-mtnt.sh", "--local", tmp_path / "mtnt", "--wmt", out_wmt, "--out", out)
    print(f"prepare-mtnt.sh (stand-in, {N_MTNT} pairs): {time.time() - t0:.1f}s")
    assert {p: v for p, v in files(out_wmt).items() if "test1." not in p} == wmt_before
    b = load_bin(str(out_wmt / "bin"), "test1", "en", "fr")
    assert b["en"] == lines(out / "bpe" / "test.en") and b["fr"] == lines(out / "bpe" / "test.fr")
    assert lines(out / "tok" / "test.fr") == tok("fr", 0, 1, 1, [x.replace("’", "'") for x in tgt])
    # re-run: nothing changes; a different set under the same subset name is refused
    before = snapshot(out_wmt), snapshot(out)
    p = prep("prepare-mtnt.sh", "--local", tmp_path / "mtnt", "--wmt", out_wmt, "--out", out)
    assert (snapshot(out_wmt), snapshot(out)) == before and "skip (done)" in p.stderr
    idx = out_wmt / "bin" / "test1.en-fr.fr.idx"
    good = idx.read_bytes()
    idx.write_bytes(good + b"x")                           # as if another set were there
    p = prep("prepare-mtnt.sh", "--local", tmp_path / "mtnt", "--wmt", out_wmt, "--out", out, ok=False)
    assert "is not this MTNT set" in p.stderr and idx.read_bytes() == good + b"x"
    idx.write_bytes(good)
    # plain files with different line counts: refused before any step
    write(str(tmp_path / "plain" / "test.en"), src)
    write(str(tmp_path / "plain" / "test.fr"), tgt[:-1])
    p = prep("prepare-mtnt.sh", "--local", tmp_path / "plain", "--wmt", out_wmt, "--out", tmp_path / "o3", ok=False)
    assert "parallel files must match" in p.stderr and not leftovers(tmp_path / "o3")


# ---------------------------------------------------------------- common

@pytest.mark.parametrize("script", ["prepare-iwslt14.sh", "prepare-wmt14-en-fr.sh", "prepare-mtnt.sh"])
def test_help(script):
    p = prep(script, "--help")
    assert "usage:" in p.stdout and "--workers" in p.stdout and "--local" in p.stdout
    p = prep(script, "--no-such-option", ok=False)
    assert "unknown option '--no-such-option'" in p.stderr


def test_online_identifiers_exist_in_sacrebleu():
    """The online path asks sacrebleu for wmt09..wmt13 en-fr and reads MTNT's md5 from its
    registry (the downloads themselves cannot run here)."""
    from sacrebleu.dataset import DATASETS
    for y in YEARS:
        assert "en-fr" in DATASETS[f"wmt{y[2:]}"].langpairs
    mtnt = DATASETS["mtnt1.1/test"]
    assert mtnt.data == ["https://github.com/pmichel31415/mtnt/releases/download/v1.1/MTNT.1.1.tar.gz"]
    assert mtnt.langpairs["en-fr"] == ["1:MTNT/test/test.en-fr.tsv", "2:MTNT/test/test.en-fr.tsv"]
    assert len(mtnt.md5[0]) == 32


def _bleu_from_scratch(hyps, refs):
    """Corpus BLEU-4 on whitespace tokens (no smoothing needed: every order matches)."""
    match, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        h, r = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    assert all(match), "pick sentences with a match at every order"
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


BLEU_CASES = {
    # lang, lowercase, dash splits (IWSLT: en, lowercased, no -a; WMT/MTNT: fr, cased, -a)
    "iwslt-en": ("en", 0, [
        ("It's a well-known fact that the cat sat on the mat.", "It's well known that the cat sat on the mat."),
        ("We can't say \"yes\" & leave it at that, can we?", "We can't just say \"yes\" and leave it at that."),
        ("Thank you very much (applause)", "Thank you so much. (Applause)"),
    ]),
    "wmt-fr": ("fr", 1, [
        ("L'homme a dit qu'il viendrait demain à Aix-en-Provence.", "L'homme a dit qu'il arriverait demain à Aix-en-Provence."),
        ("C'est « vraiment » très bien, n'est-ce pas ?", "C'est vraiment très bien, n'est-ce pas ?"),
        ("Le prix est de 3,5 € & plus – selon l’état.", "Le prix est de 3,5 € ou plus selon l'état."),
    ]),
}


@pytest.mark.parametrize("case", sorted(BLEU_CASES))
def test_tokenized_bleu_equals_sacrebleu_none_on_sacremoses(case):
    import sacrebleu
    from sacremoses import MosesTokenizer
    from fairseq_headprune.analysis.scoring import score

    lang, dash, pairs = BLEU_CASES[case]
    lower = 1 if case.startswith("iwslt") else 0
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    # the scripts' tokenization (lib.sh moses_tok, as the scripts call it)
    hyp_tok, ref_tok = tok(lang, lower, 1, dash, hyps), tok(lang, lower, 1, dash, refs)
    mine = score("bleu", hyp_tok, ref_tok, lang=lang)["score"]
    # independent: sacremoses in-process + sacrebleu tokenize=none, and BLEU from scratch
    mt = MosesTokenizer(lang=lang)

    def moses(s):
        t = mt.tokenize(s, return_str=True, escape=True, aggressive_dash_splits=bool(dash))
        return t.lower() if lower else t
    assert hyp_tok == [moses(h) for h in hyps] and ref_tok == [moses(r) for r in refs]
    ref_score = sacrebleu.corpus_bleu([moses(h) for h in hyps], [[moses(r) for r in refs]], tokenize="none").score
    scratch = _bleu_from_scratch([moses(h) for h in hyps], [moses(r) for r in refs])
    print(f"{case}: tokenized BLEU {mine:.4f} (sacrebleu none {ref_score:.4f}, from scratch {scratch:.4f})")
    assert mine == ref_score
    assert abs(mine - scratch) < 1e-9
    assert 0 < mine < 100                                    # a non-trivial case
