"""Short names for runs, from what they did: ``gptq w4 g64``, ``channels -50% + recovery``.

``parts(record)`` describes a run's technique (and the model and data when they are not the defaults)
as a list of short phrases; ``names(records)`` keeps, for each run, only the phrases that are not the
same in every run it is shown with, so a table of one study names its rows by what differs.
"""

from __future__ import annotations

from typing import Any

LOSS_NAMES = {"ce": "CE", "forward_kl": "forward KL", "reverse_kl": "reverse KL", "gjs": "JSD", "skew_kl": "skew KL",
              "hidden": "hidden"}  # fmt: skip


def _group(g: Any) -> str:
    if g is None:
        return ""
    return {-1: "pc", 0: "pt"}.get(int(g), f"g{g}")


def _percent(x: Any) -> str:
    return f"{100 * float(x):.0f}%"


def _quantize(t: dict[str, Any]) -> list[str]:
    method = t.get("method") or "quantize"
    name = method.replace("_", " ")
    if method == "llm_int8":
        out = [name]
    elif method in ("smoothquant", "dynamic_int8"):
        act = "per-token" if t.get("act_granularity", "per_token") == "per_token" else "per-tensor"
        backend = t.get("dynamic_backend", "int_mm")
        out = [f"{name} w8a8 {act}" if backend == "int_mm" else f"{name} {backend.replace('_', ' ')}"]
    else:
        bits = t.get("bits") if t.get("bits") is not None else 4
        out = [f"{name} w{bits} {_group(t.get('group_size'))}".strip()]
    if t.get("rotate", "none") != "none":
        out.append(str(t["rotate"]).replace("_", " "))
    if t.get("execution") == "simulated":
        out.append("simulated")
    if t.get("ignore") == []:
        out.append("head too")
    return out


def _prune(t: dict[str, Any]) -> list[str]:
    s = t.get("structured") or {}
    if s.get("target", "none") != "none":
        amount = _percent(s["ratio"]) if s.get("ratio") is not None else f"{s.get('count')}"
        out = [f"{s['target']} -{amount}"]
    elif t.get("nm"):
        out = [f"{t.get('method') or 'prune'} {t['nm']}"]
    else:
        out = [f"{t.get('method') or 'prune'} {_percent(t.get('sparsity', 0.5))}"]
    if t.get("include"):
        out.append("mlp only" if t["include"] == ["mlp\\."] else f"only {','.join(t['include'])}")
    if (t.get("recover") or {}).get("enabled"):
        out.append("+ recovery")
    return out


def _distill(t: dict[str, Any]) -> list[str]:
    s = t.get("student") or {}
    if s.get("init") == "incoming":
        student = "in place"
    elif s.get("init") == "model":
        student = f"student {(s.get('model') or {}).get('name', '?')}"
    else:
        layers = s.get("layers")
        student = f"student 1/{s.get('layer_stride', 2)} layers" if layers is None else f"student {len(layers)}L"
        if float(s.get("mlp_ratio", 1.0)) < 1:
            student += f" x{float(s['mlp_ratio']):g} MLP"
        if float(s.get("head_ratio", 1.0)) < 1:
            student += f" x{float(s['head_ratio']):g} heads"
    loss = t.get("loss") or {}
    terms = [LOSS_NAMES.get(k, k) for k in LOSS_NAMES if float(loss.get(k, 0) or 0) > 0]
    data = t.get("data") or {}
    text = {"none": "news", "reviews": "news + reviews"}.get(data.get("mix", "none"), data.get("mix"))
    return [student, " + ".join(terms) or "?", text, *(["teacher: original"] if t.get("teacher") == "original" else [])]


def _architecture(t: dict[str, Any]) -> list[str]:
    name = t.get("name")
    if name == "attention":
        return [f"attention {t.get('implementation')}"]
    if name == "kv_cache":
        impl = t.get("implementation")
        return [f"kv cache {impl}" + (f" {t.get('quant_backend')}" if impl == "quantized" else "")]
    if name == "speculative":
        if int(t.get("prompt_lookup", 0) or 0) > 0:
            return [f"prompt lookup {t['prompt_lookup']}"]
        d = t.get("draft") or {}
        return [f"speculative {d.get('kind', '').replace('_', ' ')} draft"]
    return [str(name)]


DESCRIBE = {"quantize": _quantize, "prune": _prune, "distill": _distill}


def technique_parts(t: dict[str, Any]) -> list[str]:
    """A technique config (as recorded) as short phrases."""
    name = t.get("name", "?")
    if name == "pipeline":
        stages = list(t.get("stages") or [])
        if t.get("reverse"):
            stages = stages[::-1]
        return [" -> ".join(" ".join(technique_parts(s)) for s in stages)]
    if name in DESCRIBE:
        return DESCRIBE[name](t)
    if name in ("attention", "kv_cache", "compile", "speculative"):
        return _architecture(t)
    if name == "layer_sensitivity":
        return ["layer sensitivity", *technique_parts(t.get("inner") or {})]
    return [str(name)]


def parts(record: dict[str, Any]) -> list[str]:
    config = record.get("config") or {}
    out = technique_parts(config.get("technique") or {})
    model = (config.get("model") or {}).get("name")
    if model:
        out.append(f"[{model}]")
    return out


def names(records: list[dict[str, Any]]) -> list[str]:
    """One short name per record: its phrases minus those every record shares (all of them if one record)."""
    described = [parts(r) for r in records]
    if len(described) > 1:
        common = set.intersection(*(set(p) for p in described))
        described = [[x for x in p if x not in common] or p[:1] for p in described]
    else:  # one run: what it did, without the model
        described = [[x for x in p if not x.startswith("[")] or p[:1] for p in described]
    return [", ".join(p) for p in described]
