"""Pruning: unstructured (magnitude, Wanda, SparseGPT), N:M, structured (heads, channels, layers)."""
