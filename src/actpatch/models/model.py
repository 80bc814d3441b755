"""`Model`: an unmodified Hugging Face causal LM, its tokenizer, and the facts patching needs.

It adds no layers and wraps no modules; hooks are attached only for the duration of a
`hooks.capture` or `hooks.patch` call."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actpatch import caller
from actpatch.models.arch import Arch, Dims, arch_of, dims_of

if TYPE_CHECKING:
    from actpatch.run import Run


@dataclass(eq=False)
class Model:
    """A causal LM ready for patching: `hf` is the untouched transformers model."""

    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    arch: Arch
    dims: Dims
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hf(
        cls,
        hf: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        name: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Model:
        """Wrap a model you already loaded; raises if its family is not in the table."""
        return cls(
            hf=hf,
            tokenizer=tokenizer,
            arch=arch_of(hf),
            dims=dims_of(hf.config),
            name=name or getattr(hf.config, "name_or_path", None) or type(hf).__name__,
            provenance=dict(provenance or {}),
        )

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def layer(self, index: int) -> torch.nn.Module:
        """Decoder layer `index` (its input is resid_pre, its output resid_post)."""
        return self.hf.get_submodule(self.arch.layers)[index]

    def submodule(self, layer: int, path: str) -> torch.nn.Module:
        """The module at `path` (an `Arch` field) inside decoder layer `layer`."""
        return self.layer(layer).get_submodule(path)

    def token_strings(self, ids: torch.Tensor) -> list[str]:
        """Readable token strings for labels (`<id>` where there is no tokenizer)."""
        if self.tokenizer is None:
            return [f"<{int(i)}>" for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def last_logits(self, run: Run | torch.Tensor) -> torch.Tensor:
        """Deprecated: `actpatch.hooks.last_logits(model, run)`, the same logits.

        Running the model is the job of `hooks/`, which builds on this module; this method stays
        for one release and is the one import from models up into hooks (pyproject's contract)."""
        warnings.warn(
            "Model.last_logits(run) is deprecated and will be removed in the next release: use "
            "actpatch.hooks.last_logits(model, run)",
            DeprecationWarning,
            stacklevel=caller.stacklevel(),
        )
        from actpatch.hooks.forward import last_logits

        return last_logits(self, run)

    def __repr__(self) -> str:
        d = self.dims
        params = sum(p.numel() for p in self.hf.parameters())
        return (
            f"Model({self.name!r}, {type(self.hf).__name__}, {params / 1e6:.0f}M parameters, {d.n_layers} layers, "
            f"{d.n_heads} heads ({d.n_kv_heads} KV), d_model {d.d_model}, {next(self.hf.parameters()).dtype}, {self.device})"
        )

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) from the final resid_post at one position (batch, d_model).

        What the model's own head does after its last layer: final norm, unembedding, and a final
        logit soft-cap where the config has one (Gemma)."""
        logits = self.hf.get_output_embeddings()(self.hf.get_submodule(self.arch.final_norm)(resid))
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()


_SAMPLES_PER_TENSOR = 4096  # weight values hashed per parameter: enough to tell two models apart


def weights_fingerprint(model: Model) -> str:
    """A hash of every parameter's name, shape, dtype and a strided sample of its values.

    Cheap on any model size (a few thousand values per tensor) and different for two random
    initialisations or two fine-tunes; it is not a cryptographic hash of the weights."""
    digest = hashlib.sha256()
    for name, tensor in [*model.hf.named_parameters(), *model.hf.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.device.type != "meta" and tensor.numel():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _SAMPLES_PER_TENSOR)]
            digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def check_token_tensor(tokens: object) -> None:
    """Raise `TypeError` unless `tokens` is a (batch, pos) tensor of integer token ids, the input every
    forward here takes; strings and lists would otherwise fail deep inside the model."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        got = (
            f"a {tokens.ndim}-d {tokens.dtype} tensor"
            if isinstance(tokens, torch.Tensor)
            else type(tokens).__name__
        )
        raise TypeError(
            f"tokens must be a (batch, pos) tensor of token ids, got {got}; pass e.g. pairs.clean, "
            "or model.tokenizer(texts, return_tensors='pt').input_ids"
        )


def check_model(model: Any) -> None:
    """Raise `TypeError` unless `model` is an actpatch `Model` (a bare transformers model lacks the
    architecture table entry and sizes every sweep needs)."""
    if not isinstance(model, Model):
        raise TypeError(
            f"model must be an actpatch Model, got {type(model).__name__}; load one with actpatch.load_model(...) "
            "or wrap a transformers model you loaded yourself: actpatch.Model.from_hf(hf_model, tokenizer)"
        )
