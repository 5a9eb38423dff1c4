"""Bad specs and bad input files: one line, exit status 2, no traceback, nothing
created, and never slow (bounds are checked before anything is expanded).

In-process for the pure parts (spec grammar, spec files, importance and ablation files,
--prune-step); a few runs of the real tools show the whole path (excepthook, exit
status, no results files)."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from fairseq_headprune.analysis.curve import ablation_order, fractions, percent
from fairseq_headprune.analysis.ranking import check_fits, load_importance
from fairseq_headprune.errors import HeadPruneError
from fairseq_headprune.heads import SPEC_FILE_FORMAT, HeadSet, HeadSpec

SHAPE = {"E": [4, 4], "A": [4, 4], "D": [4, 4]}  # the test model: 2+2 layers, 4 heads
ABLATION = "fairseq-headprune/ablation-v1"


def fails(fn, *args, **kw) -> str:
    with pytest.raises(HeadPruneError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def resolve(text, shape=SHAPE):
    return HeadSpec.parse(text).resolve(shape)


# ------------------------------------------------------------ spec grammar (1)

@pytest.mark.parametrize("text,message", [
    ("E:1:1-99999999999", "spec: head range 1-99999999999 in entry 'E:1:1-99999999999' is out of "
                          "range: E layer 1 of this model has heads 1-4"),
    ("E:1-99999999999:1", "spec: layer range 1-99999999999 in entry 'E:1-99999999999:1' is out of "
                          "range: this model's E layers are 1-2"),
    ("A:1,2-999999999999999999:*", "layer range 2-999999999999999999 in entry"),
    ("D:*:1,3-5", "head range 3-5 in entry 'D:*:1,3-5' is out of range: D layer 1 of this model "
                  "has heads 1-4"),
    ("A:1:5", "spec: head 5 in entry 'A:1:5' is out of range: A layer 1 of this model has heads 1-4"),
    ("E:9:1", "spec: layer 9 in entry 'E:9:1' is out of range: this model's E layers are 1-2"),
    ("E:1:0009", "head 9 in entry 'E:1:0009' is out of range"),
])
def test_ranges_are_checked_before_they_are_expanded(text, message):
    t = time.perf_counter()
    msg = fails(resolve, text)
    assert time.perf_counter() - t < 0.05  # was: a MemoryError after ~25 s
    assert message in msg, msg


@pytest.mark.parametrize("digits", [19, 4299, 4301, 5000, 100_000])
def test_absurdly_long_numbers_are_one_fast_line(digits):
    number = "9" * digits
    for text in (f"E:1:{number}", f"E:{number}:1", f"E:1:1-{number}"):
        t = time.perf_counter()
        msg = fails(resolve, text)
        assert time.perf_counter() - t < 0.05
        what = "layer" if text.startswith("E:9") else "head"
        assert msg.startswith(f"bad {what} '"), msg
        assert f"a number of {digits} digits (allowed: {what} numbers of this model, at most 18 " \
               f"digits)" in msg, msg
        assert len(msg) < 300


def test_numbers_up_to_18_digits_reach_the_range_check_and_leading_zeros_do_not_count():
    msg = fails(resolve, "E:1:" + "9" * 18)
    assert f"head {'9' * 18} in entry" in msg and "heads 1-4" in msg
    assert resolve("E:1:" + "0" * 40 + "2") == HeadSet([("E", 1, 2)])


@pytest.mark.parametrize("text,message", [
    ("E:1:١", "bad head '١' in entry 'E:1:١'"),  # int() would take Arabic-Indic digits
    ("E:1:+2", "bad head '+2'"),
    ("E:1:2-", "bad head '2-'"),
    ("E:1:4-2", "the end is below the start"),
    ("X:1:1", "unknown attention kind 'X' in entry 'X:1:1' (allowed: E, A, D)"),
    ("E:1", "malformed head entry 'E:1'"),
    ("E:1:1," + "1," * 5000 + "x", "bad head 'x' in entry 'E:1:1,1,1,"),
])
def test_malformed_entries(text, message):
    msg = fails(HeadSpec.parse, text)
    assert message in msg, msg
    assert len(msg) < 300  # long entries are cut short in the message


def test_good_specs_resolve_as_before():
    assert resolve("E:1:1,3 A:2:* D:1:2-4") == HeadSet(
        [("E", 1, 1), ("E", 1, 3)] + [("A", 2, h) for h in range(1, 5)] + [("D", 1, h) for h in (2, 3, 4)])
    assert resolve("E:*:*;A:1-2:1-4") == HeadSet.all_heads(SHAPE, ("E", "A"))
    assert resolve("E:1:3 E:1:1-3") == HeadSet([("E", 1, 1), ("E", 1, 2), ("E", 1, 3)])
    for blank in ("", "   ", " ; ", None):
        spec = HeadSpec.parse(blank)
        assert not spec and spec.resolve(SHAPE) == HeadSet()


def test_a_kind_the_model_lacks():
    msg = fails(resolve, "D:1:1", {"E": [4]})
    assert "names decoder self-attention (D), which this model does not have" in msg


# ------------------------------------------------------------ spec files (2)

def spec_file(tmp_path, obj, name="spec.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return f"@{path}"


@pytest.mark.parametrize("heads,message", [
    ({"E": {"1": "12"}}, "bad heads \"12\" in 'E:1:\"12\"' (allowed: a JSON list of whole head "
                         "numbers, e.g. [6, 8])"),
    ({"E": {"1": [1.9]}}, "bad head 1.9 in 'E:1:[1.9]'"),
    ({"E": {"1": [2.0]}}, "bad head 2.0 in 'E:1:[2.0]'"),
    ({"E": {"1": [True]}}, "bad head true in 'E:1:[true]'"),
    ({"E": {"1": [None]}}, "bad head null in 'E:1:[null]'"),
    ({"E": {"1": [[1]]}}, "bad head [1] in 'E:1:[<a list>]'"),
    ({"E": {"1": ["1"]}}, "bad head \"1\" in"),
    ({"E": {"1": 1}}, "bad heads 1 in 'E:1:1'"),
    ({"E": {"1": {"1": 2}}}, "bad heads <an object>"),
    ({"E": {"1.0": [1]}}, "bad layer '1.0' in 'E:1.0:[1]' (allowed: a layer number as a decimal "
                          "string, e.g. \"1\")"),
    ({"E": {" 1": [1]}}, "bad layer ' 1'"),
    ({"E": {"１": [1]}}, "bad layer '１'"),  # a full-width digit, which int() would take
    ({"E": {"0": [1]}}, "layers and heads are numbered from 1"),
    ({"E": {"1": [0]}}, "layers and heads are numbered from 1"),
    ({"e": {"1": [1]}}, "bad kind 'e' (allowed: E, A, D"),
    ({"E": [[1]]}, "bad kind 'E'"),
])
def test_spec_file_types_are_strict(tmp_path, heads, message):
    msg = fails(HeadSpec.parse, spec_file(tmp_path, {"format": SPEC_FILE_FORMAT, "heads": heads}))
    assert msg.startswith(f"head spec file '{tmp_path}/spec.json'"), msg
    assert message in msg, msg


@pytest.mark.parametrize("text,message", [
    ('{"heads": {"E": {"1": [1e400]}}}', "Infinity"),  # parsed as inf
    ('{"heads": {"E": {"1": [NaN]}}}', "NaN"),
    ('{"heads": {"E": {"1": [' + "9" * 5000 + ']}}}', "not valid JSON"),
    ('{"heads": {"E": {"1": ' + "[" * 100_000 + "]" * 100_000 + '}}}',
     "is nested too deeply to be a spec file"),
    ('{"heads": {"E": {"1": [1], "1": [2]}}}', "names '1' twice in one object"),
    ('[{"heads": {}}]', "holds a JSON list, not an object"),
    ('{"spec": "E:1:1"}', "has no 'heads' object"),
    ('{"heads": {"E": {"1": [1]}', "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
])
def test_spec_file_numbers_nesting_and_json(tmp_path, text, message):
    path = tmp_path / "spec.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    t = time.perf_counter()
    msg = fails(lambda: HeadSpec.parse(f"@{path}").resolve(SHAPE))
    assert time.perf_counter() - t < 2
    assert message in msg, msg


def test_spec_file_format_is_checked(tmp_path):
    msg = fails(HeadSpec.parse, spec_file(tmp_path, {"format": ABLATION, "heads": {"E": {"1": [1]}}}))
    assert (f"has format '{ABLATION}', not '{SPEC_FILE_FORMAT}' (allowed: '{SPEC_FILE_FORMAT}' or "
            f"no format") in msg, msg
    # an ablation file given as a spec: refused by its format, not read as heads
    msg = fails(HeadSpec.parse, spec_file(tmp_path, {"format": ABLATION, "heads": [{"kind": "E"}]}))
    assert "has format" in msg
    for fmt in (None, "fairseq-headprune/heads-v2", 1):
        fails(HeadSpec.parse, spec_file(tmp_path, {"format": fmt, "heads": {}}))


def test_spec_field_that_disagrees_with_heads_is_refused(tmp_path):
    spec = HeadSpec.parse(spec_file(tmp_path, {"format": SPEC_FILE_FORMAT, "spec": "E:1:1",
                                               "heads": {"E": {"1": [2]}}}))
    msg = fails(spec.resolve, SHAPE)
    assert msg == (f"head spec file '{tmp_path}/spec.json': its 'spec' field names 'E:1:1' but "
                   f"its 'heads' hold 'E:1:2' (allowed: both naming the same heads; fix or remove "
                   f"'spec')")
    # the same heads written another way agree
    same = HeadSpec.parse(spec_file(tmp_path, {"spec": "E:1:*", "heads": {"E": {"1": [4, 1, 2, 3]}}}))
    assert same.resolve(SHAPE) == HeadSet((("E", 1, h) for h in range(1, 5)))
    # a spec field out of the model's range fails like a spec, before being expanded
    big = HeadSpec.parse(spec_file(tmp_path, {"spec": "E:1:1-99999999999", "heads": {"E": {"1": [1]}}}))
    assert "its 'spec' field: head range 1-99999999999" in fails(big.resolve, SHAPE)
    for bad in (7, "@other.json", "E:1:x"):
        msg = fails(HeadSpec.parse, spec_file(tmp_path, {"spec": bad, "heads": {}}))
        assert "spec" in msg


def test_count_must_match(tmp_path):
    msg = fails(HeadSpec.parse, spec_file(tmp_path, {"count": 3, "heads": {"E": {"1": [1, 2, 2]}}}))
    assert "has count 3 but its 'heads' hold 2 distinct heads" in msg
    fails(HeadSpec.parse, spec_file(tmp_path, {"count": "2", "heads": {"E": {"1": [1, 2]}}}))
    assert len(HeadSpec.parse(spec_file(tmp_path, {"count": 2, "heads": {"E": {"1": [1, 2, 2]}}}))
               .resolve(SHAPE)) == 2


def test_files_the_package_writes_and_hand_written_files_still_load(tmp_path):
    heads = resolve("E:1:1,3 A:2:* D:2:4")
    obj = heads.to_json_obj({"curve": "all", "fraction": 0.4})
    assert HeadSpec.parse(spec_file(tmp_path, obj)).resolve(SHAPE) == heads
    # no format, no spec, no count: a hand-written file (the format is optional)
    assert HeadSpec.parse(spec_file(tmp_path, {"heads": {"E": {"1": [3, 1]}}})).resolve(SHAPE) == \
        HeadSet([("E", 1, 1), ("E", 1, 3)])
    # empty: no heads at all, or only empty lists
    for empty in ({"format": SPEC_FILE_FORMAT, "spec": "", "count": 0, "heads": {}},
                  {"heads": {"E": {"1": []}}}, {"heads": {}}):
        spec = HeadSpec.parse(spec_file(tmp_path, empty))
        assert not spec and spec.resolve(SHAPE) == HeadSet()
    # a head number beyond the model fails at resolve, with the model's range
    spec = HeadSpec.parse(spec_file(tmp_path, {"heads": {"E": {"1": [10 ** 30]}}}))
    assert "head 100000000000...(31 digits) in entry" in fails(spec.resolve, SHAPE)


# ------------------------------------------------------------ importance files (3)

GOOD = {k: [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]] for k in "EAD"}


def with_score(value, kind="A", layer=2, head=3):
    obj = json.loads(json.dumps(GOOD))
    obj[kind][layer - 1][head - 1] = value
    return obj


def importance_file(tmp_path, obj):
    path = tmp_path / "imp.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("value,shown", [(-0.5, "-0.5"), ("0.5", '"0.5"'), (True, "true"),
                                         ([0.5], "[0.5]"), ({"v": 1}, "<an object>")])
def test_scores_must_be_finite_numbers_not_below_zero(tmp_path, value, shown):
    msg = fails(load_importance, importance_file(tmp_path, with_score(value)), SHAPE)
    assert msg == (f"importance file '{tmp_path}/imp.json': head A:2:3 has score {shown} "
                   f"(allowed: a finite number >= 0, or null for a head removed from the model)")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_scores(tmp_path, value):
    # whether the JSON reader or check_fits refuses it, it is one line naming the value
    path = importance_file(tmp_path, with_score(value))
    msg = fails(load_importance, path, SHAPE)
    assert f"importance file '{path}'" in msg and json.dumps(value) in msg, msg
    msg = fails(check_fits, with_score(value), SHAPE, "scores")
    assert f"head A:2:3 has score {json.dumps(value)}" in msg
    assert "1e400" in fails(load_importance, importance_file(
        tmp_path, json.dumps(GOOD).replace("0.7", "1e400", 1)), SHAPE)


def test_integers_beyond_any_float_are_refused(tmp_path):
    msg = fails(check_fits, with_score(10 ** 400), SHAPE, "scores")
    assert "head A:2:3 has score 1000" in msg


def test_nulls(tmp_path):
    all_null = {k: [[None] * 4] * 2 for k in "EAD"}
    msg = fails(load_importance, importance_file(tmp_path, all_null), SHAPE)
    assert "has no scores: every head is null, so there is nothing to rank" in msg
    path = importance_file(tmp_path, with_score(None, "E", 1, 3))
    assert load_importance(path, SHAPE)["E"][0][2] is None  # callers that pass no heads
    msg = fails(load_importance, path, SHAPE, removed=HeadSet())
    assert msg == (f"importance file '{path}': head E:1:3 has no score (null), but this model "
                   f"has that head (allowed: null only for heads removed from the model, and it "
                   f"has none)")
    msg = fails(load_importance, path, SHAPE, removed=HeadSet([("E", 2, 1)]))
    assert "(allowed: null only for heads removed from the model: E:2:1)" in msg
    assert load_importance(path, SHAPE, removed=HeadSet([("E", 1, 3)]))["E"][0][2] is None


@pytest.mark.parametrize("content,message", [
    ([GOOD], "holds a JSON list, not an object (expected an importance file"),
    ("3", "holds a JSON number, not an object"),
    ({"format": ABLATION, "settings": {"metric": "bleu"}, "heads": []},
     f'is a "{ABLATION}" file, not an importance file'),
    ({"format": SPEC_FILE_FORMAT, "heads": {"E": {"1": [1]}}}, f'is a "{SPEC_FILE_FORMAT}" file'),
    ({"curves": {}, "settings": {}}, "has no E, A or D scores"),
    (dict(GOOD, E="scores"), "E is not a list of layers"),
    (dict(GOOD, E=[[0.1] * 4, 0.5]), "E is not a list of layers"),
    (dict(GOOD, D=[[0.1] * 4]), "does not fit this model: D has [4] heads per layer there, the "
                                "model has [4, 4]"),
    ('{"E": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_importance_files_of_another_kind_or_shape(tmp_path, content, message):
    path = importance_file(tmp_path, content)
    msg = fails(load_importance, path, SHAPE)
    assert msg.startswith(f"importance file '{path}'") and message in msg, msg


def test_a_good_importance_file_loads():
    scores = {k: v for k, v in GOOD.items()}
    check_fits(scores, SHAPE, "scores", removed=HeadSet())
    check_fits(dict(scores, A=[[0, 1, 2, 3], [0.0, -0.0, 1e-300, 1e300]]), SHAPE, "scores")


# ------------------------------------------------------------ ablation files (4)

def ablation(records, metric="bleu", shape=SHAPE):
    obj = {"format": ABLATION, "settings": {"metric": metric}, "heads": records}
    if shape is not None:
        obj["shape"] = shape
    return obj


def records(spec="E:*:* A:*:* D:*:*", delta=lambda k, l, h: -0.1 * h):
    return [{"kind": k, "layer": l, "head": h, "delta": delta(k, l, h)} for k, l, h in resolve(spec)]


def test_a_full_ablation_ranks_every_head():
    order = ablation_order(ablation(records()), ("E", "A", "D"), shape=SHAPE)
    assert len(order) == 24 and set(order) == set(HeadSet.all_heads(SHAPE))
    # BLEU deltas -0.1 * h: head 1 hurts least
    assert order[:6] == [(k, l, 1) for k in "EAD" for l in (1, 2)]


@pytest.mark.parametrize("change,message", [
    ({"delta": math.nan}, "record 4 (E:1:4) has delta NaN (allowed: a finite number)"),
    ({"delta": math.inf}, "has delta Infinity"),
    ({"delta": "0.3"}, "has delta \"0.3\""),
    ({"delta": None}, "has delta null"),
    ({"delta": True}, "has delta true"),
    ({"layer": 7}, "record 4 (E:7:4) has layer 7 (allowed: a whole number from 1 to 2, this "
                   "model's E layers)"),
    ({"layer": "1"}, "record 4 (E:1:4) has layer \"1\""),
    ({"head": 5}, "has head 5 (allowed: a whole number from 1 to 4, the heads of this model's E "
                  "layer 1)"),
    ({"head": 1.0}, "has head 1.0"),
    ({"kind": "X"}, "has kind \"X\" (allowed: E, A, D"),
    ({"head": 3}, "names head E:1:3 a second time (allowed: one record per head)"),
])
def test_each_ablation_record_is_checked(change, message):
    recs = records()
    recs[3].update(change)
    for shape in (SHAPE, None):  # the model's shape, or the one the file records
        msg = fails(ablation_order, ablation(recs), ("E", "A", "D"), shape=shape)
        assert msg.startswith("--ablation file: ") and message in msg, msg


def test_an_ablation_of_other_heads_is_refused_not_a_flat_curve():
    only_a2 = ablation(records("A:2:*"))
    msg = fails(ablation_order, only_a2, ("E",), shape=SHAPE)
    assert msg == ("--ablation file does not cover the heads to rank: it has no record for 8 of "
                   "8: E:1:1-4 E:2:1-4 (allowed: a file with a record for every head of --kinds E; "
                   "fairseq-headprune ablate --heads with the missing heads adds them to it)")
    msg = fails(ablation_order, ablation(records("A:*:* E:1:1-3")), ("E", "A"), shape=SHAPE)
    assert "no record for 5 of 16: E:1:4 E:2:1-4" in msg
    # heads that are removed or masked (exclude) need no record
    assert ablation_order(only_a2, ("A",), exclude=resolve("A:1:*"), shape=SHAPE) == \
        [("A", 2, 1), ("A", 2, 2), ("A", 2, 3), ("A", 2, 4)]
    # a file of another (bigger) model: its records do not fit this one
    big = ablation(records("E:*:*", ), shape={"E": [4, 4, 4]})
    big["heads"].append({"kind": "E", "layer": 3, "head": 1, "delta": 0.0})
    assert "has layer 3 (allowed: a whole number from 1 to 2" in fails(
        ablation_order, big, ("E",), shape=SHAPE)


@pytest.mark.parametrize("obj,message", [
    ({"E": [[0.1]]}, "is not a fairseq-headprune/ablation-v1 file (allowed: the ablation.json"),
    ({"format": "fairseq-headprune/curve-v1"}, 'is not a fairseq-headprune/ablation-v1 file (it is '
                                               'a "fairseq-headprune/curve-v1" file)'),
    ([], "is not a fairseq-headprune/ablation-v1 file"),
    ({"format": ABLATION, "settings": {"metric": "ter"}, "heads": []}, "has metric \"ter\""),
    ({"format": ABLATION, "settings": [], "heads": []}, "has metric null"),
    ({"format": ABLATION, "settings": {"metric": "bleu"}, "heads": {}}, "has no list of heads"),
    ({"format": ABLATION, "settings": {"metric": "bleu"}, "heads": [], "shape": [2]}, "has a bad shape"),
    (ablation([3]), "record 1 is a number, not an object"),
])
def test_ablation_files_of_another_kind(obj, message):
    assert message in fails(ablation_order, obj, ("E",)), message


# ------------------------------------------------------------ --prune-step (5)

@pytest.mark.parametrize("step", [0.0001, 0.009, 0, -0.1, 1.0001, math.nan, math.inf, 1e-300])
def test_prune_steps_outside_the_allowed_range(step):
    msg = fails(fractions, step)
    assert msg == (f"--prune-step {step} is not allowed (allowed: a step from 0.01 to 1 whose "
                   f"points fall on distinct whole percents, e.g. 0.01, 0.05, 0.1, 0.2, 0.25)")


def test_prune_steps_whose_points_share_a_percent_name():
    msg = fails(fractions, 0.333)
    assert msg.startswith("--prune-step 0.333 is not allowed: its points 0.999 and 1 would both be "
                          "the 100% point (allowed: a step from 0.01")
    assert fails(fractions, 0.0999, option="--prune-curve-step").startswith("--prune-curve-step 0.0999")


@pytest.mark.parametrize("step", [0.01, 0.0125, 0.015, 0.02, 0.05, 0.1, 0.125, 0.2, 0.25, 0.3, 0.7, 1])
def test_allowed_steps_give_distinct_names(step):
    points = fractions(step)
    assert points[0] == 0 and points[-1] == 1.0
    names = [percent(p) for p in points]
    assert len(set(names)) == len(names) and names == sorted(names)
    assert len(points) == len([i for i in range(200) if i * step < 1 - 1e-9]) + 1


# ------------------------------------------------------------ the real tools

def tool(cmd, results=None, timeout=240):
    """Run a real command; its exit status, stderr, seconds, and the files it left
    in ``results`` (a folder's lock file is the results-folder code's business)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    seconds = time.perf_counter() - t
    files = []
    if results and os.path.isdir(results):
        files = [os.path.join(r, f) for r, _, fs in os.walk(results) for f in fs
                 if f != ".fairseq-headprune.lock"]
    return p, seconds, files


def one_line(p, message):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [l for l in p.stderr.splitlines() if "error" in l.lower()]
    last = p.stderr.strip().splitlines()[-1]
    assert errors == [last], errors
    assert last.startswith("fairseq-headprune: error: ") and message in last, last
    return last


def curve_cmd(data_dir, ckpt, results, *extra):
    return ["fairseq-headprune", "curve", data_dir, "--path", ckpt, "--cpu", "--beam", "1",
            "--gen-subset", "test", "--max-eval-sentences", "4", "--results-dir", str(results),
            *extra]


@pytest.fixture
def importance_json(tmp_path):
    return importance_file(tmp_path, GOOD)


def test_curve_mask_heads_out_of_range_fails_at_once(data_dir, trained_ckpt, tmp_path, importance_json):
    res = tmp_path / "res"
    p, seconds, files = tool(curve_cmd(data_dir, trained_ckpt, res, "--importance", importance_json,
                                       "--mask-heads", "E:1:1-99999999999"), res)
    one_line(p, "head range 1-99999999999 in entry 'E:1:1-99999999999' is out of range: E layer 1 "
                "of this model has heads 1-4")
    assert files == []
    assert seconds < 60  # the whole run, model load included (was: MemoryError after ~25 s)


def test_generate_mask_heads_bad_spec_file(data_dir, trained_ckpt, tmp_path):
    bad = spec_file(tmp_path, {"format": SPEC_FILE_FORMAT, "spec": "E:1:1-2",
                               "heads": {"E": {"1": "12"}}}, "bad.json")
    p, _, _ = tool(["fairseq-generate", data_dir, "--path", trained_ckpt, "--cpu", "--beam", "1",
                    "--gen-subset", "test", "--user-dir", os.path.join(ROOT, "fairseq_headprune"),
                    "--task", "translation_headprune", "--mask-heads", bad])
    one_line(p, f"head spec file '{bad[1:]}': bad heads \"12\"")
    assert "H-" not in p.stdout  # nothing translated (was: heads 1 and 2 masked)


def test_curve_importance_with_nan(data_dir, trained_ckpt, tmp_path):
    res = tmp_path / "res"
    path = importance_file(tmp_path, with_score(math.nan))
    p, _, files = tool(curve_cmd(data_dir, trained_ckpt, res, "--importance", path), res)
    last = one_line(p, f"importance file '{path}'")
    assert "NaN" in last
    assert files == []  # was: a whole curve ranked with a NaN


def test_curve_ablation_of_other_heads(data_dir, trained_ckpt, tmp_path):
    res = tmp_path / "res"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(ablation(records("A:2:*"))))
    p, _, files = tool(curve_cmd(data_dir, trained_ckpt, res, "--order", "ablation",
                                 "--ablation", str(other), "--kinds", "E"), res)
    one_line(p, f"--ablation file {str(other)!r} does not cover the heads to rank: it has no "
                f"record for 8 of 8: E:1:1-4 E:2:1-4")
    assert files == []  # was: a flat curve, every point the full model


def test_curve_prune_step_too_fine(data_dir, trained_ckpt, tmp_path, importance_json):
    res = tmp_path / "res"
    p, _, files = tool(curve_cmd(data_dir, trained_ckpt, res, "--importance", importance_json,
                                 "--prune-step", "0.0001"), res)
    last = one_line(p, "0.0001")
    assert "0.01" in last  # what is allowed
    assert files == []  # was: 10,001 points whose spec files overwrite each other
