"""Tasks: generators of clean/corrupt prompt pairs with answers and named positions."""
