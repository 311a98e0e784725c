"""SD-CAM losses (eqs. 4 and 6).

- Teacher (MLP head): ``L_teacher = CE(z_t, y)`` (eq. 4).
- Student (CAM head): ``L_student = alpha CE(z_s, y) + (1 - alpha) KL(S(z_t / T) || S(z_s / T))``
  (eq. 6), KL summed over classes and averaged over the batch.

Choices (the paper is silent):

- No ``T^2`` factor on the KL term: eq. 6 as written. (Hinton et al. multiply the soft term by
  ``T^2`` so that its gradients keep their scale when T changes; without it, at T = 3, the KL
  gradients are roughly ``1 / T^2`` of Hinton's.)
- The teacher's distribution is a target: it is detached in the KL term, so the teacher is
  trained by CE only (eq. 4), the student by eq. 6.
- The two heads share no parameters, so one optimiser steps ``L_teacher + L_student``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SdLossConfig:
    """alpha, T: eq. 6 (paper 0.3 and 3)."""

    alpha: float = 0.3
    temperature: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


def distillation_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``mean_b sum_i S(z_t/T)_i (log S(z_t/T)_i - log S(z_s/T)_i)``; logits (B, C) -> scalar.

    The teacher side is detached.
    """
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def sd_losses(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    target: torch.Tensor,
    config: SdLossConfig | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms for a batch: logits (B, C), target (B,) int64 -> scalars.

    Keys: ``teacher_ce`` (eq. 4), ``student_ce``, ``kl``, ``student`` (eq. 6) and ``total``
    (``teacher_ce + student``, what is minimised).
    """
    config = config or SdLossConfig()
    teacher_ce = F.cross_entropy(teacher_logits, target)
    student_ce = F.cross_entropy(student_logits, target)
    kl = distillation_kl(teacher_logits, student_logits, config.temperature)
    student = config.alpha * student_ce + (1.0 - config.alpha) * kl
    return {
        "teacher_ce": teacher_ce,
        "student_ce": student_ce,
        "kl": kl,
        "student": student,
        "total": teacher_ce + student,
    }
