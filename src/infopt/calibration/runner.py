"""The layer-by-layer runner, input hooks, and the sequential pass every calibrated method shares.

The inputs of block 0 are captured once (a pre-hook that stops the forward); then each block is run
on them, statistics are collected with hooks, the method changes the block (quantizes, prunes,
smooths), and the changed block's outputs become the next block's inputs: GPTQ's sequential
procedure (Frantar et al. 2022, Sec. 4). Memory holds one block's activations for every calibration
batch (SmolLM2: 128 x 512 x 576 floats = 151 MB), whatever the model's depth.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from infopt.models.surgery import decoder_path

# Arguments a block receives that must not be replayed from the capture.
_DROPPED_KWARGS = ("past_key_values", "past_key_value", "layer_past", "use_cache", "hidden_states")


class _Stop(Exception):
    pass


class LayerwiseRunner:
    """Holds the current inputs of one decoder block for every calibration batch."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor, batch_size: int) -> None:
        self.model = model
        self.prefix = decoder_path(model) + "."
        self.layers: nn.ModuleList = model.get_submodule(self.prefix[:-1])  # type: ignore[assignment]
        self.device = next(model.parameters()).device
        self.inputs: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self._capture(tokens, batch_size)

    @torch.no_grad()
    def _capture(self, tokens: torch.Tensor, batch_size: int) -> None:
        def hook(_mod, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kw = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
            self.inputs.append((hidden.detach(), kw))
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for i in range(0, tokens.shape[0], batch_size):
                batch = tokens[i : i + batch_size].to(self.device)  # (b, T)
                try:
                    self.model(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()

    def blocks(self) -> Iterator[tuple[int, nn.Module]]:
        yield from enumerate(self.layers)

    def modules_of(self, index: int) -> dict[str, nn.Module]:
        """Every module of block ``index`` by its full name in the model."""
        return {f"{self.prefix}{index}.{n}": m for n, m in self.layers[index].named_modules()}

    @torch.no_grad()
    def run(self, block: nn.Module, update: bool = False) -> list[torch.Tensor]:
        """Outputs of ``block`` on the current inputs; ``update`` makes them the next block's inputs."""
        outs = []
        for hidden, kw in self.inputs:
            out = block(hidden, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
        if update:
            self.inputs = [(o, kw) for o, (_, kw) in zip(outs, self.inputs, strict=True)]
        return outs


@contextmanager
def input_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]):
    """Call fn(name, x) with the (N, in) input of each module on every forward."""

    def make(name: str):
        def hook(_mod, args):
            x = args[0].detach()
            fn(name, x.reshape(-1, x.shape[-1]))  # (B*T, in)

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Statistic(Protocol):
    def add(self, x: torch.Tensor) -> None: ...


@torch.no_grad()
def collect(
    runner: LayerwiseRunner,
    block: nn.Module,
    modules: dict[str, nn.Module],
    make: Callable[[int, torch.device], Statistic],
) -> dict[str, Any]:
    """One statistic per module over the block's current inputs, ``make(in_features, device)`` each.

    Modules that read the same tensor (q/k/v, gate/up) share one statistic instead of three: the
    input is recognised by its storage, batch by batch (holding the tensor keeps its memory from
    being reused by a later, different input of the same shape).
    """
    stats: dict[str, Any] = {}
    seen: dict[tuple, tuple[str, torch.Tensor]] = {}

    def add(name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape))
        if key in seen and seen[key][0] != name:
            stats[name] = stats[seen[key][0]]
            return
        seen[key] = (name, x)
        if name not in stats:
            stats[name] = make(x.shape[1], x.device)
        stats[name].add(x)

    for hidden, kw in runner.inputs:  # one batch at a time, so input storages are not reused across batches
        seen.clear()
        with input_hooks(modules, add):
            block(hidden, **kw)
    return stats


def sequential(
    runner: LayerwiseRunner,
    process: Callable[[int, nn.Module, dict[str, nn.Module]], None],
    targets: Collection[str] | None = None,
    label: str = "calibration",
    log: Callable[[str], None] | None = None,
) -> set[str]:
    """Walk the blocks in order: ``process(index, block, targeted modules)``, then the changed block's
    outputs feed the next block. ``targets`` (full module names; None = every block, with no modules
    passed) selects what each block hands to ``process``. Returns the targeted names that were seen."""
    seen: set[str] = set()
    for idx, block in runner.blocks():
        mine = {} if targets is None else {n: m for n, m in runner.modules_of(idx).items() if n in targets}
        if targets is None or mine:
            process(idx, block, mine)
            seen.update(mine)
        runner.run(block, update=True)
        if log is not None:
            log(f"{label}: block {idx + 1}/{len(runner.layers)}")
    return seen
