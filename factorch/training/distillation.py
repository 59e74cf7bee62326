"""The distillation loss (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
section 2): the student matches the teacher's softened class distribution.

    loss = T^2 * KL(softmax(teacher / T) || softmax(student / T))        (mean over the batch)

``T`` (the temperature) softens both distributions so the teacher's small probabilities (which
wrong classes it finds similar) carry signal; the ``T^2`` keeps the gradient's scale independent
of ``T`` (section 2.1). No labels are needed. In the user's own recovery loop::

    with torch.no_grad():
        teacher_logits = dense_model(x)
    out = compressed_model(x)
    loss = F.cross_entropy(out, y) + fc.distillation_loss(out, teacher_logits, temperature=4.0)
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))`` averaged over the batch; ``student`` and
    ``teacher`` are logits of shape (B, classes) (the teacher's are treated as constants)."""
    check_temperature(temperature)
    if student.shape != teacher.shape:
        raise ValueError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} differ in shape")
    t = float(temperature)
    log_student = F.log_softmax(student.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher.detach().float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


def check_temperature(value: object) -> float:
    """The temperature as a float, or one clear ``ValueError`` (a positive finite number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"distillation temperature must be a positive number, got {value!r}")
    return float(value)
