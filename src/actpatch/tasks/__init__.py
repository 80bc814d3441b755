"""Tasks: generators of clean/corrupt prompt pairs with answers and named positions."""

from actpatch.tasks.factual import factual_recall
from actpatch.tasks.files import from_file
from actpatch.tasks.greater_than import greater_than
from actpatch.tasks.induction import induction
from actpatch.tasks.ioi import ioi, ioi_groups, ioi_pairs

__all__ = [
    "factual_recall",
    "from_file",
    "greater_than",
    "induction",
    "ioi",
    "ioi_groups",
    "ioi_pairs",
]
