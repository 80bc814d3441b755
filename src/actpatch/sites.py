"""Sites: the named places in a model whose activations we read and overwrite.

A `Site` is one patchable unit (a kind, a layer, optionally a head or neuron, and a position).
This module parses the ways users write them (our own `head[layer=9, head=6, pos=END]`, or
TransformerLens names such as `blocks.9.attn.hook_z`), validates them against a model, and
expands a sweep's selection into the grid of sites. Where a site lives in a module is `hooks`'s job.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence, get_args

if TYPE_CHECKING:  # annotations only: parsing a site must not import transformers (the CLI parses before loading)
    from actpatch.models.arch import Arch, Dims

SiteKind = Literal[
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head", "q", "k", "v", "pattern", "neuron"
]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)
# Kinds whose patch unit is one vector per position of the residual stream.
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Kinds split by attention head. k and v are indexed by KV head: under grouped-query attention one
# k or v head serves a whole group of query heads, so patching it moves all of them.
HEAD_KINDS = ("head", "q", "pattern")
KV_KINDS = ("k", "v")

Pos = int | str | None  # an index (negative counts from the end), a named position, or None for all


class SiteError(ValueError):
    """A site that does not exist on this model, or cannot be parsed."""


@dataclass(frozen=True)
class Site:
    """One patchable unit. `head` is a query head, or a KV head for `k` and `v`."""

    kind: SiteKind
    layer: int
    head: int | None = None
    neuron: int | None = None
    pos: Pos = None  # None: every position at once

    def __str__(self) -> str:
        parts = [f"layer={self.layer}"]
        if self.head is not None:
            parts.append(f"head={self.head}")
        if self.neuron is not None:
            parts.append(f"neuron={self.neuron}")
        if self.pos is not None:
            parts.append(f"pos={self.pos}")
        return f"{self.kind}[{', '.join(parts)}]"

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Read `head[layer=9, head=6, pos=END]` or a TransformerLens name (`blocks.9.attn.hook_z`)."""
        if not isinstance(text, str):
            raise TypeError(f"Site.parse reads a string such as 'head[layer=9, head=6]', not {type(text).__name__} {text!r}")
        kind, layer, fields = _parse(text)
        if layer is None:
            raise SiteError(f"site {text!r} names no layer: write e.g. {kind}[layer=0]")
        return cls(kind, layer, **fields)


def parse_kind(text: str) -> tuple[SiteKind, int | None]:
    """The kind (and layer, if one is named) in a sweep's site argument: `resid_pre`, `blocks.3.hook_z`..."""
    if not isinstance(text, str):
        one = " To patch one Site, pass its kind and layers=/heads=/positions=, or use actpatch.patch." if isinstance(text, Site) else ""
        raise TypeError(f"a sweep's site is a kind name such as 'resid_pre' (one of {', '.join(SITE_KINDS)}), "
                        f"not {type(text).__name__} {text!r}.{one}")
    kind, layer, fields = _parse(text)
    if fields:
        raise SiteError(f"a sweep takes a site kind, not one site: use heads=/positions= instead of {text!r}")
    return kind, layer


def validate(site: Site, arch: Arch, dims: Dims, *, parallel: bool) -> None:
    """Raise `SiteError` saying what is wrong with `site` on this model, and how to fix it."""
    if site.kind not in SITE_KINDS:
        raise SiteError(_unknown_kind(site.kind))
    if not -dims.n_layers <= site.layer < dims.n_layers:
        raise SiteError(f"{site}: layer {site.layer} is out of range; this model has layers 0..{dims.n_layers - 1}")
    if site.kind == "resid_mid" and parallel:
        raise SiteError(
            f"{site}: this {arch.family} model runs attention and MLP in parallel on resid_pre, so there "
            "is no residual stream between them; patch attn_out or mlp_out, or resid_pre of the next layer."
        )
    n_units = {**dict.fromkeys(HEAD_KINDS, dims.n_heads), **dict.fromkeys(KV_KINDS, dims.n_kv_heads)}
    if site.kind in n_units:
        n = n_units[site.kind]
        if site.head is None:
            raise SiteError(f"{site}: a {site.kind} site needs head= (0..{n - 1})")
        if not 0 <= site.head < n:
            kv = " KV" if site.kind in KV_KINDS else ""
            raise SiteError(f"{site}: head {site.head} is out of range; this model has{kv} heads 0..{n - 1}")
    elif site.head is not None:
        raise SiteError(
            f"{site}: {site.kind} is not split by attention head; drop head=, or use one of {HEAD_KINDS + KV_KINDS}"
        )
    if site.kind == "neuron":
        if site.neuron is None or not 0 <= site.neuron < dims.d_mlp:
            raise SiteError(f"{site}: a neuron site needs neuron= in 0..{dims.d_mlp - 1}")
    elif site.neuron is not None:
        raise SiteError(f"{site}: only neuron sites take neuron=")


def unit_dim(kind: str) -> str | None:
    """The result dimension that splits a kind below the layer: head, kv_head, neuron, or none."""
    if kind in HEAD_KINDS:
        return "head"
    if kind in KV_KINDS:
        return "kv_head"
    if kind == "neuron":
        return "neuron"
    return None


def default_positions(kind: str) -> Literal["each", "all"]:
    """Residual sites are swept position by position; per-head and neuron sites at all positions at once.

    A per-head sweep at every position is layers × heads × positions forwards; patching all positions
    at once is the usual first look (pass positions=[...] to localise afterwards)."""
    return "each" if kind in RESIDUAL_KINDS else "all"


def grid(
    kind: SiteKind,
    layers: Sequence[int],
    units: Sequence[int] | None,
    positions: Sequence[Pos],
) -> list[Site]:
    """Every site of a sweep, layer-major, in the order results are laid out."""
    field = {"head": "head", "kv_head": "head", "neuron": "neuron"}.get(unit_dim(kind) or "")
    sites = []
    for layer in layers:
        for unit in units if field else [None]:
            for pos in positions:
                extra = {field: unit} if field else {}
                sites.append(Site(kind, layer, pos=pos, **extra))
    return sites


_TL_BLOCK = re.compile(r"^blocks\.(\d+)\.(?:(attn|mlp)\.)?hook_(\w+)$")
_TL_KINDS = {
    (None, "resid_pre"): "resid_pre",
    (None, "resid_mid"): "resid_mid",
    (None, "resid_post"): "resid_post",
    (None, "attn_out"): "attn_out",
    (None, "mlp_out"): "mlp_out",
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
        raise SiteError(f"cannot read site {text!r}; write e.g. head[layer=9, head=6, pos=-1] or blocks.9.attn.hook_z")
    kind = match[1]
    if kind not in SITE_KINDS:
        raise SiteError(_unknown_kind(kind))
    fields: dict = {}
    for item in filter(None, (part.strip() for part in (match[2] or "").split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in ("layer", "head", "neuron", "pos") or not value:
            raise SiteError(f"in {text!r}: {item!r} is not one of layer=, head=, neuron=, pos=")
        fields[key] = _number_or_name(value) if key == "pos" else _integer(value, key, text)
    layer = fields.pop("layer", None)
    return kind, layer, fields


def _number_or_name(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def _integer(value: str, key: str, text: str) -> int:
    if not re.fullmatch(r"-?\d+", value):
        raise SiteError(f"in {text!r}: {key}= must be an integer, got {value!r}")
    return int(value)


def _unknown_kind(kind: str) -> str:
    # "resid-pre" and "RESID_PRE" are the commonest slips; difflib alone would rank them poorly.
    normalised = kind.strip().lower().replace("-", "_").replace(" ", "_")
    close = [normalised] if normalised in SITE_KINDS else difflib.get_close_matches(normalised, SITE_KINDS, n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"unknown site kind {kind!r}.{hint} Site kinds: {', '.join(SITE_KINDS)}."
