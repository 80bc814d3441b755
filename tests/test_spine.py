"""The spine every analysis shares: runs, provenance, self-checks, and reading sites back from results
(every analysis's provenance and self-checks: tests/test_provenance.py)."""

import ast
from pathlib import Path

import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch import results
from actpatch.engine import collect
from actpatch.metrics import Baseline
from tiny import tiny_model, tiny_pairs, tiny_task, with_answers


@pytest.fixture(scope="module")
def tiny():
    return tiny_task("llama")


@pytest.fixture(scope="module")
def noisy(tiny):
    model, pairs = tiny
    return with_answers(model, ap.gaussian_noise(model, pairs, ["X"], scale=3.0))


def test_hand_patch_recipe_works_on_noise_pairs(noisy):
    """The README's capture + patch + last_logits on a noise corruption runs the noisy corrupt run, not the clean one."""
    model, pairs = noisy
    site = ap.Site("head", layer=1, head=2)
    clean = ap.capture(model, pairs.clean_run, [site])
    with ap.patch(model, clean):
        logits = model.last_logits(pairs.corrupt_run)
    by_hand = float(
        (logits[torch.arange(3), pairs.answers] - logits[torch.arange(3), pairs.wrong])
        .double()
        .mean()
    )
    swept = (
        ap.sweep(model, pairs, "head", layers=[1], heads=[2])
        .sel(metric="logit_diff", layer=1, head=2)
        .item()
    )
    assert by_hand == pytest.approx(swept, abs=1e-5)
    plain = model.last_logits(pairs.corrupt)  # the tokens alone are the clean prompt
    assert not torch.allclose(model.last_logits(pairs.corrupt_run), plain)


def test_a_layer_zero_patch_overrides_the_input_noise_whatever_the_order(noisy):
    model, pairs = noisy
    site = ap.Site("resid_pre", 0)
    clean = ap.capture(model, pairs.clean_run, [site])
    with ap.patch(model, clean):
        logits = model.last_logits(pairs.corrupt_run)
    torch.testing.assert_close(logits, model.last_logits(pairs.clean_run), atol=1e-5, rtol=0)


def test_pairs_slice_with_positions_text_and_noise(noisy):
    _, pairs = noisy
    for index, rows in ((slice(0, 2), [0, 1]), ([0, 2], [0, 2]), (1, [1])):
        part = pairs[index]
        assert len(part) == len(rows)
        assert torch.equal(part.clean, pairs.clean[rows]) and torch.equal(
            part.answers, pairs.answers[rows]
        )
        assert torch.equal(part.positions["X"], pairs.positions["X"][rows])
        assert torch.equal(part.corrupt_noise, pairs.corrupt_noise[rows])
    with pytest.raises(ap.PairsError, match="selects no prompts"):
        pairs[3:]


def test_reprs_say_what_a_researcher_needs():
    model = tiny_model("llama")
    assert (
        "\n" not in repr(model) and "LlamaForCausalLM" in repr(model) and "2 layers" in repr(model)
    )
    pairs = ap.PromptPairs(
        *[getattr(tiny_pairs(), f) for f in ("clean", "corrupt", "answers", "wrong")],
        clean_text=("a b", "c d", "e f"),
        corrupt_text=("x b", "y d", "z f"),
        corruption="abc",
    )
    text = repr(pairs)
    assert (
        "3 prompts × 6 tokens" in text
        and "'a b'" in text
        and "'x b'" in text
        and "tensor" not in text
    )


def test_circuits_record_an_ablation_they_accept(tiny):
    model, pairs = tiny
    circuit = [ap.Site("head", 1, head=0)]
    for ablation in (None, "mean"):
        attrs = ap.evaluate_circuit(model, pairs, circuit, ablation=ablation).attrs
        again = ap.evaluate_circuit(model, pairs, circuit, ablation=attrs["ablation"])
        assert again.attrs["ablation"] == ablation


def test_provenance_names_the_positions_swept_and_keeps_checks_per_direction(tiny):
    model, pairs = tiny
    result = ap.sweep(model, pairs, "resid_pre", positions=["END"], direction=["denoise", "noise"])
    assert result.attrs["positions"] == "END"
    assert set(result.attrs["self_checks"]) == {
        f"{d}: {c}" for d in ("denoise", "noise") for c in ("noop_patch_error", "full_patch_error")
    }


def test_sites_read_back_from_a_result_patch_the_same_cells(tiny):
    model, pairs = tiny
    result = ap.sweep(model, pairs, "head", positions=["X", 2])
    sites = results.sites(result.sel(metric="logit_diff"))
    assert [s.pos for s in sites[:2]] == ["X", 2] and len(sites) == result.sel(
        metric="logit_diff"
    ).size
    values = ap.capture(model, pairs.clean_run, sites[:2])
    for site, value in values.items():
        with ap.patch(model, {site: value}, named_positions=pairs.positions):
            logits = model.last_logits(pairs.corrupt_run)
        got = float(
            (logits[torch.arange(3), pairs.answers] - logits[torch.arange(3), pairs.wrong])
            .double()
            .mean()
        )
        want = result.sel(
            metric="logit_diff", layer=site.layer, head=site.head, pos=str(site.pos)
        ).item()
        assert got == pytest.approx(want, abs=1e-5)


def test_reference_prompts_keyword_still_works_with_a_warning(tiny):
    model, pairs = tiny
    options = dict(direction="noise", ablation="mean", positions=["END"])
    want = ap.sweep(model, pairs, "resid_pre", mean_over=pairs[:2], **options)
    with pytest.warns(DeprecationWarning, match="mean_over"):
        got = ap.sweep(model, pairs, "resid_pre", reference=pairs[:2], **options)
    xr.testing.assert_identical(got, want)


def test_an_answer_the_clean_run_does_not_predict_is_flagged(tiny):
    model, pairs = tiny
    base = collect.baseline(model, pairs, check=False)
    ranked = base.clean_logits.argsort(
        -1, descending=True
    )  # (batch, vocab): each prompt's tokens, likeliest first

    def doubt(ranks):  # the answers at these 1-based ranks of the clean run, prompt by prompt
        answers = ranked[torch.arange(len(pairs)), torch.tensor(ranks) - 1]
        return collect.unlikely_answers(
            model, Baseline(base.clean_logits, base.corrupt_logits, answers, pairs.wrong)
        )

    # Flagged when more than half of the prompts' answers rank below the clean run's top 10.
    assert doubt([1, 1, 1]) is None and doubt([10, 10, 10]) is None and doubt([11, 1, 1]) is None
    assert "on 2 of 3 prompts the answer is not among the clean run's top 10" in doubt([11, 1, 11])
    assert "on 3 of 3 prompts" in doubt([11, 50, 101]) and "(prompt 2: rank 101," in doubt(
        [11, 50, 101]
    )


def test_no_function_takes_more_than_twelve_parameters():
    allowed = {
        "sweep",
        "attribute",
    }  # the public calls (and the CLI commands, whose flags are click options)
    source = Path(__file__).parents[1] / "src" / "actpatch"
    offenders = []
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                count = (
                    len(a.posonlyargs)
                    + len(a.args)
                    + len(a.kwonlyargs)
                    - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)
                )
                if (
                    count > 12
                    and node.name not in allowed
                    and "cli" not in path.relative_to(source).parts
                ):
                    offenders.append(f"{path.name}:{node.name} ({count})")
    assert offenders == []


def test_a_model_whose_parameters_require_grad_sweeps_the_same():
    """A model built in memory or being trained has parameters that require grad: every sweep
    (intervals and per-prompt rows included) runs forwards only and gives the same numbers, and
    the flags are left as they were."""
    model, pairs = tiny_task("gpt2")
    options = dict(progress=False, ci=ap.Bootstrap(0.9, n_boot=20))
    want = ap.sweep(model, pairs, "head", **options)
    want_rows = ap.sweep(model, pairs, "resid_pre", per_prompt=True, progress=False)
    flags = [p.requires_grad for p in model.hf.parameters()]
    try:
        model.hf.requires_grad_(True)
        got = ap.sweep(model, pairs, "head", **options)
        got_rows = ap.sweep(model, pairs, "resid_pre", per_prompt=True, progress=False)
        assert all(p.requires_grad for p in model.hf.parameters())
    finally:
        for parameter, flag in zip(model.hf.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), atol=1e-6)
    xr.testing.assert_allclose(got_rows.drop_attrs(), want_rows.drop_attrs(), atol=1e-6)
