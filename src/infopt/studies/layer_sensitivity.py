"""``experiment=layer_sensitivity``: how much held-out loss each layer costs when it alone is changed.

The inner technique (quantize, prune, ...) is applied once to a copy of the model; then each
decoder layer (or its attention / MLP sub-module) of the copy is swapped into the untouched model
one at a time and the held-out loss (mean token NLL) is measured. Swapping modules works for any
technique that keeps layers self-contained, whatever kernels the layer runs on, so no technique
needs a "one layer only" option. This is the per-layer sensitivity analysis used to choose
mixed-precision / mixed-sparsity settings (e.g. HAWQ, Dong et al. 2019, uses Hessian traces; here
the loss change is measured directly, as in the leave-one-layer ablations of Gromov et al. 2024,
"The Unreasonable Ineffectiveness of the Deeper Layers").

Caveat (stated in the result): a calibration-based method (GPTQ, Wanda, ...) calibrates layer L
on inputs already passed through the transformed layers before it, so "layer L alone" uses the
weights it would get in the full run. For data-free methods (RTN, magnitude) it is exact.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from infopt.errors import ConfigError, ResourceError
from infopt.models.surgery import decoder_layers, num_layers
from infopt.studies.layer_sensitivity_config import LayerSensitivityConfig
from infopt.techniques.base import Applied, Technique

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

PART_MATCH = {
    "attn": "attn",
    "mlp": "mlp",
}  # child-name substrings: Llama self_attn/mlp, GPT-2 attn/mlp


def part_name(layer: nn.Module, part: str) -> str:
    for child, _ in layer.named_children():
        if PART_MATCH[part] in child:
            return child
    names = ", ".join(n for n, _ in layer.named_children())
    raise ResourceError(
        f"layer_sensitivity: no {part} sub-module in {type(layer).__name__} (children: {names})"
    )


def mean_nll(model: nn.Module, blocks) -> float:
    from infopt.evaluation.perplexity import window_nll

    total, count = window_nll(model, blocks)
    return total / count


def heatmap_matrix(
    metrics: dict[str, float], key: str = "delta_loss"
) -> tuple[list[int], list[str], list[list[float]]]:
    """(layers, parts, matrix[layer][part]) from ``layer<NN>/<part>/<key>`` metric keys."""
    cells: dict[tuple[int, str], float] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if (
            len(parts) == 3
            and parts[0].startswith("layer")
            and parts[0][5:].isdigit()
            and parts[2] == key
        ):
            cells[(int(parts[0][5:]), parts[1])] = v
    layers = sorted({layer for layer, _ in cells})
    cols = [p for p in ("block", "attn", "mlp") if any(c == p for _, c in cells)]
    return layers, cols, [[cells.get((layer, p), math.nan) for p in cols] for layer in layers]


class LayerSensitivity(Technique):
    config: LayerSensitivityConfig

    def _inner(self):
        from infopt.techniques.registry import build

        inner_cfg = self.config.inner_config()
        try:
            return inner_cfg, build(inner_cfg)
        except Exception as err:
            raise type(err)(f"technique.inner: {err}") from None

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self._inner()[1].needs_data

    def check(self, cfg: InfoptConfig) -> None:
        inner_cfg, inner = self._inner()
        try:
            inner.check(dataclasses.replace(cfg, technique=inner_cfg))
        except ConfigError as err:
            raise ConfigError(f"technique.inner ({inner_cfg.name}): {err}") from None

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        cfg = self.config
        inner_cfg, inner = self._inner()
        blocks = ctx.data.heldout_blocks(cfg.seq_len)[: cfg.eval_blocks]  # (N, T)
        if blocks.shape[0] == 0:
            raise ResourceError(
                f"layer_sensitivity: the held-out text is shorter than technique.seq_len={cfg.seq_len}; lower it"
            )
        model.eval()
        base = mean_nll(model, blocks)
        inner_ctx = dataclasses.replace(
            ctx, cfg=dataclasses.replace(ctx.cfg, technique=inner_cfg), output_dir=ctx.subdir("inner")
        )
        applied = inner.apply(copy.deepcopy(model), inner_ctx)
        changed = applied.model.eval()
        full = mean_nll(changed, blocks)
        metrics = {"loss_base": base, "loss_all_layers": full, "delta_loss_all_layers": full - base}
        rows = per_layer_losses(model, changed, blocks, cfg.parts, base, metrics)
        first = cfg.parts[0]
        ranked = sorted(((metrics[f"layer{i:02d}/{first}/delta_loss"], i) for i in range(num_layers(model))), reverse=True)
        metrics[f"sum_delta_loss_layers_{first}"] = sum(d for d, _ in ranked)
        settings = {k: v for k, v in dataclasses.asdict(inner_cfg).items() if k not in ("name", "export", "save_model")}
        notes = [
            f"layer sensitivity of {inner_cfg.name} {settings}; loss = mean token NLL on {blocks.shape[0]} held-out "
            f"windows of {cfg.seq_len} tokens: base {base:.4f}, all layers changed {full:.4f}",
            f"most sensitive layers ({first}): {[i for _, i in ranked[: cfg.top_k]]}; keep them at a milder setting "
            "with the technique's per-layer overrides",
            "calibration-based methods calibrate each layer on inputs from already-changed earlier layers; "
            "for data-free methods the per-layer numbers are exact",
            *applied.notes,
        ]
        artifacts = {**applied.artifacts, **self._heatmap(metrics, inner_cfg.name, ctx)}
        table = {"columns": ["layer", "part", "loss", "delta_loss"], "rows": rows}
        return Applied(
            model=changed, execution=applied.execution, generate_kwargs=applied.generate_kwargs, metrics=metrics,
            notes=notes, artifacts=artifacts, tokenizer=applied.tokenizer, tables={"layer_sensitivity": table},
        )  # fmt: skip

    @staticmethod
    def _heatmap(metrics: dict[str, float], inner: str, ctx: RunContext) -> dict[str, str]:
        try:
            from infopt.report.plots import layer_heatmap_png
        except ImportError:  # matplotlib missing: the numbers are still in the record
            return {}
        png = ctx.output_dir / "layer_sensitivity.png"
        layers, parts, matrix = heatmap_matrix(metrics)
        png.write_bytes(layer_heatmap_png(layers, parts, matrix, title=f"held-out loss change per layer: {inner}"))
        ctx.logger.log_image("layer_sensitivity/heatmap", png)
        return {"heatmap": str(png)}


@contextmanager
def swapped(model: nn.Module, changed: nn.Module, index: int, part: str):
    """Decoder layer ``index`` of ``model`` (or its attention / MLP part) replaced by ``changed``'s, for the block."""
    layers, replacements = decoder_layers(model), decoder_layers(changed)
    owner, name = (layers, str(index)) if part == "block" else (layers[index], part_name(layers[index], part))
    source = replacements if part == "block" else replacements[index]
    saved = owner[index] if part == "block" else getattr(owner, name)
    setattr(owner, name, source[index] if part == "block" else getattr(source, name))
    try:
        yield
    finally:
        setattr(owner, name, saved)


@torch.no_grad()
def per_layer_losses(model, changed, blocks, parts: list[str], base: float, metrics: dict[str, float]) -> list[list[Any]]:
    """Held-out loss with each layer (part) alone taken from ``changed``; adds ``layerNN/<part>/delta_loss``."""
    rows: list[list[Any]] = []
    for i in range(num_layers(model)):
        for part in parts:
            with swapped(model, changed, i, part):
                loss = mean_nll(model, blocks)
            metrics[f"layer{i:02d}/{part}/delta_loss"] = loss - base
            rows.append([i, part, loss, loss - base])
    return rows
