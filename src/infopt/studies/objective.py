"""The single number a search sweeper optimises: a results key, penalised when over budget.

``hydra/sweeper=optuna`` maximises (or minimises) what each job returns; ``infopt.cli`` returns
``record["objective"]``. Over-budget jobs return ``penalty - excess`` (maximize) or
``penalty + excess`` (minimize), where ``excess`` is the summed relative overshoot of the budget,
so every in-budget job beats every over-budget one and the search still sees which way to go.
"""

from __future__ import annotations

from typing import Any

from infopt.config.schema import ObjectiveConfig


def objective_value(
    cfg: ObjectiveConfig, summary: dict[str, Any]
) -> tuple[float | None, dict[str, Any]]:
    """(value, detail) for a run's summary (keys as logged: eval/..., bench/..., ratios/..., technique/...)."""
    value = summary.get(cfg.metric)
    detail: dict[str, Any] = {
        "metric": cfg.metric,
        "direction": cfg.direction,
        "value": value,
        "budget": dict(cfg.budget),
    }
    if value is None:
        detail["missing"] = (
            f"{cfg.metric} is not in this run's results (set objective.metric to one that is)"
        )
        return None, detail
    excess = 0.0
    over: dict[str, float] = {}
    missing = []
    for key, limit in cfg.budget.items():
        used = summary.get(key)
        if used is None:
            missing.append(key)
        elif used > limit:
            over[key] = used
            excess += used / limit - 1.0
    detail.update(within_budget=not over and not missing, over_budget=over, excess=excess)
    if missing:  # a budget that cannot be checked is not met: a search must not favour it
        detail["missing_budget_keys"] = missing
        excess += 1.0
    if detail["within_budget"]:
        return float(value), detail
    if cfg.direction == "maximize":
        penalty = -1.0 if cfg.penalty is None else cfg.penalty
        return penalty - excess, detail
    penalty = 1e6 if cfg.penalty is None else cfg.penalty
    return penalty + excess, detail
