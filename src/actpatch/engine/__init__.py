"""Sweep engines: the reference oracle and the faster paths checked against it."""
