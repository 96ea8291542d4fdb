"""Hostile-student tests: the wrong answers a learner typically writes must lose points, and
correct answers written another way (other operation order, float64 inside) must keep them all.

Every mutant is scored on visible + hidden cases, as the grader does. When a mutant scores full,
the cases (aigc_lib/exercises/chNN.py, hidden/chNN.py) are too weak: strengthen them, not this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import exercises
from aigc_lib.exercises import exercises_for, get_exercise
from aigc_lib.exercises.core import run_cases

MUTANTS: dict[str, dict[str, Callable]] = {}
CORRECT: dict[str, dict[str, Callable]] = {}


def mutant(key: str):
    def register(fn):
        MUTANTS.setdefault(key, {})[fn.__name__] = fn
        return fn

    return register


def correct(key: str):
    def register(fn):
        CORRECT.setdefault(key, {})[fn.__name__] = fn
        return fn

    return register


def score(key: str, fn: Callable) -> tuple[float, float]:
    ex = get_exercise(key)
    results = run_cases(ex, fn) + run_cases(ex, fn, hidden=True)
    return sum(r.points for r in results), ex.points


def col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Schedule values at t as a (B, 1, 1, 1) column in the images' dtype."""
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------------------------ 00


@mutant("00.count_bigrams")
def bigrams_transposed(ids, vocab_size):
    pair = ids[1:] * vocab_size + ids[:-1]
    return torch.bincount(pair, minlength=vocab_size**2).reshape(vocab_size, vocab_size)


@mutant("00.count_bigrams")
def bigrams_wrap_around(ids, vocab_size):
    pair = ids * vocab_size + ids.roll(-1)
    return torch.bincount(pair, minlength=vocab_size**2).reshape(vocab_size, vocab_size)


@mutant("00.count_bigrams")
def bigrams_as_floats(ids, vocab_size):
    pair = ids[:-1] * vocab_size + ids[1:]
    return torch.bincount(pair, minlength=vocab_size**2).reshape(vocab_size, vocab_size).float()


@mutant("00.count_bigrams")
def bigrams_drop_last_pair(ids, vocab_size):
    pair = ids[:-2] * vocab_size + ids[1:-1]
    return torch.bincount(pair, minlength=vocab_size**2).reshape(vocab_size, vocab_size)


@mutant("00.count_bigrams")
def bigrams_in_place(ids, vocab_size):
    head = ids[:-1]
    head *= vocab_size  # writes into ids
    return torch.bincount(head + ids[1:], minlength=vocab_size**2).reshape(vocab_size, vocab_size)


@correct("00.count_bigrams")
def bigrams_loop(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True):
        counts[a, b] += 1
    return counts


@correct("00.count_bigrams")
def bigrams_one_hot(ids, vocab_size):
    oh = F.one_hot(ids, vocab_size)
    return oh[:-1].T @ oh[1:]


@mutant("00.next_char_probs")
def probs_no_alpha_v_in_denominator(counts, alpha):
    return (counts.float() + alpha) / counts.float().sum(-1, keepdim=True)


@mutant("00.next_char_probs")
def probs_alpha_once_in_denominator(counts, alpha):
    return (counts.float() + alpha) / (counts.float().sum(-1, keepdim=True) + alpha)


@mutant("00.next_char_probs")
def probs_wrong_axis(counts, alpha):
    c = counts.float() + alpha
    return c / c.sum(0, keepdim=True)


@mutant("00.next_char_probs")
def probs_float64(counts, alpha):
    c = counts.double() + alpha
    return c / c.sum(-1, keepdim=True)


@mutant("00.next_char_probs")
def probs_normalise_everything(counts, alpha):
    c = counts.float() + alpha
    return c / c.sum()


@correct("00.next_char_probs")
def probs_formula(counts, alpha):
    V = counts.shape[-1]
    return ((counts + alpha) / (counts.sum(-1, keepdim=True) + alpha * V)).float()


@correct("00.next_char_probs")
def probs_float64_inside(counts, alpha):
    c = counts.double() + alpha
    return (c / c.sum(-1, keepdim=True)).float()


@mutant("00.apply_temperature")
def temperature_on_probs(logits, temperature):  # the source articles' bug E3
    return torch.softmax(torch.softmax(logits, -1) / temperature, -1)


@mutant("00.apply_temperature")
def temperature_multiplied(logits, temperature):
    return torch.softmax(logits * temperature, -1)


@mutant("00.apply_temperature")
def temperature_unstable_softmax(logits, temperature):
    e = torch.exp(logits / temperature)
    return e / e.sum(-1, keepdim=True)


@mutant("00.apply_temperature")
def temperature_softmax_first_axis(logits, temperature):
    return torch.softmax(logits / temperature, 0)


@correct("00.apply_temperature")
def temperature_stable_by_hand(logits, temperature):
    z = logits / temperature
    e = (z - z.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


@correct("00.apply_temperature")
def temperature_via_log_softmax(logits, temperature):
    return torch.log_softmax(logits / temperature, -1).exp()


@mutant("00.fit_pixel_model")
def pixels_binarised(images, alpha):
    x = (images > 0.5).to(images.dtype)
    return (x.sum(0) + alpha) / (len(x) + 2 * alpha)


@mutant("00.fit_pixel_model")
def pixels_alpha_once_in_denominator(images, alpha):
    return (images.sum(0) + alpha) / (len(images) + alpha)


@mutant("00.fit_pixel_model")
def pixels_mean_plus_alpha(images, alpha):
    return (images.mean(0) + alpha) / (1 + 2 * alpha)


@mutant("00.fit_pixel_model")
def pixels_float32_always(images, alpha):
    return ((images.sum(0) + alpha) / (len(images) + 2 * alpha)).float()


@correct("00.fit_pixel_model")
def pixels_via_mean(images, alpha):
    n = len(images)
    return (images.mean(0) * n + alpha) / (n + 2 * alpha)


@correct("00.fit_pixel_model")
def pixels_float64_inside(images, alpha):
    return ((images.double().sum(0) + alpha) / (len(images) + 2 * alpha)).to(images.dtype)


# ------------------------------------------------------------------------------------------ 01


@mutant("01.rnn_cell")
def rnn_missing_bias(x, h_prev, W_xh, W_hh, b_h):
    return torch.tanh(x @ W_xh.T + h_prev @ W_hh.T)


@mutant("01.rnn_cell")
def rnn_W_hh_untransposed(x, h_prev, W_xh, W_hh, b_h):
    return torch.tanh(x @ W_xh.T + h_prev @ W_hh + b_h)


@mutant("01.rnn_cell")
def rnn_sigmoid(x, h_prev, W_xh, W_hh, b_h):
    return torch.sigmoid(x @ W_xh.T + h_prev @ W_hh.T + b_h)


@mutant("01.rnn_cell")
def rnn_no_tanh(x, h_prev, W_xh, W_hh, b_h):
    return x @ W_xh.T + h_prev @ W_hh.T + b_h


@correct("01.rnn_cell")
def rnn_linear(x, h_prev, W_xh, W_hh, b_h):
    return torch.tanh(F.linear(h_prev, W_hh) + F.linear(x, W_xh, b_h))


@correct("01.rnn_cell")
def rnn_stacked(x, h_prev, W_xh, W_hh, b_h):
    return torch.tanh(torch.cat([x, h_prev], 1) @ torch.cat([W_xh, W_hh], 1).T + b_h)


def _gates(x, h, p):
    return {g: x @ p[f"W_x{g}"].T + h @ p[f"W_h{g}"].T + p[f"b_{g}"] for g in "ifoc"}


@mutant("01.lstm_cell")
def lstm_swapped_input_forget(x, h_prev, c_prev, params):
    a = _gates(x, h_prev, params)
    c = torch.sigmoid(a["i"]) * c_prev + torch.sigmoid(a["f"]) * torch.tanh(a["c"])
    return torch.sigmoid(a["o"]) * torch.tanh(c), c


@mutant("01.lstm_cell")
def lstm_h_from_c_prev(x, h_prev, c_prev, params):
    a = _gates(x, h_prev, params)
    c = torch.sigmoid(a["f"]) * c_prev + torch.sigmoid(a["i"]) * torch.tanh(a["c"])
    return torch.sigmoid(a["o"]) * torch.tanh(c_prev), c


@mutant("01.lstm_cell")
def lstm_sigmoid_candidate(x, h_prev, c_prev, params):
    a = _gates(x, h_prev, params)
    c = torch.sigmoid(a["f"]) * c_prev + torch.sigmoid(a["i"]) * torch.sigmoid(a["c"])
    return torch.sigmoid(a["o"]) * torch.tanh(c), c


@mutant("01.lstm_cell")
def lstm_returns_c_h(x, h_prev, c_prev, params):
    a = _gates(x, h_prev, params)
    c = torch.sigmoid(a["f"]) * c_prev + torch.sigmoid(a["i"]) * torch.tanh(a["c"])
    return c, torch.sigmoid(a["o"]) * torch.tanh(c)


@mutant("01.lstm_cell")
def lstm_h_without_tanh(x, h_prev, c_prev, params):
    a = _gates(x, h_prev, params)
    c = torch.sigmoid(a["f"]) * c_prev + torch.sigmoid(a["i"]) * torch.tanh(a["c"])
    return torch.sigmoid(a["o"]) * c, c


@correct("01.lstm_cell")
def lstm_one_matmul(x, h_prev, c_prev, params):
    W = torch.cat([torch.cat([params[f"W_x{g}"], params[f"W_h{g}"]], 1) for g in "ifoc"], 0)
    b = torch.cat([params[f"b_{g}"] for g in "ifoc"])
    i, f, o, g = (torch.cat([x, h_prev], 1) @ W.T + b).chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@mutant("01.rnn_cell_backward")
def backward_1_minus_h(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h)
    return da @ W_xh, da @ W_hh, da.T @ x, da.T @ h_prev, da.sum(0)


@mutant("01.rnn_cell_backward")
def backward_no_tanh_derivative(dh, x, h_prev, h, W_xh, W_hh):
    return dh @ W_xh, dh @ W_hh, dh.T @ x, dh.T @ h_prev, dh.sum(0)


@mutant("01.rnn_cell_backward")
def backward_db_mean(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h**2)
    return da @ W_xh, da @ W_hh, da.T @ x, da.T @ h_prev, da.mean(0)


@mutant("01.rnn_cell_backward")
def backward_W_hh_transposed(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h**2)
    return da @ W_xh, da @ W_hh.T, da.T @ x, da.T @ h_prev, da.sum(0)


@mutant("01.rnn_cell_backward")
def backward_returns_list(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h**2)
    return [da @ W_xh, da @ W_hh, da.T @ x, da.T @ h_prev, da.sum(0)]


@mutant("01.rnn_cell_backward")
def backward_dW_hh_from_h(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h**2)
    return da @ W_xh, da @ W_hh, da.T @ x, da.T @ h, da.sum(0)


@correct("01.rnn_cell_backward")
def backward_autograd(dh, x, h_prev, h, W_xh, W_hh):
    x, h_prev, W_xh, W_hh = (t.detach().clone().requires_grad_() for t in (x, h_prev, W_xh, W_hh))
    b = torch.zeros(W_xh.shape[0], dtype=x.dtype, requires_grad=True)
    a = x @ W_xh.T + h_prev @ W_hh.T + b
    # a * (1 - h^2) with h held fixed has the gradient of tanh(a) at the given h
    grads = torch.autograd.grad(((a * (1 - h**2)) * dh).sum(), (x, h_prev, W_xh, W_hh, b))
    return tuple(g.detach() for g in grads)


@correct("01.rnn_cell_backward")
def backward_einsum(dh, x, h_prev, h, W_xh, W_hh):
    da = dh - dh * h * h
    return (
        torch.einsum("bh,hd->bd", da, W_xh),
        torch.einsum("bh,hk->bk", da, W_hh),
        torch.einsum("bh,bd->hd", da, x),
        torch.einsum("bh,bk->hk", da, h_prev),
        da.sum(0),
    )


@mutant("01.sample_probs")
def topk_drops_the_kth(logits, temperature, top_k):
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits <= kth, -math.inf) / temperature, -1)


@mutant("01.sample_probs")
def topk_zero_not_minus_inf(logits, temperature, top_k):
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, 0.0) / temperature, -1)


@mutant("01.sample_probs")
def topk_temperature_on_probs(logits, temperature, top_k):
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    p = torch.softmax(logits.masked_fill(logits < kth, -math.inf), -1) ** (1 / temperature)
    return p  # not renormalised


@mutant("01.sample_probs")
def topk_no_temperature(logits, temperature, top_k):
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, -math.inf), -1)


@mutant("01.sample_probs")
def topk_unstable_softmax(logits, temperature, top_k):
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    e = torch.exp(logits.masked_fill(logits < kth, -math.inf) / temperature)
    return e / e.sum(-1, keepdim=True)


@correct("01.sample_probs")
def topk_renormalise_probs(logits, temperature, top_k):
    p = torch.softmax(logits / temperature, -1)
    kth = torch.topk(p, top_k, dim=-1).values[..., -1:]
    p = p.masked_fill(p < kth, 0.0)
    return p / p.sum(-1, keepdim=True)


@correct("01.sample_probs")
def topk_scatter(logits, temperature, top_k):
    vals, idx = torch.topk(logits / temperature, top_k, dim=-1)
    out = torch.full_like(logits, -math.inf).scatter(-1, idx, vals)
    return torch.softmax(out, -1)


# ------------------------------------------------------------------------------------------ 02


@mutant("02.discriminator_loss")
def d_loss_log_sigmoid(real_logits, fake_logits):
    return -torch.log(torch.sigmoid(real_logits)).mean() - torch.log(1 - torch.sigmoid(fake_logits)).mean()


@mutant("02.discriminator_loss")
def d_loss_sum_not_mean(real_logits, fake_logits):
    return F.softplus(-real_logits).sum() + F.softplus(fake_logits).sum()


@mutant("02.discriminator_loss")
def d_loss_pooled_mean(real_logits, fake_logits):
    return torch.cat([F.softplus(-real_logits), F.softplus(fake_logits)]).mean()


@mutant("02.discriminator_loss")
def d_loss_signs_swapped(real_logits, fake_logits):
    return F.softplus(real_logits).mean() + F.softplus(-fake_logits).mean()


@mutant("02.discriminator_loss")
def d_loss_real_term_only(real_logits, fake_logits):
    return F.softplus(-real_logits).mean()


@mutant("02.discriminator_loss")
def d_loss_bce_on_probabilities(real_logits, fake_logits):  # F.binary_cross_entropy clamps log(0) to -100
    return F.binary_cross_entropy(torch.sigmoid(real_logits), torch.ones_like(real_logits)) + F.binary_cross_entropy(
        torch.sigmoid(fake_logits), torch.zeros_like(fake_logits)
    )


@mutant("02.discriminator_loss")
def d_loss_log_sigmoid_plus_epsilon(real_logits, fake_logits):
    return (
        -torch.log(torch.sigmoid(real_logits) + 1e-8).mean() - torch.log(1 - torch.sigmoid(fake_logits) + 1e-8).mean()
    )


@correct("02.discriminator_loss")
def d_loss_bce(real_logits, fake_logits):
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


@correct("02.discriminator_loss")
def d_loss_logsigmoid(real_logits, fake_logits):
    return -F.logsigmoid(real_logits).mean() - F.logsigmoid(-fake_logits).mean()


@mutant("02.generator_loss")
def g_loss_saturating(fake_logits):
    return -F.softplus(fake_logits).mean()


@mutant("02.generator_loss")
def g_loss_log_sigmoid(fake_logits):
    return -torch.log(torch.sigmoid(fake_logits)).mean()


@mutant("02.generator_loss")
def g_loss_wrong_sign(fake_logits):
    return F.softplus(fake_logits).mean()


@mutant("02.generator_loss")
def g_loss_sum(fake_logits):
    return F.softplus(-fake_logits).sum()


@mutant("02.generator_loss")
def g_loss_log_sigmoid_plus_epsilon(fake_logits):
    return -torch.log(torch.sigmoid(fake_logits) + 1e-12).mean()


@correct("02.generator_loss")
def g_loss_bce(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@correct("02.generator_loss")
def g_loss_logsigmoid(fake_logits):
    return -F.logsigmoid(fake_logits).mean()


def _generator(z, p, *, bias=True, eps=1e-5, out=torch.tanh, bn=None, act=F.relu, relu_first=False):
    bn = bn or (lambda h, g, b: F.batch_norm(h, None, None, g, b, training=True, eps=eps))
    block = (lambda h, g, b: bn(act(h), g, b)) if relu_first else (lambda h, g, b: act(bn(h, g, b)))
    h = block(F.conv_transpose2d(z[:, :, None, None], p["w1"]), p["gamma1"], p["beta1"])
    h = block(F.conv_transpose2d(h, p["w2"], stride=2, padding=1), p["gamma2"], p["beta2"])
    return out(F.conv_transpose2d(h, p["w3"], p["b3"] if bias else None, stride=2, padding=1))


def _manual_bn(h, gamma, beta, unbiased=False):
    mean = h.mean((0, 2, 3), keepdim=True)
    var = h.var((0, 2, 3), keepdim=True, unbiased=unbiased)
    return (h - mean) / torch.sqrt(var + 1e-5) * gamma[None, :, None, None] + beta[None, :, None, None]


@mutant("02.dcgan_generator")
def generator_missing_final_bias(z, params):
    return _generator(z, params, bias=False)


@mutant("02.dcgan_generator")
def generator_sigmoid_output(z, params):
    return _generator(z, params, out=torch.sigmoid)


@mutant("02.dcgan_generator")
def generator_bn_without_affine(z, params):
    return _generator(z, params, bn=lambda h, g, b: F.batch_norm(h, None, None, training=True))


@mutant("02.dcgan_generator")
def generator_bn_unbiased_variance(z, params):
    return _generator(z, params, bn=lambda h, g, b: _manual_bn(h, g, b, unbiased=True))


@mutant("02.dcgan_generator")
def generator_bn_eval_mode(z, params):
    def bn(h, g, b):
        C = h.shape[1]
        return F.batch_norm(h, torch.zeros(C, dtype=h.dtype), torch.ones(C, dtype=h.dtype), g, b, training=False)

    return _generator(z, params, bn=bn)


@mutant("02.dcgan_generator")
def generator_bn_eps_1e_3(z, params):
    return _generator(z, params, eps=1e-3)


@mutant("02.dcgan_generator")
def generator_relu_before_bn(z, params):
    return _generator(z, params, relu_first=True)


@mutant("02.dcgan_generator")
def generator_leaky_relu(z, params):
    return _generator(z, params, act=lambda h: F.leaky_relu(h, 0.2))


@correct("02.dcgan_generator")
def generator_manual_bn(z, params):
    return _generator(z, params, bn=_manual_bn)


@correct("02.dcgan_generator")
def generator_float64_inside(z, params):
    return _generator(z.double(), {k: v.double() for k, v in params.items()}).to(z.dtype)


def _linear_gan(g_weight, g_bias, d_weight, d_bias, real, z, lr, *, detach=True, fresh_d=True, g_loss=None, sign=-1.0):
    gw, gb, dw, db = (t.detach().clone().requires_grad_(True) for t in (g_weight, g_bias, d_weight, d_bias))
    fake = z @ gw.T + gb
    d_loss = F.softplus(-(real @ dw.T + db)).mean() + F.softplus(fake.detach() @ dw.T + db).mean()
    g_dw, g_db = torch.autograd.grad(d_loss, (dw, db))
    new_dw, new_db = (dw + sign * lr * g_dw).detach(), (db + sign * lr * g_db).detach()
    logits = (fake @ (new_dw if fresh_d else dw.detach()).T + (new_db if fresh_d else db.detach())).squeeze(1)
    loss = (g_loss or (lambda lg: F.softplus(-lg).mean()))(logits)
    g_gw, g_gb = torch.autograd.grad(loss, (gw, gb))
    out = (gw + sign * lr * g_gw, gb + sign * lr * g_gb, new_dw, new_db, d_loss, loss)
    return tuple(t.detach() for t in out) if detach else out


@mutant("02.gan_sgd_step")
def step_forgets_detach(**kw):
    return _linear_gan(**kw, detach=False)


@mutant("02.gan_sgd_step")
def step_g_sees_old_d(**kw):
    return _linear_gan(**kw, fresh_d=False)


@mutant("02.gan_sgd_step")
def step_minimax_g_loss(**kw):
    return _linear_gan(**kw, g_loss=lambda lg: -F.softplus(lg).mean())


@mutant("02.gan_sgd_step")
def step_gradient_ascent(**kw):
    return _linear_gan(**kw, sign=1.0)


@mutant("02.gan_sgd_step")
def step_d_loss_after_update(g_weight, g_bias, d_weight, d_bias, real, z, lr):
    out = _linear_gan(g_weight, g_bias, d_weight, d_bias, real, z, lr)
    fake = z @ g_weight.T + g_bias
    d_loss = F.softplus(-(real @ out[2].T + out[3])).mean() + F.softplus(fake @ out[2].T + out[3]).mean()
    return (*out[:4], d_loss, out[5])


@mutant("02.gan_sgd_step")
def step_backward_without_fake_detach(g_weight, g_bias, d_weight, d_bias, real, z, lr):
    """loss.backward() on D's loss without fake.detach(): G's gradients also collect D's loss."""
    gw, gb, dw, db = (t.detach().clone().requires_grad_(True) for t in (g_weight, g_bias, d_weight, d_bias))
    fake = z @ gw.T + gb
    d_loss = F.softplus(-(real @ dw.T + db)).mean() + F.softplus(fake @ dw.T + db).mean()
    d_loss.backward()
    with torch.no_grad():
        dw -= lr * dw.grad
        db -= lr * db.grad
    g_loss = F.softplus(-(fake @ dw.T + db)).mean()
    g_loss.backward()
    with torch.no_grad():
        return gw - lr * gw.grad, gb - lr * gb.grad, dw.clone(), db.clone(), d_loss.detach(), g_loss.detach()


@correct("02.gan_sgd_step")
def step_bce_and_backward(g_weight, g_bias, d_weight, d_bias, real, z, lr):
    gw, gb, dw, db = (t.detach().clone().requires_grad_(True) for t in (g_weight, g_bias, d_weight, d_bias))
    fake = z @ gw.T + gb
    r, f = (real @ dw.T + db).squeeze(1), (fake.detach() @ dw.T + db).squeeze(1)
    d_loss = F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + F.binary_cross_entropy_with_logits(
        f, torch.zeros_like(f)
    )
    d_loss.backward()
    with torch.no_grad():
        dw, db = dw - lr * dw.grad, db - lr * db.grad
    g = (fake @ dw.T + db).squeeze(1)
    g_loss = F.binary_cross_entropy_with_logits(g, torch.ones_like(g))
    g_loss.backward()
    with torch.no_grad():
        return gw - lr * gw.grad, gb - lr * gb.grad, dw, db, d_loss.detach(), g_loss.detach()


# ------------------------------------------------------------------------------------------ 03


@mutant("03.reparameterize")
def reparam_variance_not_std(mu, logvar, eps):
    return mu + torch.exp(logvar) * eps


@mutant("03.reparameterize")
def reparam_logvar_as_log_std(mu, logvar, eps):
    return mu + torch.exp(logvar) ** 2 * eps


@mutant("03.reparameterize")
def reparam_fresh_noise(mu, logvar, eps):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(eps)


@mutant("03.reparameterize")
def reparam_in_place(mu, logvar, eps):
    return mu.add_(torch.exp(0.5 * logvar) * eps)


@correct("03.reparameterize")
def reparam_sqrt_exp(mu, logvar, eps):
    return eps * logvar.exp().sqrt() + mu


@correct("03.reparameterize")
def reparam_addcmul(mu, logvar, eps):
    return torch.addcmul(mu, logvar.mul(0.5).exp(), eps)


@mutant("03.gaussian_kl")
def kl_mean_over_latents(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).mean(1)


@mutant("03.gaussian_kl")
def kl_without_half(mu, logvar):
    return (mu**2 + logvar.exp() - 1 - logvar).sum(1)


@mutant("03.gaussian_kl")
def kl_std_for_variance(mu, logvar):
    return 0.5 * (mu**2 + (0.5 * logvar).exp() - 1 - logvar).sum(1)


@mutant("03.gaussian_kl")
def kl_summed_over_batch(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(0)


@mutant("03.gaussian_kl")
def kl_scalar(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()


@mutant("03.gaussian_kl")
def kl_without_minus_one(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - logvar).sum(1)


@correct("03.gaussian_kl")
def kl_negative_form(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


@correct("03.gaussian_kl")
def kl_distributions(mu, logvar):
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return torch.distributions.kl_divergence(q, p).sum(1)


def _kl(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)


@mutant("03.vae_loss")
def vae_mean_over_pixels(logits, x, mu, logvar):
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).mean(1) + _kl(mu, logvar)).mean()


@mutant("03.vae_loss")
def vae_sum_over_batch(logits, x, mu, logvar):
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1) + _kl(mu, logvar)).sum()


@mutant("03.vae_loss")
def vae_bce_on_sigmoid(logits, x, mu, logvar):
    recon = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1)
    return (recon + _kl(mu, logvar)).mean()


@mutant("03.vae_loss")
def vae_minus_kl(logits, x, mu, logvar):
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1) - _kl(mu, logvar)).mean()


@mutant("03.vae_loss")
def vae_mse(logits, x, mu, logvar):
    return ((torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1) + _kl(mu, logvar)).mean()


@mutant("03.vae_loss")
def vae_bce_arguments_swapped(logits, x, mu, logvar):
    return (F.binary_cross_entropy_with_logits(x, logits, reduction="none").flatten(1).sum(1) + _kl(mu, logvar)).mean()


@correct("03.vae_loss")
def vae_softplus_by_hand(logits, x, mu, logvar):
    recon = (F.softplus(logits) - x * logits).sum((1, 2, 3))
    return recon.mean() + _kl(mu, logvar).mean()


@correct("03.vae_loss")
def vae_bce_sum_over_batch(logits, x, mu, logvar):
    B = len(x)
    return (F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + _kl(mu, logvar).sum()) / B


@mutant("03.interpolate")
def interp_endpoint_missing(z0, z1, steps):
    t = (torch.arange(steps, dtype=z0.dtype) / steps)[:, None]
    return (1 - t) * z0 + t * z1


@mutant("03.interpolate")
def interp_reversed(z0, z1, steps):
    t = torch.linspace(0, 1, steps, dtype=z0.dtype)[:, None]
    return t * z0 + (1 - t) * z1


@mutant("03.interpolate")
def interp_transposed(z0, z1, steps):
    t = torch.linspace(0, 1, steps, dtype=z0.dtype)[None, :]
    return (1 - t) * z0[:, None] + t * z1[:, None]


@mutant("03.interpolate")
def interp_float32_always(z0, z1, steps):
    t = torch.linspace(0, 1, steps)[:, None]
    return ((1 - t) * z0 + t * z1).float()


@correct("03.interpolate")
def interp_lerp(z0, z1, steps):
    return torch.lerp(z0, z1, torch.linspace(0, 1, steps, dtype=z0.dtype)[:, None])


@correct("03.interpolate")
def interp_stack(z0, z1, steps):
    return torch.stack([z0 + (z1 - z0) * (i / (steps - 1)) for i in range(steps)])


# ------------------------------------------------------------------------------------------ 04


def _attn(q, k, v, mask=None, *, scale=None, fill=-math.inf, dim=-1, softmax=torch.softmax):
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, fill)
    return softmax(scores, dim) @ v


def _unstable_softmax(s, dim):
    e = s.exp()
    return e / e.sum(dim, keepdim=True)


@mutant("04.attention")
def attention_unscaled(q, k, v, mask=None):
    return _attn(q, k, v, mask, scale=1.0)


@mutant("04.attention")
def attention_scaled_by_d_v(q, k, v, mask=None):
    return _attn(q, k, v, mask, scale=math.sqrt(v.shape[-1]))


@mutant("04.attention")
def attention_softmax_over_queries(q, k, v, mask=None):
    return _attn(q, k, v, mask, dim=-2)


@mutant("04.attention")
def attention_mask_fills_zero(q, k, v, mask=None):
    return _attn(q, k, v, mask, fill=0.0)


@mutant("04.attention")
def attention_mask_inverted(q, k, v, mask=None):
    return _attn(q, k, v, None if mask is None else ~mask)


@mutant("04.attention")
def attention_ignores_mask(q, k, v, mask=None):
    return _attn(q, k, v)


@mutant("04.attention")
def attention_unstable_softmax(q, k, v, mask=None):
    return _attn(q, k, v, mask, softmax=_unstable_softmax)


@correct("04.attention")
def attention_scale_q_first(q, k, v, mask=None):
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    return scores.softmax(-1) @ v


@correct("04.attention")
def attention_sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@mutant("04.causal_mask")
def mask_upper(T):
    return torch.ones(T, T, dtype=torch.bool).triu()


@mutant("04.causal_mask")
def mask_strict(T):
    return torch.ones(T, T, dtype=torch.bool).tril(-1)


@mutant("04.causal_mask")
def mask_float(T):
    return torch.ones(T, T).tril()


@mutant("04.causal_mask")
def mask_additive(T):
    return torch.full((T, T), -math.inf).triu(1)


@correct("04.causal_mask")
def mask_compare(T):
    i = torch.arange(T)
    return i[:, None] >= i[None, :]


@mutant("04.split_heads")
def split_without_transpose(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


@mutant("04.split_heads")
def split_interleaved_channels(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, C // n_heads, n_heads).permute(0, 3, 1, 2)


@mutant("04.split_heads")
def split_head_axis_last(x, n_heads):
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).permute(0, 2, 3, 1)


@correct("04.split_heads")
def split_permute_contiguous(x, n_heads):
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, -1).permute(0, 2, 1, 3).contiguous()


@mutant("04.merge_heads")
def merge_without_transpose(x):
    B, H, T, d = x.shape
    return x.reshape(B, T, H * d)


@mutant("04.merge_heads")
def merge_channel_major(x):
    B, H, T, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d)


@mutant("04.merge_heads")
def merge_view_after_transpose(x):
    B, H, T, d = x.shape
    return x.transpose(1, 2).view(B, T, H * d)


@correct("04.merge_heads")
def merge_cat_heads(x):
    return torch.cat(x.unbind(1), dim=-1)


def _positions(T, d, *, swap=False, halves=False, step=2, start=0, sign=-1, dtype=torch.float32):
    pos = torch.arange(start, start + T, dtype=dtype)[:, None]
    freq = 10000.0 ** (sign * torch.arange(0, d, 2, dtype=dtype) * (step / 2) / d)
    s, c = torch.sin(pos * freq), torch.cos(pos * freq)
    if swap:
        s, c = c, s
    if halves:
        return torch.cat([s, c], 1)
    return torch.stack([s, c], -1).reshape(T, d)


@mutant("04.sinusoidal_positions")
def positions_sin_cos_swapped(T, d):
    return _positions(T, d, swap=True)


@mutant("04.sinusoidal_positions")
def positions_halves_not_interleaved(T, d):
    return _positions(T, d, halves=True)


@mutant("04.sinusoidal_positions")
def positions_exponent_i_over_d(T, d):
    return _positions(T, d, step=1)


@mutant("04.sinusoidal_positions")
def positions_frequency_not_inverted(T, d):
    return _positions(T, d, sign=1)


@mutant("04.sinusoidal_positions")
def positions_from_one(T, d):
    return _positions(T, d, start=1)


@mutant("04.sinusoidal_positions")
def positions_float64(T, d):
    return _positions(T, d, dtype=torch.float64)


@correct("04.sinusoidal_positions")
def positions_float32_recipe(T, d):  # the hint's recipe, all in float32
    pos = torch.arange(T)[:, None]
    freq = 10000 ** (-torch.arange(0, d, 2) / d)
    pe = torch.zeros(T, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


@correct("04.sinusoidal_positions")
def positions_exp_log(T, d):
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    return torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], -1).flatten(1)


# ------------------------------------------------------------------------------------------ 05


def _ab(betas):
    return torch.cumprod(1 - betas, 0)


@mutant("05.q_sample")
def q_sample_off_by_one(x0, t, eps, betas):
    ab = col(_ab(betas)[t - 1], x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@mutant("05.q_sample")
def q_sample_alpha_not_alpha_bar(x0, t, eps, betas):
    ab = col((1 - betas)[t], x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@mutant("05.q_sample")
def q_sample_variance_not_std(x0, t, eps, betas):
    ab = col(_ab(betas)[t], x0)
    return ab.sqrt() * x0 + (1 - ab) * eps


@mutant("05.q_sample")
def q_sample_float64_leak(x0, t, eps, betas):
    ab = _ab(betas)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@mutant("05.q_sample")
def q_sample_one_t_for_all(x0, t, eps, betas):
    ab = float(_ab(betas)[t[0]])
    return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps


@correct("05.q_sample")
def q_sample_hint_recipe(x0, t, eps, betas):
    ab = col(_ab(betas)[t], x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@correct("05.q_sample")
def q_sample_float64_coefficients(x0, t, eps, betas):
    ab = _ab(betas)[t]
    return col(ab.sqrt(), x0) * x0 + col((1 - ab).sqrt(), x0) * eps


@correct("05.q_sample")
def q_sample_all_float64(x0, t, eps, betas):
    ab = _ab(betas)[t].view(-1, 1, 1, 1)
    return (ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()).to(x0.dtype)


def _posterior(x0, xt, t, betas, *, prev=None, sqrt_prev=True, alpha=None):
    ab = _ab(betas)
    ab_prev = torch.cat([torch.ones(1, dtype=betas.dtype), ab[:-1]]) if prev is None else prev(ab)
    a = (1 - betas) if alpha is None else alpha(ab, betas)
    ab_t, ab_p, beta, a_t = ab[t], ab_prev[t], betas[t], a[t]
    c0 = (ab_p.sqrt() if sqrt_prev else ab_p) * beta / (1 - ab_t)
    ct = a_t.sqrt() * (1 - ab_p) / (1 - ab_t)
    return col(c0, x0) * x0 + col(ct, x0) * xt


@mutant("05.posterior_mean")
def posterior_prev_is_current(x0, xt, t, betas):
    return _posterior(x0, xt, t, betas, prev=lambda ab: ab)


@mutant("05.posterior_mean")
def posterior_prev_wraps_around(x0, xt, t, betas):
    return _posterior(x0, xt, t, betas, prev=lambda ab: ab.roll(1))


@mutant("05.posterior_mean")
def posterior_prev_without_sqrt(x0, xt, t, betas):
    return _posterior(x0, xt, t, betas, sqrt_prev=False)


@mutant("05.posterior_mean")
def posterior_alpha_bar_for_alpha(x0, xt, t, betas):
    return _posterior(x0, xt, t, betas, alpha=lambda ab, b: ab)


@mutant("05.posterior_mean")
def posterior_coefficients_swapped(x0, xt, t, betas):
    return _posterior(xt, x0, t, betas)


@mutant("05.posterior_mean")
def posterior_float32_coefficients(x0, xt, t, betas):
    """The schedule cast to float32 before 1 - alpha_bar: off by up to ~1e-2 at small t (cancellation)."""
    ab = _ab(betas)
    ab_prev = torch.cat([torch.ones(1, dtype=betas.dtype), ab[:-1]])
    ab_t, ab_p, beta, a_t = (col(v[t], x0) for v in (ab, ab_prev, betas, 1 - betas))
    return ab_p.sqrt() * beta / (1 - ab_t) * x0 + a_t.sqrt() * (1 - ab_p) / (1 - ab_t) * xt


@correct("05.posterior_mean")
def posterior_float64_coefficients(x0, xt, t, betas):
    return _posterior(x0, xt, t, betas)


@correct("05.posterior_mean")
def posterior_all_float64(x0, xt, t, betas):
    return _posterior(x0.double(), xt.double(), t, betas).to(x0.dtype)


def _ddim(model_output, xt, t, t_prev, betas, *, prev=None, sqrt=math.sqrt, use_alpha=False):
    ab_all = (1 - betas) if use_alpha else _ab(betas)
    ab = float(ab_all[t])
    ab_prev = prev(ab_all, t_prev) if prev else (float(ab_all[t_prev]) if t_prev >= 0 else 1.0)
    x0_hat = (xt - sqrt(1 - ab) * model_output) / sqrt(ab)
    return sqrt(ab_prev) * x0_hat + sqrt(1 - ab_prev) * model_output


@mutant("05.ddim_step")
def ddim_negative_index(model_output, xt, t, t_prev, betas):
    return _ddim(model_output, xt, t, t_prev, betas, prev=lambda ab, tp: float(ab[tp]))


@mutant("05.ddim_step")
def ddim_no_sqrt(model_output, xt, t, t_prev, betas):
    return _ddim(model_output, xt, t, t_prev, betas, sqrt=lambda v: v)


@mutant("05.ddim_step")
def ddim_alpha_not_alpha_bar(model_output, xt, t, t_prev, betas):
    return _ddim(model_output, xt, t, t_prev, betas, use_alpha=True)


@mutant("05.ddim_step")
def ddim_returns_x0_hat(model_output, xt, t, t_prev, betas):
    ab = float(_ab(betas)[t])
    return (xt - math.sqrt(1 - ab) * model_output) / math.sqrt(ab)


@mutant("05.ddim_step")
def ddim_off_by_one(model_output, xt, t, t_prev, betas):
    return _ddim(model_output, xt, t, t_prev, betas, prev=lambda ab, tp: float(ab[tp + 1]))


@correct("05.ddim_step")
def ddim_tensor_coefficients(model_output, xt, t, t_prev, betas):
    ab = _ab(betas)
    a, a_prev = ab[t].to(xt.dtype), (ab[t_prev] if t_prev >= 0 else torch.tensor(1.0)).to(xt.dtype)
    x0_hat = (xt - (1 - a).sqrt() * model_output) / a.sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * model_output


@correct("05.ddim_step")
def ddim_one_linear_map(model_output, xt, t, t_prev, betas):
    ab = _ab(betas)
    a, a_prev = float(ab[t]), float(ab[t_prev]) if t_prev >= 0 else 1.0
    r = math.sqrt(a_prev / a)
    return r * xt + (math.sqrt(1 - a_prev) - r * math.sqrt(1 - a)) * model_output


@mutant("05.guided_eps")
def guidance_towards_uncond(eps_cond, eps_uncond, scale):
    return eps_cond + scale * (eps_uncond - eps_cond)


@mutant("05.guided_eps")
def guidance_paper_convention(eps_cond, eps_uncond, scale):
    return (1 + scale) * eps_cond - scale * eps_uncond


@mutant("05.guided_eps")
def guidance_no_uncond_term(eps_cond, eps_uncond, scale):
    return scale * eps_cond


@mutant("05.guided_eps")
def guidance_in_place(eps_cond, eps_uncond, scale):
    return eps_cond.sub_(eps_uncond).mul_(scale).add_(eps_uncond)


@correct("05.guided_eps")
def guidance_weighted_sum(eps_cond, eps_uncond, scale):
    return scale * eps_cond + (1 - scale) * eps_uncond


@correct("05.guided_eps")
def guidance_lerp(eps_cond, eps_uncond, scale):
    return torch.lerp(eps_uncond, eps_cond, scale)


# ------------------------------------------------------------------------------------------ 06


def _targets(logits):
    return torch.arange(len(logits))


@mutant("06.clip_loss")
def clip_loss_images_only(logits_per_image):
    return F.cross_entropy(logits_per_image, _targets(logits_per_image))


@mutant("06.clip_loss")
def clip_loss_no_half(logits_per_image):
    t = _targets(logits_per_image)
    return F.cross_entropy(logits_per_image, t) + F.cross_entropy(logits_per_image.T, t)


@mutant("06.clip_loss")
def clip_loss_summed_over_the_batch(logits_per_image):
    t = _targets(logits_per_image)
    return (
        F.cross_entropy(logits_per_image, t, reduction="sum") + F.cross_entropy(logits_per_image.T, t, reduction="sum")
    ) / 2


@mutant("06.clip_loss")
def clip_loss_naive_softmax(logits_per_image):
    e = logits_per_image.exp()
    d = logits_per_image.diagonal()
    return -((d - e.sum(1).log()).mean() + (d - e.sum(0).log()).mean()) / 2


@mutant("06.clip_loss")
def clip_loss_rows_twice(logits_per_image):
    t = _targets(logits_per_image)
    return (F.cross_entropy(logits_per_image, t) + F.cross_entropy(logits_per_image, t)) / 2


@mutant("06.clip_loss")
def clip_loss_log_of_softmax(logits_per_image):
    rows, cols = logits_per_image.softmax(1).diagonal(), logits_per_image.softmax(0).diagonal()
    return -(rows.log().mean() + cols.log().mean()) / 2


@mutant("06.clip_loss")
def clip_loss_shifted_by_the_diagonal(logits_per_image):
    d = logits_per_image.diagonal()
    rows = (logits_per_image - d[:, None]).exp().sum(1).log()
    cols = (logits_per_image - d[None, :]).exp().sum(0).log()
    return (rows.mean() + cols.mean()) / 2


@mutant("06.clip_loss")
def clip_loss_clamped_logits(logits_per_image):
    return clip_loss_naive_softmax(logits_per_image.clamp(max=80))


@correct("06.clip_loss")
def clip_loss_by_logsumexp(logits_per_image):
    d = logits_per_image.diagonal()
    rows = logits_per_image.logsumexp(1) - d
    cols = logits_per_image.logsumexp(0) - d
    return (rows.mean() + cols.mean()) / 2


@correct("06.clip_loss")
def clip_loss_loop_over_rows(logits_per_image):
    B = len(logits_per_image)
    total = 0.0
    for i in range(B):
        total = total + torch.log_softmax(logits_per_image[i], 0)[i] + torch.log_softmax(logits_per_image[:, i], 0)[i]
    return -total / (2 * B)


@mutant("06.zero_shot_probs")
def probs_classes_not_normalised(image_embeddings, class_embeddings, scale):
    return torch.softmax(scale * F.normalize(image_embeddings, dim=-1) @ class_embeddings.T, dim=-1)


@mutant("06.zero_shot_probs")
def probs_images_not_normalised(image_embeddings, class_embeddings, scale):
    return torch.softmax(scale * image_embeddings @ F.normalize(class_embeddings, dim=-1).T, dim=-1)


@mutant("06.zero_shot_probs")
def probs_softmax_over_images(image_embeddings, class_embeddings, scale):
    cos = F.normalize(image_embeddings, dim=-1) @ F.normalize(class_embeddings, dim=-1).T
    return torch.softmax(scale * cos, dim=0)


@mutant("06.zero_shot_probs")
def probs_no_scale(image_embeddings, class_embeddings, scale):
    return torch.softmax(F.normalize(image_embeddings, dim=-1) @ F.normalize(class_embeddings, dim=-1).T, dim=-1)


@mutant("06.zero_shot_probs")
def probs_divided_by_scale(image_embeddings, class_embeddings, scale):
    cos = F.normalize(image_embeddings, dim=-1) @ F.normalize(class_embeddings, dim=-1).T
    return torch.softmax(cos / scale, dim=-1)


@mutant("06.zero_shot_probs")
def probs_plain_exp(image_embeddings, class_embeddings, scale):
    e = (scale * F.normalize(image_embeddings, dim=-1) @ F.normalize(class_embeddings, dim=-1).T).exp()
    return e / e.sum(1, keepdim=True)


@correct("06.zero_shot_probs")
def probs_in_float64(image_embeddings, class_embeddings, scale):
    cos = F.normalize(image_embeddings.double(), dim=-1) @ F.normalize(class_embeddings.double(), dim=-1).T
    return torch.softmax(float(scale) * cos, dim=-1).to(image_embeddings.dtype)


@correct("06.zero_shot_probs")
def probs_by_cosine_similarity(image_embeddings, class_embeddings, scale):
    cos = F.cosine_similarity(image_embeddings[:, None, :], class_embeddings[None, :, :], dim=-1)
    return torch.softmax(scale * cos, dim=1)


@mutant("06.ensemble_prompts")
def ensemble_mean_of_raw_vectors(prompt_embeddings):
    return F.normalize(prompt_embeddings.mean(1), dim=-1)


@mutant("06.ensemble_prompts")
def ensemble_not_renormalised(prompt_embeddings):
    return F.normalize(prompt_embeddings, dim=-1).mean(1)


@mutant("06.ensemble_prompts")
def ensemble_over_classes(prompt_embeddings):
    return F.normalize(F.normalize(prompt_embeddings, dim=-1).mean(0), dim=-1)


@mutant("06.ensemble_prompts")
def ensemble_normalised_along_prompts(prompt_embeddings):
    return F.normalize(F.normalize(prompt_embeddings, dim=1).mean(1), dim=-1)


@correct("06.ensemble_prompts")
def ensemble_normalised_sum(prompt_embeddings):
    unit = prompt_embeddings / prompt_embeddings.norm(dim=-1, keepdim=True)
    total = unit.sum(1)
    return total / total.norm(dim=-1, keepdim=True)


@mutant("06.recall_at_k")
def recall_ties_in_favour(sim, k):
    rank = (sim > sim.diagonal()[:, None]).sum(1)
    return float((rank < k).float().mean())


@mutant("06.recall_at_k")
def recall_columns_as_queries(sim, k):
    sim = sim[:, : len(sim)].T
    rank = (sim >= sim.diagonal()[:, None]).sum(1) - 1
    return float((rank < k).float().mean())


@mutant("06.recall_at_k")
def recall_off_by_one(sim, k):
    rank = (sim >= sim.diagonal()[:, None]).sum(1) - 1
    return float((rank <= k).float().mean())


@mutant("06.recall_at_k")
def recall_match_anywhere_in_topk_of_column(sim, k):
    top = sim.topk(k, dim=0).indices  # the top k queries of each candidate
    return float(sum(i in top[:, i].tolist() for i in range(len(sim))) / len(sim))


@mutant("06.recall_at_k")
def recall_beats_the_next_value(sim, k):
    nxt = sim.topk(min(k + 1, sim.shape[1]), dim=1).values[:, -1]
    return float((sim.diagonal() > nxt).float().mean())


@mutant("06.recall_at_k")
def recall_by_topk_indices(sim, k):
    top = sim.topk(k, dim=1).indices
    return float((top == torch.arange(len(sim))[:, None]).any(1).float().mean())


@correct("06.recall_at_k")
def recall_loop(sim, k):
    hits = 0
    for i, row in enumerate(sim.tolist()):
        better_or_equal = sum(1 for j, v in enumerate(row) if j != i and v >= row[i])
        hits += better_or_equal < k
    return hits / len(sim)


# ------------------------------------------------------------------------------------------ 07


def _scores(q, k):
    return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5


@mutant("07.cross_attention")
def cross_attention_no_mask(q, k, v, mask):
    return torch.softmax(_scores(q, k), dim=-1) @ v


@mutant("07.cross_attention")
def cross_attention_mask_after_softmax(q, k, v, mask):
    w = torch.softmax(_scores(q, k.masked_fill(~mask[..., None], 0)), dim=-1) * mask[:, None, :]
    return w @ v.masked_fill(~mask[..., None], 0)


@mutant("07.cross_attention")
def cross_attention_no_sqrt_d(q, k, v, mask):
    k0, v0 = k.masked_fill(~mask[..., None], 0), v.masked_fill(~mask[..., None], 0)
    s = (q @ k0.transpose(-1, -2)).masked_fill(~mask[:, None, :], -math.inf)
    return torch.nan_to_num(torch.softmax(s, dim=-1)) @ v0


@mutant("07.cross_attention")
def cross_attention_softmax_over_positions(q, k, v, mask):
    k0, v0 = k.masked_fill(~mask[..., None], 0), v.masked_fill(~mask[..., None], 0)
    s = _scores(q, k0).masked_fill(~mask[:, None, :], -math.inf)
    return torch.nan_to_num(torch.softmax(s, dim=-2)) @ v0


@mutant("07.cross_attention")
def cross_attention_nan_for_padding_only(q, k, v, mask):
    k0, v0 = k.masked_fill(~mask[..., None], 0), v.masked_fill(~mask[..., None], 0)
    return torch.softmax(_scores(q, k0).masked_fill(~mask[:, None, :], -math.inf), dim=-1) @ v0


@mutant("07.cross_attention")
def cross_attention_inverted_mask(q, k, v, mask):
    return cross_attention_loop(q, k, v, ~mask)


@correct("07.cross_attention")
def cross_attention_large_negative_zeroed_values(q, k, v, mask):  # padding only: uniform weights over zeros
    k0, v0 = k.masked_fill(~mask[..., None], 0), v.masked_fill(~mask[..., None], 0)
    return torch.softmax(_scores(q, k0).masked_fill(~mask[:, None, :], -1e9), dim=-1) @ v0


@mutant("07.cross_attention")
def cross_attention_real_tokens_first(q, k, v, mask):  # assumes padding only at the end
    out = torch.zeros_like(q)
    for b, n in enumerate(mask.sum(1).tolist()):
        if n:
            out[b] = torch.softmax(q[b] @ k[b, :n].T / math.sqrt(q.shape[-1]), dim=-1) @ v[b, :n]
    return out


@mutant("07.cross_attention")
def cross_attention_padding_read_from_values(q, k, v, mask):
    real = torch.isfinite(k).all(-1) & (k.abs().amax(-1) < 1e3)
    return cross_attention_loop(q, k, v, real)


@correct("07.cross_attention")
def cross_attention_loop(q, k, v, mask):
    out = torch.zeros_like(q)
    for b in range(len(q)):
        real = mask[b].nonzero().flatten()
        if len(real):
            out[b] = torch.softmax(q[b] @ k[b, real].T / math.sqrt(q.shape[-1]), dim=-1) @ v[b, real]
    return out


@correct("07.cross_attention")
def cross_attention_sdpa(q, k, v, mask):
    k0, v0 = k.masked_fill(~mask[..., None], 0), v.masked_fill(~mask[..., None], 0)
    some = mask.any(1)
    out = F.scaled_dot_product_attention(q, k0, v0, attn_mask=(mask | ~some[:, None])[:, None, :])
    return out * some[:, None, None]


@mutant("07.latent_scale")
def scale_is_the_std(latents):
    return float(latents.std())


@mutant("07.latent_scale")
def scale_from_the_variance(latents):
    return 1.0 / float(latents.var())


@mutant("07.latent_scale")
def scale_from_rms(latents):  # the mean counted as spread
    return 1.0 / float(latents.pow(2).mean().sqrt())


@mutant("07.latent_scale")
def scale_mean_of_channel_stds(latents):
    return 1.0 / float(latents.transpose(0, 1).flatten(1).std(1).mean())


@mutant("07.latent_scale")
def scale_channels_centred_first(latents):
    return 1.0 / float((latents - latents.mean((0, 2, 3), keepdim=True)).std())


@mutant("07.latent_scale")
def scale_from_the_largest_value(latents):
    return 1.0 / float(latents.abs().max())


@correct("07.latent_scale")
def scale_biased_std_float64(latents):
    x = latents.double().flatten()
    return 1.0 / math.sqrt(float(((x - x.mean()) ** 2).mean()))


@correct("07.latent_scale")
def scale_numpy(latents):
    return float(1 / latents.numpy().std())


@mutant("07.guidance_batch")
def guidance_zero_states_as_empty(context, mask):
    return torch.cat([context, torch.zeros_like(context)]), torch.cat([mask, mask])


@mutant("07.guidance_batch")
def guidance_unconditional_first(context, mask):
    return torch.cat([context, context]), torch.cat([torch.zeros_like(mask), mask])


@mutant("07.guidance_batch")
def guidance_mask_unchanged(context, mask):
    return torch.cat([context, context]), torch.cat([mask, mask])


@mutant("07.guidance_batch")
def guidance_inverted_mask(context, mask):
    return torch.cat([context, context]), torch.cat([mask, ~mask])


@mutant("07.guidance_batch")
def guidance_interleaved(context, mask):
    return context.repeat_interleave(2, 0), torch.stack([mask, torch.zeros_like(mask)], 1).flatten(0, 1)


@correct("07.guidance_batch")
def guidance_repeat_and_mask(context, mask):
    both = context.repeat(2, 1, 1)
    keep = mask.repeat(2, 1)
    keep[len(mask) :] = False
    return both, keep


@mutant("07.position_of_ink")
def position_from_centroid(ink):
    n, h, w = ink.shape
    ys, xs = torch.arange(h).float(), torch.arange(w).float()
    mass = ink.float().sum((1, 2))
    dy = (ink.float().sum(2) @ ys) / mass + 0.5 - h / 2
    dx = (ink.float().sum(1) @ xs) / mass + 0.5 - w / 2
    return _side(dx, dy)


def _box_offsets(ink):
    n, h, w = ink.shape
    rows = [r.nonzero().flatten() for r in ink.any(2)]
    cols = [c.nonzero().flatten() for c in ink.any(1)]
    dy = torch.tensor([(int(r[0]) + int(r[-1]) + 1) / 2 - h / 2 for r in rows])
    dx = torch.tensor([(int(c[0]) + int(c[-1]) + 1) / 2 - w / 2 for c in cols])
    return dx, dy


@mutant("07.position_of_ink")
def position_strict_threshold(ink):
    dx, dy = _box_offsets(ink)
    return _side(dx, dy, near=lambda dx, dy: torch.maximum(dx.abs(), dy.abs()) < 2.5)


@mutant("07.position_of_ink")
def position_threshold_three(ink):
    dx, dy = _box_offsets(ink)
    return _side(dx, dy, near=lambda dx, dy: torch.maximum(dx.abs(), dy.abs()) <= 3)


@mutant("07.position_of_ink")
def position_height_for_both_axes(ink):
    n, h, w = ink.shape
    dx, dy = _box_offsets(ink)
    return _side(dx + w / 2 - h / 2, dy)


def _side(dx, dy, near=lambda dx, dy: torch.maximum(dx.abs(), dy.abs()) <= 2.5, horizontal_wins=True):
    horizontal = dx.abs() >= dy.abs() if horizontal_wins else dx.abs() > dy.abs()
    side = torch.where(horizontal, torch.where(dx < 0, 0, 1), torch.where(dy < 0, 2, 3))
    return torch.where(near(dx, dy), 4, side).long()


@mutant("07.position_of_ink")
def position_euclidean_centre(ink):
    dx, dy = _box_offsets(ink)
    return _side(dx, dy, near=lambda dx, dy: (dx**2 + dy**2).sqrt() <= 2.5)


@mutant("07.position_of_ink")
def position_rows_and_columns_swapped(ink):
    dx, dy = _box_offsets(ink)
    return _side(dy, dx)


@mutant("07.position_of_ink")
def position_no_centre(ink):
    dx, dy = _box_offsets(ink)
    return _side(dx, dy, near=lambda dx, dy: torch.zeros_like(dx, dtype=torch.bool))


@mutant("07.position_of_ink")
def position_vertical_wins_ties(ink):
    dx, dy = _box_offsets(ink)
    return _side(dx, dy, horizontal_wins=False)


@mutant("07.position_of_ink")
def position_left_right_flipped(ink):
    dx, dy = _box_offsets(ink)
    return _side(-dx, dy)


@correct("07.position_of_ink")
def position_pixel_centres(ink):  # pixel centres at i: box centre (top + bottom) / 2 against (H - 1) / 2
    n, h, w = ink.shape
    out = []
    for img in ink:
        r, c = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        dy = (r[0] + r[-1]).item() / 2 - (h - 1) / 2
        dx = (c[0] + c[-1]).item() / 2 - (w - 1) / 2
        if max(abs(dx), abs(dy)) <= 2.5:
            out.append(4)
        elif abs(dx) >= abs(dy):
            out.append(0 if dx < 0 else 1)
        else:
            out.append(2 if dy < 0 else 3)
    return torch.tensor(out)


# ------------------------------------------------------------------------------------------ 08


def _compress(wave, channels):
    mu = channels - 1
    x = wave.clamp(-1, 1)
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


@mutant("08.mu_law_encode")
def mu_law_truncates(wave, channels):
    return ((_compress(wave, channels) + 1) / 2 * (channels - 1)).long()  # floor, not the nearest level


@mutant("08.mu_law_encode")
def mu_law_scales_by_channels(wave, channels):
    return torch.floor((_compress(wave, channels) + 1) / 2 * channels + 0.5).long().clamp(max=channels - 1)


@mutant("08.mu_law_encode")
def mu_law_without_clamp(wave, channels):
    mu = channels - 1
    y = torch.sign(wave) * torch.log1p(mu * wave.abs()) / math.log1p(mu)
    return torch.floor((y + 1) / 2 * mu + 0.5).long()


@mutant("08.mu_law_encode")
def mu_law_linear(wave, channels):
    return torch.floor((wave.clamp(-1, 1) + 1) / 2 * (channels - 1) + 0.5).long()  # no compression


@mutant("08.mu_law_encode")
def mu_law_mu_is_channels(wave, channels):
    x = wave.clamp(-1, 1)
    y = torch.sign(x) * torch.log1p(channels * x.abs()) / math.log1p(channels)
    return torch.floor((y + 1) / 2 * (channels - 1) + 0.5).long()


@mutant("08.mu_law_encode")
def mu_law_as_floats(wave, channels):
    return torch.floor((_compress(wave, channels) + 1) / 2 * (channels - 1) + 0.5)


@correct("08.mu_law_encode")
def mu_law_rounds_half_to_even(wave, channels):  # differs only exactly half-way, where no case lands
    return torch.round((_compress(wave, channels) + 1) / 2 * (channels - 1)).long()


@correct("08.mu_law_encode")
def mu_law_nearest_level_search(wave, channels):
    levels = torch.arange(channels, dtype=torch.float64) * 2 / (channels - 1) - 1
    y = _compress(wave.double(), channels)
    # the nearest level, ties to the upper one
    return (y[..., None] - levels).abs().flip(-1).argmin(-1).neg().add(channels - 1)


def _slaney_points(n_mels, f_min, f_max):
    from aigc_lib.speech import audio

    m = torch.linspace(audio.hz_to_mel(f_min), audio.hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    return audio.mel_to_hz(m)


def _triangles(f, n_fft, sample_rate, norm=True):
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    up = (bins - f[:-2, None]) / (f[1:-1] - f[:-2])[:, None]
    down = (f[2:, None] - bins) / (f[2:] - f[1:-1])[:, None]
    w = torch.clamp(torch.minimum(up, down), min=0)
    return (w * (2 / (f[2:] - f[:-2]))[:, None] if norm else w).float()


@mutant("08.mel_filterbank")
def filterbank_htk_scale(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = sample_rate / 2 if f_max is None else f_max
    to_mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    m = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
    return _triangles(700 * (10 ** (m / 2595) - 1), n_fft, sample_rate)


@mutant("08.mel_filterbank")
def filterbank_peaks_of_one(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = sample_rate / 2 if f_max is None else f_max
    return _triangles(_slaney_points(n_mels, f_min, f_max), n_fft, sample_rate, norm=False)


@mutant("08.mel_filterbank")
def filterbank_spaced_in_hz(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = sample_rate / 2 if f_max is None else f_max
    return _triangles(torch.linspace(f_min, f_max, n_mels + 2, dtype=torch.float64), n_fft, sample_rate)


@mutant("08.mel_filterbank")
def filterbank_ignores_f_max(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    return _triangles(_slaney_points(n_mels, f_min, sample_rate / 2), n_fft, sample_rate)


@mutant("08.mel_filterbank")
def filterbank_bins_off_by_one(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = sample_rate / 2 if f_max is None else f_max
    f = _slaney_points(n_mels, f_min, f_max)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / (n_fft - 1)
    up = (bins - f[:-2, None]) / (f[1:-1] - f[:-2])[:, None]
    down = (f[2:, None] - bins) / (f[2:] - f[1:-1])[:, None]
    return (torch.clamp(torch.minimum(up, down), min=0) * (2 / (f[2:] - f[:-2]))[:, None]).float()


@correct("08.mel_filterbank")
def filterbank_by_loops(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    f_max = sample_rate / 2 if f_max is None else f_max
    f = _slaney_points(n_mels, f_min, f_max).tolist()
    out = torch.zeros(n_mels, n_fft // 2 + 1)
    for m in range(n_mels):
        for k in range(n_fft // 2 + 1):
            hz = k * sample_rate / n_fft
            w = max(0.0, min((hz - f[m]) / (f[m + 1] - f[m]), (f[m + 2] - hz) / (f[m + 2] - f[m + 1])))
            out[m, k] = w * 2 / (f[m + 2] - f[m])
    return out


@mutant("08.causal_conv")
def conv_centred(x, weight, bias, dilation):
    k = weight.shape[-1]
    p = (k - 1) * dilation
    return F.conv1d(F.pad(x, (p - p // 2, p // 2)), weight, bias, dilation=dilation)


@mutant("08.causal_conv")
def conv_padded_on_the_right(x, weight, bias, dilation):
    k = weight.shape[-1]
    return F.conv1d(F.pad(x, (0, (k - 1) * dilation)), weight, bias, dilation=dilation)


@mutant("08.causal_conv")
def conv_pad_forgets_dilation(x, weight, bias, dilation):
    k = weight.shape[-1]
    return F.conv1d(F.pad(x, (k - 1, 0)), weight, bias, dilation=dilation)[..., : x.shape[-1]]


@mutant("08.causal_conv")
def conv_flipped_taps(x, weight, bias, dilation):
    k = weight.shape[-1]
    return F.conv1d(F.pad(x, ((k - 1) * dilation, 0)), weight.flip(-1), bias, dilation=dilation)


@mutant("08.causal_conv")
def conv_both_sides_then_crop(x, weight, bias, dilation):
    k = weight.shape[-1]
    p = (k - 1) * dilation
    return F.conv1d(x, weight, bias, dilation=dilation, padding=p)[..., p:]  # reads the future


@correct("08.causal_conv")
def conv_by_shifted_taps(x, weight, bias, dilation):
    k, T = weight.shape[-1], x.shape[-1]
    out = torch.zeros(x.shape[0], weight.shape[0], T, dtype=x.dtype)
    for j in range(k):
        shift = (k - 1 - j) * dilation
        past = F.pad(x, (shift, 0))[..., :T]  # x[t - shift]
        out += torch.einsum("oc,bct->bot", weight[:, :, j], past)
    return out if bias is None else out + bias[None, :, None]


@mutant("08.length_regulate")
def regulate_flattens_the_batch(h, durations):
    out = torch.repeat_interleave(h.flatten(0, 1), durations.flatten(), dim=0)
    return out.reshape(len(h), -1, h.shape[-1]) if out.numel() % len(h) == 0 else out[None]


@mutant("08.length_regulate")
def regulate_pads_to_the_sum_of_durations(h, durations):
    rows = [torch.repeat_interleave(h[b], durations[b], dim=0) for b in range(len(h))]
    T = int(durations.sum(1).max()) + 1
    return torch.stack([F.pad(r, (0, 0, 0, T - len(r))) for r in rows])


@mutant("08.length_regulate")
def regulate_keeps_zero_duration_phonemes(h, durations):
    rows = [torch.repeat_interleave(h[b], durations[b].clamp(min=1), dim=0) for b in range(len(h))]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


@mutant("08.length_regulate")
def regulate_tiles_instead_of_repeating(h, durations):
    rows = []
    for b in range(len(h)):
        n = int(durations[b].sum())
        rows.append(h[b].repeat(n // max(len(h[b]), 1) + 1, 1)[:n])
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


@mutant("08.length_regulate")
def regulate_pads_with_the_last_frame(h, durations):
    rows = [torch.repeat_interleave(h[b], durations[b], dim=0) for b in range(len(h))]
    T = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r[-1:].expand(T - len(r), -1)]) if len(r) else torch.zeros(T, h.shape[-1])
                        for r in rows])  # fmt: skip


@correct("08.length_regulate")
def regulate_by_cumsum(h, durations):
    ends = durations.cumsum(1)
    T = int(ends[:, -1].max())
    out = torch.zeros(len(h), T, h.shape[-1], dtype=h.dtype)
    for b in range(len(h)):
        for t in range(int(ends[b, -1])):
            out[b, t] = h[b, int((ends[b] <= t).sum())]
    return out


# ------------------------------------------------------------------------------------------ 09


def _quantize(w, scale_of, round_=torch.round):
    scale = scale_of(w)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return round_(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


@mutant("09.quantize_int8")
def quantize_by_128(weight):
    return _quantize(weight.float(), lambda w: w.abs().amax(1) / 128)


@mutant("09.quantize_int8")
def quantize_one_scale_per_tensor(weight):
    w = weight.float()
    return _quantize(w, lambda w: (w.abs().amax() / 127).expand(len(w)))


@mutant("09.quantize_int8")
def quantize_per_column(weight):
    return _quantize(weight.float(), lambda w: w.abs().amax(0) / 127)


@mutant("09.quantize_int8")
def quantize_truncates(weight):
    return _quantize(weight.float(), lambda w: w.abs().amax(1) / 127, torch.trunc)


@mutant("09.quantize_int8")
def quantize_largest_signed_value(weight):
    return _quantize(weight.float(), lambda w: w.amax(1).abs() / 127)  # a negative largest magnitude is missed


@mutant("09.quantize_int8")
def quantize_zero_row_scale_zero(weight):
    w = weight.float()
    scale = w.abs().amax(1) / 127
    return torch.round(w / scale[:, None]).nan_to_num(0.0).clamp(-127, 127).to(torch.int8), scale


@mutant("09.quantize_int8")
def quantize_zero_row_tiny_scale(weight):
    w = weight.float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-8)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


@mutant("09.quantize_int8")
def quantize_keeps_float64(weight):
    return _quantize(weight, lambda w: w.abs().amax(1) / 127)  # a float64 scale for a float64 weight


@mutant("09.quantize_int8")
def quantize_scale_as_column(weight):
    q, scale = _quantize(weight.float(), lambda w: w.abs().amax(1) / 127)
    return q, scale[:, None]


@mutant("09.quantize_int8")
def quantize_q_as_int64(weight):
    q, scale = _quantize(weight.float(), lambda w: w.abs().amax(1) / 127)
    return q.long(), scale


@mutant("09.quantize_int8")
def quantize_returns_a_list(weight):
    return list(_quantize(weight.float(), lambda w: w.abs().amax(1) / 127))


@correct("09.quantize_int8")
def quantize_half_up_in_float64(weight):  # differs only exactly half-way, where no case lands
    w = weight.double()
    scale = w.abs().amax(1, keepdim=True) / 127
    scale[scale == 0] = 1
    return torch.floor(w / scale + 0.5).to(torch.int8), scale.flatten().float()


@correct("09.quantize_int8")
def quantize_row_by_row(weight):
    qs, scales = [], []
    for row in weight.float():
        s = float(row.abs().max()) / 127 or 1.0
        scales.append(s)
        qs.append(torch.round(row / torch.tensor(s, dtype=torch.float32)).to(torch.int8))
    return torch.stack(qs), torch.tensor(scales, dtype=torch.float32)


def _soft(student, teacher, T):
    return F.log_softmax(student / T, -1), F.softmax(teacher / T, -1)


@mutant("09.distillation_loss")
def distill_without_t_squared(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return F.kl_div(log_q, p, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_times_t(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return temperature * F.kl_div(log_q, p, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_reversed_kl(student_logits, teacher_logits, temperature):  # KL(student ‖ teacher)
    log_p, q = _soft(teacher_logits, student_logits, temperature)
    return temperature**2 * F.kl_div(log_p, q, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_sum_over_rows(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return temperature**2 * F.kl_div(log_q, p, reduction="sum")


@mutant("09.distillation_loss")
def distill_batchmean(student_logits, teacher_logits, temperature):  # divides by B only, not B · L
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return temperature**2 * F.kl_div(log_q, p, reduction="batchmean")


@mutant("09.distillation_loss")
def distill_mean_over_tokens_too(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return temperature**2 * F.kl_div(log_q, p, reduction="none").mean()  # what reduction="mean" does


@mutant("09.distillation_loss")
def distill_teacher_only_softened(student_logits, teacher_logits, temperature):
    log_q, p = F.log_softmax(student_logits, -1), F.softmax(teacher_logits / temperature, -1)
    return temperature**2 * F.kl_div(log_q, p, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_kl_div_arguments_swapped(student_logits, teacher_logits, temperature):
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    q = F.softmax(student_logits / temperature, -1)
    return temperature**2 * F.kl_div(log_p, q, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_log_target_without_flag(student_logits, teacher_logits, temperature):
    log_q, log_p = (F.log_softmax(z / temperature, -1) for z in (student_logits, teacher_logits))
    return temperature**2 * F.kl_div(log_q, log_p, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_log_target_nan(student_logits, teacher_logits, temperature):  # exp(−inf) · (−inf − x) = NaN
    log_q, log_p = (F.log_softmax(z / temperature, -1) for z in (student_logits, teacher_logits))
    return temperature**2 * F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()


@mutant("09.distillation_loss")
def distill_p_log_p_over_q(student_logits, teacher_logits, temperature):  # 0 · (−inf) = NaN
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return temperature**2 * (p * (p.log() - log_q)).sum(-1).mean()


@mutant("09.distillation_loss")
def distill_softmax_over_dim0(student_logits, teacher_logits, temperature):
    log_q = F.log_softmax(student_logits / temperature, 0)
    p = F.softmax(teacher_logits / temperature, 0)
    return temperature**2 * F.kl_div(log_q, p, reduction="none").sum(-1).mean()


@mutant("09.distillation_loss")
def distill_returns_a_float(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    return float(temperature**2 * F.kl_div(log_q, p, reduction="none").sum(-1).mean())


@correct("09.distillation_loss")
def distill_by_cross_entropy_minus_entropy(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits, teacher_logits, temperature)
    kl = torch.xlogy(p, p).sum(-1) - torch.where(p > 0, p * log_q, 0.0).sum(-1)
    return temperature**2 * kl.mean()


@correct("09.distillation_loss")
def distill_in_float64(student_logits, teacher_logits, temperature):
    log_q, p = _soft(student_logits.double(), teacher_logits.double(), temperature)
    kl = F.kl_div(log_q, p, reduction="sum") / (p.numel() // p.shape[-1])
    return (temperature**2 * kl).to(student_logits.dtype)


@correct("09.distillation_loss")
def distill_flattened_batchmean(student_logits, teacher_logits, temperature):
    V = student_logits.shape[-1]
    log_q, p = _soft(student_logits.reshape(-1, V), teacher_logits.reshape(-1, V), temperature)
    return F.kl_div(log_q, p, reduction="batchmean") * temperature * temperature


def _pairs(ids):
    return torch.unique(torch.stack([ids[:-1], ids[1:]], 1), dim=0)


def _z(s, n, gamma):
    return (s - gamma * n) / math.sqrt(n * gamma * (1 - gamma))


def _gamma(green):
    return int(green[0].sum()) / green.shape[0]


@mutant("09.watermark_z")
def z_counts_repeated_pairs(ids, green):
    return _z(int(green[ids[:-1], ids[1:]].sum()), len(ids) - 1, _gamma(green))


@mutant("09.watermark_z")
def z_distinct_greens_over_all_pairs(ids, green):
    return _z(int(green[_pairs(ids).T.unbind()].sum()), len(ids) - 1, _gamma(green))


@mutant("09.watermark_z")
def z_assumes_half_green(ids, green):
    return _z(int(green[_pairs(ids).T.unbind()].sum()), len(_pairs(ids)), 0.5)


@mutant("09.watermark_z")
def z_table_transposed(ids, green):  # green[token, previous]
    pairs = _pairs(ids)
    return _z(int(green[pairs[:, 1], pairs[:, 0]].sum()), len(pairs), _gamma(green))


@mutant("09.watermark_z")
def z_token_with_itself(ids, green):
    pairs = torch.unique(torch.stack([ids, ids], 1), dim=0)
    return _z(int(green[pairs[:, 0], pairs[:, 1]].sum()), len(pairs), _gamma(green))


@mutant("09.watermark_z")
def z_divides_by_n(ids, green):
    pairs = _pairs(ids)
    n, gamma = len(pairs), _gamma(green)
    return (int(green[pairs[:, 0], pairs[:, 1]].sum()) - gamma * n) / (n * gamma * (1 - gamma))


@mutant("09.watermark_z")
def z_as_a_tensor(ids, green):
    pairs = _pairs(ids)
    n, gamma = len(pairs), green[0].float().mean()
    return (green[pairs[:, 0], pairs[:, 1]].sum() - gamma * n) / torch.sqrt(n * gamma * (1 - gamma))


@correct("09.watermark_z")
def z_by_a_set_of_pairs(ids, green):
    pairs = set(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    s = sum(bool(green[a, b]) for a, b in pairs)
    gamma = green.float().mean().item()  # every row holds as many: the whole table's fraction is the same
    return _z(s, len(pairs), gamma)


@correct("09.watermark_z")
def z_in_float32_tensors(ids, green):
    codes = torch.unique(ids[:-1] * green.shape[0] + ids[1:])
    s = green.flatten()[codes].float().sum()
    n = torch.tensor(float(len(codes)))
    gamma = green[0].float().sum() / green.shape[0]
    return float((s - gamma * n) / torch.sqrt(n * gamma * (1 - gamma)))


def test_watermark_z_reference_is_the_librarys_detect():
    from aigc_lib.exercises.ch09 import text_case, watermark_z
    from aigc_lib.responsible import watermark

    for V, key, gamma, bias in [(69, 3, 0.5, 0.6), (40, 7, 0.25, 0.9), (11, 2, 0.3, 0.0)]:
        case = text_case(V, key, gamma, n=200, seed=key, bias=bias)
        assert watermark_z(**case) == pytest.approx(watermark.detect(case["ids"], V, key, gamma), rel=1e-12)


def _distances(samples, train):
    return torch.cdist(samples.flatten(1), train.flatten(1))


@mutant("09.copy_score")
def copy_squared_distances(samples, train, k):
    d = _distances(samples, train).square().topk(k, 1, largest=False).values
    return d[:, 0] / d.mean(1)


@mutant("09.copy_score")
def copy_mean_over_all_training_images(samples, train, k):
    d = _distances(samples, train)
    return d.amin(1) / d.mean(1)


@mutant("09.copy_score")
def copy_nearest_left_out_of_the_mean(samples, train, k):
    d = _distances(samples, train).topk(k + 1, 1, largest=False).values
    return d[:, 0] / d[:, 1:].mean(1)


@mutant("09.copy_score")
def copy_k_minus_one_others(samples, train, k):
    d = _distances(samples, train).topk(k, 1, largest=False).values
    return d[:, 0] / d[:, 1:].mean(1)


@mutant("09.copy_score")
def copy_ratio_inverted(samples, train, k):
    d = _distances(samples, train).topk(k, 1, largest=False).values
    return d.mean(1) / d[:, 0]


@mutant("09.copy_score")
def copy_cosine_distance(samples, train, k):
    d = 1 - F.normalize(samples.flatten(1), dim=1) @ F.normalize(train.flatten(1), dim=1).T
    d = d.topk(k, 1, largest=False).values
    return d[:, 0] / d.mean(1)


@mutant("09.copy_score")
def copy_mean_of_k_farthest(samples, train, k):
    d = _distances(samples, train)
    return d.amin(1) / d.topk(k, 1).values.mean(1)


@mutant("09.copy_score")
def copy_always_float32(samples, train, k):
    d = _distances(samples, train).topk(k, 1, largest=False).values
    return (d[:, 0] / d.mean(1)).float()


@mutant("09.copy_score")
def copy_float32_fast_distances(samples, train, k):  # cdist's |a|² − 2a·b + |b|² in float32, > 25 rows
    d = torch.cdist(samples.flatten(1), train.flatten(1)).topk(k, 1, largest=False).values
    return (d[:, 0] / d.mean(1)).to(samples.dtype)


@correct("09.copy_score")
def copy_by_sorting_differences(samples, train, k):
    diff = samples.flatten(1)[:, None, :] - train.flatten(1)[None, :, :]
    d = diff.square().sum(-1).sqrt().sort(1).values[:, :k]
    return d[:, 0] / d.mean(1)


@correct("09.copy_score")
def copy_in_float64(samples, train, k):
    x, y = samples.flatten(1).double(), train.flatten(1).double()
    d2 = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)  # the fast expansion, safe in float64
    d = d2.clamp_min(0).sqrt().topk(k, 1, largest=False).values
    return (d[:, 0] / d.mean(1)).to(samples.dtype)


@correct("09.copy_score")
def copy_sample_by_sample(samples, train, k):
    out = []
    for x in samples:
        d = sorted(float(torch.linalg.vector_norm(x - t)) for t in train)[:k]
        out.append(d[0] / (sum(d) / k))
    return torch.tensor(out, dtype=samples.dtype)


# ---------------------------------------------------------------------------------------- tests

CHAPTERS = sorted(p.stem[2:] for p in Path(exercises.__file__).parent.glob("ch[0-9][0-9].py"))
ALL_KEYS = [key for ch in CHAPTERS for key in exercises_for(ch)]


def _params(table):
    return [pytest.param(key, fn, id=f"{key}-{name}") for key in sorted(table) for name, fn in table[key].items()]


def test_every_exercise_has_mutants_and_a_second_correct_answer():
    for key in ALL_KEYS:
        assert len(MUTANTS.get(key, {})) >= 3, f"{key}: write at least 3 typical wrong answers"
        assert CORRECT.get(key), f"{key}: write a correct answer that differs from the reference"
    assert set(MUTANTS) | set(CORRECT) <= set(ALL_KEYS)


@pytest.mark.parametrize("key", ALL_KEYS)
def test_reference_scores_full(key):
    earned, total = score(key, get_exercise(key).reference)
    assert earned == total


@pytest.mark.parametrize(("key", "fn"), _params(MUTANTS))
def test_mutant_loses_points(key, fn):
    earned, total = score(key, fn)
    assert earned < total, f"{key}: the wrong answer {fn.__name__} gets full marks"


@pytest.mark.parametrize(("key", "fn"), _params(CORRECT))
def test_correct_variant_scores_full(key, fn):
    ex = get_exercise(key)
    failed = [f"{r.case}: {r.message}" for r in run_cases(ex, fn) + run_cases(ex, fn, hidden=True) if not r.passed]
    assert not failed, f"{key}: the correct answer {fn.__name__} loses points: {failed}"
