"""Decode-time techniques: attention kernels, KV caches, torch.compile, speculative decoding."""
