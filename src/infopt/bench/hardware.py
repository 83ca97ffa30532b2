"""What this machine can do, measured once per process: memory bandwidth and matmul FLOP/s.

Used to predict decode speed from first principles (bytes of weights per token / bandwidth),
so a result can say "compressed 4x, predicted 3.6x faster, measured 1.1x".
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from functools import lru_cache

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict[str, str | int | float]:
    info: dict[str, str | int | float] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    return info


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@lru_cache(maxsize=4)
def probe(device_str: str = "cpu", dtype_str: str = "float32") -> dict[str, float]:
    """Copy bandwidth (GB/s, read + write) and matmul GFLOP/s on ``device``."""
    device = torch.device(device_str)
    dtype = getattr(torch, dtype_str)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = (
        64 * 2**20 // 4 if device.type == "cpu" else 512 * 2**20 // 4
    )  # 64 MiB of fp32 on CPU (well past caches)
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        sync()

    copy()
    bandwidth = 2 * src.numel() * 4 / _timed(copy, 5) / 1e9
    k = 1024 if device.type == "cpu" else 8192
    a = torch.randn(k, k, device=device, dtype=dtype)
    b = torch.randn(k, k, device=device, dtype=dtype)

    def mm():
        a @ b
        sync()

    mm()
    gflops = 2 * k**3 / _timed(mm, 3) / 1e9
    return {"bandwidth_gbs": bandwidth, "matmul_gflops": gflops}
