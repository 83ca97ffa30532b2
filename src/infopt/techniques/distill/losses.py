"""Distillation losses as pure functions.

Divergences take log-probabilities over the same support in their last dimension (the full
vocabulary online, or the top-k + "rest" buckets of ``topk_buckets`` in cached mode) and return
the mean over positions (optionally masked). ``p`` is the teacher, ``q`` the student throughout.
Every divergence is 0 when the two distributions are equal and positive otherwise.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Log-probabilities are clamped here so that 0 * log 0 terms stay finite (and their gradients 0).
LOG_FLOOR = -1e4


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) in float32; logits (..., V)."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: sum_v p_v (log p_v - log q_v)."""
    p_log, q_log = p_log.clamp_min(LOG_FLOOR), q_log.clamp_min(LOG_FLOOR)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def forward_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(p_teacher || q_student): mean-seeking; the student covers all of the teacher's mass.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": on logits softened
    by a temperature T, with the loss scaled by T^2 (done by the caller, ``DistillModule``) so its
    gradients keep their size as T changes.
    """
    return _mean(_kl(teacher_logp, student_logp), mask)


def reverse_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(q_student || p_teacher): mode-seeking; the student avoids what the teacher finds unlikely.

    Gu, Dong, Wei & Huang 2023, "MiniLLM: Knowledge Distillation of Large Language Models". MiniLLM
    optimises the sequence-level reverse KL with policy gradients on student samples; this is its
    token-level term under teacher forcing (on data, or on teacher samples in sequence mode).
    """
    return _mean(_kl(student_logp, teacher_logp), mask)


def gjs(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence with mixture M = beta p + (1 - beta) q:
    beta KL(p || M) + (1 - beta) KL(q || M). Bounded; behaves like forward KL as beta -> 0 and like
    reverse KL as beta -> 1 (each scaled by beta or 1 - beta).

    Agarwal et al. 2023/2024, "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), Eq. for D_JSD(beta).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"gjs beta={beta} must be in (0, 1)")
    p_log, q_log = teacher_logp.clamp_min(LOG_FLOOR), student_logp.clamp_min(LOG_FLOOR)
    m_log = torch.logsumexp(torch.stack([p_log + math.log(beta), q_log + math.log(1.0 - beta)]), dim=0)
    per = beta * _kl(p_log, m_log) + (1.0 - beta) * _kl(q_log, m_log)
    return _mean(per, mask)


def skew_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float = 0.1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Skew KL: KL(p || alpha p + (1 - alpha) q); alpha = 0 is forward KL, and alpha > 0 keeps the
    divergence (and its gradient) bounded where the student puts almost no mass.

    Ko, Kim, Chen & Yun 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models".
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew_kl alpha={alpha} must be in [0, 1)")
    p_log, q_log = teacher_logp.clamp_min(LOG_FLOOR), student_logp.clamp_min(LOG_FLOOR)
    if alpha == 0.0:
        mix_log = q_log
    else:
        mix_log = torch.logsumexp(torch.stack([p_log + math.log(alpha), q_log + math.log(1.0 - alpha)]), dim=0)
    return _mean(_kl(p_log, mix_log), mask)


def hidden_loss(
    student_h: torch.Tensor, teacher_h: torch.Tensor, metric: str = "mse", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Hidden-state matching on (B, T, D) states (after any projection of the student's).

    MSE as in FitNets (Romero et al. 2015) and TinyBERT (Jiao et al. 2020); cosine as in
    DistilBERT (Sanh et al. 2019).
    """
    s, t = student_h.float(), teacher_h.float()
    if metric == "mse":
        per = (s - t).pow(2).mean(-1)
    elif metric == "cosine":
        per = 1.0 - F.cosine_similarity(s, t, dim=-1)
    else:
        raise ValueError(f"hidden metric {metric!r}; valid: mse, cosine")
    return _mean(per, mask)


def cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the data: logits (B, T, V), input_ids (B, T)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


# --- cached top-k teacher logits -------------------------------------------------------------------


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of -ln 2 (Maechler 2012); floored at LOG_FLOOR."""
    x = x.clamp_max(-1e-7)
    out = torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(LOG_FLOOR)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache stores per position: the top-k raw logits (..., k), their vocab ids (..., k), and
    the log of the summed exp-logits of every other token (...,): the mass outside the top k, exact
    (computed directly, not as a difference that cancels when the top k hold almost everything)."""
    logits = teacher_logits.float()
    values, indices = logits.topk(k, dim=-1)
    rest = torch.logsumexp(logits.scatter(-1, indices, float("-inf")), dim=-1)  # -inf when k = V
    return values, indices, rest


def topk_buckets(
    student_logits: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    rest: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over k + 1 buckets: the teacher's top-k tokens and "rest".

    A divergence over these buckets is a coarse-graining of the full one, so it never exceeds it
    (data-processing inequality) and equals it when the teacher's top k hold all of its mass. At
    T = 1 the teacher's buckets are exact; for T != 1 the teacher's tail is taken as spread evenly
    over the remaining tokens (its total mass at T = 1 is exact), which is an approximation.

    student_logits (B, T, V); values, indices (B, T, k); rest (B, T). Returns two (B, T, k + 1).
    """
    vocab = student_logits.shape[-1]
    k = values.shape[-1]
    indices = indices.long()
    s = student_logits.float() / temperature
    s_lse = torch.logsumexp(s, dim=-1, keepdim=True)
    s_top = s.gather(-1, indices) - s_lse  # (B, T, k)
    # log(1 - sum of the top-k probabilities), without another (B, T, V) pass.
    if k < vocab:
        s_rest = _log1mexp(torch.logsumexp(s_top, dim=-1, keepdim=True))  # (B, T, 1)
    else:
        s_rest = torch.full_like(s_top[..., :1], LOG_FLOOR)
    student = torch.cat([s_top, s_rest], dim=-1)

    n_tail = vocab - k
    rest = rest.float().clamp_min(LOG_FLOOR)
    if n_tail > 0 and temperature != 1.0:
        # Each tail token given the logit it would have if the tail's mass were spread evenly.
        t_rest = math.log(n_tail) + (rest - math.log(n_tail)) / temperature
    else:
        t_rest = rest if n_tail > 0 else torch.full_like(rest, LOG_FLOOR)
    t_all = torch.cat([values.float() / temperature, t_rest.unsqueeze(-1)], dim=-1)
    teacher = t_all - torch.logsumexp(t_all, dim=-1, keepdim=True)
    return student, teacher
