"""Model loading (embedded GGUF, hub, local, tiny random-init) and saving."""

# Config keys that state a model's maximum context, in the order they are trusted (Llama-style, GPT-2):
# read from a loaded config (``surgery.context_length``) and from a config.json before anything loads
# (``composition.limits``); here rather than in ``surgery`` so that the config check imports no torch.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
