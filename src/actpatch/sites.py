"""Sites: the named places in a model whose activations we read and overwrite.

A `Site` is one patchable unit (a kind, a layer, optionally a head or neuron, and a position).
This module parses the ways users write them (our own `head[layer=9, head=6, pos=END]`, or
TransformerLens names such as `blocks.9.attn.hook_z`), validates them against a model, and
expands a sweep's selection into the grid of sites. Where a site lives in a module is `hooks`'s job.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if (
    TYPE_CHECKING
):  # annotations only: parsing a site must not import transformers (the CLI parses before loading)
    from actpatch.basis import Basis
    from actpatch.models.arch import Arch, Dims

SiteKind = Literal[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "mlp_in",
    "head",
    "q",
    "k",
    "v",
    "pattern",
    "neuron",
]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)
# Kinds whose patch unit is one d_model-wide vector per position. `mlp_in` is what the MLP reads:
# its input norm's output (TransformerLens's `ln2.hook_normalized`; its `hook_mlp_in` is resid_mid).
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
# Sites in a basis at a hook point (actpatch.bases): one latent of a dictionary, or the dictionary's
# error node (the written activation minus the dictionary's reconstruction). They need the basis
# itself, so they are not in SITE_KINDS (a sweep over SITE_KINDS has no dictionary to give them).
FeatureKind = Literal["feature", "feature_error"]
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)
# Kinds split by attention head. k and v are indexed by KV head: under grouped-query attention one
# k or v head serves a whole group of query heads, so patching it moves all of them.
HEAD_KINDS = ("head", "q", "pattern")
KV_KINDS = ("k", "v")

Pos = int | str | None  # an index (negative counts from the end), a named position, or None for all


class SiteError(ValueError):
    """A site that does not exist on this model, or cannot be parsed."""


@dataclass(frozen=True)
class Site:
    """One patchable unit. `head` is a query head, or a KV head for `k` and `v`; `basis` and
    `latent` name a feature site (`feature`: a latent of the basis; `feature_error`: its error)."""

    kind: SiteKind | FeatureKind
    layer: int
    head: int | None = None
    neuron: int | None = None
    pos: Pos = None  # None: every position at once
    latent: int | None = None
    basis: Basis | None = None  # compared by identity: two loads of one file are two bases

    def __str__(self) -> str:
        parts = [f"layer={self.layer}"]
        if self.basis is not None:
            parts.append(f"basis={self.basis.name}")
        if self.head is not None:
            parts.append(f"head={self.head}")
        if self.neuron is not None:
            parts.append(f"neuron={self.neuron}")
        if self.latent is not None:
            parts.append(f"latent={self.latent}")
        if self.pos is not None:
            parts.append(f"pos={self.pos}")
        return f"{self.kind}[{', '.join(parts)}]"

    @classmethod
    def parse(cls, text: str, *, bases: Sequence[Basis] = ()) -> Site:
        """Read `head[layer=9, head=6, pos=END]` or a TransformerLens name (`blocks.9.attn.hook_z`);
        a feature site (`feature[layer=3, basis=NAME, latent=12]`) names one of `bases`."""
        if not isinstance(text, str):
            raise TypeError(
                f"Site.parse reads a string such as 'head[layer=9, head=6]', not {type(text).__name__} {text!r}"
            )
        kind, layer, fields = _parse(text)
        if layer is None:
            raise SiteError(f"site {text!r} names no layer: write e.g. {kind}[layer=0]")
        if "basis" in fields or kind in FEATURE_KINDS:
            fields["basis"] = _named_basis(text, fields.get("basis"), bases)
        return cls(kind, layer, **fields)


def parse_kind(text: str) -> tuple[SiteKind | FeatureKind, int | None]:
    """The kind (and layer, if one is named) in a sweep's site argument: `resid_pre`, `blocks.3.hook_z`..."""
    if not isinstance(text, str):
        one = (
            " To patch one Site, pass its kind and layers=/heads=/positions=, or use actpatch.patch."
            if isinstance(text, Site)
            else ""
        )
        kinds = ", ".join(SITE_KINDS + FEATURE_KINDS)
        raise TypeError(
            f"a sweep's site is a kind name such as 'resid_pre' (one of {kinds}), "
            f"not {type(text).__name__} {text!r}.{one}"
        )
    kind, layer, fields = _parse(text)
    if fields:
        raise SiteError(
            f"a sweep takes a site kind, not one site: use heads=/positions= instead of {text!r}"
        )
    return kind, layer


def validate(site: Site, arch: Arch, dims: Dims, *, parallel: bool) -> None:
    """Raise `SiteError` saying what is wrong with `site` on this model, and how to fix it."""
    if site.kind in FEATURE_KINDS:
        return _validate_feature(site, arch, dims, parallel=parallel)
    if site.kind not in SITE_KINDS:
        raise SiteError(_unknown_kind(site.kind))
    if site.basis is not None or site.latent is not None:
        raise SiteError(
            f"{site}: only feature sites take basis= and latent=; use kind "
            "'feature' or "
            "'feature_error'"
        )
    if not -dims.n_layers <= site.layer < dims.n_layers:
        raise SiteError(
            f"{site}: layer {site.layer} is out of range; this model has layers 0..{dims.n_layers - 1}"
        )
    if site.kind == "resid_mid" and parallel:
        raise SiteError(
            f"{site}: this {arch.family} model runs attention and MLP in parallel on resid_pre, so there "
            "is no residual stream between them; patch attn_out or mlp_out, or resid_pre of the next layer."
        )
    n_units = {
        **dict.fromkeys(HEAD_KINDS, dims.n_heads),
        **dict.fromkeys(KV_KINDS, dims.n_kv_heads),
    }
    if site.kind in n_units:
        n = n_units[site.kind]
        if site.head is None:
            raise SiteError(f"{site}: a {site.kind} site needs head= (0..{n - 1})")
        if not 0 <= site.head < n:
            kv = " KV" if site.kind in KV_KINDS else ""
            raise SiteError(
                f"{site}: head {site.head} is out of range; this model has{kv} heads 0..{n - 1}"
            )
    elif site.head is not None:
        raise SiteError(
            f"{site}: {site.kind} is not split by attention head; drop head=, or use one of {HEAD_KINDS + KV_KINDS}"
        )
    if site.kind == "neuron":
        if site.neuron is None or not 0 <= site.neuron < dims.d_mlp:
            raise SiteError(f"{site}: a neuron site needs neuron= in 0..{dims.d_mlp - 1}")
    elif site.neuron is not None:
        raise SiteError(f"{site}: only neuron sites take neuron=")


def _validate_feature(site: Site, arch: Arch, dims: Dims, *, parallel: bool) -> None:
    """A feature site: its basis, layer, latent and the sites the basis reads and writes."""
    from actpatch.basis import Basis

    basis = site.basis
    if not isinstance(basis, Basis):
        raise SiteError(
            f"{site}: a {site.kind} site needs basis= (from actpatch.load_dictionary), "
            f"got {type(basis).__name__}"
        )
    if site.layer % dims.n_layers != basis.layer:
        raise SiteError(
            f"{site}: the basis {basis.name} sits at layer {basis.layer}, not {site.layer}"
        )
    if site.head is not None or site.neuron is not None:
        raise SiteError(f"{site}: feature sites take latent=, not head= or neuron=")
    if site.kind == "feature":
        if site.latent is None or not 0 <= site.latent < basis.n_latents:
            raise SiteError(
                f"{site}: latent {site.latent} is out of range; {basis.name} has "
                "latents "
                f"0..{basis.n_latents - 1}"
            )
    elif site.latent is not None:
        raise SiteError(f"{site}: the error node is one per position; drop latent=")
    for kind in (basis.reads, basis.writes):
        # e.g. a dictionary on resid_mid, which a parallel model lacks
        validate(Site(kind, basis.layer), arch, dims, parallel=parallel)


def unit_dim(kind: str) -> str | None:
    """The result dimension splitting a kind below the layer (head, kv_head, neuron, latent)."""
    if kind in HEAD_KINDS:
        return "head"
    if kind in KV_KINDS:
        return "kv_head"
    if kind == "neuron":
        return "neuron"
    if kind == "feature":
        return "latent"
    return None


def default_positions(kind: str) -> Literal["each", "all"]:
    """Residual and feature sites are swept position by position; per-head and neuron sites at all
    positions at once.

    A per-head sweep at every position is layers × heads × positions forwards; patching all positions
    at once is the usual first look (pass positions=[...] to localise afterwards)."""
    return "each" if kind in RESIDUAL_KINDS + FEATURE_KINDS else "all"


def grid(
    kind: SiteKind | FeatureKind,
    layers: Sequence[int],
    units: Sequence[int] | None,
    positions: Sequence[Pos],
    *,
    basis: Basis | None = None,
) -> list[Site]:
    """Every site of a sweep, layer-major, in the order results are laid out."""
    fields = {"head": "head", "kv_head": "head", "neuron": "neuron", "latent": "latent"}
    field = fields.get(unit_dim(kind) or "")
    extra_basis = {} if basis is None else {"basis": basis}
    sites = []
    for layer in layers:
        for unit in units if field else [None]:
            for pos in positions:
                extra = {field: unit} if field else {}
                sites.append(Site(kind, layer, pos=pos, **extra, **extra_basis))
    return sites


_TL_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:(attn|mlp|ln2)\.)?hook_(\w+)$")
_TL_KINDS = {
    (None, "resid_pre"): "resid_pre",
    (None, "resid_mid"): "resid_mid",
    (None, "resid_post"): "resid_post",
    (None, "attn_out"): "attn_out",
    (None, "mlp_out"): "mlp_out",
    (None, "mlp_in"): "resid_mid",  # TransformerLens's MLP-block input is before the norm
    ("ln2", "normalized"): "mlp_in",
    ("mlp", "in"): "mlp_in",
    ("attn", "z"): "head",
    ("attn", "q"): "q",
    ("attn", "k"): "k",
    ("attn", "v"): "v",
    ("attn", "pattern"): "pattern",
    ("mlp", "post"): "neuron",
}
_OURS = re.compile(r"^([\w-]+)(?:\[(.*)\])?$")  # "-" read here so that "resid-pre" gets its hint


def _parse(text: str) -> tuple[SiteKind, int | None, dict]:
    text = text.strip()
    if match := _TL_BLOCK.match(text):
        layer, sub, hook = int(match[1]), match[2], match[3]
        kind = _TL_KINDS.get((sub, hook))
        if kind is None:
            raise SiteError(
                f"TransformerLens hook {text!r} has no actpatch site; supported: "
                + ", ".join(f"blocks.L.{s + '.' if s else ''}hook_{h}" for s, h in _TL_KINDS)
            )
        return kind, layer, {}
    match = _OURS.match(text)
    if not match:
        raise SiteError(
            f"cannot read site {text!r}; write e.g. head[layer=9, head=6, pos=-1] or blocks.9.attn.hook_z"
        )
    kind = match[1]
    if kind not in SITE_KINDS + FEATURE_KINDS:
        raise SiteError(_unknown_kind(kind))
    fields: dict = {}
    for item in filter(None, (part.strip() for part in (match[2] or "").split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in ("layer", "head", "neuron", "pos", "latent", "basis") or not value:
            raise SiteError(
                f"in {text!r}: {item!r} is not one of layer=, head=, neuron=, latent=, basis=, pos="
            )
        if key == "basis":
            fields[key] = value
        else:
            fields[key] = _number_or_name(value) if key == "pos" else _integer(value, key, text)
    layer = fields.pop("layer", None)
    return kind, layer, fields


def _named_basis(text: str, name: str | None, bases: Sequence[Basis]) -> Basis:
    """The basis among `bases` whose name a parsed feature site gives."""
    if name is None:
        raise SiteError(f"{text!r}: a feature site names its dictionary: basis=NAME")
    found = [basis for basis in bases if basis.name == name]
    if len(found) != 1:
        known = ", ".join(basis.name for basis in bases) or "none given"
        raise SiteError(
            f"{text!r}: no single basis named {name!r} among bases= ({known}); "
            "pass the loaded "
            "dictionary: Site.parse(text, bases=[dictionary])"
        )
    return found[0]


def _number_or_name(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _integer(value: str, key: str, text: str) -> int:
    if not re.fullmatch(r"-?\d+", value):
        raise SiteError(f"in {text!r}: {key}= must be an integer, got {value!r}")
    return int(value)


def _unknown_kind(kind: str) -> str:
    # "resid-pre" and "RESID_PRE" are the commonest slips; difflib alone would rank them poorly.
    normalised = kind.strip().lower().replace("-", "_").replace(" ", "_")
    known = SITE_KINDS + FEATURE_KINDS
    close = (
        [normalised] if normalised in known else difflib.get_close_matches(normalised, known, n=3)
    )
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"unknown site kind {kind!r}.{hint} Site kinds: {', '.join(known)}."
