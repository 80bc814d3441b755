"""A sparse dictionary at a hook point: an SAE, a transcoder or a skip-transcoder, as one `Basis`.

Every file format (`bases/formats/`) is read into this one shape, so hooks and engines see one
kind of dictionary. It encodes what it reads into latents f = σ((x − b_in) W_enc + b_enc), with
σ a ReLU, a JumpReLU (ReLU gated by a per-latent threshold) or a TopK, and reconstructs what it
writes as f W_dec + b_dec (+ x W_skip for a skip-transcoder). Where it lives in a model and
whether it fits that model is `bases/load.py`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor

if TYPE_CHECKING:
    from actpatch.models.model import Model

Activation = Literal["relu", "jumprelu", "topk"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


class DictionaryError(ValueError):
    """A dictionary file that cannot be read, or does not fit the model it is used with."""


@dataclass(eq=False)  # compared by identity: sites hold it, and two loads are two bases
class Dictionary:
    """Latents of the activation at `reads` (layer `layer`), written back into `writes`.

    An SAE reads and writes the same site; a transcoder reads the MLP's input (`mlp_in`, or
    `resid_mid` for one trained before the norm) and writes its output (`mlp_out`). Tensors are
    float32 whatever the file held, so that patches through the dictionary are exact to 1e-6."""

    name: str  # how results label it: "sae.resid_post.3", "transcoder.mlp_in.5"
    layer: int
    reads: str
    writes: str
    W_enc: Tensor  # (d_in, n_latents)
    b_enc: Tensor  # (n_latents,)
    W_dec: Tensor  # (n_latents, d_out)
    b_dec: Tensor  # (d_out,)
    activation: Activation = "relu"
    threshold: Tensor | None = None  # (n_latents,): JumpReLU keeps a latent only above it
    k: int | None = None  # TopK keeps the k largest latents
    input_bias: Tensor | None = (
        None  # (d_in,): subtracted before encoding (SAELens apply_b_dec_to_input)
    )
    W_skip: Tensor | None = None  # (d_in, d_out): a skip-transcoder's linear path
    source: str = ""  # the format and folder it came from, for provenance
    _placed: dict = field(default_factory=dict, repr=False)  # device -> tensors there

    def __post_init__(self) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "input_bias", "W_skip"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.detach().to(torch.float32))
        self._check()

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def n_latents(self) -> int:
        return self.W_enc.shape[1]

    @property
    def kind(self) -> str:
        """What the dictionary is, for names and errors: sae, transcoder or skip_transcoder."""
        if self.W_skip is not None:
            return "skip_transcoder"
        return "sae" if self.reads == self.writes else "transcoder"

    def encode(self, x: Tensor) -> Tensor:
        """(..., d_in) → (..., n_latents) float32: the latents of `x`."""
        weights = self._on(x.device)
        x = x.to(torch.float32)
        if self.input_bias is not None:
            x = x - weights["input_bias"]
        pre = x @ weights["W_enc"] + weights["b_enc"]
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > weights["threshold"]).to(pre.dtype)
        values, indices = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode_latent(self, x: Tensor, latent: int) -> Tensor:
        """(..., d_in) → (...,) float32: latent `latent` alone, `encode(x)[..., latent]`. ReLU and
        JumpReLU latents need one encoder column, which keeps a latent patch rank-one in cost too;
        TopK compares every latent, so it encodes them all."""
        if self.activation == "topk":
            return self.encode(x)[..., latent]
        weights = self._on(x.device)
        x = x.to(torch.float32)
        if self.input_bias is not None:
            x = x - weights["input_bias"]
        pre = x @ weights["W_enc"][:, latent] + weights["b_enc"][latent]
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > weights["threshold"][latent]).to(pre.dtype)
        return torch.relu(pre)

    def decoder(self) -> Tensor:
        """(n_latents, d_out): latent i writes f_i · row i."""
        return self.W_dec

    def reconstruct(self, x: Tensor) -> Tensor:
        """(..., d_in) → (..., d_out) float32: the dictionary's estimate of what it writes."""
        weights = self._on(x.device)
        estimate = self.encode(x) @ weights["W_dec"] + weights["b_dec"]
        if self.W_skip is not None:
            estimate = estimate + x.to(torch.float32) @ weights["W_skip"]
        return estimate

    def error(self, read: Tensor, written: Tensor) -> Tensor:
        """(..., d_out) float32: what the dictionary misses, written − its reconstruction."""
        return written.to(torch.float32) - self.reconstruct(read)

    def check_fits(self, model) -> None:
        """Raise `DictionaryError` naming the fix when this dictionary cannot sit on `model`."""
        check_fits(self, model)

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        """The tensors on `device`, moved once per device (hooks call this on every forward)."""
        key = str(device)
        if key not in self._placed:
            names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "input_bias", "W_skip")
            self._placed[key] = {
                n: getattr(self, n).to(device) for n in names if getattr(self, n) is not None
            }
        return self._placed[key]

    def _check(self) -> None:
        n, d_in, d_out = self.n_latents, self.d_in, self.d_out
        shapes = {
            "b_enc": (n,),
            "W_dec": (n, d_out),
            "b_dec": (d_out,),
            "threshold": (n,),
            "input_bias": (d_in,),
            "W_skip": (d_in, d_out),
        }
        for name, want in shapes.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != want:
                raise DictionaryError(
                    f"{self.name}: {name} has shape {tuple(value.shape)}, expected {want} for "
                    f"{n} latents reading width {d_in} and writing width {d_out} ({self.source})"
                )
        if self.activation not in ACTIVATIONS:
            raise DictionaryError(
                f"{self.name}: activation {self.activation!r} is not one of {ACTIVATIONS}"
            )
        if self.activation == "jumprelu" and self.threshold is None:
            raise DictionaryError(
                f"{self.name}: a JumpReLU dictionary needs its threshold ({self.source})"
            )
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= n):
            raise DictionaryError(
                f"{self.name}: TopK needs k in 1..{n}, got {self.k!r} ({self.source})"
            )


def check_fits(dictionary: Dictionary, model: Model) -> None:
    """Raise `DictionaryError` naming the fix when `dictionary` cannot sit on `model`."""
    from actpatch.sites import RESIDUAL_KINDS, Site, SiteError, validate

    n_layers, d_model = model.dims.n_layers, model.dims.d_model
    where = dictionary.source or dictionary.name
    if not 0 <= dictionary.layer < n_layers:
        raise DictionaryError(
            f"{dictionary.name} sits at layer {dictionary.layer}, but {model.name} has layers "
            f"0..{n_layers - 1}: it was made for a deeper model ({where})"
        )
    for role, kind, width in (
        ("reads", dictionary.reads, dictionary.d_in),
        ("writes", dictionary.writes, dictionary.d_out),
    ):
        if kind not in RESIDUAL_KINDS:
            raise DictionaryError(
                f"{dictionary.name} {role} {kind}; dictionaries sit on {', '.join(RESIDUAL_KINDS)}"
            )
        try:
            validate(
                Site(kind, dictionary.layer),
                model.arch,
                model.dims,
                parallel=model.arch.is_parallel(model.hf.config),
            )
        except SiteError as error:
            raise DictionaryError(
                f"{dictionary.name} cannot sit on {model.name}: {error}"
            ) from None
        if width != d_model:
            raise DictionaryError(
                f"{dictionary.name} {role} {width}-wide activations, but {model.name}'s {kind} is "
                f"{d_model} wide (d_model): it was trained for another model ({where}); load a "
                "dictionary made for this one"
            )
