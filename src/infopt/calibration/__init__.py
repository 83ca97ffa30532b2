"""Calibration: run a causal LM one decoder block at a time and collect input statistics.

One sequential pipeline for every calibrated method (GPTQ, SparseGPT, Wanda, AWQ, SmoothQuant):
``LayerwiseRunner`` holds the current inputs of one block, ``sequential`` walks the blocks (the
inputs of block i are the outputs of the already processed blocks 0..i-1), ``collect`` gathers one
statistic per distinct input tensor with ``input_hooks``, and ``stats`` holds the accumulators.
"""

from infopt.calibration.runner import LayerwiseRunner, collect, input_hooks, sequential
from infopt.calibration.stats import AbsMax, ColumnNorms, HessianAccumulator, TokenSample

__all__ = [
    "AbsMax",
    "ColumnNorms",
    "HessianAccumulator",
    "LayerwiseRunner",
    "TokenSample",
    "collect",
    "input_hooks",
    "sequential",
]
