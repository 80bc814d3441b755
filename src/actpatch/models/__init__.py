"""Models: loading real Hugging Face causal LMs, and the table of where each family keeps its sites."""

from actpatch.models.arch import ARCHS, Arch, Dims, UnsupportedArchitecture
from actpatch.models.model import Model

__all__ = ["ARCHS", "Arch", "Dims", "Model", "UnsupportedArchitecture"]
