"""Scoring: lm-eval on the in-memory model, local task data, token perplexity."""
