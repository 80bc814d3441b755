"""Learning U: the fixed-rank search of DAS, and boundless DAS, which learns the rank too.

Both train a linear map kept orthonormal by PyTorch's `orthogonal` parametrisation with Adam on
the cross-entropy of the patched run's final-position logits on the counterfactual answers, on
the training pairs only (`das.py` holds the rest out and judges the result). The patch is always
`Interchange.subspace_value`: x_t + U Uᵀ (x_s − x_t).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from actpatch.models.model import Model
from actpatch.subspace.patching import Interchange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Training:
    """How U is learned: `steps` Adam steps at `lr` on batches of `batch_size` training pairs; the
    whole training loss is checked every `check_every` steps, and training stops after `patience`
    checks without improvement, keeping the best U.

    Boundless DAS (`rank="learned"`) runs every step (its loss changes with the temperature, so it
    does not stop early): the boundary's softness anneals geometrically from `temperature[0]` to
    `temperature[1]` (in dimensions), and `boundary_penalty` × (rank / width) is added to the loss."""

    steps: int = 300
    lr: float = 0.05
    batch_size: int = 32
    check_every: int = 10
    patience: int = 5
    boundary_penalty: float = 1.0
    temperature: tuple[float, float] = (50.0, 0.1)


def learn(
    model: Model, run: Interchange, rank: int, training: Training = Training(), *, seed: int = 0
) -> tuple[Tensor, list[float], int]:
    """U (d, rank) with orthonormal columns that minimises the patched runs' cross-entropy on
    the counterfactual answers of `run`'s pairs, the whole training loss at each check, and the
    number of optimiser steps taken."""
    generator = torch.Generator().manual_seed(seed)
    rotation = initial_rotation(run.source.shape[-1], rank, generator, seed).to(run.source.device)
    optimiser = torch.optim.Adam(rotation.parameters(), lr=training.lr)
    best, best_U, waited, losses = math.inf, rotation.weight.detach().T.clone(), 0, []
    for step in range(training.steps + 1):
        if step % training.check_every == 0 or step == training.steps:
            with torch.no_grad():
                U = rotation.weight.T
                losses.append(float(_loss(model, run, U)))
            log.debug("step %d: training loss %.4f", step, losses[-1])
            if losses[-1] < best - 1e-4:
                best, best_U, waited = losses[-1], U.detach().clone(), 0
            elif (waited := waited + 1) >= training.patience:
                break
        if step == training.steps:
            break
        rows = torch.randperm(len(run.pairs), generator=generator)[: training.batch_size]
        with torch.enable_grad():
            loss = _loss(model, run[rows], rotation.weight.T)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    log.info(
        "learned a rank-%d subspace at %s in %d steps (training loss %.4f)",
        rank,
        run.site,
        step,
        best,
    )
    return best_U, losses, step


def learn_boundless(
    model: Model, run: Interchange, training: Training = Training(), *, seed: int = 0
) -> tuple[Tensor, list[float], int]:
    """Boundless DAS (Wu et al. 2023): U and its rank. A full rotation Q (d × d) and a boundary k
    are learned together; the patch moves the rotated coordinates i under a soft mask
    m_i = σ((k − i − ½) / τ) (x_t + Q diag(m) Qᵀ (x_s − x_t)) while τ anneals, and the
    loss adds `boundary_penalty` · k / d so the subspace is as small as the answers allow. Returns
    Q's first r columns, r the coordinates whose final mask is above ½ (at least 1), the training
    loss at each check (at that check's temperature), and the steps taken."""
    d = run.source.shape[-1]
    device = run.source.device
    generator = torch.Generator().manual_seed(seed)
    rotation = initial_rotation(d, d, generator, seed).to(device)
    share = nn.Parameter(torch.tensor(0.5, device=device))  # k / d
    optimiser = torch.optim.Adam([*rotation.parameters(), share], lr=training.lr)
    start, end = training.temperature
    temperatures = torch.logspace(math.log10(start), math.log10(end), max(training.steps, 1))
    order = torch.arange(d, device=device, dtype=torch.float32)

    def mask(temperature: float) -> Tensor:
        return torch.sigmoid((share * d - order - 0.5) / temperature)

    def loss_of(rows: Interchange, temperature: float) -> Tensor:
        value = rows.subspace_value(rotation.weight.T, mask(temperature))
        logits = rows.logits(model, value)
        answers = rows.baseline.answers.to(logits.device)
        return F.cross_entropy(logits, answers) + training.boundary_penalty * share

    losses = []
    for step in range(training.steps):
        temperature = float(temperatures[step])
        if step % training.check_every == 0:
            with torch.no_grad():
                losses.append(float(loss_of(run, temperature)))
        rows = torch.randperm(len(run.pairs), generator=generator)[: training.batch_size]
        with torch.enable_grad():
            loss = loss_of(run[rows], temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            share.clamp_(1 / d, 1.0)
    with torch.no_grad():
        losses.append(float(loss_of(run, float(temperatures[-1]))))
        rank = max(1, int((mask(float(temperatures[-1])) > 0.5).sum()))
        U = rotation.weight.T[:, :rank].detach().clone()
    log.info(
        "boundless DAS at %s: rank %d of %d in %d steps (boundary %.3f of the width)",
        run.site,
        rank,
        d,
        training.steps,
        share.item(),
    )
    return U, losses, training.steps


def initial_rotation(d: int, rank: int, generator: torch.Generator, seed: int) -> nn.Module:
    """The map DAS starts from: a Linear(d, rank) whose weight (rank, d) has orthonormal rows under
    PyTorch's `orthogonal` parametrisation, drawn from `generator` (seeded by `seed`: its next draws
    pick the batches) and `seed`; the global random state is left as it was."""
    rotation = nn.Linear(d, rank, bias=False)
    with torch.no_grad():
        rotation.weight.copy_(torch.randn(rank, d, generator=generator))
    with torch.random.fork_rng(devices=[]):  # the parametrisation completes its base with randn
        torch.manual_seed(seed)
        return orthogonal(rotation)


def _loss(model: Model, run: Interchange, U: Tensor) -> Tensor:
    logits = run.logits(model, run.subspace_value(U))
    return F.cross_entropy(logits, run.baseline.answers.to(logits.device))
