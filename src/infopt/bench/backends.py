"""Benchmark in the engine a user deploys with, beside the transformers numbers.

``bench.backend=llamacpp``: the run's GGUF export (``technique.export=gguf``) timed through
llama-cpp-python (an optional extra that compiles llama.cpp: ``make bench-llamacpp``), plus the
held-out token perplexity of that exact file read back by transformers' GGUF loader. The baseline
(which has no export of its own) is exported to a temporary GGUF with ``technique.export_float_type``.
``bench.backend=vllm``: GPU only; on a machine without CUDA it is skipped with a note.

Keys (``bench/``): ``llamacpp_prefill_ms_b1``, ``llamacpp_prefill_tokens_per_s_b1``,
``llamacpp_decode_tokens_per_s_b1`` (+ ``_min``/``_max``), ``llamacpp_decode_ms_per_token_b1``,
``gguf_mb``; (``eval/``) ``gguf/token_perplexity_w<window>``. Decode time is taken per token over
``bench.new_tokens`` greedy steps after the prompt, so it excludes prefill, like ``StepClock``.
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infopt.errors import ConfigError

if TYPE_CHECKING:
    from infopt.config.schema import BenchConfig, InfoptConfig

log = logging.getLogger(__name__)

LLAMACPP_HINT = (
    "llama-cpp-python is an optional extra (it compiles llama.cpp for several minutes): "
    "run `make bench-llamacpp` or `pip install '.[llamacpp]'`"
)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def check_backend(cfg: InfoptConfig) -> None:
    """Backend/export combinations, checked before the model loads."""
    backend = cfg.bench.backend
    export = getattr(cfg.technique, "export", "none")
    if backend == "llamacpp":
        if export != "gguf":
            raise ConfigError(
                f"bench.backend=llamacpp benchmarks the run's GGUF export: set technique.export=gguf (now {export})"
            )
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(f"bench.backend=llamacpp needs llama-cpp-python; {LLAMACPP_HINT}")
    elif backend == "vllm":
        if export not in ("compressed_tensors", "hf"):
            raise ConfigError(
                f"bench.backend=vllm serves the run's exported directory: set technique.export=compressed_tensors or hf (now {export})"
            )
        if cuda_available() and importlib.util.find_spec("vllm") is None:
            raise ConfigError("bench.backend=vllm needs the vllm package on this GPU machine: pip install vllm")


def measure_backend(
    model,
    tokenizer,
    cfg: InfoptConfig,
    generate_kwargs: dict[str, Any],
    data=None,
    artifact: str | Path | None = None,
) -> tuple[dict[str, float], list[str], dict[str, float]]:
    """(bench numbers, notes, extra eval numbers): transformers' numbers plus the backend's."""
    from infopt.bench.measure import measure

    prompt_stream = data.heldout_stream if data is not None else None
    bench, notes = measure(
        model, cfg.bench, generate_kwargs, prompt_stream=prompt_stream, pad_token_id=tokenizer.pad_token_id
    )
    notes = list(notes)
    extra_eval: dict[str, float] = {}
    if cfg.bench.backend == "llamacpp":
        with tempfile.TemporaryDirectory(prefix="infopt-gguf-") as tmp:
            path = Path(artifact) if artifact else None
            if path is None:  # the baseline: no export of its own
                from infopt.export.gguf import export_gguf

                ftype = cfg.technique.export_float_type
                path = export_gguf(model, tokenizer, Path(tmp) / "baseline.gguf", qtype="auto", float_type=ftype).path
                notes.append(
                    f"llama.cpp numbers of a model without its own export are of a temporary GGUF ({ftype} float matrices)"
                )
            bench.update(measure_llamacpp(path, cfg.bench, prompt_stream, model.config.vocab_size))
            if data is not None and cfg.eval.token_perplexity:
                window = cfg.eval.token_perplexity_window
                extra_eval[f"gguf/token_perplexity_w{window}"] = gguf_perplexity(
                    path, data.heldout_blocks(window), cfg.eval.batch_size
                )
        if "llamacpp" not in " ".join(notes):
            notes.append(
                "llamacpp_* numbers: the GGUF file through llama-cpp-python at batch 1; "
                "eval/gguf/* : that file read back by transformers' GGUF loader"
            )
    elif cfg.bench.backend == "vllm":
        if not cuda_available():
            notes.append(
                "bench.backend=vllm skipped: no CUDA GPU on this machine (vLLM is GPU-only); transformers numbers only"
            )
        else:  # pragma: no cover - needs a GPU and vllm
            bench.update(measure_vllm(artifact, cfg.bench, prompt_stream))
            notes.append("vllm numbers: not verified on a GPU in this project's docs")
    return bench, notes, extra_eval


def _prompt(prompt_stream, length: int, vocab: int) -> list[int]:
    from infopt.bench.measure import make_prompts

    return [int(t) for t in make_prompts(prompt_stream, 1, length, vocab)[0]]


def measure_llamacpp(path: Path | str, cfg: BenchConfig, prompt_stream=None, vocab: int = 0) -> dict[str, float]:
    """Prefill latency and greedy decode speed of a GGUF file in llama.cpp, batch 1, medians."""
    import os

    import numpy as np

    from infopt.export.gguf import verify_gguf

    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ConfigError(f"bench.backend=llamacpp: {LLAMACPP_HINT}") from err
    verify_gguf(path)
    threads = cfg.threads or len(os.sched_getaffinity(0))
    prompt = _prompt(prompt_stream, cfg.prompt_tokens, vocab)
    llm = Llama(
        model_path=str(path),
        n_ctx=cfg.prompt_tokens + cfg.new_tokens + 8,
        n_batch=max(cfg.prompt_tokens, 8),
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits():
        # Without logits_all, llama-cpp-python keeps only the last position's logits in the context.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    try:
        prefill: list[float] = []
        decode: list[float] = []
        for i in range(cfg.warmup + cfg.repeats):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            tok = int(np.argmax(last_logits()))
            for _ in range(cfg.new_tokens):
                llm.eval([tok])
                tok = int(np.argmax(last_logits()))  # greedy, as the transformers bench
            t2 = time.perf_counter()
            if i >= cfg.warmup:
                prefill.append(t1 - t0)
                decode.append((t2 - t1) / cfg.new_tokens)
    finally:
        llm.close()
    med_p, med_d = statistics.median(prefill), statistics.median(decode)
    return {
        "llamacpp_prefill_ms_b1": 1e3 * med_p,
        "llamacpp_prefill_tokens_per_s_b1": cfg.prompt_tokens / med_p,
        "llamacpp_decode_tokens_per_s_b1": 1 / med_d,
        "llamacpp_decode_ms_per_token_b1": 1e3 * med_d,
        "llamacpp_decode_tokens_per_s_b1_min": 1 / max(decode),
        "llamacpp_decode_tokens_per_s_b1_max": 1 / min(decode),
        "llamacpp_threads": float(threads),
        "gguf_mb": Path(path).stat().st_size / 2**20,
    }


def load_gguf_model(path: Path | str):
    """The GGUF file as a float transformers model (its own GGUF loader de-quantizes it)."""
    from transformers import AutoModelForCausalLM

    from infopt.export.gguf import verify_gguf

    path = Path(path)
    verify_gguf(path)
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


def gguf_perplexity(path: Path | str, blocks, batch_size: int = 8) -> float:
    """Held-out token perplexity of the exported file, computed like eval's token perplexity."""
    from infopt.evaluation.perplexity import token_perplexity

    return token_perplexity(load_gguf_model(path), blocks, batch_size)


def measure_vllm(artifact, cfg: BenchConfig, prompt_stream=None) -> dict[str, float]:  # pragma: no cover - GPU only
    """Decode speed of the exported directory in vLLM (unverified here: no GPU)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(artifact))
    params = SamplingParams(max_tokens=cfg.new_tokens, min_tokens=cfg.new_tokens, temperature=0.0)
    prompt = _prompt(prompt_stream, cfg.prompt_tokens, llm.get_tokenizer().vocab_size)
    times = []
    for i in range(cfg.warmup + cfg.repeats):
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}], params)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"vllm_e2e_ms_b1": 1e3 * med, "vllm_tokens_per_s_b1": cfg.new_tokens / med}
