"""Model loading (embedded GGUF, hub, local, tiny random-init) and saving."""
