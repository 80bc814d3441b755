"""The controls every DAS result carries, and the flags they raise.

A learned subspace that flips the answer is not yet a variable the model stores there. Each guard
patches something else on the same held-out pairs, at the same site and positions:
- the whole component (x_t ← x_s): a subspace that does more than its component works through a
  patch no real input makes;
- the subspace's part in the row space of the next read-out, and its part in the null space, each
  alone (`readout.py`): if the row-space part falls short of the whole, the effect rides on a
  direction the model ignores, the dormant-pathway illusion (Makelov et al. 2023);
- random subspaces of the same rank: how often chance alone does as well;
- (run by `das`) the same search on a re-initialised copy of the model (Sutter et al. 2025), and
  the training pairs' accuracy beside the held-out one.
This module measures and judges; learning U is `das.py`'s job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from actpatch.models.model import Model
from actpatch.subspace import readout
from actpatch.subspace.patching import Interchange

# The two metrics every control reports, and the sweep metrics they are read from: IIA is top-1
# accuracy on the counterfactual answers.
SCORES = {"iia": "accuracy", "norm_logit_diff": "norm_logit_diff"}


@dataclass(frozen=True)
class Guards:
    """Which controls DAS runs: `n_random` random subspaces, the same search on a re-initialised
    copy of the model (`random_model`: a second search), and the `margin` by which a control must
    be beaten (or beat the subspace) before a flag is raised."""

    n_random: int = 20
    random_model: bool = True
    margin: float = 0.1


@dataclass
class Controls:
    """Per-prompt metrics of each control on the held-out pairs, and what the split found."""

    rows: dict[str, dict[str, np.ndarray]] = field(
        default_factory=dict
    )  # control -> metric -> (prompt,)
    random: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SCORES))))  # (draw, metric)
    readout: str = ""
    row_rank: int = 0
    null_rank: int = 0
    row_share: float = float("nan")  # share of U's squared norm in the read-out's row space


def measure(model: Model, test: Interchange, U: Tensor, *, n_random: int, seed: int) -> Controls:
    """Patch the whole component, each part of the split and `n_random` random subspaces of U's
    rank on the held-out pairs."""
    controls = Controls()
    controls.rows["full_component"] = _numpy(test.per_prompt(model, test.source))
    matrix, controls.readout = readout.readout(model, test.site)
    if matrix is not None:
        row, null, controls.row_share = readout.split(U, readout.row_space(matrix).to(U.device))
        controls.row_rank, controls.null_rank = row.shape[1], null.shape[1]
        for name, part in (("row_space", row), ("null_space", null)):
            controls.rows[name] = _numpy(test.per_prompt(model, test.subspace_value(part)))
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n_random):
        gaussian = torch.randn(U.shape[0], U.shape[1], generator=generator)
        found = test.per_prompt(
            model, test.subspace_value(torch.linalg.qr(gaussian)[0].to(U.device))
        )
        draws.append([float(found[metric].mean()) for metric in SCORES.values()])
    controls.random = np.array(draws).reshape(-1, len(SCORES))
    return controls


def flags_of(
    scores: dict[str, dict[str, float]], controls: Controls, *, margin: float
) -> list[str]:
    """One sentence per guard that fails; `scores[control][score]` holds held-out values (and the
    training pairs' under "subspace_train", the re-initialised model's under "random_model")."""
    found = []
    sub = scores["subspace"]

    def beyond(control: str) -> list[str]:
        return [s for s in SCORES if control in scores and sub[s] > scores[control][s] + margin]

    if over := beyond("full_component"):
        found.append(
            f"exceeds_component: the subspace does more than patching the whole component "
            f"({_both(scores, 'subspace', 'full_component', over)}): it works through a patch no "
            "real input makes; suspect a dormant pathway"
        )
    if controls.null_rank and (short := beyond("row_space")):
        found.append(
            f"dormant_pathway: the part the next weights read ({controls.readout}) does less "
            f"alone than the whole subspace ({_both(scores, 'subspace', 'row_space', short)}): "
            "the effect needs the null-space part, which the model ignores on real inputs "
            "(the MLP-in-the-middle illusion, Makelov et al. 2023)"
        )
    baseline = scores.get("unpatched", {}).get("iia", 0.0)
    if (
        controls.null_rank
        and "null_space" in scores
        and scores["null_space"]["iia"] > baseline + margin
    ):
        found.append(
            "null_space_effect: the null-space part alone moves the answer, though the next "
            "weights do not read it; the read-out is not the whole story here"
        )
    if len(controls.random):
        top = float(np.quantile(controls.random[:, 0], 0.95))
        if sub["iia"] <= top:
            found.append(
                f"random_subspaces: held-out IIA {sub['iia']:.2f} is no better than the 95th "
                f"percentile of {len(controls.random)} random subspaces of its rank ({top:.2f})"
            )
    if "random_model" in scores and scores["random_model"]["iia"] >= sub["iia"] - margin:
        found.append(
            f"random_model: the same search on a re-initialised model reaches held-out IIA "
            f"{scores['random_model']['iia']:.2f} (here {sub['iia']:.2f}): the search finds "
            "this much without the trained weights"
        )
    if "subspace_train" in scores and scores["subspace_train"]["iia"] > sub["iia"] + margin:
        found.append(
            f"overfit: training IIA {scores['subspace_train']['iia']:.2f} is above held-out "
            f"IIA {sub['iia']:.2f}"
        )
    return found


def reinitialised(model: Model, seed: int) -> Model:
    """A copy of `model` with freshly drawn weights from its own config (its initialiser), the same
    dtype and device; the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = copy.deepcopy(model.hf.config)
        hf = type(model.hf)._from_config(config, dtype=next(model.hf.parameters()).dtype)
    hf = hf.to(model.device).eval().requires_grad_(False)
    return Model.from_hf(hf, model.tokenizer, name=f"{model.name} (re-initialised, seed {seed})")


def _numpy(found: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {metric: values.detach().cpu().double().numpy() for metric, values in found.items()}


def _both(scores: dict[str, dict[str, float]], a: str, b: str, which: list[str]) -> str:
    return ", ".join(f"{s} {scores[a][s]:.2f} vs {scores[b][s]:.2f}" for s in which)
