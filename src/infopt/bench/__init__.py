"""Measured cost: latency, throughput, memory, size, and first-principles predictions."""
