"""Quantized layers that replace Linear / Conv1D (both computed as y = x W^T + b).

``Int8Linear``: int8 weights (per output channel) times int8 activations quantized on the fly
(per token or per tensor), int32 accumulation, optionally with LLM.int8()'s outlier columns kept
in float. ``kernel="int_mm"`` runs ``torch._int_mm`` (real int8 GEMM) through ``int8_mm``, which keeps
within CUDA's shape limits; ``kernel="reference"`` does the same arithmetic in float (the slow,
obviously-correct oracle, and the simulated path).

``PackedLinear``: 2..8-bit codes packed into bytes with float16 scales and zero points; the
weight is unpacked and de-quantized at each forward (no low-bit kernel on this CPU), so its size
is real and its speed is not expected to improve.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from infopt.techniques.quantize.core import (
    QuantizedWeight,
    QuantSpec,
    dequantize,
    pack_bits,
    unpack_bits,
)

KERNELS = ("reference", "int_mm")

# CUDA's torch._int_mm (a cuBLASLt int8 GEMM) rejects A with 16 rows or fewer and K or N that are not
# multiples of 8 (``_int_mm_out_cuda`` in ATen's cuda/Blas.cpp); the CPU kernel takes any shape. A
# decode step sends 1 row (batch 1) or 8 (batch 8), so those are padded with zero rows up to 17:
# the products of the real rows are unchanged, the padded ones are computed and dropped.
CUDA_INT_MM_MIN_ROWS = 17
CUDA_INT_MM_MULTIPLE = 8


# torch's CPU int8 GEMM is fast only where the CPU has int8 dot-product instructions. Measured on an
# AMD EPYC with AVX2 only (torch 2.13, one thread): torch._int_mm 18-35x slower than a float32 matmul
# of the same codes. Without them the codes are multiplied in float32: same results, no int8 speedup.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@lru_cache(maxsize=1)
def cpu_has_int8_dot() -> bool:
    """Whether /proc/cpuinfo lists an int8 dot-product extension (True where it cannot be read)."""
    from infopt.bench.hardware import cpuinfo_field

    flags = cpuinfo_field("flags", "Features")  # x86, Arm
    return flags is None or bool(set(flags.split()).intersection(INT8_DOT_FLAGS))


def follows_cuda_rules(t: torch.Tensor) -> bool:
    """Whether ``int8_mm`` must keep CUDA's shape limits for ``t`` (tests force it on CPU tensors)."""
    return t.is_cuda


def int_mm_plan(rows: int, k: int, n: int, cuda: bool) -> tuple[str, int]:
    """How (rows, k) x (k, n) runs: ("int_mm", rows sent to the kernel) or ("float", rows)."""
    if not cuda:  # the CPU kernel takes any shape, but is slow without int8 dot products
        return ("int_mm", rows) if cpu_has_int8_dot() else ("float", rows)
    if k % CUDA_INT_MM_MULTIPLE or n % CUDA_INT_MM_MULTIPLE:
        return "float", rows
    return "int_mm", max(rows, CUDA_INT_MM_MIN_ROWS)


def int8_mm(xq: torch.Tensor, wq_t: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) @ int8 (K, N) -> (M, N) float32 holding the int32 accumulations.

    On CUDA, M <= 16 is zero-padded to 17 rows; K or N not a multiple of 8 falls back to a float32
    matmul of the codes (exact while |sum| < 2^24; the int8 weights still save memory, not time), as
    does a CPU without int8 dot-product instructions (``cpu_has_int8_dot``).
    """
    m, k = xq.shape
    n = wq_t.shape[1]
    if m == 0:
        return xq.new_zeros((0, n), dtype=torch.float32)
    how, rows = int_mm_plan(m, k, n, follows_cuda_rules(xq))
    if how == "float":
        return xq.float() @ wq_t.float()
    if rows > m:
        xq = torch.cat([xq, xq.new_zeros(rows - m, k)])  # (rows, K): zero rows contribute zeros
    return torch._int_mm(xq, wq_t)[:m].float()  # (M, N) int32 -> float


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 of each row of (N, k): codes int8 (N, k), scales float (N, 1)."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        act_granularity: str = "per_token",
        outlier_threshold: float | None = None,
        kernel: str = "int_mm",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; valid: {KERNELS}")
        w = weight.detach().float()  # (out, in)
        q, s = quantize_rows_int8(w)
        self.register_buffer("qweight", q)  # (out, in) int8
        self.register_buffer("w_scale", s.squeeze(1).half())  # (out,) float16
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.act_granularity = act_granularity
        self.outlier_threshold = outlier_threshold
        self.kernel = kernel

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, act={self.act_granularity}, "
            f"outliers>{self.outlier_threshold}, kernel={self.kernel}"
        )

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.w_scale.float().unsqueeze(1)

    def int_mm_on_cuda(self) -> bool:
        """Whether CUDA's int8 GEMM takes this layer's K and N (else ``int8_mm`` multiplies in float)."""
        return int_mm_plan(1, self.in_features, self.out_features, cuda=True)[0] == "int_mm"

    def _int8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) float -> (N, out) float via int8 x int8 -> int32."""
        if self.act_granularity == "per_token":
            xq, xs = quantize_rows_int8(x)  # (N, in), (N, 1)
        else:
            xq, xs = quantize_rows_int8(x.reshape(1, -1))
            xq, xs = xq.view_as(x), xs.expand(x.shape[0], 1)
        if self.kernel == "int_mm":
            acc = int8_mm(xq, self.qweight.t())  # (N, out)
        else:
            acc = xq.float() @ self.qweight.float().t()
        return acc * xs * self.w_scale.float().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        dtype = x.dtype
        x2 = x.reshape(-1, shape[-1]).float()  # (N, in)
        if self.outlier_threshold is not None:
            # LLM.int8(): columns where any |x| exceeds the threshold go through a float matmul.
            outl = (x2.abs() > self.outlier_threshold).any(dim=0)  # (in,)
            if outl.any():
                x_reg = x2.masked_fill(outl.unsqueeze(0), 0.0)
                y = self._int8_matmul(x_reg)
                w_out = self.qweight[:, outl].float() * self.w_scale.float().unsqueeze(
                    1
                )  # (out, n_outl)
                y = y + x2[:, outl] @ w_out.t()
            else:
                y = self._int8_matmul(x2)
        else:
            y = self._int8_matmul(x2)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(dtype).reshape(*shape[:-1], self.out_features)


class PackedLinear(nn.Module):
    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        out_f, in_f = qw.codes.shape
        self.in_features, self.out_features = in_f, out_f
        self.bits, self.group_size, self.symmetric = (
            qw.spec.bits,
            qw.spec.group_size,
            qw.spec.symmetric,
        )
        self.register_buffer("qweight", pack_bits(qw.codes, qw.spec.bits))  # packed uint8 stream
        self.register_buffer("scales", qw.scales.half())  # (out, n_groups) float16
        # Zero points are integers < 2^bits: packed the same way as the codes.
        self.register_buffer("qzeros", pack_bits(qw.zeros.to(torch.uint8), qw.spec.bits))
        self.n_groups = qw.scales.shape[1]
        default = (
            torch.arange(in_f) // self.group_size
            if self.group_size > 0
            else torch.zeros(in_f, dtype=torch.long)
        )
        if torch.equal(qw.g_idx.cpu(), default):
            self.g_idx = None  # contiguous groups: nothing to store
        else:
            self.register_buffer("g_idx", qw.g_idx.to(torch.int16))  # act-order groups
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.group_size, self.symmetric)

    def dequantized_weight(self) -> torch.Tensor:
        codes = unpack_bits(self.qweight, self.bits, self.out_features * self.in_features)
        codes = codes.view(self.out_features, self.in_features).float()  # (out, in)
        zeros = unpack_bits(self.qzeros, self.bits, self.out_features * self.n_groups)
        zeros = zeros.view(self.out_features, self.n_groups).float()
        if self.g_idx is not None:
            g = self.g_idx.long()
        elif self.group_size > 0:
            g = torch.arange(self.in_features, device=codes.device) // self.group_size
        else:
            g = torch.zeros(self.in_features, dtype=torch.long, device=codes.device)
        return dequantize(codes, self.scales.float()[:, g], zeros[:, g])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, self.bias)
