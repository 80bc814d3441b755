"""Bases: patch an activation in another basis (dictionary latents, a subspace) instead of whole.

A basis at a hook point encodes the activation it reads into coordinates (latents) and writes
back through decoder rows. Sparse dictionaries (SAEs, transcoders) and subspaces (a direction, a
learned rank-r basis) are both bases; `basis.py` is their one contract and the one patch rule.
"""

from actpatch.bases.basis import Basis, move_latents
from actpatch.bases.dictionary import Dictionary, DictionaryError
from actpatch.bases.load import load_dictionary

__all__ = ["Basis", "Dictionary", "DictionaryError", "load_dictionary", "move_latents"]
