"""A subspace as MIB's causal-variable track stores it: a featurizer, its inverse, and indices.

MIB (the Mechanistic Interpretability Benchmark) calls the map into a variable's coordinates a
*featurizer*. A submission holds one folder per `{TASK}_{MODEL}_{VARIABLE}` (MODEL is the
transformers class name) and in it, per model unit, three files: `{unit}_featurizer` and
`{unit}_inverse_featurizer` (each a `torch.save` dict of `model_info` and a `state_dict`) and
`{unit}_indices` (JSON: the features to patch, or null for all). A subspace is their
`SubspaceFeaturizerModule`: a rotation layer of weight U (d × r) under PyTorch's orthogonal
parametrisation, features f = x U, error x − f Uᵀ. Units are `ResidualStream(Layer-L,Token-T)`
(our `resid_pre`) and `AttentionHead(Layer-L,Head-H,Token-T)` (our `head`, a head's z); T is the
task's name for the position. The layout follows CausalAbstraction's `Featurizer.save_modules`
and `load_modules`; this module writes and reads it without importing pyvene.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from actpatch.bases.subspace import BasisError, Subspace
from actpatch.sites import Site

FEATURIZER, INVERSE = "SubspaceFeaturizerModule", "SubspaceInverseFeaturizerModule"
_UNIT = re.compile(
    r"^(?:ResidualStream\(Layer-(\d+),Token-(.+)\)|"
    r"AttentionHead\(Layer-(\d+),Head-(\d+),Token-(.+)\))$"
)


def unit_name(site: Site, token: str) -> str:
    """MIB's model-unit name for a `resid_pre` or `head` site at the task's position `token`."""
    if site.kind == "resid_pre":
        return f"ResidualStream(Layer-{site.layer},Token-{token})"
    if site.kind == "head":
        return f"AttentionHead(Layer-{site.layer},Head-{site.head},Token-{token})"
    raise BasisError(
        f"{site}: MIB's model units are the residual stream (resid_pre) and attention "
        "heads (head); export a subspace learned at one of those"
    )


def export_featurizer(
    subspace: Subspace,
    folder: str | Path,
    *,
    task: str,
    model_class: str,
    variable: str,
    token: str,
) -> Path:
    """Write the three files of `subspace` under `folder/{task}_{model_class}_{variable}/`;
    return the unit's base path (the files are it + `_featurizer`, ...). `token` is the task's
    name for the position the subspace was learned at (e.g. "last_token")."""
    unit = Path(folder) / f"{task}_{model_class}_{variable}" / unit_name(subspace.site, token)
    unit.parent.mkdir(parents=True, exist_ok=True)
    rotate = _Rotate(subspace.U)
    model_info = {
        "featurizer_class": FEATURIZER,
        "inverse_featurizer_class": INVERSE,
        "n_features": subspace.rank,
        "additional_config": {
            "rotation_matrix": rotate.weight.detach().clone(),
            "requires_grad": False,
        },
    }
    state = {f"rotate.{key}": value for key, value in rotate.state_dict().items()}
    torch.save({"model_info": model_info, "state_dict": state}, f"{unit}_featurizer")
    torch.save({"model_info": model_info, "state_dict": state}, f"{unit}_inverse_featurizer")
    Path(f"{unit}_indices").write_text(json.dumps(list(range(subspace.rank))))
    return unit


def load_featurizer(unit: str | Path, *, site: Site | None = None) -> Subspace:
    """The subspace stored at `unit` (the base path: files `unit_featurizer`, `unit_indices`).

    The site is read from the unit's name (`ResidualStream(Layer-3,Token-last_token)` →
    `resid_pre[layer=3, pos=last_token]`) unless `site` is given; indices, where not null, keep
    those columns of U."""
    unit = Path(unit)
    path = Path(f"{unit}_featurizer")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no featurizer there; pass the unit's base path, e.g. "
            "folder/ioi_GPT2LMHeadModel_output_position/ResidualStream(Layer-3,Token-last_token)"
        )
    stored = torch.load(path, map_location="cpu", weights_only=True)
    info = stored["model_info"]
    if info.get("featurizer_class") != FEATURIZER:
        raise BasisError(
            f"{path} holds a {info.get('featurizer_class')}, not a {FEATURIZER}: only "
            "subspace featurizers load as a Subspace"
        )
    matrix = info["additional_config"]["rotation_matrix"]
    rotate = _Rotate(torch.zeros_like(matrix))
    rotate.load_state_dict({k.removeprefix("rotate."): v for k, v in stored["state_dict"].items()})
    U = rotate.weight.detach().float()
    indices_path = Path(f"{unit}_indices")
    if indices_path.is_file() and (indices := json.loads(indices_path.read_text())) is not None:
        U = U[:, indices]
    return Subspace(site or _site(unit.name), U, name=f"mib.{unit.name}")


def _site(name: str) -> Site:
    found = _UNIT.match(name)
    if found is None:
        raise BasisError(
            f"{name!r} is not a MIB unit name (ResidualStream(Layer-L,Token-T) or "
            "AttentionHead(Layer-L,Head-H,Token-T)); pass site="
        )
    if found[1] is not None:
        return Site("resid_pre", int(found[1]), pos=found[2])
    return Site("head", int(found[3]), head=int(found[4]), pos=found[5])


class _Rotate(nn.Module):
    """A (d, r) weight under the orthogonal parametrisation, as MIB's rotation layer holds it:
    registering it on U itself stores U (completed to a d × d base) and the identity rotation."""

    def __init__(self, U: Tensor):
        super().__init__()
        self.weight = nn.Parameter(U.detach().float().clone(), requires_grad=False)
        with torch.random.fork_rng(devices=[]):  # the base's completion draws random columns
            torch.manual_seed(0)
            orthogonal(self)
