"""Lighter models: int8 quantisation and knowledge distillation.

By hand, symmetric per-row int8: each output row w of a weight gets one scale s = max|w| / 127 and is
stored as q = round(w / s) in [-127, 127]; the dequantised s · q differs from w by at most s / 2 per
entry. PyTorch's dynamic quantisation (`quantize_linears`) differs in one choice: one scale per TENSOR,
max|W| / 127.5 (its MinMaxObserver, per_tensor_symmetric), so a layer whose rows differ in size loses
more on its small rows; activations are quantised on the fly, per batch.

Distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015): the student
matches the teacher's softened distribution, loss = T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)); the
factor T² keeps its gradients on the scale of the hard-label loss as T changes (the paper's §2).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_float_tensor, check_number


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight (out, in) float -> (q (out, in) int8 in [-127, 127], scale (out,) float32): symmetric, one
    scale per output row, computed in float32 whatever the weight's dtype; a row of zeros gets scale 1
    (any scale represents it exactly)."""
    check_float_tensor("weight", weight, ndim=2)
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise ValueError("weight: has NaN or infinite entries; int8 cannot represent them")
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """The float32 weight an int8 one stands for: scale[row] · q[row]."""
    if not isinstance(q, Tensor) or q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"q: expected an int8 tensor (out, in), got {getattr(q, 'dtype', type(q).__name__)}")
    check_float_tensor("scale", scale, (q.shape[0],))
    return q.float() * scale.float()[:, None]


def quantize_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run in int8 (PyTorch's dynamic quantisation), for CPU
    inference. torch.ao.quantization is deprecated in favour of the separate torchao package, which has
    no pinned CPU build here; torch 2.13 still ships it, so its deprecation warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def serialized_bytes(module: nn.Module) -> int:
    """The size of the module's state dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def linear_bytes(model: nn.Module) -> int:
    """The bytes of the numbers the model's linear layers hold (weights, biases and, quantised, the
    int8 weights with their scales and zero points), without the file format's overhead."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += sum(t.numel() * t.element_size() for t in (m.weight, m.bias) if t is not None)
        elif isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m.weight(), m.bias()
            scales = w.q_per_channel_scales().numel() if w.qscheme() == torch.per_channel_affine else 1
            total += w.numel() + 2 * 8 * scales + (b.numel() * b.element_size() if b is not None else 0)
    return total


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the leading dimensions (…, V).
    A token the teacher rules out (logit −inf) contributes 0, as 0 · log 0 = 0."""
    check_float_tensor("student_logits", student_logits)
    check_float_tensor("teacher_logits", teacher_logits, tuple(student_logits.shape))
    T = check_number("temperature", temperature, inclusive=False)
    return T * T * _kl(teacher_logits.detach() / T, student_logits / T).mean()


def _kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) over the last dimension, in float32 at least."""
    teacher, student = teacher.to(torch.promote_types(teacher.dtype, torch.float32)), student.float()
    p = teacher.softmax(-1)
    log_q = student.to(p.dtype).log_softmax(-1)
    cross = torch.where(p > 0, p * log_q, torch.zeros_like(p))  # 0 · (−inf) would be NaN
    return (torch.xlogy(p, p) - cross).sum(-1)


def distillation_objective(
    teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A loss for `transformer.train_gpt(..., loss=...)`: α · T² · KL(teacher ‖ student) at temperature T
    plus (1 − α) · the usual next-token cross-entropy (Hinton et al.'s weighted sum). The teacher runs
    frozen, in eval mode, on the same batch."""
    T = check_number("temperature", temperature, inclusive=False)
    alpha = check_number("alpha", alpha, 0.0, 1.0)
    teacher.eval().requires_grad_(False)

    def loss(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits, _ = teacher(x)
        hard = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        soft = T * T * _kl(teacher_logits.float() / T, logits.float() / T).mean()
        return alpha * soft + (1 - alpha) * hard

    return loss
