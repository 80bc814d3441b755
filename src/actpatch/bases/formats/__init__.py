"""Readers of the dictionary files other tools write, one module per format.

Each reads its files (safetensors and JSON/YAML only, never a pickle) into `Dictionary` fields and
the hook points the file names; `bases/load.py` picks the reader and places the result on a model.
"""
