"""Techniques: each one turns the model under study into the model to measure.

Kept import-free so that composing a config (``--help``) does not import torch; see
``registry.py`` for the list and ``base.py`` for the interface.
"""
