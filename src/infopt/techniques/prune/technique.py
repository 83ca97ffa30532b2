"""``technique=prune``: weights or whole units removed from the model under study.

Unstructured / N:M (``structured.target=none``): masks from magnitude, Wanda or SparseGPT; the
zeros stay in dense matrices (``masked_dense``: no speedup is expected on dense kernels, and the
stored size does not shrink), except 2:4 on CUDA where PyTorch's semi-structured sparse kernels
are used when present (``sparse_kernel``; not verified on a GPU in this project).
Structured (heads / channels / layers): a smaller dense model with an updated config.
Then, optionally, recovery fine-tuning (``technique.recover.enabled``) that keeps the masks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infopt.console import progress
from infopt.errors import ConfigError
from infopt.techniques.base import Applied, Technique, stage_record
from infopt.techniques.prune.config import PruneConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)

# Weight dtypes of PyTorch's semi-structured 2:4 kernels on the default cuSPARSELt backend (its
# CUTLASS fallback adds float32, but only when forced; neither takes float32 from cuSPARSELt).
SPARSE_KERNEL_DTYPES = ("bfloat16", "float16")

MASKED_DENSE_NOTE = (
    "masked_dense: pruned weights are zeros inside dense matrices on dense kernels; no speedup is expected "
    "and the stored size is that of the dense model"
)


def target_layers(model: nn.Module, c: PruneConfig) -> dict[str, nn.Module]:
    """Linear/Conv1D layers inside the decoder blocks selected by include/ignore, by full name."""
    from infopt.models.surgery import decoder_path, linear_layers

    path = decoder_path(model)
    inside = linear_layers(model.get_submodule(path), prefix=f"{path}.")
    return {name: module for name, module in inside.items() if c.targets(name)}


def layer_sparsity(model: nn.Module, names: list[str]) -> dict[str, float]:
    from infopt.models.surgery import get_weight

    return {n: float((get_weight(model.get_submodule(n)) == 0).float().mean()) for n in names}


class Prune(Technique):
    """Magnitude / Wanda / SparseGPT (unstructured, N:M) and structured pruning; see ``PruneConfig``."""

    needs_data = True
    needs_float_weights = True
    config: PruneConfig

    def check(self, cfg: InfoptConfig) -> None:
        c = self.config
        if c.structured.target != "none":
            from infopt.models.load import architecture_config

            arch = architecture_config(
                cfg.model, Path(cfg.paths.cache_dir) if isinstance(cfg.paths.cache_dir, str) else None
            )
            if arch is not None:
                from infopt.techniques.prune.structured import units_removed

                units_removed(arch, c.structured)
        if (
            c.execution == "sparse_kernel"
            and cfg.hardware.accelerator == "gpu"
            and cfg.model.dtype not in SPARSE_KERNEL_DTYPES
        ):
            raise ConfigError(
                f"technique.execution=sparse_kernel with model.dtype={cfg.model.dtype}: PyTorch's 2:4 kernels take "
                f"{' or '.join(SPARSE_KERNEL_DTYPES)} weights; set model.dtype=bfloat16 (the baseline is then measured in "
                "bfloat16 too, so the speedup is sparsity's alone), or technique.execution=masked_dense"
            )
        if (
            c.recover.enabled
            and cfg.data.max_docs is not None
            and cfg.data.max_docs <= cfg.data.heldout_docs + cfg.data.calibration_docs
        ):
            raise ConfigError(
                f"technique.recover.enabled=true needs training documents, but data.max_docs={cfg.data.max_docs} leaves none "
                f"after data.heldout_docs={cfg.data.heldout_docs} and data.calibration_docs={cfg.data.calibration_docs}"
            )

    # --- apply ----------------------------------------------------------------------------------

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        import torch

        from infopt.models.surgery import parameter_count

        c = self.config
        metrics: dict[str, float] = {}
        notes: list[str] = []
        params_before = parameter_count(model)
        t0, cpu0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            if c.structured.target == "none":
                masks, execution = self._unstructured(model, ctx, metrics, notes)
            else:
                self._structured(model, ctx, metrics, notes)
                masks, execution = {}, "dense"
        metrics["prune_wall_s"] = time.perf_counter() - t0
        # CPU seconds of this process (all threads): less sensitive than wall time to other jobs' load.
        metrics["prune_cpu_s"] = time.process_time() - cpu0
        metrics["params_before"] = float(params_before)
        metrics["params_after"] = float(parameter_count(model))
        metrics["params_ratio"] = metrics["params_after"] / max(params_before, 1)
        out = Applied(model=model, execution=execution, metrics=metrics, notes=notes)
        if c.recover.enabled:
            self._recover_and_measure(out, masks, ctx)
        if execution == "sparse_kernel":
            out.model = self._to_sparse_kernels(out.model, masks, notes)
            out.measured = None  # the run measures the model that runs on the sparse kernels
            if not any("semi-structured" in n for n in notes):
                out.execution = "masked_dense"
        return out

    def _recover_and_measure(self, out: Applied, masks: dict, ctx: RunContext) -> None:
        """Recovery fine-tuning; with a measurement, the record gets prune and recover as two stages."""
        before = ctx.measure(out.model, {}) if ctx.measure is not None else None
        pruned = Applied(model=out.model, execution=out.execution, metrics=dict(out.metrics))
        t = time.perf_counter()
        out.model, rec_metrics, rec_notes = self._recover(out.model, masks, ctx)
        out.metrics.update(rec_metrics)
        out.notes.extend(rec_notes)
        if masks:
            out.metrics["sparsity_after_recovery"] = self._achieved(out.model, masks)
        if ctx.measure is None:
            return
        out.measured = ctx.measure(out.model, {})
        recovered = Applied(model=out.model, execution=out.execution, metrics=rec_metrics)
        out.stages = [
            stage_record(1, "prune", pruned, out.metrics["prune_wall_s"], before, ctx.baseline, ctx.baseline,
                         method=self.config.method_label),
            stage_record(2, "recover", recovered, time.perf_counter() - t, out.measured, ctx.baseline, before),
        ]  # fmt: skip

    def _achieved(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
        from infopt.models.surgery import get_weight

        zeros = sum(int((get_weight(model.get_submodule(n)) == 0).sum()) for n in masks)
        total = sum(m.numel() for m in masks.values())
        return zeros / max(total, 1)

    def _calibration(self, ctx: RunContext) -> torch.Tensor:
        c = self.config
        return ctx.data.calibration_blocks(c.calibration_samples, c.calibration_seq_len)  # (count, seq_len)

    def _unstructured(self, model, ctx, metrics, notes) -> tuple[dict[str, torch.Tensor], str]:
        from infopt.techniques.prune import unstructured as U

        c = self.config
        layers = target_layers(model, c)
        if not layers:
            raise ConfigError(f"technique.include={list(c.include)} / ignore={list(c.ignore)} leave no layer to prune")
        nm = c.nm_pair
        from infopt.models.surgery import get_weight

        if nm is not None:
            bad = {n: get_weight(m).shape[1] for n, m in layers.items() if get_weight(m).shape[1] % nm[1]}
            if bad:
                raise ConfigError(
                    f"technique.nm={c.nm}: input widths {sorted(set(bad.values()))} are not multiples of M={nm[1]}"
                )
        else:  # [0, 1) in the schema; the real bound is the narrowest row: keep one weight in it
            width = min(get_weight(m).shape[1] for m in layers.values())
            if U.pruned_per_row(width, c.sparsity) >= width:
                raise ConfigError(
                    f"technique.sparsity={c.sparsity} would zero whole rows of {width}-wide layers; at most "
                    f"{(width - 1) / width:.4f} ({width - 1} of {width}) keeps one weight per row of this model"
                )
        if c.method == "magnitude":
            masks = (
                U.global_magnitude_masks(layers, c.sparsity)
                if c.scope == "global"
                else U.magnitude_masks(layers, c.sparsity, nm)
            )
            for n, m in layers.items():
                U.apply_mask(m, masks[n])
        else:
            from infopt.calibration import LayerwiseRunner

            runner = LayerwiseRunner(model, self._calibration(ctx), c.calibration_batch_size)
            masks = U.prune_sequential(
                runner, layers, c.method, c.sparsity, nm, c.sparsegpt_damp, c.sparsegpt_block_size, progress
            )
            del runner
        metrics["layers_pruned"] = float(len(masks))
        metrics["sparsity_target"] = c.target_sparsity
        metrics["sparsity"] = U.mask_sparsity(masks)  # of the targeted layers
        per_layer = layer_sparsity(model, list(masks))
        metrics["sparsity_min_layer"] = min(per_layer.values())
        metrics["sparsity_max_layer"] = max(per_layer.values())
        execution = "masked_dense"
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        if nm == (2, 4) and c.execution in ("auto", "sparse_kernel") and ctx.device.type == "cuda":
            if dtype in SPARSE_KERNEL_DTYPES:
                execution = "sparse_kernel"
            else:  # auto: casting only these layers would mix a precision change into the sparsity speedup
                notes.append(
                    f"2:4 kernels take {' or '.join(SPARSE_KERNEL_DTYPES)} weights and this model is {dtype}: "
                    "ran masked dense (load it with model.dtype=bfloat16 to use them)"
                )
                notes.append(MASKED_DENSE_NOTE)
        else:
            notes.append(MASKED_DENSE_NOTE)
            if c.execution == "sparse_kernel":
                notes.append(f"execution=sparse_kernel asked, but the device is {ctx.device.type}: ran masked dense")
        return masks, execution

    def _structured(self, model, ctx, metrics, notes) -> None:
        from infopt.models import surgery
        from infopt.techniques.prune import structured as S

        c = self.config
        s = c.structured
        n_remove = S.units_removed(model.config, s)
        metrics["fraction_removed"] = n_remove / surgery.unit_counts(model.config)[s.target]
        if s.target == "layers":
            bi = S.block_influence(model, self._calibration(ctx), c.calibration_batch_size)
            drop = sorted(torch_topk_smallest(bi, n_remove))
            surgery.keep_layers(model, [i for i in range(len(bi)) if i not in drop])
            metrics["layers_removed"] = float(len(drop))
            metrics.update({f"block_influence/{i}": v for i, v in enumerate(bi.tolist())})
            notes.append(f"removed decoder layers {drop} (lowest ShortGPT block influence)")
            if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
                notes.append("scale_attn_by_inverse_layer_idx is on: renumbered layers scale attention differently")
            return
        if s.importance == "magnitude":
            scores = [S.magnitude_importance(layer, model.config, s.target) for layer in surgery.decoder_layers(model)]
        else:
            scores = S.calibration_importance(
                model, self._calibration(ctx), c.calibration_batch_size, s.target, s.importance
            )
        surgery.narrow_units(model, s.target, [surgery.keep_top(sc, sc.numel() - n_remove) for sc in scores])
        metrics[f"{s.target}_removed_per_layer"] = float(n_remove)
        notes.append(
            f"structured: removed {n_remove} {s.target} per layer by {s.importance} importance; dense kernels on a smaller model"
        )

    def _recover(self, model, masks, ctx):
        from infopt.techniques.prune.recover import recover

        c = self.config
        seq_len = c.recover.seq_len or ctx.data.cfg.seq_len
        train = ctx.data.train_blocks(seq_len)
        val = ctx.data.heldout_blocks(seq_len)
        if train.shape[0] < c.recover.batch_size:
            raise ConfigError(
                f"technique.recover: {train.shape[0]} training blocks of {seq_len} tokens, fewer than batch_size={c.recover.batch_size}"
            )
        return recover(model, masks, c.recover, ctx.cfg.hardware, train, val, ctx.subdir("recover"), ctx.resumed_from)

    @staticmethod
    def _to_sparse_kernels(model, masks, notes):
        """2:4 weights to ``torch.sparse.to_sparse_semi_structured`` (CUDA; unverified in this project)."""
        import torch

        try:
            from torch.sparse import to_sparse_semi_structured
        except ImportError:
            notes.append("torch.sparse.to_sparse_semi_structured is not available: ran masked dense")
            notes.append(MASKED_DENSE_NOTE)
            return model
        converted = 0
        for name in masks:
            module = model.get_submodule(name)
            if not isinstance(module, torch.nn.Linear) or str(module.weight.dtype)[6:] not in SPARSE_KERNEL_DTYPES:
                continue
            try:
                module.weight = torch.nn.Parameter(
                    to_sparse_semi_structured(module.weight.detach()), requires_grad=False
                )
                converted += 1
            except Exception as err:  # shape/dtype constraints of the kernels
                log.warning("2:4 kernel not used for %s: %s", name, err)
        if converted:
            notes.append(
                f"sparse_kernel: {converted}/{len(masks)} layers on PyTorch semi-structured 2:4 kernels (not verified on a GPU in this project)"
            )
        else:
            notes.append("no layer met the 2:4 kernels' constraints (fp16/bf16 nn.Linear): ran masked dense")
            notes.append(MASKED_DENSE_NOTE)
        return model


def torch_topk_smallest(values, k: int) -> list[int]:
    import torch

    return [int(i) for i in torch.topk(values, k, largest=False).indices.tolist()]
