"""Train a TopK sparse autoencoder on activations already in memory (Gao et al. 2024's recipe).

Why our own, ~100 lines, rather than a maintained trainer: `import sparsify` (EleutherAI's
eai-sparsify) loads its trainer, which imports `datasets` (pyarrow, pandas, multiprocess, ...),
`schedulefree`, `simple-parsing` and `natsort`, none of which actpatch needs otherwise, and drives a
Hugging Face `Dataset` through a DataLoader; SAELens requires transformer-lens < 4, plotly, nltk and
`datasets`. Both are built for millions of tokens on a GPU; the embedded model's dictionary is
trained on tens of thousands of tokens on a laptop's CPU, which this loop does in about a minute.

The recipe: inputs scaled to unit mean square per dimension; decoder rows of unit norm, the encoder
initialised as the decoder's transpose, the decoder bias as the inputs' mean (subtracted before
encoding, SAELens's `apply_b_dec_to_input`); Adam on the squared error normalised by the inputs'
variance, plus the AuxK loss that teaches latents dead for a while to model what the live ones miss.
The scale is folded back into the weights at the end, so the result reads raw activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn.functional import embedding_bag


@dataclass
class TopKFit:
    """A trained TopK SAE on raw activations: f = TopK(ReLU((x − b_dec) W_enc + b_enc)),
    x̂ = f W_dec + b_dec; and the loss (normalised squared error) after each epoch."""

    W_enc: Tensor  # (d, n_latents)
    b_enc: Tensor  # (n_latents,)
    W_dec: Tensor  # (n_latents, d)
    b_dec: Tensor  # (d,)
    k: int
    losses: list[float] = field(default_factory=list)
    dead: int = 0  # latents that fired on no activation in the last epoch


def train_topk(
    acts: Tensor,
    n_latents: int,
    k: int,
    *,
    epochs: int = 8,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> TopKFit:
    """A TopK SAE with `n_latents` latents, `k` active per token, fit to `acts` (n_tokens, d)."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    acts = acts.detach().to(torch.float32)
    n, d = acts.shape
    scale = acts.pow(2).mean().sqrt().clamp_min(1e-8)  # mean square per dimension → 1
    x_all = acts / scale
    W_dec = torch.randn(n_latents, d, generator=generator)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_enc": W_dec.T.clone().requires_grad_(),
        "b_enc": torch.zeros(n_latents, requires_grad=True),
        "W_dec": W_dec.requires_grad_(),
        "b_dec": x_all.mean(0).clone().requires_grad_(),
    }
    optimiser = torch.optim.Adam(params.values(), lr=lr)
    steps = max(1, epochs * math.ceil(n / batch))
    # Constant rate, then a linear decay over the last fifth: the usual SAE schedule.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, 5 * (1 - step / steps))
    )
    variance = x_all.var(0).sum().clamp_min(1e-8)
    k_aux = min(d // 2, n_latents)
    dead_after = min(n, 10_000)  # tokens without firing before a latent counts as dead
    since_fired = torch.zeros(n_latents)
    fit = TopKFit(k=k, **{name: p for name, p in params.items()})
    bar = tqdm(total=steps, desc="training the dictionary", disable=not progress, unit="step")
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, count = 0.0, 0
        fired_in_epoch = torch.zeros(n_latents, dtype=torch.bool)
        for start in range(0, n, batch):
            x = x_all[order[start : start + batch]]
            pre = torch.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
            values, indices = pre.topk(k, dim=-1)
            # Decode the k rows each token uses, not all n_latents: most of a step's cost.
            recon = embedding_bag(indices, params["W_dec"], per_sample_weights=values, mode="sum")
            residual = x - recon - params["b_dec"]
            loss = residual.pow(2).sum(-1).mean() / variance
            fired = torch.zeros(n_latents, dtype=torch.bool)
            fired[indices[values > 0]] = True
            fired_in_epoch |= fired
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + len(x))
            dead = since_fired >= dead_after
            if dead.any():
                loss = loss + _aux_loss(pre, dead, residual.detach(), params, k_aux) / 32
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
            total += float(residual.detach().pow(2).sum()) / float(variance)
            count += len(x)
            bar.update()
        fit.losses.append(total / count)
        fit.dead = int((~fired_in_epoch).sum())
        bar.set_postfix(loss=f"{fit.losses[-1]:.3f}")
    bar.close()
    # Fold the input scale back: the same latents on raw activations, decoded to raw activations.
    with torch.no_grad():
        fit.W_enc = params["W_enc"].detach() / scale
        fit.b_enc = params["b_enc"].detach().clone()
        fit.W_dec = params["W_dec"].detach() * scale
        fit.b_dec = params["b_dec"].detach() * scale
    return fit


def _aux_loss(
    pre: Tensor, dead: Tensor, residual: Tensor, params: dict[str, Tensor], k_aux: int
) -> Tensor:
    """How well the top dead latents model the live ones' residual, relative to its variance."""
    masked = torch.where(dead, pre, torch.zeros_like(pre))
    values, indices = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
    aux = torch.zeros_like(pre).scatter(-1, indices, values) @ params["W_dec"]
    scale = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return (aux - residual).pow(2).sum(-1).mean() / scale
