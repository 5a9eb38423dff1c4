"""TorchScript: full, masked and pruned models (different head counts per layer, a layer
with zero heads) script the way fairseq's own export tests script models
(``torch.jit.script(model)``, ``torch.jit.script(SequenceGenerator([model], ...))``), and
the scripted model computes what the eager one computes: decoder output of a
teacher-forced forward within 2e-5, and the same hypotheses at beam 1 and beam 5.
Also ``fairseq-headprune export --torchscript``, and the analysis states that refuse."""

import copy
import json
import os
import subprocess

import pytest
import torch

from conftest import ROOT

DATA_SPLIT = "test"
SENTENCES = [6, 8, 14, 18, 20, 26]  # 9-12 source tokens: short decodes, padding in the batch
ATOL = 2e-5  # measured: <= 4.1e-6 on these models (logits of magnitude ~10)
# A 2+2-layer, 4-head model: "pruned" leaves E:1 2 heads, A:2 none, D:1 one head;
# "masked" masks every head of A:1 (a zero-head module) and some of E:2 and D:2;
# "pruned_masked" masks heads of modules that are pruned too (masks follow kept heads).
MASKED = "E:2:2 A:1:* D:2:1,4"
PRUNED = "E:1:1,3 A:2:* D:1:2-4"
PRUNED_MASK = "E:1:2 D:1:1 A:1:3"


@pytest.fixture(autouse=True)
def plain_executor():
    """Scripted code runs on TorchScript's plain executor here: the profiling
    executor's first run of a generator graph costs seconds on a 2-core CPU, for the
    same graph. Never both in one process: a scripted fairseq generator (stock models
    too) run first plain, then optimized, fails an assertion (torch 2.13). The optimized
    executor runs in the export command's own check (test_export_cli_writes_torchscript)."""
    with torch.jit.optimized_execution(False):
        yield


@pytest.fixture(scope="module")
def setup(data_dir, trained_ckpt):
    from helpers import load

    from fairseq_headprune.heads import HeadSpec
    from fairseq_headprune.models import model_head_shape, remove_heads, set_head_mask

    def heads(model, spec):
        return HeadSpec.parse(spec).resolve(model_head_shape(model))

    task, full = load(trained_ckpt, data_dir)
    models = {"full": full}
    models["masked"] = copy.deepcopy(full)
    set_head_mask(models["masked"], heads(full, MASKED))
    models["pruned"] = copy.deepcopy(full)
    remove_heads(models["pruned"], heads(full, PRUNED))
    models["pruned_masked"] = copy.deepcopy(models["pruned"])
    set_head_mask(models["pruned_masked"], heads(full, PRUNED_MASK))
    task.load_dataset(DATA_SPLIT)
    ds = task.dataset(DATA_SPLIT)
    return task, models, ds.collater([ds[i] for i in SENTENCES])


def heads_per_module(model):
    """{(kind, layer): (class name, num_heads)} read off the modules themselves."""
    out = {}
    for i, layer in enumerate(model.encoder.layers):
        out[("E", i + 1)] = layer.self_attn
    for i, layer in enumerate(model.decoder.layers):
        out[("A", i + 1)] = layer.encoder_attn
        out[("D", i + 1)] = layer.self_attn
    return {k: (type(m).__name__, m.num_heads) for k, m in out.items()}


def forward(model, sample):
    ni = sample["net_input"]
    with torch.no_grad():
        return model(ni["src_tokens"], ni["src_lengths"], ni["prev_output_tokens"])[0]


@pytest.mark.parametrize("name", ["full", "masked", "pruned", "pruned_masked"])
def test_scripted_model_matches_eager(setup, name):
    from fairseq_headprune.modules.deploy import deployable
    from fairseq_headprune.modules.head_attention import HeadMaskedMultiheadAttention

    task, models, sample = setup
    model = models[name]
    before = heads_per_module(model)
    dep = deployable(model)
    scripted = torch.jit.script(dep)
    eager = forward(model, sample)
    torch.testing.assert_close(forward(scripted, sample), eager, rtol=0, atol=ATOL)
    # the original keeps its head-aware modules and masks; the copy is stock
    assert heads_per_module(model) == before
    assert all(isinstance(m, HeadMaskedMultiheadAttention) for m in
               [layer.self_attn for layer in model.encoder.layers])
    expected = {
        "full": {},
        "masked": {("E", 2): 3, ("A", 1): 0, ("D", 2): 2},
        "pruned": {("E", 1): 2, ("A", 2): 0, ("D", 1): 1},
        "pruned_masked": {("E", 1): 1, ("A", 1): 3, ("A", 2): 0, ("D", 1): 0},
    }[name]
    got = heads_per_module(dep)
    for key, (cls, n) in got.items():
        assert n == expected.get(key, 4), key
        assert cls == ("ZeroHeadAttention" if n == 0 else "MultiheadAttention"), key


def hypotheses(gen, sample):
    with torch.no_grad():
        return gen(sample) if isinstance(gen, torch.jit.ScriptModule) else gen.forward(sample)


@pytest.mark.parametrize("name", ["full", "masked", "pruned"])
@pytest.mark.parametrize("beam", [1, 5])
def test_scripted_generator_same_hypotheses(setup, name, beam):
    """Beam 1 scripts a generator of ``deployable(model)``; beam 5 scripts the generator
    of (a copy of) the model itself, as fairseq's tests do, which goes through
    ``__prepare_scriptable__``."""
    from fairseq.sequence_generator import SequenceGenerator

    from fairseq_headprune.modules.deploy import deployable

    task, models, sample = setup
    model, tgt = models[name], task.target_dictionary
    ni = sample["net_input"]
    src = {"net_input": {"src_tokens": ni["src_tokens"], "src_lengths": ni["src_lengths"]}}
    eager = hypotheses(SequenceGenerator([model], tgt, beam_size=beam, max_len_b=50), src)
    scripted_model = deployable(model) if beam == 1 else copy.deepcopy(model)
    scripted = torch.jit.script(SequenceGenerator([scripted_model], tgt, beam_size=beam,
                                                 max_len_b=50))
    got = hypotheses(scripted, src)
    assert len(got) == len(eager) == 6
    for e_sent, s_sent in zip(eager, got):
        assert len(e_sent) == len(s_sent) == beam
        for e, s in zip(e_sent, s_sent):
            assert torch.equal(e["tokens"], s["tokens"])
            torch.testing.assert_close(s["positional_scores"], e["positional_scores"],
                                       rtol=0, atol=ATOL)
            assert abs(float(s["score"]) - float(e["score"])) <= ATOL
            assert e["attention"].shape == s["attention"].shape
            if e["attention"].numel():
                torch.testing.assert_close(s["attention"], e["attention"], rtol=0, atol=ATOL)
    if beam == 5:
        # documented: torch.jit.script turned the copy's own modules into stock ones
        assert heads_per_module(scripted_model) == heads_per_module(deployable(model))


def test_jit_script_of_the_model_itself(setup):
    """``torch.jit.script(model)`` directly: works, and the eager model then holds stock
    modules that compute what it computed before."""
    from fairseq_headprune.modules.head_attention import HeadMaskedMultiheadAttention

    task, models, sample = setup
    model = copy.deepcopy(models["pruned_masked"])
    before = forward(model, sample)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(forward(scripted, sample), before, rtol=0, atol=ATOL)
    torch.testing.assert_close(forward(model, sample), before, rtol=0, atol=ATOL)
    assert not any(isinstance(m, HeadMaskedMultiheadAttention) for m in model.modules())


def _module(heads=4, dim=16, **kw):
    from fairseq.modules.multihead_attention import MultiheadAttention

    from fairseq_headprune.modules.head_attention import HeadMaskedMultiheadAttention

    torch.manual_seed(0)
    return HeadMaskedMultiheadAttention.convert(MultiheadAttention(dim, heads, **kw), "A", 1)


def test_module_conversion_continuous_mask_and_zero_heads():
    """A mask with values other than 0/1 is folded into out_proj; a module left with no
    head outputs out_proj's bias and no weights, scripted too, padding and cache
    included."""
    from fairseq_headprune.modules.deploy import ZeroHeadAttention, stock_attention

    x, mem = torch.randn(3, 2, 16), torch.randn(5, 2, 16)
    pad = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]).bool()
    m = _module(encoder_decoder_attention=True).eval()
    m.remove_heads([1])
    m.set_head_mask(torch.tensor([0.5, 1.0, 0.0, 2.0]))
    s = torch.jit.script(stock_attention(m))
    assert s.num_heads == 2  # head 2 removed, head 3 masked to 0
    with torch.no_grad():
        eo, ew = m(x, mem, mem, key_padding_mask=pad)
        so, sw = s(x, mem, mem, key_padding_mask=pad)
    torch.testing.assert_close(so, eo, rtol=0, atol=1e-6)
    torch.testing.assert_close(sw, ew, rtol=0, atol=1e-6)

    z = _module(self_attention=True).eval()
    z.set_head_mask(torch.zeros(4))
    conv = stock_attention(z)
    assert type(conv) is ZeroHeadAttention and conv.num_heads == 0
    scripted = torch.jit.script(conv)
    state = {}
    for mod in (z, conv, scripted):
        out, w = mod(x, x, x, key_padding_mask=pad[:, :3], incremental_state=state)
        assert w is None
        torch.testing.assert_close(out, z.out_proj.bias.detach().expand(3, 2, 16),
                                   rtol=0, atol=0)


def test_analysis_states_refuse_with_one_line(setup):
    from fairseq_headprune.errors import HeadPruneError
    from fairseq_headprune.modules.deploy import deployable, stock_attention

    m = _module(self_attention=True)
    m.row_mask = torch.ones(2, 4)  # per-row masks (set_row_mask) are analysis-only
    with pytest.raises(HeadPruneError, match=r"^A:1: a per-row mask is set.*allowed") as e:
        stock_attention(m)
    assert "\n" not in str(e.value)
    m.row_mask = None
    m.gate_heads = True
    with pytest.raises(HeadPruneError, match=r"^A:1: importance gates are on.*allowed"):
        stock_attention(m)
    m.gate_heads = False
    m.set_head_mask(torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(HeadPruneError, match=r"head mask value nan .*allowed: finite"):
        stock_attention(m)
    with pytest.raises(HeadPruneError, match=r"^A:1: stock fairseq attention with "
                                             r"add_bias_kv .*allowed"):
        stock_attention(_module(self_attention=True, add_bias_kv=True))
    with pytest.raises(HeadPruneError, match=r"not MultiheadAttention"):
        from fairseq.modules.multihead_attention import MultiheadAttention
        stock_attention(MultiheadAttention(16, 4))
    # deployable and torch.jit.script refuse too; deployable leaves the model as it was
    _, models, _ = setup
    model = copy.deepcopy(models["masked"])
    model.decoder.layers[1].encoder_attn.row_mask = torch.ones(6, 4)
    with pytest.raises(HeadPruneError, match=r"^A:2: a per-row mask is set"):
        deployable(model)
    with pytest.raises(HeadPruneError, match=r"^A:2: a per-row mask is set"):
        torch.jit.script(model)


def test_export_cli_writes_torchscript(data_dir, trained_ckpt, setup, tmp_path):
    from helpers import load

    new, ts = str(tmp_path / "new.pt"), str(tmp_path / "new.ts.pt")
    cmd = ["fairseq-headprune", "export", data_dir, "--path", trained_ckpt,
           "--prune-heads", PRUNED, "--out", new, "--torchscript", ts]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    entry = json.loads((tmp_path / "new.export.json").read_text())["torchscript"]
    assert entry["path"] == ts and entry["bytes"] == os.path.getsize(ts)
    assert entry["verified"]["max_abs_diff"] <= ATOL
    assert f"wrote {ts} (TorchScript" in p.stdout
    # the TorchScript file computes what the exported checkpoint computes, eager
    _, _, sample = setup
    _, small = load(new, data_dir)
    loaded = torch.jit.load(ts)
    torch.testing.assert_close(forward(loaded, sample), forward(small, sample),
                               rtol=0, atol=ATOL)

    # bad --torchscript paths: one line, before any work, nothing written
    from fairseq_headprune.cli.main import main
    from fairseq_headprune.errors import HeadPruneError

    bad = tmp_path / "bad"
    bad.mkdir()
    out = str(bad / "x.pt")
    for path, message in [
        (str(bad / "no" / "y.pt"), f"--torchscript {str(bad / 'no' / 'y.pt')!r}: folder "
                                   f"{str(bad / 'no')!r} does not exist"),
        (str(bad), f"--torchscript {str(bad)!r} is a folder (allowed: a file name)"),
        (out, f"--torchscript {out!r} is --out (allowed: a new file)"),
        (trained_ckpt, f"--torchscript {trained_ckpt!r} is the input checkpoint"),
    ]:
        with pytest.raises(HeadPruneError) as e:
            main(["export", data_dir, "--path", trained_ckpt, "--prune-heads", PRUNED,
                  "--out", out, "--torchscript", path])
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert os.listdir(bad) == []
