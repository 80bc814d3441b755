"""Baselines (the unpatched clean and corrupt runs, checked) and metric rows from patched logits.

The runner (`engine/runner.py`) and every analysis that measures against the unpatched runs
(attribution, paths, circuits) take their baselines here, so "the task is not solved" and
"the model gives NaN" are refused the same way everywhere."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from actpatch import hooks, metrics
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)


class BaselineError(ValueError):
    """The model does not do the task on these prompts, so every normalised number would be noise."""


def baseline(model: Model, pairs: PromptPairs, *, check: bool = True) -> metrics.Baseline:
    """The unpatched clean and corrupt runs: the two ends of every normalised metric.

    With `check`, refuse prompts on which the clean run does not beat the corrupt one: the
    normalised metric divides by that gap, so a sweep would only measure noise."""
    clean_logits = hooks.last_logits(model, pairs.clean_run)
    corrupt_logits = hooks.last_logits(model, pairs.corrupt_run)
    return checked(model, pairs, clean_logits, corrupt_logits, check=check)


def checked(
    model: Model,
    pairs: PromptPairs,
    clean_logits: Tensor,
    corrupt_logits: Tensor,
    *,
    check: bool = True,
) -> metrics.Baseline:
    """`baseline`'s checks on final-position logits an analysis has already computed (edge circuits
    take them from their recording forwards)."""
    base = metrics.Baseline(clean_logits, corrupt_logits, pairs.answers, pairs.wrong)
    refuse_non_finite(model, base)  # whatever `check` says: a NaN baseline makes every number NaN
    clean, corrupt = float(base.clean_logit_diff.mean()), float(base.corrupt_logit_diff.mean())
    log.info("baseline logit difference: clean %.3f, corrupt %.3f", clean, corrupt)
    if check:
        refuse_unsolved(model.name, clean, corrupt)
    if (
        check
        and (failing := int((base.clean_logit_diff <= base.corrupt_logit_diff).sum()))
        > len(pairs) // 4
    ):
        log.warning(
            "on %d of %d prompts the clean logit difference is not above the corrupt one",
            failing,
            len(pairs),
        )
    if check and (doubt := unlikely_answers(model, base)):
        log.warning(doubt)
    return base


TOP_K = 10  # an answer the clean run does not rank this high is probably not the token meant


def unlikely_answers(model: Model, base: metrics.Baseline) -> str | None:
    """Why the answers look wrong for the clean run, or None: a clean logit difference can be large
    although the answer is not what the model predicts (e.g. "Mary" without its leading space beats
    " John" and is still a 1-in-20,000 token), and every normalised number then traces that token."""
    ranks = metrics.answer_rank(base.clean_logits, base.answers)
    outside = int((ranks > TOP_K).sum())
    if outside * 2 <= len(ranks):
        return None
    worst = int(torch.argmax(ranks))
    probability = float(base.clean_logits[worst].double().softmax(-1)[base.answers[worst]])
    message = (
        f"on {outside} of {len(ranks)} prompts the answer is not among the clean run's top {TOP_K} predictions "
        f"(prompt {worst}: rank {int(ranks[worst])}, probability {probability:.2g}), so the logit difference "
        "traces a token the model does not predict"
    )
    tokenizer = model.tokenizer
    if tokenizer is not None:
        text = tokenizer.decode([int(base.answers[worst])])
        spaced = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
        if not text.startswith(" ") and len(spaced) == 1:
            spaced_probability = float(base.clean_logits[worst].double().softmax(-1)[spaced[0]])
            if spaced_probability > 10 * probability:
                message += (
                    f"; {' ' + text.strip()!r} with its leading space has probability {spaced_probability:.2g}: "
                    "answers are single tokens with their leading space"
                )
    return message + ". Check the answers (the baseline table shows the clean run's answer rank)."


def refuse_non_finite(model: Model, base: metrics.Baseline) -> None:
    """Raise `NonFiniteError` naming the cause when an unpatched run's logits hold NaN or inf."""
    broken = [
        run
        for run, logits in (("clean", base.clean_logits), ("corrupt", base.corrupt_logits))
        if not bool(torch.isfinite(logits).all())
    ]
    if not broken:
        return
    runs = " and ".join(broken)
    bad = [
        name
        for name, weights in model.hf.named_parameters()
        if not bool(torch.isfinite(weights).all())
    ]
    if bad:
        raise metrics.NonFiniteError(
            f"{model.name} gives NaN or inf logits on the {runs} prompts because {len(bad)} of its weight tensors hold "
            f"NaN or inf (first: {bad[0]}): the checkpoint is damaged or was saved after a diverged update. "
            "Reload the model from a good checkpoint."
        )
    raise metrics.NonFiniteError(
        f"{model.name} gives NaN or inf logits on the {runs} prompts although its weights are finite: its activations "
        f"overflow in {next(model.hf.parameters()).dtype}, or the embedding noise is too large. Load the model in "
        "bfloat16 or float32 (float16 stops at ±65504)."
    )


def refuse_unsolved(model_name: str, clean: float, corrupt: float) -> None:
    """Raise `BaselineError` unless the mean clean logit difference is above the corrupt one."""
    if not clean > corrupt:
        raise BaselineError(
            f"{model_name} does not perform the task on these prompts: mean logit difference (answer − wrong) is "
            f"{clean:.3f} on clean and {corrupt:.3f} on corrupt, and a sweep needs clean above corrupt. Check that "
            "answers and wrong answers are the right way round and single tokens with their leading space, or pass "
            "check_baseline=False to sweep anyway (normalised metrics will not mean anything)."
        )


def row(logits: torch.Tensor, base: metrics.Baseline, *, per_prompt: bool) -> dict[str, Any]:
    """One patched run's metrics: averaged floats, or per-prompt arrays."""
    if per_prompt:
        return {k: v.cpu().numpy() for k, v in metrics.per_prompt(logits, base).items()}
    return metrics.averaged(logits, base)
