"""Lighter models: int8 quantisation and knowledge distillation.

Symmetric per-row int8 quantisation (what PyTorch's dynamic quantisation does to a Linear layer's
weight, per tensor or per channel): each output row w gets one scale s = max|w| / 127, and is stored as
q = round(w / s) in [-127, 127]; dequantised w' = s · q differs from w by at most s / 2 per entry.

Distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015): the student
matches the teacher's softened distribution, loss = T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)); the
factor T² keeps its gradients on the scale of the hard-label loss as T changes (the paper's §2).
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_float_tensor, check_number


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight (out, in) float -> (q (out, in) int8 in [-127, 127], scale (out,) float): symmetric, one scale
    per output row; a row of zeros gets scale 1 (any scale represents it exactly)."""
    check_float_tensor("weight", weight, ndim=2)
    scale = weight.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """The float weight an int8 one stands for: scale[row] · q[row]."""
    if not isinstance(q, Tensor) or q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"q: expected an int8 tensor (out, in), got {getattr(q, 'dtype', type(q).__name__)}")
    check_float_tensor("scale", scale, (q.shape[0],))
    return q.to(scale.dtype) * scale[:, None]


def quantize_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run in int8 (PyTorch's dynamic quantisation: int8 weights,
    activations quantised on the fly per batch), for CPU inference. torch.ao.quantization is deprecated in
    favour of the separate torchao package, which has no pinned CPU build here; torch 2.13 still ships it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def serialized_bytes(model: nn.Module) -> int:
    """The size of the model's state dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the leading dimensions (…, V)."""
    check_float_tensor("student_logits", student_logits)
    check_float_tensor("teacher_logits", teacher_logits, tuple(student_logits.shape))
    T = check_number("temperature", temperature, inclusive=False)
    log_p_teacher = F.log_softmax(teacher_logits / T, dim=-1)
    log_p_student = F.log_softmax(student_logits / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return T * T * kl.mean()
