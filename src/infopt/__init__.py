"""infopt: measure what quantizing, pruning, distilling or re-plumbing an LLM buys and costs."""

__version__ = "0.1.0"
