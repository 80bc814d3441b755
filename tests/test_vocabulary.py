"""One word per concept: the public signatures hold only the current spellings (the bootstrap as one
`ci=` value, engines named batched/reference at node and edge level, `named_positions=` for a
name → index map), and each old spelling still works for one release, warns, and agrees."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch import graph, hooks, stats
from tiny import tiny_task

# Where the public names live: the package's exports and its analysis packages'.
PUBLIC_MODULES = (
    "actpatch",
    "actpatch.stats",
    "actpatch.circuits",
    "actpatch.graph",
    "actpatch.hooks",
)
OLD_KEYWORDS = {"boot_seed", "n_boot"}  # now inside ci=ap.Bootstrap(...)
OLD_ENGINES = {"fast", "plain"}  # now batched, reference


def _public_callables():
    """(name, callable) for every public function, class and public method of those modules."""
    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.ismodule(value):
                continue
            if inspect.isclass(value):
                if value is ap.Bootstrap:  # the one place n_boot is spelled
                    continue
                found[f"{module_name}.{name}"] = value
                for method_name, method in vars(value).items():
                    if callable(method) and not method_name.startswith("_"):
                        found[f"{module_name}.{name}.{method_name}"] = method
            elif callable(value):
                found[f"{module_name}.{name}"] = value
    return found


def _parameters(function) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin or a class without a readable signature
        return {}


def _annotation(function, name: str, parameter: inspect.Parameter) -> str:
    """The parameter's annotation, resolved where the module lets it be, else as written."""
    try:
        return str(typing.get_type_hints(function)[name])
    except Exception:
        return str(parameter.annotation)


PUBLIC = _public_callables()


def test_the_scan_sees_the_analyses():
    assert {
        "actpatch.sweep",
        "actpatch.evaluate_circuit",
        "actpatch.graph.faithfulness_curve",
    } <= set(PUBLIC)
    assert "actpatch.graph.EdgeRuns.logits" in PUBLIC and "actpatch.stats.intervals" in PUBLIC
    assert len(PUBLIC) > 80


def test_no_public_signature_holds_an_old_spelling():
    old = []
    for where, function in PUBLIC.items():
        parameters = _parameters(function)
        old += [f"{where}({name}=)" for name in parameters if name in OLD_KEYWORDS]
        if "engine" in parameters:
            engine = parameters["engine"]
            words = {engine.default} | set(
                _annotation(function, "engine", engine).replace("'", '"').split('"')
            )
            old += [f"{where}(engine={w!r})" for w in words & OLD_ENGINES]
        if where.startswith("actpatch.hooks.") and "positions" in parameters:
            old.append(f"{where}(positions=) for a name → index map")
    for options in (ap.SweepOptions, ap.AttributeOptions, graph.CurveOptions):  # **options
        fields = {f.name: f for f in dataclasses.fields(options)}
        old += [f"{options.__name__}.{name}" for name in fields if name in OLD_KEYWORDS]
        if "engine" in fields:
            old += [f"{options.__name__}.engine={fields['engine'].default!r}"] * (
                fields["engine"].default in OLD_ENGINES
            )
    assert not old, f"old spellings in public signatures (README, 'Deprecated spellings'): {old}"


def test_every_ci_takes_a_level_or_a_bootstrap_and_none_means_no_interval():
    taking = {w: f for w, f in PUBLIC.items() if "ci" in _parameters(f)}
    assert len(taking) >= 12, sorted(taking)
    for where, function in taking.items():
        ci = _parameters(function)["ci"]
        assert "Bootstrap" in _annotation(function, "ci", ci), where
        assert ci.default is None or ci.default == ap.Bootstrap(), where  # one set of defaults


def test_every_analysis_that_measures_a_baseline_takes_check_baseline():
    for where in (
        "actpatch.sweep",  # through SweepOptions
        "actpatch.patch_paths",
        "actpatch.sweep_paths",
        "actpatch.evaluate_circuit",
        "actpatch.pareto_frontier",
        "actpatch.minimality",
        "actpatch.backup",
        "actpatch.circuits.circuit_stability",
        "actpatch.graph.evaluate",
        "actpatch.graph.edge_scores",
    ):
        parameters = _parameters(PUBLIC[where])
        if "check_baseline" not in parameters:  # gathered in an options value
            parameters = _parameters(ap.SweepOptions)
        assert parameters["check_baseline"].default is True, where


def test_path_patching_takes_check_baseline_as_sweeps_do(task):
    model, pairs = task
    flipped = ap.PromptPairs(pairs.clean, pairs.corrupt, pairs.wrong, pairs.answers)
    sender, receivers = ap.Site("head", 0, head=1), ["logits"]
    with pytest.raises(ap.BaselineError, match=r"check_baseline=False"):
        ap.patch_paths(model, flipped, sender, receivers)
    unchecked = ap.patch_paths(model, flipped, sender, receivers, check_baseline=False)
    solved = ap.patch_paths(model, pairs, sender, receivers)
    np.testing.assert_allclose(
        unchecked.sel(metric="logit_diff"), -solved.sel(metric="logit_diff"), atol=1e-9
    )


# --- the old spellings: they warn, and give the same numbers --------------------------------------


@pytest.fixture(scope="module")
def task():
    return tiny_task("gpt2")


def _warns(old: str):
    return pytest.warns(DeprecationWarning, match=rf"{old}.*deprecated.*next release")


def test_old_bootstrap_keywords_fold_into_ci(task):
    model, pairs = task
    options = dict(check_baseline=False, progress=False)
    new = ap.sweep(model, pairs, "head", ci=ap.Bootstrap(0.9, n_boot=60, seed=3), **options)
    with _warns(r"sweep\(n_boot=, boot_seed=\)"):
        old = ap.sweep(model, pairs, "head", ci=0.9, n_boot=60, boot_seed=3, **options)
    xr.testing.assert_identical(old, new)
    assert new.attrs["interval"]["n_boot"] == 60 and new.attrs["interval"]["seed"] == 3
    rows = ap.sweep(model, pairs, "head", per_prompt=True, **options)
    with _warns(r"intervals\(n_boot=, seed=\)"):
        old = stats.intervals(rows, ci=0.9, n_boot=60, seed=3)
    xr.testing.assert_identical(old, stats.intervals(rows, ci=ap.Bootstrap(0.9, 60, seed=3)))
    xr.testing.assert_identical(old, new)  # the sweep's intervals are these
    circuit = [ap.Site("head", 1, head=0)]
    with _warns(r"evaluate\(n_boot=, boot_seed=\)"):
        old = ap.evaluate_circuit(model, pairs, circuit, ci=0.8, n_boot=40, boot_seed=1)
    new = ap.evaluate_circuit(model, pairs, circuit, ci=ap.Bootstrap(0.8, n_boot=40, seed=1))
    xr.testing.assert_identical(old, new)
    with pytest.raises(TypeError, match=r"n_boot= beside ci=Bootstrap"):
        ap.evaluate_circuit(model, pairs, circuit, ci=ap.Bootstrap(), n_boot=40)


def test_old_edge_engine_names_warn_and_run_the_same_engine(task):
    model, pairs = task
    options = dict(check_baseline=False)
    for old, new in (("plain", "reference"), ("fast", "batched")):
        with _warns(rf"edge_scores\(engine='{old}'\)"):
            by_old = graph.edge_scores(model, pairs, "eap", engine=old, **options)
        by_new = graph.edge_scores(model, pairs, "eap", engine=new, **options)
        torch.testing.assert_close(by_old.scores, by_new.scores, rtol=0, atol=0)
        assert by_old.attrs["engine"] == new
    runs = graph.EdgeRuns.prepare(model, pairs, check_baseline=False)
    circuits = torch.stack([runs.graph.full(), runs.graph.empty()])
    with _warns(r"EdgeRuns.logits\(engine='plain'\)"):
        old = runs.logits(circuits, engine="plain")
    torch.testing.assert_close(old, runs.logits(circuits, engine="reference"), rtol=0, atol=0)
    with _warns(r"faithfulness_curve\(engine='plain'\)"):
        curve = graph.faithfulness_curve(
            model, pairs, by_new, percents=[50, 100], engine="plain", **options
        )
    again = graph.faithfulness_curve(
        model, pairs, by_new, percents=[50, 100], engine="reference", **options
    )
    np.testing.assert_array_equal(curve.values, again.values)
    with pytest.raises(ValueError, match=r"engine must be one of \('batched', 'reference'\)"):
        graph.edge_scores(model, pairs, "eap", engine="quick", **options)


def test_positions_as_a_name_map_is_named_positions(task):
    model, pairs = task
    site = ap.Site("resid_pre", 1, pos="X")
    named = {"X": torch.tensor([1, 2, 0])}
    with _warns(r"capture\(positions=...\)"):
        old = hooks.capture(model, pairs.clean, [site], positions=named)
    new = hooks.capture(model, pairs.clean, [site], named_positions=named)
    torch.testing.assert_close(old[site], new[site], rtol=0, atol=0)
    with _warns(r"patch\(positions=...\)"), hooks.patch(model, new, positions=named):
        patched_old = hooks.last_logits(model, pairs.corrupt_run)
    with hooks.patch(model, new, named_positions=named):
        patched_new = hooks.last_logits(model, pairs.corrupt_run)
    torch.testing.assert_close(patched_old, patched_new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="positions is the old name of named_positions"):
        hooks.capture(model, pairs.clean, [site], positions=named, named_positions=named)
    assert hooks.attached_hooks(model) == 0


def test_stability_draws_are_resamples(task):
    model, pairs = task
    options = dict(method="eap", percent=20, check_baseline=False, progress=False)
    with _warns(r"edge_stability\(n_boot=...\)"):
        old = graph.edge_stability(model, pairs, n_boot=2, **options)
    new = graph.edge_stability(model, pairs, resamples=2, **options)
    assert old.equals(new) and new.attrs["resamples"] == 2
