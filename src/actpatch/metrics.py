"""Metrics: every measure of the answer, computed in one pass from final-position logits.

They disagree in instructive ways (probability overstates late effects, log-prob saturates,
accuracy is discrete, KL ignores which answer is right), so we compute them all and let the user
choose; `norm_logit_diff` is the default reading: corrupt = 0, clean = 1."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

Metric = Literal["norm_logit_diff", "logit_diff", "prob", "logprob", "kl", "accuracy"]
METRICS: tuple[str, ...] = get_args(Metric)


class NonFiniteError(ValueError):
    """NaN or infinite values where a number is measured: every metric from them would be NaN."""


def check_metric(metric: str) -> str:
    """`metric` if it is one of METRICS; otherwise an error listing them."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return metric


@dataclass(frozen=True)
class Baseline:
    """Unpatched final-position logits (batch, vocab) of both runs: the ends of the normalised scale."""

    clean_logits: Tensor
    corrupt_logits: Tensor
    answers: Tensor
    wrong: Tensor

    # In float64, as `per_prompt` computes patched runs: a no-op patch must normalise to exactly 0.
    @property
    def clean_logit_diff(self) -> Tensor:
        return logit_diff(self.clean_logits.double(), self.answers, self.wrong)

    @property
    def corrupt_logit_diff(self) -> Tensor:
        return logit_diff(self.corrupt_logits.double(), self.answers, self.wrong)

    @functools.cached_property
    def clean_logprobs(self) -> Tensor:
        """float64 log-probabilities of the clean run, which every patched run's KL reads: computed
        once, not once per patch."""
        return self.clean_logits.double().log_softmax(-1)


def logit_diff(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """logit(answer) − logit(wrong) per prompt, (batch,)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answers.to(logits.device)] - logits[rows, wrong.to(logits.device)]


def per_prompt(logits: Tensor, baseline: Baseline) -> dict[str, Tensor]:
    """Every metric for each prompt, (batch,) each. `norm_logit_diff` here is normalised prompt by prompt.

    Refuses non-finite logits (`NonFiniteError`): a NaN would otherwise travel silently into the
    averages and the result."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(
            f"logits hold NaN or inf ({logits.dtype}), so every metric would be NaN: a patched run overflowed "
            "(sweep in float32 or bfloat16; float16 stops at ±65504) or a patch value is not finite."
        )
    logits = logits.double()
    answers = baseline.answers.to(logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    logprobs = logits.log_softmax(-1)
    clean_logprobs = baseline.clean_logprobs.to(logits.device)
    diff = logit_diff(logits, answers, baseline.wrong)
    clean, corrupt = baseline.clean_logit_diff, baseline.corrupt_logit_diff
    return {
        "norm_logit_diff": (diff - corrupt) / (clean - corrupt),
        "logit_diff": diff,
        "prob": logprobs[rows, answers].exp(),
        "logprob": logprobs[rows, answers],
        # KL(clean ‖ patched): 0 when the patched run predicts exactly what the clean run does.
        "kl": (clean_logprobs.exp() * (clean_logprobs - logprobs)).sum(-1),
        "accuracy": (logits.argmax(-1) == answers).double(),
    }


def averaged(logits: Tensor, baseline: Baseline) -> dict[str, float]:
    """Every metric averaged over prompts.

    `norm_logit_diff` normalises the *mean* logit difference, (mean − corrupt mean) / (clean mean −
    corrupt mean), rather than averaging per-prompt ratios, which explode for a prompt whose clean
    and corrupt logit differences are nearly equal."""
    values = {name: float(v.mean()) for name, v in per_prompt(logits, baseline).items()}
    clean = float(baseline.clean_logit_diff.mean())
    corrupt = float(baseline.corrupt_logit_diff.mean())
    values["norm_logit_diff"] = (values["logit_diff"] - corrupt) / (clean - corrupt)
    return values


def answer_rank(logits: Tensor, answers: Tensor) -> Tensor:
    """Each prompt's answer's rank among the vocabulary (1: the top prediction), (batch,)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    chosen = logits[rows, answers.to(logits.device)]
    return (logits > chosen.unsqueeze(-1)).sum(-1) + 1
