"""Tasks: generators of clean/corrupt prompt pairs with answers and named positions."""
from actpatch.tasks.ioi import ioi, ioi_pairs

__all__ = ["ioi", "ioi_pairs"]
