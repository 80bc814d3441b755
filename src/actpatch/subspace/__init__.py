"""Subspaces: patch part of an activation, learn that part (DAS), and check it is no illusion.

`patching.py` patches a fixed `bases.subspace.Subspace`; `das.py` learns one by gradient descent;
`guards.py` runs the controls every DAS result carries; `readout.py` finds what the weights after
a site read; `planted.py` builds tiny models with a known answer for testing all of it.
"""
