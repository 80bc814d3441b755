"""`Model`: an unmodified Hugging Face causal LM, its tokenizer, and the facts patching needs.

It adds no layers and wraps no modules; hooks are attached only for the duration of a
`hooks.capture` or `hooks.patch` call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actpatch.models.arch import Arch, Dims, arch_of, dims_of


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
    ) -> "Model":
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

    @torch.no_grad()
    def last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits at the final position, (batch, vocab): the only position our metrics read.

        `logits_to_keep=1` unembeds the final position alone, which is exact and skips most of the
        unembedding's cost."""
        check_token_tensor(tokens)
        tokens = tokens.to(self.device)
        return self.hf(input_ids=tokens, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) from the final resid_post at one position (batch, d_model).

        What the model's own head does after its last layer: final norm, unembedding, and a final
        logit soft-cap where the config has one (Gemma)."""
        logits = self.hf.get_output_embeddings()(self.hf.get_submodule(self.arch.final_norm)(resid))
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()


def check_token_tensor(tokens: object) -> None:
    """Raise `TypeError` unless `tokens` is a (batch, pos) tensor of integer token ids, the input every
    forward here takes; strings and lists would otherwise fail deep inside the model."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        got = f"a {tokens.ndim}-d {tokens.dtype} tensor" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be a (batch, pos) tensor of token ids, got {got}; pass e.g. pairs.clean, "
                        "or model.tokenizer(texts, return_tensors='pt').input_ids")
