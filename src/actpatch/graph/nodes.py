"""The computational graph of a model: its nodes, which node writes what another reads, and names.

Nodes are `input` (what the first decoder layer receives), one per attention query head
(`a{L}.h{H}`), one per MLP (`m{L}`) and `logits`. *Senders* write to the residual stream (input,
heads, MLPs); *receivers* read it (each head's q, k and v inputs, each MLP, the logits). An edge
runs from a sender to every receiver after it that reads the stream it writes; under parallel
attention and MLP (GPT-NeoX `use_parallel_residual`) a layer's MLP does not read its own heads.
Edges are named as EAP-IG and MIB write them: `input->a0.h0<q>`, `a0.h2->a1.h0<v>`, `m1->logits`.

Circuits, scores and files are boolean or float matrices over (sender, receiver), laid out in the
order of the forward pass (EAP-IG's "forward" × "backward" indices). Not here: running the model
(`hooks/edges.py`, `graph/evaluate.py`), choosing edges (`graph/select.py`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from actpatch.models.model import Model

QKV = ("q", "k", "v")
StageKind = Literal["attn", "mlp", "logits"]


class EdgeError(ValueError):
    """An edge, node or circuit that does not exist in this model's graph; the message names the fix."""


@dataclass(frozen=True)
class Stage:
    """One place in the forward where receivers read the residual stream: a layer's attention (its
    3·H q, k, v inputs, q of every head first, then k, then v), a layer's MLP, or the logits."""

    kind: StageKind
    layer: int  # n_layers for the logits
    receivers: slice  # their columns in the (sender, receiver) matrix
    senders: int  # senders [0, senders) run before this stage (not all of them need be edges)


@dataclass(frozen=True, eq=False)
class Graph:
    """The edges of one model's computational graph. `exists[s, r]`: sender s writes what receiver r reads."""

    n_layers: int
    n_heads: int
    d_model: int
    parallel: bool
    senders: tuple[str, ...] = field(init=False)
    receivers: tuple[str, ...] = field(init=False)
    exists: Tensor = field(init=False)  # (sender, receiver) bool

    def __post_init__(self) -> None:
        heads = range(self.n_heads)
        senders = ["input"]
        receivers: list[str] = []
        for layer in range(self.n_layers):
            senders += [f"a{layer}.h{h}" for h in heads] + [f"m{layer}"]
            receivers += [f"a{layer}.h{h}<{x}>" for x in QKV for h in heads] + [f"m{layer}"]
        receivers.append("logits")
        exists = torch.zeros(len(senders), len(receivers), dtype=torch.bool)
        for stage in self.stages():
            exists[: stage.senders, stage.receivers] = True
            if (
                self.parallel and stage.kind == "mlp"
            ):  # the MLP reads resid_pre: none of its own layer's heads
                exists[stage.senders - self.n_heads : stage.senders, stage.receivers] = False
        object.__setattr__(self, "senders", tuple(senders))
        object.__setattr__(self, "receivers", tuple(receivers))
        object.__setattr__(self, "exists", exists)

    @classmethod
    def of(cls, model: Model) -> Graph:
        """The graph of `model` (its sizes and whether attention and MLP run in parallel)."""
        dims = model.dims
        return cls(
            dims.n_layers, dims.n_heads, dims.d_model, model.arch.is_parallel(model.hf.config)
        )

    @property
    def cfg(self) -> dict:
        """The sizes as EAP-IG's and MIB's files write them."""
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel_attn_mlp": self.parallel,
            "d_model": self.d_model,
        }

    @property
    def n_edges(self) -> int:
        return int(self.exists.sum())

    @property
    def nodes(self) -> tuple[str, ...]:
        return (*self.senders, "logits")

    def stages(self) -> list[Stage]:
        """The receivers in forward order, stage by stage, with how many senders precede each."""
        h, found = self.n_heads, []
        for layer in range(self.n_layers):
            first_r, first_s = layer * (3 * h + 1), 1 + layer * (h + 1)
            found.append(Stage("attn", layer, slice(first_r, first_r + 3 * h), first_s))
            found.append(
                Stage("mlp", layer, slice(first_r + 3 * h, first_r + 3 * h + 1), first_s + h)
            )
        found.append(
            Stage(
                "logits",
                self.n_layers,
                slice(self.n_layers * (3 * h + 1), None),
                1 + self.n_layers * (h + 1),
            )
        )
        return found

    def __repr__(self) -> str:
        parallel = ", parallel attention and MLP" if self.parallel else ""
        return (
            f"Graph({self.n_layers} layers × {self.n_heads} heads, d_model {self.d_model}"
            f"{parallel}: {len(self.senders)} senders, {len(self.receivers)} receivers, "
            f"{self.n_edges:,} edges)"
        )

    def sender(self, name: str) -> int:
        return _index(
            self.senders, name, "sender", "input, a0.h0, m0", self._why_not(name, "sender")
        )

    def receiver(self, name: str) -> int:
        return _index(
            self.receivers,
            name,
            "receiver",
            "a0.h0<q>, m0, logits",
            self._why_not(name, "receiver"),
        )

    def _why_not(self, name: object, what: str) -> str | None:
        """Why `name` is no sender (receiver) of this graph, and the name meant, where its shape
        says it."""
        match = re.fullmatch(r"(?:a(\d+)\.h(\d+)|m(\d+))(<[qkv]>)?", str(name))
        if match is None:
            return "the logits only receive" if name == "logits" and what == "sender" else None
        layer = int(match[1] if match[1] is not None else match[3])
        head, qkv = (int(match[2]) if match[2] is not None else None), match[4]
        if layer >= self.n_layers:
            return f"this model has {self.n_layers} layers (0–{self.n_layers - 1})"
        if head is not None and head >= self.n_heads:
            return f"this model has {self.n_heads} heads per layer (h0–h{self.n_heads - 1})"
        if head is None and qkv:
            return f"an MLP has no {qkv}: write m{layer}"
        if what == "sender" and qkv:
            return f"a head sends its output, not its {qkv}: write a{layer}.h{head}"
        if what == "receiver" and head is not None and not qkv:
            return (
                f"a head receives on its query, key or value: write a{layer}.h{head}<q>, <k> or <v>"
            )
        return None

    def edge_names(self) -> list[str]:
        """Every edge's name, in matrix order (sender-major)."""
        return [self.edge_name(int(s), int(r)) for s, r in self.exists.nonzero()]

    def edge_name(self, s: int, r: int) -> str:
        return f"{self.senders[s]}->{self.receivers[r]}"

    def edge(self, name: str) -> tuple[int, int]:
        """(sender, receiver) of an edge named like `a0.h1->a1.h0<k>`; raises naming the fix."""
        if not isinstance(name, str) or "->" not in name:
            raise EdgeError(
                f"{name!r} is not an edge name: write SENDER->RECEIVER, e.g. 'input->a0.h0<q>' or 'm1->logits'"
            )
        sender, receiver = name.split("->", 1)
        s, r = self.sender(sender), self.receiver(receiver)
        if not bool(self.exists[s, r]):
            why = (
                "attention and MLP of one layer run in parallel here"
                if self.parallel and receiver[0] == "m"
                else f"{receiver} reads the residual stream before {sender} writes to it"
            )
            raise EdgeError(
                f"there is no edge {name} in this model's graph: {why}; "
                "list the edges that exist with Graph.edge_names()"
            )
        return s, r

    def circuit(self, edges: Iterable[str] = ()) -> Tensor:
        """A circuit as the (sender, receiver) bool matrix of the named edges."""
        if isinstance(edges, str):
            raise EdgeError("pass a list of edge names, not one string: wrap it in [...]")
        mask = torch.zeros_like(self.exists)
        for name in edges:
            mask[self.edge(name)] = True
        return mask

    def full(self) -> Tensor:
        """The circuit of every edge: the clean run."""
        return self.exists.clone()

    def empty(self) -> Tensor:
        """The circuit of no edge: the corrupt run (or the ablated one)."""
        return torch.zeros_like(self.exists)

    def names(self, circuit: Tensor) -> list[str]:
        """The names of the edges in `circuit`."""
        circuit = self.checked(circuit)
        return [self.edge_name(int(s), int(r)) for s, r in circuit.nonzero()]

    def checked(self, circuit: Tensor) -> Tensor:
        """`circuit` as a bool (sender, receiver) matrix holding only edges that exist; raises otherwise."""
        if not isinstance(circuit, Tensor):
            return self.circuit(circuit)
        if circuit.shape != self.exists.shape:
            raise EdgeError(
                f"a circuit is a {tuple(self.exists.shape)} (sender, receiver) matrix for this model, got "
                f"{tuple(circuit.shape)}: build it with Graph.circuit(names) or from scores"
            )
        circuit = circuit.bool()
        if bool((circuit & ~self.exists).any()):
            s, r = (circuit & ~self.exists).nonzero()[0].tolist()
            raise EdgeError(
                f"the circuit holds {self.edge_name(s, r)}, which is not an edge of this model's graph"
            )
        return circuit

    def node_circuit(self, nodes: Iterable[str]) -> Tensor:
        """The edge circuit of a node circuit: every edge between two of `nodes` (input and logits
        included only if listed); a node outside contributes its out-of-circuit value everywhere."""
        wanted = set()
        for name in nodes:
            if name not in self.nodes:
                raise EdgeError(_unknown(name, self.nodes, "node", "input, a0.h0, m0, logits"))
            wanted.add(name)
        keep_s = torch.tensor([name in wanted for name in self.senders])
        keep_r = torch.tensor([_node_of(name) in wanted for name in self.receivers])
        return self.exists & keep_s[:, None] & keep_r[None, :]

    def receiver_node(self, r: int) -> str:
        return _node_of(self.receivers[r])

    def receivers_of(self, node: str) -> list[int]:
        """The receiver columns of a node (a head has three: q, k, v)."""
        return [r for r, name in enumerate(self.receivers) if _node_of(name) == node]


def _node_of(receiver: str) -> str:
    return re.sub(r"<[qkv]>$", "", receiver)


def _index(
    names: tuple[str, ...], name: str, what: str, examples: str, why: str | None = None
) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise EdgeError(_unknown(name, names, what, examples, why)) from None


def _unknown(
    name: object, names: Iterable[str], what: str, examples: str, why: str | None = None
) -> str:
    if why is not None:  # the name's shape says what was meant: better than the closest spellings
        return f"{name!r} is not a {what} of this model's graph: {why}"
    close = difflib.get_close_matches(str(name), list(names), n=3)
    hint = f" (closest: {', '.join(close)})" if close else ""
    return (
        f"{name!r} is not a {what} of this model's graph{hint}; {what}s are named like {examples}"
    )
