"""Where a dictionary file says it lives, as one of our site kinds and a layer.

Files name their hook points two ways: TransformerLens names (`blocks.3.hook_resid_post`, read by
the one alias parser in `sites.py`) and Hugging Face module paths (`model.layers.3.mlp`, relative
to the model or its base model, optionally with `.input`/`.output`). A module path means something
only on a model, through its family's `Arch` entry; a hook point we cannot patch is refused here,
with what we can patch instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from actpatch.bases.dictionary import DictionaryError
from actpatch.models.model import Model
from actpatch.sites import FEATURE_KINDS, RESIDUAL_KINDS, SiteError, parse_kind

Side = str  # "input" or "output": which side of a module a path names


@dataclass(frozen=True)
class Hook:
    """A hook point as a file names it: a TransformerLens name, or an HF module path and a side."""

    name: str
    side: Side | None = None  # None: a TransformerLens name

    def resolve(self, model: Model | None) -> tuple[str, int]:
        """(kind, layer); a module path needs the model it belongs to."""
        if self.side is None:
            return from_transformer_lens(self.name)
        if model is None:
            raise DictionaryError(
                f"this dictionary names its hook point as the module {self.name!r}, which means "
                "something only on a model: load it with load_dictionary(path, model)"
            )
        return from_module_path(model, self.name, self.side)


def from_transformer_lens(name: str) -> tuple[str, int]:
    """(kind, layer) for a TransformerLens hook name; only d_model-wide kinds hold dictionaries."""
    try:
        kind, layer = parse_kind(name)
    except SiteError as error:
        raise DictionaryError(f"hook point {name!r}: {error}") from None
    if layer is None or kind in FEATURE_KINDS:
        raise DictionaryError(
            f"hook point {name!r} names no layer's activation (e.g. blocks.3.hook_resid_post)"
        )
    if kind not in RESIDUAL_KINDS:
        raise DictionaryError(
            f"hook point {name!r} is the {kind} site; dictionaries are supported on "
            f"{', '.join(RESIDUAL_KINDS)} (per-head z and neuron dictionaries are not built yet)"
        )
    return kind, layer


def from_module_path(model: Model, path: str, side: Side) -> tuple[str, int]:
    """(kind, layer) for side "input" or "output" of the module at HF `path` (a trailing
    `.input`/`.output` overrides `side`), on `model`."""
    if path.endswith((".input", ".output")):
        path, _, side = path.rpartition(".")
    layers = model.arch.layers
    rest = None
    # sparsify names modules under the base model ("layers.3"); others from the root
    # ("model.layers.3")
    parts = layers.split(".")
    for start in range(len(parts)):
        prefix = ".".join(parts[start:]) + "."
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            break
    match = re.fullmatch(r"(\d+)(?:\.(.+))?", rest or "")
    if match is None:
        raise DictionaryError(
            f"module {path!r} is not inside a decoder layer of this {model.arch.family} model "
            f"(its layers are {layers}.N)"
        )
    layer, module = int(match[1]), match[2]
    kind = _module_kind(model, module, side)
    if kind is None:
        arch = model.arch
        known = [
            f"{layers}.N ({'input' if side == 'input' else 'output'})",
            f"{arch.attn} (output)",
            f"{arch.mlp} (output)",
            f"{arch.mlp_in_norm} (output)",
            f"{_mlp_module(model)} (input)",
        ]
        raise DictionaryError(
            f"the {side} of module {path!r} is not a site actpatch patches on this "
            f"{arch.family} model; dictionaries can sit on: {', '.join(known)}"
        )
    return kind, layer


def _module_kind(model: Model, module: str | None, side: Side) -> str | None:
    arch = model.arch
    if module is None:
        return "resid_pre" if side == "input" else "resid_post"
    if side == "output":
        return {arch.attn: "attn_out", arch.mlp: "mlp_out", arch.mlp_in_norm: "mlp_in"}.get(module)
    if module == _mlp_module(model):
        return "mlp_in"
    if module == arch.mlp_in_norm and not arch.is_parallel(model.hf.config):
        return "resid_mid"
    return None


def _mlp_module(model: Model) -> str:
    """The MLP itself (the parent of its down projection), whose input is mlp_in in every family;
    on Gemma 3 it is not `Arch.mlp`, whose output is the post-norm's."""
    return model.arch.mlp_down.rpartition(".")[0]
