"""The basis contract, kept where `bases` users find it; it lives in the leaf `actpatch.basis`."""

from actpatch.basis import Basis, move_latents

__all__ = ["Basis", "move_latents"]
