"""What this machine can do, measured once per process: memory bandwidth and matmul FLOP/s.

Used to predict decode speed from first principles (bytes of weights per token / bandwidth),
so a result can say "compressed 4x, predicted 3.6x faster, measured 1.1x".
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

from infopt.bench.timing import repeat


def cpuinfo_field(*names: str) -> str | None:
    """The first /proc/cpuinfo line's value whose key is one of ``names`` (None where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


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


@lru_cache(maxsize=4)
def probe(device_str: str = "cpu", dtype_str: str = "float32") -> dict[str, float]:
    """Copy bandwidth (GB/s, read + write) and matmul GFLOP/s on ``device``."""
    device = torch.device(device_str)
    dtype = getattr(torch, dtype_str)
    # 64 MiB of fp32 on CPU (well past caches), 512 MiB on a GPU
    n = (64 if device.type == "cpu" else 512) * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / repeat(lambda: dst.copy_(src), 5, warmup=1, device=device).median / 1e9
    k = 1024 if device.type == "cpu" else 8192
    a = torch.randn(k, k, device=device, dtype=dtype)
    b = torch.randn(k, k, device=device, dtype=dtype)
    gflops = 2 * k**3 / repeat(lambda: a @ b, 3, warmup=1, device=device).median / 1e9
    return {"bandwidth_gbs": bandwidth, "matmul_gflops": gflops}
