"""Measured cost of running a model: prefill latency, decode throughput, peak memory, size.

Timing rules: warm-up runs first, then ``repeats`` timed runs, medians reported with the spread
(min/max). Decode speed excludes prefill: the time from the first decoding step's logits to the
last step's, over N - 1 steps (``StepClock``), with EOS disabled so every run decodes N tokens.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import torch
from torch import nn

from infopt.bench.hardware import probe
from infopt.bench.size import flops_per_token, stored_bytes, weight_bytes_per_token
from infopt.bench.timing import repeat, synchronize, timed
from infopt.config.schema import BenchConfig
from infopt.models.surgery import model_device, parameter_count

MB = 2**20


class PeakMemory:
    """Peak process RSS (CPU, sampled every 2 ms) or max allocated (CUDA) inside a ``with``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())


def make_prompts(
    token_stream: torch.Tensor | None, batch: int, length: int, vocab_size: int, seed: int = 0
) -> torch.Tensor:
    """(batch, length) real-text prompts from consecutive slices of ``token_stream`` (random ids if none)."""
    if token_stream is not None and token_stream.numel() >= batch * length:
        return token_stream[: batch * length].view(batch, length).clone()
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen)


def static_costs(model: nn.Module) -> dict[str, float]:
    return {
        "params": float(parameter_count(model)),
        "stored_mb": stored_bytes(model) / MB,
        "weight_mb_per_token": weight_bytes_per_token(model) / MB,
        "gflops_per_token": flops_per_token(model) / 1e9,
    }


class StepClock:
    """A logits processor that only records when each decoding step's logits are ready.

    generate() calls it once per step, right after that step's forward pass, for any batch size;
    the span from the first call (prefill done) to the last is pure decode time. This avoids
    subtracting two noisy end-to-end timings, which can go negative on a busy machine.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def _measure_batch(
    model: nn.Module,
    prompts: torch.Tensor,
    cfg: BenchConfig,
    device: torch.device,
    generate_kwargs: dict[str, Any],
) -> dict[str, float]:
    """Prefill and decode numbers at one batch size (keys end in ``_b<batch>``)."""
    from transformers import LogitsProcessorList

    b = prompts.shape[0]
    mask = torch.ones_like(prompts)
    decode: list[float] = []  # seconds per decoded token, one entry per timed run
    full: list[float] = []

    def gen(record: bool) -> None:
        clock = StepClock(device)
        _, seconds = timed(
            lambda: model.generate(
                input_ids=prompts, attention_mask=mask, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                do_sample=False, logits_processor=LogitsProcessorList([clock]), **generate_kwargs,
            ),
            device,
        )  # fmt: skip
        if record:
            full.append(seconds)
            # Tokens, not calls: assisted generation may call the processor several times a step.
            if len(clock.times) >= 2:
                decode.append((clock.times[-1] - clock.times[0]) / (cfg.new_tokens - 1))

    prefill = repeat(lambda: model(input_ids=prompts, attention_mask=mask), cfg.repeats, cfg.warmup, device).median
    for _ in range(cfg.warmup):
        gen(record=False)
    for _ in range(cfg.repeats):
        gen(record=True)
    out = {
        f"prefill_ms_b{b}": 1e3 * prefill,
        f"prefill_tokens_per_s_b{b}": b * cfg.prompt_tokens / prefill,
        f"e2e_ms_b{b}": 1e3 * statistics.median(full),
    }
    if decode:  # new_tokens >= 2
        med = statistics.median(decode)
        out.update({
            f"decode_tokens_per_s_b{b}": b / med,
            f"decode_ms_per_token_b{b}": 1e3 * med,
            f"decode_tokens_per_s_b{b}_min": b / max(decode),
            f"decode_tokens_per_s_b{b}_max": b / min(decode),
        })
    return out


@torch.inference_mode()
def measure(
    model: nn.Module,
    cfg: BenchConfig,
    generate_kwargs: dict[str, Any] | None = None,
    prompt_stream: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> tuple[dict[str, float], list[str]]:
    """All bench numbers for ``model`` (keys without the ``bench/`` prefix), and notes."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = model_device(model)
    model.eval()
    out = static_costs(model)
    notes: list[str] = []
    if not cfg.timing:  # sizes and bytes per token only: a quality study that makes no speed claim
        return out, ["bench.timing=false: sizes only, no speed measured"]
    extra = dict(generate_kwargs or {})
    vocab = model.config.vocab_size
    with PeakMemory(device) as mem:
        for b in cfg.batch_sizes:
            prompts = make_prompts(prompt_stream, b, cfg.prompt_tokens, vocab).to(device)
            try:
                out.update(
                    _measure_batch(
                        model, prompts, cfg, device, dict(extra, pad_token_id=pad_token_id)
                    )
                )
            except ValueError as err:  # e.g. assisted generation supports batch 1 only
                notes.append(f"decode at batch {b} skipped: {err}")
    if device.type == "cuda":
        out["peak_memory_mb"] = mem.peak / MB
    else:
        out["peak_rss_mb"] = mem.peak / MB
    out["working_memory_mb"] = (mem.peak - mem.start) / MB
    if cfg.probe_hardware:
        # On a GPU the matmul rate of the model's own dtype (bf16 tensor cores); on CPU, fp32's.
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        hw = probe(str(device), str(dtype).removeprefix("torch.") if device.type == "cuda" else "float32")
        out["machine_bandwidth_gbs"] = hw["bandwidth_gbs"]
        out["machine_matmul_gflops"] = hw["matmul_gflops"]
        by_bytes = hw["bandwidth_gbs"] * 1e9 / (out["weight_mb_per_token"] * MB)
        by_flops = hw["matmul_gflops"] / max(out["gflops_per_token"], 1e-12)
        out["predicted_decode_tokens_per_s_b1"] = min(by_bytes, by_flops)
    return out, notes
