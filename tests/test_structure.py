"""The shape of the source: layers that import downwards only, short signatures, honest costs."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import actpatch as ap
from actpatch import hooks
from tiny import tiny_task

SRC = Path(__file__).resolve().parents[1] / "src" / "actpatch"
MAX_PARAMETERS = 12


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = function.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def test_no_function_in_src_takes_more_than_12_parameters():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and len(names := _parameters(node)) > MAX_PARAMETERS:
                too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({len(names)})")
    assert not too_long, f"group options into a frozen options value: {too_long}"


def _calls(predicate) -> set[str]:
    """Modules of src/ holding a call for which `predicate(call node)` holds."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and predicate(node):
                found.add(str(path.relative_to(SRC)))
    return found


def test_the_model_forward_is_called_in_one_module():
    """`model.hf(...)`: the HF forward, called by `hooks.forward` alone."""
    calling = _calls(
        lambda call: isinstance(call.func, ast.Attribute | ast.Name) and _name(call.func) == "hf"
    )
    assert calling == {"hooks/forward.py"}


def test_decoder_layers_are_replayed_in_one_module():
    """`model.layer(i)(...)`: a decoder layer called on recorded arguments, by `hooks.forward` alone."""
    replaying = _calls(
        lambda call: (
            isinstance(call.func, ast.Call)
            and isinstance(call.func.func, ast.Attribute | ast.Name)
            and _name(call.func.func) == "layer"
        )
    )
    assert replaying == {"hooks/forward.py"}


# torch's module and tensor hooks, and transformers' registries (`AttentionInterface.register`)
REGISTERING = {
    "register_forward_pre_hook",
    "register_forward_hook",
    "register_full_backward_pre_hook",
    "register_full_backward_hook",
    "register_backward_hook",
    "register_hook",
    "register",
}


def test_hooks_are_registered_in_one_module():
    """Every hook (on a module, on a tensor, in transformers' registries) through `hooks/attach.py`."""
    registering = _calls(
        lambda call: isinstance(call.func, ast.Attribute) and call.func.attr in REGISTERING
    )
    assert registering == {"hooks/attach.py"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id


def _loaded_after(statement: str) -> list[str]:
    """actpatch modules in sys.modules after running `statement` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint('\\n'.join(m for m in sys.modules if m.startswith('actpatch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_run_is_a_leaf():
    assert sorted(_loaded_after("import actpatch.run")) == ["actpatch", "actpatch.run"]


def test_models_load_without_hooks_or_pairs():
    loaded = _loaded_after("import actpatch.models.load")
    assert loaded and not [m for m in loaded if m.startswith(("actpatch.hooks", "actpatch.pairs"))]


def test_an_engine_loads_no_analysis_above_it():
    loaded = _loaded_after("import actpatch.engine.attribution, actpatch.engine.sweep")
    assert "actpatch.engine.attribution" in loaded
    analyses = ("actpatch.circuits", "actpatch.graph", "actpatch.report", "actpatch.cli")
    assert not [m for m in loaded if m.startswith(analyses)]


def test_the_import_contract_is_declared_and_run_in_ci():
    root = SRC.parents[1]
    assert "[tool.importlinter]" in (root / "pyproject.toml").read_text()
    assert "lint-imports" in (root / ".ci" / "run").read_text()


def _counting_forwards(model: ap.Model, monkeypatch) -> list[int]:
    calls = [0]
    forward = model.hf.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.hf, "forward", counted)
    return calls


def _counting_backwards(monkeypatch) -> list[int]:
    calls = [0]
    backward = torch.Tensor.backward

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counted)
    return calls


@pytest.mark.parametrize(
    "keywords",
    [
        dict(site="head", method="atp"),
        dict(site="k", method="atp*", positions="each"),
        dict(site="resid_pre", method="ig", steps=3),
        dict(site="mlp_out", method="atp", graddrop=True),
        dict(site="head", method="atp", direction="noise", ablation="mean"),
    ],
    ids=["atp", "atp*", "ig", "graddrop", "mean ablation"],
)
def test_attribution_counts_every_forward_and_backward_it_runs(keywords, monkeypatch):
    model, pairs = tiny_task("llama")
    forwards, backwards = _counting_forwards(model, monkeypatch), _counting_backwards(monkeypatch)
    site = keywords.pop("site")
    cost = ap.attribute(model, pairs, site, **keywords).attrs["cost"]
    assert (cost["forwards"], cost["backwards"]) == (forwards[0], backwards[0])
    assert cost["forward_equivalents"] == forwards[0] + backwards[0]


def test_sweep_and_attribute_take_their_options_as_keywords_or_as_one_value():
    model, pairs = tiny_task("llama")
    by_keyword = ap.sweep(model, pairs, "head", heads=[1], chunk=2, progress=False)
    by_value = ap.sweep(
        model, pairs, "head", options=ap.SweepOptions(heads=[1], chunk=2, progress=False)
    )
    assert by_keyword.equals(by_value) and by_keyword.sizes["head"] == 1
    estimate = ap.attribute(
        model, pairs, "head", options=ap.AttributeOptions(heads=[0]), progress=False
    )
    assert estimate.sizes["head"] == 1
    with pytest.raises(
        TypeError, match=r"sweep\(\) got an unexpected keyword argument 'chunks'.*chunk"
    ):
        ap.sweep(model, pairs, "head", chunks=2)
    with pytest.raises(
        TypeError, match=r"attribute\(\) got an unexpected keyword argument 'n_steps'"
    ):
        ap.attribute(model, pairs, "head", n_steps=2)


def test_the_old_spellings_warn_and_give_the_same_answer():
    model, pairs = tiny_task("gpt2")
    with pytest.warns(DeprecationWarning, match=r"hooks\.last_logits"):
        old = model.last_logits(pairs.corrupt_run)
    torch.testing.assert_close(old, hooks.last_logits(model, pairs.corrupt_run), rtol=0, atol=0)
    from actpatch import circuits, stats

    with pytest.warns(DeprecationWarning, match=r"circuits\.circuit_stability"):
        assert stats.circuit_stability is circuits.circuit_stability
    from actpatch.pairs import Run

    assert Run is ap.Run
    # attention's input norm is named by the family table, not by graph/
    assert model.arch.attn_in_norm in dict(model.layer(0).named_modules())
