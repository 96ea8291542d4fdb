"""Chapter 05 library: diffusion. The noise schedules and every step formula against diffusers'
DDPMScheduler / DDIMScheduler (a test-only dependency, run on the CPU in float64), the forward
process against iterating its one-step kernel (by statistics), the posterior q(x_{t-1} | x_t, x_0)
against completing the square of the product of Gaussians, the eps / x0 / v conversions, the
training loss, classifier-free guidance, samplers with an oracle noise predictor, the U-Net, EMA,
train_diffusion (learning, exact resume), prompt_to_label and the input checks."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from unittest import mock

import pytest
import torch
from numerics import F64, close, gen, randn
from torch import nn

from aigc_lib.diffusion import (
    EMA,
    NoiseSchedule,
    UNet,
    UNetConfig,
    cosine_schedule,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    diffusion_loss,
    guided_eps,
    linear_schedule,
    posterior_mean_variance,
    predict_eps,
    predict_x0,
    prompt_to_label,
    q_sample,
    q_step,
    sample,
    sampling,
    to_unit,
    train_diffusion,
    v_target,
)


def schedulers():
    """diffusers' schedulers: a test-only reference. Only the tests that compare with it skip where it is
    not installed (through this call); the U-Net, sampler and training tests run without it."""
    return pytest.importorskip("diffusers")


def t_of(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example (B,) coefficient, shaped to broadcast against (B, ...)."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


# A short schedule with large betas: every step matters and statistics are informative.
SHORT = dict(T=10, beta_start=0.05, beta_end=0.4)


def short() -> NoiseSchedule:
    return linear_schedule(**SHORT)


def diffusers_ddpm(schedule: NoiseSchedule, prediction: str = "epsilon", clip: bool = False):
    """DDPMScheduler with our schedule's alpha_bars swapped in as float64, so that its step runs in float64."""
    sched = schedulers().DDPMScheduler(
        num_train_timesteps=schedule.T, prediction_type=prediction, clip_sample=clip, variance_type="fixed_small"
    )
    sched.betas, sched.alphas = schedule.betas.to(F64), schedule.alphas.to(F64)
    sched.alphas_cumprod, sched.one = schedule.alpha_bars.to(F64), torch.tensor(1.0, dtype=F64)
    return sched


def diffusers_ddim(schedule: NoiseSchedule, steps: int, prediction: str = "epsilon", clip: bool = False):
    sched = schedulers().DDIMScheduler(
        num_train_timesteps=schedule.T,
        prediction_type=prediction,
        clip_sample=clip,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    sched.betas, sched.alphas = schedule.betas.to(F64), schedule.alphas.to(F64)
    sched.alphas_cumprod = schedule.alpha_bars.to(F64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    sched.set_timesteps(steps)
    return sched


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("T", [10, 1000])
def test_linear_and_cosine_schedules_equal_diffusers(T):
    d = schedulers()
    for ours, name in ((linear_schedule(T), "linear"), (cosine_schedule(T), "squaredcos_cap_v2")):
        ref = d.DDPMScheduler(num_train_timesteps=T, beta_schedule=name)
        assert isinstance(ours, NoiseSchedule) and ours.T == T
        assert ours.betas.shape == ours.alphas.shape == ours.alpha_bars.shape == (T,)
        # diffusers keeps float32; its cosine betas are float64 math rounded to float32
        assert close(ours.betas.to(F64), ref.betas.to(F64), tol=1e-6), name
        assert close(ours.alphas.to(F64), ref.alphas.to(F64), tol=1e-6), name
        assert close(ours.alpha_bars.to(F64), ref.alphas_cumprod.to(F64), tol=1e-5), name
    # other end points too
    ref = d.DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.05)
    assert close(linear_schedule(T, 1e-3, 0.05).betas.to(F64), ref.betas.to(F64), tol=1e-6)
    ref = d.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert close(cosine_schedule(T, max_beta=0.5).betas.to(F64), ref.betas.to(F64).clamp(max=0.5), tol=1e-6)


def test_linear_schedule_by_hand():
    s = linear_schedule(5, 0.1, 0.5)
    assert close(s.betas.to(F64), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=F64))
    assert close(s.alphas.to(F64), 1 - s.betas.to(F64))
    assert close(
        s.alpha_bars.to(F64),
        torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6, 0.9 * 0.8 * 0.7 * 0.6 * 0.5], dtype=F64),
    )
    assert close(s.alpha_bars_prev.to(F64), torch.cat([torch.ones(1, dtype=F64), s.alpha_bars.to(F64)[:-1]]))
    assert s.alpha_bars_prev[0] == 1


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_alpha_bar_is_the_closed_form_before_clipping(T):
    s_off = 0.008

    def f(u: float) -> float:
        return math.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2

    sched = cosine_schedule(T)
    want = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=F64)  # alpha_bar_t at time (t+1)/T
    betas = torch.tensor([1 - f((t + 1) / T) / f(t / T) for t in range(T)], dtype=F64)
    clipped = betas > 0.999
    assert clipped.sum() <= 1 and (not clipped.any() or clipped[-1])  # only the last beta can hit the cap
    n = T - int(clipped.sum())
    assert close(sched.alpha_bars.to(F64)[:n], want[:n], tol=1e-6)
    assert close(sched.betas.to(F64), betas.clamp(max=0.999), tol=1e-6)
    assert sched.betas.max() <= 0.999 + 1e-7
    # s controls the small first step; max_beta caps every beta
    assert cosine_schedule(T, s=0.05).betas[0] > sched.betas[0]
    assert cosine_schedule(T, max_beta=0.2).betas.max() <= 0.2 + 1e-7


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
def test_schedules_are_monotone_and_in_range(make):
    for T in (10, 1000):
        s = make(T)
        b, ab = s.betas.to(F64), s.alpha_bars.to(F64)
        assert ((b > 0) & (b < 1)).all()
        assert (b[1:] >= b[:-1]).all()  # more noise per step as t grows
        assert ((ab > 0) & (ab < 1)).all() and (ab[1:] < ab[:-1]).all()  # alpha_bar falls from ~1 toward 0
        if T == 1000:
            assert ab[0] > 0.999 and ab[-1] < 1e-3


def test_posterior_variance_formula():
    for s in (short(), linear_schedule(1000), cosine_schedule(50)):
        b, ab = s.betas.to(F64), s.alpha_bars.to(F64)
        ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
        assert close(s.alpha_bars_prev.to(F64), ab_prev, tol=1e-12)
        want = b * (1 - ab_prev) / (1 - ab)  # beta~_t (DDPM eq. 7)
        pv = s.posterior_variance.to(F64)
        assert pv.shape == (s.T,)
        assert close(pv[1:], want[1:], tol=1e-10)
        assert 0 <= pv[0] <= 1e-20  # x_0 is known exactly given x_0
        assert (pv[1:] < b[1:]).all() and (pv[1:] > 0).all()  # beta~_t < beta_t


def test_noise_schedule_is_a_frozen_dataclass_and_checks_betas():
    s = short()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = torch.zeros(3)
    s2 = NoiseSchedule(s.betas.clone())
    assert close(s2.alpha_bars.to(F64), s.alpha_bars.to(F64))
    for bad in (
        torch.tensor([0.1, 1.0]),
        torch.tensor([0.0, 0.1]),
        torch.tensor([-0.1]),
        torch.zeros(2, 2),
        torch.tensor([0.1, float("nan")]),
        torch.tensor([], dtype=F64),
    ):
        with pytest.raises(ValueError, match="betas"):
            NoiseSchedule(bad)
    with pytest.raises(ValueError, match="T"):
        linear_schedule(0)
    with pytest.raises(ValueError, match="T"):
        cosine_schedule(0)


# --------------------------------------------------------------------------- forward process


def test_q_sample_is_the_closed_form():
    s = short()
    x0, eps = randn(4, 2, 3, 3, seed=1), randn(4, 2, 3, 3, seed=2)
    t = t_of(0, 3, 7, 9)
    ab = s.alpha_bars.to(F64)[t]
    xt = q_sample(x0, t, eps, s)
    assert xt.shape == x0.shape and xt.dtype == F64
    assert close(xt, bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * eps)  # DDPM eq. 4
    # t = 0 is one step of the kernel q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), exactly
    t0 = t_of(0, 0, 0, 0)
    b = s.betas.to(F64)
    assert close(q_sample(x0, t0, eps, s), q_step(x0, t0, eps, s))
    assert close(q_step(x0, t0, eps, s), (1 - b[0]).sqrt() * x0 + b[0].sqrt() * eps)
    assert close(q_step(x0, t, eps, s), bcast((1 - b[t]).sqrt(), x0) * x0 + bcast(b[t].sqrt(), x0) * eps)
    # without noise: x0 scaled by sqrt(alpha_bar); iterating the kernel noiselessly gives the same
    x, zeros = x0, torch.zeros_like(x0)
    for k in range(s.T):
        x = q_step(x, torch.full((4,), k), zeros, s)
        assert close(x, q_sample(x0, torch.full((4,), k), zeros, s)), k


def test_q_sample_equals_iterating_q_step_in_distribution():
    s = short()
    n = 50_000
    x0_row = torch.tensor([-1.0, 0.5, 2.0], dtype=F64).view(1, 3, 1, 1)
    x0 = x0_row.expand(n, 3, 1, 1)
    g = gen(3)
    x = x0
    for t in range(s.T):
        tt = torch.full((n,), t)
        x = q_step(x, tt, torch.randn(n, 3, 1, 1, generator=g, dtype=F64), s)  # x_t after t + 1 kernel steps
        if t in (0, 2, 5, 9):
            closed = q_sample(x0, tt, torch.randn(n, 3, 1, 1, generator=g, dtype=F64), s)
            ab = s.alpha_bars.to(F64)[t]
            mean, var = ab.sqrt() * x0_row.flatten(), 1 - ab
            se_mean, se_var = (var / n).sqrt(), var * math.sqrt(2 / n)
            for xs in (x, closed):
                xs = xs.flatten(1)
                assert ((xs.mean(0) - mean).abs() < 5 * se_mean).all(), (t, xs.mean(0), mean)
                assert ((xs.var(0) - var).abs() < 5 * se_var).all(), (t, xs.var(0), var)
            # the two agree with each other, and the test has power (5 SE is under 0.04)
            assert ((x.flatten(1).var(0) - closed.flatten(1).var(0)).abs() < 5 * math.sqrt(2) * se_var).all()
            assert 5 * se_var < 0.04 and 5 * se_mean < 0.04


def test_q_sample_broadcasts_per_example_and_keeps_dtype():
    s = linear_schedule(100)
    x0, eps = torch.randn(3, 1, 4, 4, generator=gen(1)), torch.randn(3, 1, 4, 4, generator=gen(2))
    t = t_of(5, 50, 99)
    xt = q_sample(x0, t, eps, s)
    assert xt.dtype == torch.float32 and xt.shape == x0.shape
    for i in range(3):
        assert torch.allclose(xt[i : i + 1], q_sample(x0[i : i + 1], t[i : i + 1], eps[i : i + 1], s), atol=1e-6)
    ab = s.alpha_bars[t].float()
    assert torch.allclose(xt, bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * eps, atol=1e-6)


# --------------------------------------------------------------------------- posterior q(x_{t-1} | x_t, x_0)


def gaussian_product(s: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: int):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), by completing the square in x_{t-1}:
    q(x_t | x_{t-1}) = N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) is, as a function of x_{t-1}, a Gaussian with
    precision alpha_t / beta_t and precision-weighted mean sqrt(alpha_t) x_t / beta_t;
    q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0, 1 - alpha_bar_{t-1}). Precisions add."""
    a, b = s.alphas.to(F64)[t], s.betas.to(F64)[t]
    ab_prev = s.alpha_bars.to(F64)[t - 1]
    prec = a / b + 1 / (1 - ab_prev)
    mean = (a.sqrt() * xt / b + ab_prev.sqrt() * x0 / (1 - ab_prev)) / prec
    return mean, 1 / prec


def log_joint_quadratic(s: NoiseSchedule, x0: float, xt: float, t: int):
    """The same posterior numerically: log q(x_t | x_{t-1}) + log q(x_{t-1} | x_0) is a quadratic in x_{t-1};
    read its curvature and vertex off three points."""
    a, b = s.alphas.to(F64)[t], s.betas.to(F64)[t]
    ab_prev = s.alpha_bars.to(F64)[t - 1]

    def logp(y: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(a.sqrt() * y, b.sqrt()).log_prob(
            torch.tensor(xt, dtype=F64)
        ) + torch.distributions.Normal(ab_prev.sqrt() * x0, (1 - ab_prev).sqrt()).log_prob(y)

    h = 0.5
    lp = logp(torch.tensor([-h, 0.0, h], dtype=F64))
    c2 = (lp[0] - 2 * lp[1] + lp[2]) / (2 * h * h)  # log p = c2 y^2 + c1 y + c0
    c1 = (lp[2] - lp[0]) / (2 * h)
    return -c1 / (2 * c2), -1 / (2 * c2)


def test_posterior_mean_variance_equals_completing_the_square():
    for s in (short(), cosine_schedule(20)):
        x0, xt = randn(6, 2, 2, 1, seed=4), randn(6, 2, 2, 1, seed=5)
        for t in range(1, s.T):
            mean, var = posterior_mean_variance(x0, xt, torch.full((6,), t), s)
            want_mean, want_var = gaussian_product(s, x0, xt, t)
            assert mean.shape == x0.shape and mean.dtype == F64
            assert close(mean, want_mean, tol=1e-10), t
            assert close(var.to(F64).expand_as(x0), want_var.expand_as(x0), tol=1e-10), t
            # DDPM eq. 7 in its usual form
            ab, ab_prev, b = s.alpha_bars.to(F64)[t], s.alpha_bars.to(F64)[t - 1], s.betas.to(F64)[t]
            a = s.alphas.to(F64)[t]
            eq7 = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt
            assert close(mean, eq7, tol=1e-10), t
            # and read numerically off the log of the product of the two Gaussians
            m_num, v_num = log_joint_quadratic(s, x0[0, 0, 0, 0].item(), xt[0, 0, 0, 0].item(), t)
            assert abs(mean[0, 0, 0, 0] - m_num) < 1e-8 and abs(var.to(F64).flatten()[0] - v_num) < 1e-8, t
    # a batch of mixed t, and t = 0: x_{-1} = x_0 exactly
    s = short()
    x0, xt = randn(3, 4, 1, 1, seed=6), randn(3, 4, 1, 1, seed=7)
    mean, var = posterior_mean_variance(x0, xt, t_of(0, 5, 9), s)
    var = var.to(F64).expand_as(x0)
    assert close(mean[0], x0[0], tol=1e-12) and var[0].abs().max() <= 1e-20
    for i, t in ((1, 5), (2, 9)):
        m, v = gaussian_product(s, x0[i], xt[i], t)
        assert close(mean[i], m, tol=1e-10) and close(var[i], v.expand_as(x0[i]), tol=1e-10)


def test_posterior_matches_diffusers_internals():
    s = cosine_schedule(30)
    ref = diffusers_ddpm(s, prediction="sample")
    x0, xt = randn(2, 3, 4, 1, seed=8), randn(2, 3, 4, 1, seed=9)
    for t in (0, 1, 7, 29):
        mean, var = posterior_mean_variance(x0, xt, torch.full((2,), t), s)
        var = var.to(F64).expand_as(x0)
        assert close(var, ref._get_variance(t).expand_as(x0), tol=1e-12), t
        # with prediction_type="sample" the model output is x0 and the step is the posterior plus noise
        out = ref.step(x0, t, xt, generator=gen(t)).prev_sample
        noise = torch.randn(x0.shape, generator=gen(t), dtype=F64)
        want = mean + (var.sqrt() * noise if t > 0 else 0)
        assert close(out, want, tol=1e-10), t


# --------------------------------------------------------------------------- parameterisations


def test_eps_x0_v_round_trips():
    s = cosine_schedule(100)
    x0, eps = randn(5, 2, 3, 1, seed=10), randn(5, 2, 3, 1, seed=11)
    t = t_of(0, 1, 50, 98, 99)
    xt = q_sample(x0, t, eps, s)
    ab = bcast(s.alpha_bars.to(F64)[t], x0)
    v = v_target(x0, eps, t, s)
    assert close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)  # Salimans & Ho 2022: v = alpha eps - sigma x0
    assert close(predict_x0(eps, xt, t, s), x0, tol=1e-9)
    assert close(predict_x0(v, xt, t, s, prediction="v"), x0, tol=1e-9)
    assert close(predict_eps(eps, xt, t, s), eps, tol=1e-12)
    assert close(predict_eps(v, xt, t, s, prediction="v"), eps, tol=1e-9)
    # v, eps and x0 are tied through x_t: eps = sqrt(ab) v + sqrt(1 - ab) x_t, x0 = sqrt(ab) x_t - sqrt(1 - ab) v
    assert close(ab.sqrt() * v + (1 - ab).sqrt() * xt, eps, tol=1e-12)
    assert close(ab.sqrt() * xt - (1 - ab).sqrt() * v, x0, tol=1e-12)
    # any output, by hand (DDPM eq. 15), with t a tensor or (one t for the batch) an int
    e2 = randn(5, 2, 3, 1, seed=12)
    assert close(predict_x0(e2, xt, t, s), (xt - (1 - ab).sqrt() * e2) / ab.sqrt(), tol=1e-12)
    assert close(predict_x0(e2, xt, t, s, prediction="v"), ab.sqrt() * xt - (1 - ab).sqrt() * e2, tol=1e-12)
    assert close(predict_eps(e2, xt, t, s, prediction="v"), ab.sqrt() * e2 + (1 - ab).sqrt() * xt, tol=1e-12)
    for pred in ("eps", "v"):
        assert close(
            predict_x0(e2, xt, 50, s, prediction=pred),
            predict_x0(e2, xt, torch.full((5,), 50), s, prediction=pred),
            tol=1e-12,
        )
        assert close(
            predict_eps(e2, xt, 50, s, prediction=pred),
            predict_eps(e2, xt, torch.full((5,), 50), s, prediction=pred),
            tol=1e-12,
        )
    for bad in ("x0", "epsilon", None):
        with pytest.raises(ValueError, match="^prediction: "):
            predict_x0(eps, xt, t, s, prediction=bad)
        with pytest.raises(ValueError, match="^prediction: "):
            predict_eps(eps, xt, t, s, prediction=bad)


# --------------------------------------------------------------------------- DDPM and DDIM steps


PRED = {"eps": "epsilon", "v": "v_prediction"}


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_equals_diffusers(prediction, clip):
    for s in (linear_schedule(1000), cosine_schedule(40)):
        ref = diffusers_ddpm(s, prediction=PRED[prediction], clip=clip)
        x, out = 1.5 * randn(2, 1, 4, 4, seed=13), randn(2, 1, 4, 4, seed=14)
        for t in (0, 1, 2, s.T // 2, s.T - 1):
            noise = torch.randn(x.shape, generator=gen(100 + t), dtype=F64)  # what diffusers draws
            want = ref.step(out, t, x, generator=gen(100 + t)).prev_sample
            got = ddpm_step(out, x, t, s, noise, prediction=prediction, clip_x0=clip)
            assert got.shape == x.shape and got.dtype == F64
            assert close(got, want, tol=1e-10), (s.T, t)
        # at t = 0 no noise is added
        assert torch.equal(
            ddpm_step(out, x, 0, s, noise, prediction=prediction, clip_x0=clip),
            ddpm_step(out, x, 0, s, torch.zeros_like(x), prediction=prediction, clip_x0=clip),
        )


def test_ddpm_step_is_the_posterior_at_the_predicted_x0():
    s = short()
    x, eps_hat, noise = randn(3, 5, 1, 1, seed=15), randn(3, 5, 1, 1, seed=16), randn(3, 5, 1, 1, seed=17)
    for t in range(s.T):
        x0_hat = predict_x0(eps_hat, x, torch.full((3,), t), s)
        mean, var = posterior_mean_variance(x0_hat, x, torch.full((3,), t), s)
        want = mean + (var.to(F64).sqrt() * noise if t > 0 else 0)
        assert close(ddpm_step(eps_hat, x, t, s, noise, clip_x0=False), want, tol=1e-10), t
    # the clip bounds the predicted x0 to [-1, 1] before the posterior is taken
    big = 10 * randn(3, 5, 1, 1, seed=18)
    t = 5
    x0_hat = predict_x0(big, x, torch.full((3,), t), s)
    assert x0_hat.abs().max() > 1
    mean, var = posterior_mean_variance(x0_hat.clamp(-1, 1), x, torch.full((3,), t), s)
    assert close(ddpm_step(big, x, t, s, noise, clip_x0=True), mean + var.to(F64).sqrt() * noise, tol=1e-10)
    assert not close(ddpm_step(big, x, t, s, noise, clip_x0=False), mean + var.to(F64).sqrt() * noise, tol=1e-3)


def test_ddpm_step_draws_its_noise_when_none_is_given():
    s = short()
    x, e = randn(2, 1, 3, 3, seed=19), randn(2, 1, 3, 3, seed=20)
    torch.manual_seed(5)
    a = ddpm_step(e, x, 4, s, None)
    torch.manual_seed(5)
    assert torch.equal(a, ddpm_step(e, x, 4, s, None))
    assert not torch.equal(a, ddpm_step(e, x, 4, s, None))
    # the last step (t = 0) adds no noise and draws none: torch's RNG is untouched
    torch.manual_seed(6)
    assert torch.equal(ddpm_step(e, x, 0, s, None), ddpm_step(e, x, 0, s, torch.zeros_like(x)))
    assert torch.equal(torch.randn(3), torch.randn(3, generator=gen(6)))


@pytest.mark.parametrize(
    ("T", "steps"), [(1000, 50), (1000, 1), (1000, 7), (1000, 1000), (1000, 999), (10, 3), (10, 10), (100, 30), (7, 2)]
)
def test_ddim_timesteps_equal_diffusers(T, steps):
    ref = schedulers().DDIMScheduler(num_train_timesteps=T, steps_offset=0, timestep_spacing="leading")
    ref.set_timesteps(steps)
    got = ddim_timesteps(T, steps)
    assert isinstance(got, list) and all(type(t) is int for t in got)
    assert got == ref.timesteps.tolist()
    assert len(got) == steps and got[-1] == 0 and got == sorted(set(got), reverse=True) and got[0] < T


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_step_deterministic_equals_diffusers(prediction):
    for s, steps in ((linear_schedule(1000), 10), (cosine_schedule(50), 7)):
        ref = diffusers_ddim(s, steps, prediction=PRED[prediction])
        x, out = randn(2, 1, 4, 4, seed=21), randn(2, 1, 4, 4, seed=22)
        ts = ddim_timesteps(s.T, steps)
        for t, t_prev in zip(ts, [t - s.T // steps for t in ts], strict=True):
            want = ref.step(out, t, x, eta=0.0).prev_sample
            got = ddim_step(out, x, t, t_prev, s, prediction=prediction)
            assert got.shape == x.shape and got.dtype == F64
            assert close(got, want, tol=1e-10), (t, t_prev)
            assert torch.equal(got, ddim_step(out, x, t, t_prev, s, eta=0.0, prediction=prediction))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_step_with_noise_equals_diffusers(prediction, eta):
    s, steps = linear_schedule(1000), 20
    ref = diffusers_ddim(s, steps, prediction=PRED[prediction])
    x, out, noise = randn(2, 3, 2, 2, seed=23), randn(2, 3, 2, 2, seed=24), randn(2, 3, 2, 2, seed=25)
    ts = ddim_timesteps(s.T, steps)
    for t, t_prev in zip(ts, [t - s.T // steps for t in ts], strict=True):
        want = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        got = ddim_step(out, x, t, t_prev, s, eta=eta, noise=noise, prediction=prediction)
        assert close(got, want, tol=1e-10), (t, t_prev)
        if t_prev >= 0:  # the noise matters
            assert not close(got, ddim_step(out, x, t, t_prev, s, eta=eta, noise=-noise, prediction=prediction))


def test_ddim_step_clip_x0_equals_diffusers():
    s, steps = cosine_schedule(100), 10
    ref = diffusers_ddim(s, steps, clip=True)
    x, out = 3 * randn(2, 4, 1, 1, seed=26), 3 * randn(2, 4, 1, 1, seed=27)
    ts = ddim_timesteps(s.T, steps)
    for t in ts:
        got = ddim_step(out, x, t, t - s.T // steps, s, clip_x0=True)
        assert close(got, ref.step(out, t, x, eta=0.0).prev_sample, tol=1e-10), t
    assert not close(ddim_step(out, x, 50, 40, s, clip_x0=True), ddim_step(out, x, 50, 40, s), tol=1e-3)


def test_ddim_with_eta_one_over_single_steps_is_ddpm():
    # eta = 1 and t' = t - 1: sigma_t^2 = beta~_t, the DDPM posterior (Song et al. 2021, sec. 4.1)
    s = short()
    x, eps_hat, noise = randn(2, 6, 1, 1, seed=28), randn(2, 6, 1, 1, seed=29), randn(2, 6, 1, 1, seed=30)
    for t in range(s.T):
        assert close(
            ddim_step(eps_hat, x, t, t - 1, s, eta=1.0, noise=noise),
            ddpm_step(eps_hat, x, t, s, noise, clip_x0=False),
            tol=1e-10,
        ), t
    # and eta = 0 is deterministic: the noise is ignored
    assert torch.equal(ddim_step(eps_hat, x, 5, 2, s, eta=0.0, noise=noise), ddim_step(eps_hat, x, 5, 2, s))


def test_ddim_step_by_hand():
    s = short()
    x, e, z = randn(1, 4, 1, 1, seed=31), randn(1, 4, 1, 1, seed=32), randn(1, 4, 1, 1, seed=33)
    t, tp = 7, 3
    ab, abp = s.alpha_bars.to(F64)[t], s.alpha_bars.to(F64)[tp]
    x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
    assert close(ddim_step(e, x, t, tp, s), abp.sqrt() * x0 + (1 - abp).sqrt() * e, tol=1e-12)  # DDIM eq. 12
    sigma = 0.5 * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()  # eq. 16, eta = 0.5
    assert close(
        ddim_step(e, x, t, tp, s, eta=0.5, noise=z),
        abp.sqrt() * x0 + (1 - abp - sigma**2).sqrt() * e + sigma * z,
        tol=1e-12,
    )
    assert close(ddim_step(e, x, t, -1, s), x0, tol=1e-12)  # the last step lands on x0 (alpha_bar = 1)
    assert close(ddim_step(e, x, t, -1, s, eta=1.0, noise=z), x0, tol=1e-12)


# --------------------------------------------------------------------------- guidance


def test_guided_eps():
    c, u = randn(2, 1, 3, 3, seed=34), randn(2, 1, 3, 3, seed=35)
    assert close(guided_eps(c, u, 0.0), u)
    assert close(guided_eps(c, u, 1.0), c)
    assert close(guided_eps(c, u, 3.0), u + 3.0 * (c - u))  # Ho & Salimans 2022
    assert close(guided_eps(c, u, 3.0), 3.0 * c - 2.0 * u)  # = (1 + w) eps_c - w eps_u with w = 2
    assert close(guided_eps(c, u, 2), 2 * c - u)  # an int scale
    # linear in the predictions (so it applies to v as well) and affine in the scale
    c2, u2 = randn(2, 1, 3, 3, seed=36), randn(2, 1, 3, 3, seed=37)
    assert close(guided_eps(c + c2, u + u2, 2.5), guided_eps(c, u, 2.5) + guided_eps(c2, u2, 2.5))
    assert close(guided_eps(2 * c, 2 * u, 4.0), 2 * guided_eps(c, u, 4.0))
    assert close(guided_eps(c, u, 2) - guided_eps(c, u, 1), c - u)
    assert close(guided_eps(c, u, -1.0), 2 * u - c)
    assert guided_eps(c.float(), u.float(), 7.5).dtype == torch.float32


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("prompt", "label"),
    [
        ("a seven", 7),
        ("digit 3", 3),
        ("7", 7),
        ("七", 7),
        ("zero", 0),
        ("Nine", 9),
        ("the digit ONE", 1),
        ("  5  ", 5),
        ("a handwritten eight", 8),
        ("二", 2),
        ("〇", 0),
        ("六", 6),
        ("six", 6),
        ("draw a 4", 4),
        ("the number five", 5),
        ("一个七", 7),
        ("数字7", 7),
        ("７", 7),
    ],
)
def test_prompt_to_label(prompt, label):
    got = prompt_to_label(prompt)
    assert got == label and type(got) is int


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "   ",
        "a cat",
        "twelve",
        "42",
        "3 and 4",
        "seventeen",
        "seven eight",
        "十",
        "七八",
        "1.5",
        "-1",
        "2.5",
    ],
)
def test_prompt_to_label_rejects_what_is_not_one_digit(prompt):
    with pytest.raises(ValueError, match="^prompt: .*got " + repr(prompt).replace("\\", "\\\\")):
        prompt_to_label(prompt)


@pytest.mark.parametrize("prompt", [7, None, b"7", ["7"]])
def test_prompt_to_label_wants_a_string(prompt):
    with pytest.raises((TypeError, ValueError), match="^prompt: "):
        prompt_to_label(prompt)


# --------------------------------------------------------------------------- models used below


class Affine(nn.Module):
    """A small deterministic noise predictor that uses x, t and labels: out = w x + b t / T (+ c y)."""

    def __init__(self, T: int, n_classes: int | None = None, dtype=F64):
        super().__init__()
        self.T, self.n_classes = T, n_classes
        self.w = nn.Parameter(torch.tensor(0.7, dtype=dtype))
        self.b = nn.Parameter(torch.tensor(-0.3, dtype=dtype))
        self.c = nn.Parameter(torch.tensor(0.05, dtype=dtype))
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, t, labels=None):
        self.seen.append((t.clone(), None if labels is None else labels.clone()))
        out = self.w * x + self.b * bcast(t.to(x.dtype) / self.T, x)
        if labels is not None:
            out = out + self.c * bcast(labels.to(x.dtype), x)
        return out


class Oracle(nn.Module):
    """The exact predictor for data sets of one point: eps(x_t, t) = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t).

    points (K, C, H, W): with n_classes = K - 1, label y in [0, K - 2] means the point points[y] and the null
    label K - 1 the point points[-1]; without classes the data set is {points[0]}."""

    def __init__(self, points: torch.Tensor, schedule: NoiseSchedule, prediction: str = "eps"):
        super().__init__()
        self.register_buffer("points", points)
        self.n_classes = len(points) - 1 if len(points) > 1 else None
        self.schedule, self.prediction = schedule, prediction
        self.anchor = nn.Parameter(torch.zeros((), dtype=points.dtype))  # sample() reads the device and dtype here
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, t, labels=None):
        self.calls.append((t.clone(), None if labels is None else labels.clone()))
        x0 = self.points[labels] if labels is not None else self.points[-1].expand_as(x)
        ab = bcast(self.schedule.alpha_bars.to(x.dtype)[t], x)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0


def point(value: float, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    """An image (1, C, H, W) in [-1, 1]: `value` plus a little structure."""
    return (value + 0.1 * torch.rand(1, *shape, generator=gen(seed), dtype=F64)).clamp(-0.95, 0.95)


TINY = dict(base=8, mults=(1, 2), image_size=8, attn_res=(4,), groups=4)


def tiny_unet(seed: int = 0, perturb: bool = True, dtype=torch.float32, **kw) -> UNet:
    """A small U-Net on 8x8 images. The real one starts with its output (and every residual branch)
    at zero; `perturb` moves all the weights so that every path carries signal."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**(TINY | kw))).to(dtype)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return model


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- diffusion_loss


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_loss_is_the_mse_to_the_target(prediction):
    s = short()
    model = Affine(s.T)
    x0, eps, t = randn(4, 1, 3, 3, seed=40), randn(4, 1, 3, 3, seed=41), t_of(0, 3, 6, 9)
    loss = diffusion_loss(model, x0, s, t=t, eps=eps, prediction=prediction)
    assert loss.ndim == 0 and loss.requires_grad
    xt = q_sample(x0, t, eps, s)
    target = eps if prediction == "eps" else v_target(x0, eps, t, s)
    want = ((model(xt, t) - target) ** 2).mean()  # L_simple, DDPM eq. 14
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    ab = bcast(s.alpha_bars.to(F64)[t], x0)
    by_hand = eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert want.item() == pytest.approx(
        ((model.w * (ab.sqrt() * x0 + (1 - ab).sqrt() * eps) + model.b * bcast(t.to(F64) / s.T, x0) - by_hand) ** 2)
        .mean()
        .item(),
        rel=1e-12,
    )
    # the gradient is that of the MSE
    loss.backward()
    g = model.w.grad.clone()
    model.w.grad = None
    ((model(xt, t) - target) ** 2).mean().backward()
    assert model.w.grad.item() == pytest.approx(g.item(), rel=1e-5)
    # labels reach the model
    cond = Affine(s.T, n_classes=10)
    y = t_of(1, 2, 3, 10)
    l2 = diffusion_loss(cond, x0, s, labels=y, t=t, eps=eps, prediction=prediction)
    assert torch.equal(cond.seen[-1][1], y) and torch.equal(cond.seen[-1][0], t)
    assert l2.item() == pytest.approx(((cond(xt, t, y) - target) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_loss_is_zero_for_the_oracle(prediction):
    s = cosine_schedule(50)
    x0 = point(0.3)
    oracle = Oracle(x0, s, prediction)
    batch = x0.expand(6, -1, -1, -1)
    for seed in range(3):
        assert diffusion_loss(oracle, batch, s, prediction=prediction, generator=gen(seed)).item() < 1e-10
    # a model that predicts the other target is far off
    other = Oracle(x0, s, {"eps": "v", "v": "eps"}[prediction])
    assert diffusion_loss(other, batch, s, prediction=prediction, generator=gen(0)).item() > 1e-3


def test_diffusion_loss_draws_t_and_eps_from_the_generator():
    s = short()
    model = Affine(s.T)
    x0 = randn(64, 1, 2, 2, seed=42)
    a = diffusion_loss(model, x0, s, generator=gen(1))
    assert diffusion_loss(model, x0, s, generator=gen(1)).item() == a.item()
    assert diffusion_loss(model, x0, s, generator=gen(2)).item() != a.item()
    ts = torch.cat([t for t, _ in model.seen])
    assert ts.dtype == torch.long and ts.min() == 0 and ts.max() == s.T - 1  # t ~ U{0, ..., T - 1}
    assert torch.bincount(ts, minlength=s.T).min() > 5
    # eps drawn from N(0, I): the zero model's loss is mean(eps^2) ~ 1
    zero = Affine(s.T)
    with torch.no_grad():
        zero.w.zero_(), zero.b.zero_()
    big = randn(256, 1, 8, 8, seed=43)
    assert diffusion_loss(zero, big, s, generator=gen(3)).item() == pytest.approx(1.0, abs=0.03)
    # torch's RNG without a generator
    torch.manual_seed(0)
    b = diffusion_loss(model, x0, s)
    torch.manual_seed(0)
    assert diffusion_loss(model, x0, s).item() == b.item()


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_and_ddpm_with_the_oracle_recover_the_data_point(prediction):
    s = linear_schedule(100)
    x0 = point(0.2)
    oracle = Oracle(x0, s, prediction)
    for kw in (
        dict(sampler="ddim", steps=10),
        dict(sampler="ddim", steps=7, eta=1.0),
        dict(sampler="ddpm"),
        dict(sampler="ddpm", clip_x0=False),
    ):
        oracle.calls.clear()
        out = sample(oracle, 3, s, prediction=prediction, generator=gen(0), progress=False, **kw)
        assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float32
        assert (out - x0.float()).abs().max() < 1e-5, kw
        n_steps = kw.get("steps", s.T)
        assert len(oracle.calls) == n_steps  # one forward per step
        ts = [int(t[0]) for t, _ in oracle.calls]
        assert ts == (ddim_timesteps(s.T, n_steps) if kw["sampler"] == "ddim" else list(range(s.T - 1, -1, -1)))
        assert all(len(t) == 3 and y is None for t, y in oracle.calls)


class GaussianOracle(nn.Module):
    """The exact noise predictor when the data are x0 ~ N(mu, s^2 I) (each pixel independent):
    x_t ~ N(sqrt(ab) mu, v_t) with v_t = ab s^2 + 1 - ab, so E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / v_t."""

    def __init__(self, mu: float, std: float, schedule: NoiseSchedule):
        super().__init__()
        self.mu, self.std, self.schedule = mu, std, schedule
        self.anchor = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x, t, labels=None):
        ab = bcast(self.schedule.alpha_bars.to(x.dtype)[t], x)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.std**2 + 1 - ab)


def gaussian_chain(mu: float, std: float, s: NoiseSchedule, steps: int, eta: float) -> tuple[float, float]:
    """Mean and std of DDIM's output (no clipping) with the exact predictor for N(mu, std^2) data, written
    out independently of the library: each step is affine in x_t, x' = a x_t + b + sigma z, so the mean and
    variance propagate exactly from x_T ~ N(0, 1)."""
    ab = s.alpha_bars.double()
    k = s.T // steps
    m, var = 0.0, 1.0
    for t in range(k * (steps - 1), -1, -k):
        a_t, a_p = float(ab[t]), float(ab[t - k]) if t - k >= 0 else 1.0
        v = a_t * std**2 + 1 - a_t  # the marginal's variance at t
        e1, e0 = math.sqrt(1 - a_t) / v, -math.sqrt(1 - a_t) * math.sqrt(a_t) * mu / v  # eps = e1 x + e0
        x1, x0 = (1 - math.sqrt(1 - a_t) * e1) / math.sqrt(a_t), -math.sqrt(1 - a_t) * e0 / math.sqrt(a_t)  # x0_hat
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        c = math.sqrt(max(1 - a_p - sigma**2, 0.0))
        a, b = math.sqrt(a_p) * x1 + c * e1, math.sqrt(a_p) * x0 + c * e0
        m, var = a * m + b, a * a * var + sigma**2
    return m, math.sqrt(var)


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="ddpm", clip_x0=False),
        dict(sampler="ddim", steps=1000),
        dict(sampler="ddim", steps=10),
        dict(sampler="ddim", steps=50),
        dict(sampler="ddim", steps=50, eta=1.0),
    ],
)
def test_samplers_with_the_exact_score_on_gaussian_data(kw):
    """With the exact eps-prediction for N(mu, std^2) pixels every sampler lands where the exact propagation
    of its affine steps says (DDPM = DDIM with eta 1 over single steps). All 1,000 steps (DDPM, or DDIM
    solving the ODE finely) land on the data distribution within 2%; with few steps DDIM is narrower
    than the data (a discretisation error that shrinks with the step count). Chapter 05 contrasts this
    with the trained model, whose deterministic samples do not improve with more steps."""
    s = linear_schedule(1000)
    mu, std = 0.3, 0.2
    out = sample(GaussianOracle(mu, std, s), 50, s, generator=gen(1), progress=False, **kw).double()  # 50 x 784
    steps, eta = kw.get("steps", 1000), kw.get("eta", 1.0 if kw["sampler"] == "ddpm" else 0.0)
    want_m, want_s = gaussian_chain(mu, std, s, steps, eta)
    if steps == 1000:
        assert want_m == pytest.approx(mu, abs=1e-3) and want_s == pytest.approx(std, rel=0.02)
    else:  # narrower than the data, less so with more steps
        spreads = [gaussian_chain(mu, std, s, k, eta)[1] for k in (steps, 2 * steps, 1000)]
        assert want_s < 0.95 * std and spreads == sorted(spreads)
    assert out.mean().item() == pytest.approx(want_m, abs=0.003), kw
    assert out.std().item() == pytest.approx(want_s, rel=0.015), kw


def test_sample_steps_exactly_like_ddim_step_and_ddpm_step():
    s = short()
    model = Affine(s.T)
    n, steps, shape = 2, 4, (2, 1, 28, 28)
    # DDIM with eta > 0: x_T, then one noise draw per step, all from the generator, in float32
    g = gen(7)
    x = torch.randn(shape, generator=g).to(F64)
    ts = ddim_timesteps(s.T, steps)
    for t in ts:
        tt = torch.full((n,), t)
        x = ddim_step(model(x, tt), x, t, t - s.T // steps, s, eta=0.5, noise=torch.randn(shape, generator=g).to(F64))
    got = sample(model, n, s, steps=steps, eta=0.5, generator=gen(7), progress=False)
    assert close(got, x.float().clamp(-1, 1), tol=1e-6)
    # DDPM: noise at every step but the last; clip_x0 on by default; batch after batch (here 2, then 1)
    g = gen(8)
    want = []
    for k in (2, 1):
        x = torch.randn((k, 1, 28, 28), generator=g).to(F64)
        for t in range(s.T - 1, -1, -1):
            noise = torch.randn((k, 1, 28, 28), generator=g).to(F64) if t > 0 else None
            x = ddpm_step(model(x, torch.full((k,), t)), x, t, s, noise, clip_x0=True)
        want.append(x.float().clamp(-1, 1))
    got = sample(model, 3, s, sampler="ddpm", generator=gen(8), batch_size=2, progress=False)
    assert close(got, torch.cat(want), tol=1e-6)


def test_sample_is_deterministic_given_a_generator_and_restores_the_mode():
    s = linear_schedule(50)
    model = tiny_unet()
    model.train()
    kw = dict(steps=5, progress=False)
    a = sample(model, 3, s, generator=gen(0), **kw)
    assert a.shape == (3, 1, 8, 8) and a.dtype == torch.float32 and model.training
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.05
    assert torch.equal(a, sample(model, 3, s, generator=gen(0), **kw))
    assert not torch.equal(a, sample(model, 3, s, generator=gen(1), **kw))
    ddpm = sample(model, 2, s, sampler="ddpm", generator=gen(0), progress=False)
    assert ddpm.shape == (2, 1, 8, 8) and ddpm.min() >= -1 and ddpm.max() <= 1
    assert torch.equal(ddpm, sample(model, 2, s, sampler="ddpm", generator=gen(0), progress=False))
    # batching does not change the result (deterministic DDIM: only x_T is drawn, in order)
    assert torch.allclose(sample(model, 3, s, generator=gen(0), batch_size=2, **kw), a, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    sample(model, 1, s, **kw)
    assert not model.training


def test_sample_lays_the_weights_out_channels_last_on_the_cpu_and_restores_them():
    s = linear_schedule(50)
    model = tiny_unet(n_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [p for p in model.parameters() if p.dim() == 4]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, args: seen.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))
    )
    got = sample(model, 3, s, steps=5, labels=1, guidance=2.0, generator=gen(0), progress=False)
    assert seen and all(seen)  # every forward of the sampler saw NHWC weights
    hook.remove()
    assert all(p.is_contiguous() for p in model.parameters())  # the layout is restored ...
    assert any(not p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ... and the values untouched
    with mock.patch.object(sampling, "channels_last", contextlib.nullcontext):
        plain = sample(model, 3, s, steps=5, labels=1, guidance=2.0, generator=gen(0), progress=False)
    assert close(got, plain, tol=1e-4) and not torch.equal(got, torch.zeros_like(got))
    # the network runs on slices of the batch on the CPU (guided: [x; x] with labels [y; null] sliced together)
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    with mock.patch.object(sampling, "CPU_FORWARD_CHUNK", 2):
        sliced = sample(model, 3, s, steps=5, labels=1, guidance=2.0, generator=gen(0), progress=False)
    hook.remove()
    assert sizes == [2, 2, 2] * 5 and close(sliced, got, tol=1e-5)
    # weights the caller already keeps NHWC stay so
    model.to(memory_format=torch.channels_last)
    sample(model, 1, s, steps=2, progress=False)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)


def test_sample_trajectory():
    s = linear_schedule(100)
    x0 = point(-0.3)
    oracle = Oracle(x0, s)
    images, traj = sample(oracle, 2, s, steps=5, generator=gen(3), trajectory=True, progress=False)
    assert isinstance(traj, list) and len(traj) == 6  # x_T and one snapshot per step
    assert all(x.shape == (2, 1, 28, 28) for x in traj)
    assert torch.equal(traj[0], torch.randn(2, 1, 28, 28, generator=gen(3)))  # x_T ~ N(0, I)
    assert torch.equal(traj[-1].clamp(-1, 1), images)
    # the distance to the data point shrinks along the way
    dist = [(x - x0.float()).abs().mean().item() for x in traj]
    assert all(b < a for a, b in zip(dist, dist[1:], strict=False)), dist
    _, traj50 = sample(oracle, 1, s, steps=50, generator=gen(3), trajectory="xt", progress=False)
    assert 6 <= len(traj50) <= 13  # about a dozen snapshots
    assert torch.equal(traj50[0], torch.randn(1, 1, 28, 28, generator=gen(3)))
    _, traj_ddpm = sample(oracle, 1, s, sampler="ddpm", generator=gen(3), trajectory=True, progress=False)
    assert 6 <= len(traj_ddpm) <= 13 and (traj_ddpm[-1] - x0.float()).abs().max() < 1e-5
    _, x0s = sample(oracle, 2, s, steps=5, generator=gen(3), trajectory="x0", progress=False)
    assert len(x0s) >= 5 and all((x - x0.float()).abs().max() < 1e-5 for x in x0s)  # the oracle's x0 is exact


def test_sample_with_classes_and_guidance():
    s = linear_schedule(100)
    points = torch.cat([point(0.08 * (k - 4), seed=k) for k in range(10)] + [point(0.0, seed=10)])  # 10 classes and ∅
    oracle = Oracle(points, s)
    labels = t_of(0, 3, 9, 10)
    for w in (1.0, 2.0, 0.0, -0.5):
        oracle.calls.clear()
        out = sample(oracle, 4, s, steps=5, labels=labels, guidance=w, generator=gen(1), progress=False)
        # eps is affine in x0 at fixed x_t, so guided eps is the oracle of ∅ + w (y - ∅): DDIM lands there
        want = points[-1] + w * (points[labels] - points[-1])
        assert (out - want.float().clamp(-1, 1)).abs().max() < 1e-5, w
        assert len(oracle.calls) == 5
        if w != 1.0:  # one batched forward on [x; x] with labels [y; ∅]
            assert all(
                len(t) == 8 and torch.equal(y, torch.cat([labels, torch.full((4,), 10)])) for t, y in oracle.calls
            )
        else:
            assert all(torch.equal(y, labels) for _, y in oracle.calls)
    # an int label for all, and no labels: the null label
    out = sample(oracle, 2, s, steps=5, labels=3, generator=gen(1), progress=False)
    assert (out - points[3].float()).abs().max() < 1e-5
    out = sample(oracle, 2, s, steps=5, generator=gen(1), progress=False)
    assert (out - points[-1].float()).abs().max() < 1e-5
    assert all(torch.equal(y, torch.full((2,), 10)) for _, y in oracle.calls[-5:])
    # with DDPM too (and guidance)
    out = sample(oracle, 4, s, sampler="ddpm", labels=labels, guidance=2.0, generator=gen(1), progress=False)
    assert (out - (2 * points[labels] - points[-1]).float().clamp(-1, 1)).abs().max() < 1e-4


# --------------------------------------------------------------------------- U-Net


def test_unet_shapes_labels_and_the_null_label():
    for B in (1, 3):
        for kw in ({}, dict(n_classes=10), dict(image_channels=3, heads=2)):
            model = tiny_unet(**kw)
            x = torch.randn(B, model.config.image_channels, 8, 8, generator=gen(B))
            t = torch.arange(B) * 7
            out = model(x, t)
            assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
            if kw.get("n_classes"):
                null = torch.full((B,), 10)
                assert torch.equal(model(x, t, null), out)  # labels=None is the null label for the batch
                y = torch.arange(B) % 10
                assert not torch.allclose(model(x, t, y), out)
                mixed = torch.tensor([10, 2, 10][:B])
                assert torch.allclose(model(x, t, mixed)[0], out[0], atol=1e-6)
    # float64 works too, and a fresh U-Net predicts zero (the output conv starts at zero)
    model = tiny_unet(dtype=F64, n_classes=10)
    assert model(randn(2, 1, 8, 8), t_of(0, 5), t_of(1, 10)).dtype == F64
    fresh = tiny_unet(perturb=False)
    assert torch.equal(fresh(torch.randn(2, 1, 8, 8), t_of(0, 999)), torch.zeros(2, 1, 8, 8))
    assert fresh.conv_out.weight.abs().max() == 0


def test_unet_examples_are_independent_and_time_matters():
    model = tiny_unet(n_classes=10)
    x, t, y = torch.randn(4, 1, 8, 8, generator=gen(1)), t_of(0, 10, 500, 999), t_of(0, 1, 2, 10)
    out = model(x, t, y)
    for i in range(4):  # GroupNorm, no BatchNorm: no example sees another
        assert torch.allclose(model(x[i : i + 1], t[i : i + 1], y[i : i + 1]), out[i : i + 1], atol=1e-5)
    x1 = x[:1].expand(4, -1, -1, -1)
    outs = model(x1, t, torch.full((4,), 3))
    for i in range(4):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-3, (i, j)  # the time embedding changes the output
    assert torch.equal(model(x1, t, torch.full((4,), 3)), outs)  # deterministic (no dropout by default)


def test_unet_gradient_reaches_every_parameter():
    model = tiny_unet(n_classes=10)
    x = torch.randn(3, 1, 8, 8, generator=gen(2))
    model(x, t_of(1, 50, 900), t_of(0, 5, 10)).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == [], missing
    # of the class embedding, the rows of the labels used (0, 5 and ∅ = 10) and only those
    g = model.class_emb.weight.grad
    used = torch.zeros(11, dtype=torch.bool)
    used[[0, 5, 10]] = True
    assert (g[used].abs().amax(1) > 0).all() and (g[~used] == 0).all()


def test_unet_parameter_counts():
    def n_params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    default = UNet(UNetConfig())
    assert 5e5 < n_params(default) < 3e6  # a small model: about a million parameters
    cond = UNet(UNetConfig(n_classes=10))
    E = cond.config.time_dim
    assert E == 4 * 32 and n_params(cond) - n_params(default) == 11 * E  # the class embedding: 10 classes and ∅
    assert cond.class_emb.weight.shape == (11, E)
    # one residual block by hand: GN, 3x3 conv, time projection, GN, 3x3 conv, 1x1 skip when c_in != c_out
    block = cond.down[1].res[0]
    c_in, c_out = 32, 64
    assert n_params(block) == (
        2 * c_in
        + 9 * c_in * c_out
        + c_out
        + E * c_out
        + c_out
        + 2 * c_out
        + 9 * c_out * c_out
        + c_out
        + c_in * c_out
        + c_out
    )
    assert n_params(tiny_unet()) < n_params(default) / 10


def test_unet_channels_last_gives_the_same_output():
    model = tiny_unet(n_classes=10)
    x, t, y = torch.randn(2, 1, 8, 8, generator=gen(3)), t_of(3, 700), t_of(4, 10)
    want = model(x, t, y)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = cl(x.contiguous(memory_format=torch.channels_last), t, y)
    assert torch.allclose(got, want, atol=1e-5)


def test_timestep_embedding_is_the_sinusoidal_table():
    from aigc_lib.diffusion import timestep_embedding
    from aigc_lib.transformer import sinusoidal_positions

    t = t_of(0, 1, 17, 500, 999)
    emb = timestep_embedding(t, 16)
    assert emb.shape == (5, 16)
    assert torch.allclose(emb, sinusoidal_positions(1000, 16)[t], atol=2e-4)
    assert torch.equal(emb[0], torch.tensor([0.0, 1.0] * 8))


def test_unet_rejects_bad_inputs():
    model = tiny_unet(n_classes=10)
    x, t = torch.randn(2, 1, 8, 8), t_of(0, 1)
    with pytest.raises(ValueError, match=r"^x: expected images of shape \(B, 1, 8, 8\), got \(2, 1, 9, 9\)"):
        model(torch.randn(2, 1, 9, 9), t)
    with pytest.raises(ValueError, match=r"^x: "):
        model(torch.randn(2, 8, 8), t)
    with pytest.raises(ValueError, match=r"^t: .*\(2,\)"):
        model(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^t: "):
        model(x, t_of(0, 1, 2))
    with pytest.raises(ValueError, match=r"^labels: .*\[0, 11\]"):
        model(x, t, t_of(0, 11))
    with pytest.raises(ValueError, match=r"^labels: "):
        model(x, t, t_of(-1, 0))
    with pytest.raises(ValueError, match=r"^labels: "):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^labels: .*unconditional"):
        tiny_unet()(x, t, t_of(0, 1))
    with pytest.raises(ValueError, match=r"^groups: "):
        UNetConfig(base=8, groups=3)
    with pytest.raises(ValueError, match=r"^groups: .*>= 2 channels per group"):  # GroupNorm of 1 channel
        UNetConfig(base=8, mults=(1, 2), groups=8)
    with pytest.raises(ValueError, match=r"^image_size: "):
        UNetConfig(image_size=28, mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"^time_dim: "):
        UNetConfig(time_dim=33)
    with pytest.raises(ValueError, match=r"^mults: "):
        UNetConfig(mults=())
    with pytest.raises(ValueError, match=r"^n_classes: "):
        UNetConfig(n_classes=0)
    with pytest.raises(ValueError, match=r"^config: "):
        UNet(dict(base=8))


# --------------------------------------------------------------------------- EMA


def test_ema_update_is_the_exponential_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(F64)
    ema = EMA(model, decay=0.9, warmup=False)
    assert ema.model is not model and not ema.model.training
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert states_equal(ema.model, model)
    prev = {k: v.clone() for k, v in ema.model.state_dict().items()}
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(randn(8, 3, seed=step))  # moves the BatchNorm running statistics
        ema.update(model)
        for name, p in model.named_parameters():
            want = 0.9 * prev[name] + 0.1 * p.detach()  # θ_ema <- d θ_ema + (1 - d) θ
            assert close(ema.model.state_dict()[name], want, tol=1e-12), (step, name)
        for name, b in model.named_buffers():  # buffers are copied
            assert torch.equal(ema.model.state_dict()[name], b), name
        prev = {k: v.clone() for k, v in ema.model.state_dict().items()}
    assert ema.updates == 3
    # decay 0 copies, decay 1 freezes
    frozen, copying = EMA(model, decay=1.0, warmup=False), EMA(model, decay=0.0, warmup=False)
    before = copy.deepcopy(frozen.model)
    with torch.no_grad():
        model[0].weight.mul_(2)
    frozen.update(model), copying.update(model)
    assert states_equal(frozen.model, before)
    assert torch.equal(copying.model[0].weight, model[0].weight)


def test_ema_warmup_decay():
    model = nn.Linear(2, 2).to(F64)
    ema = EMA(model, decay=0.999)
    decays = []
    for _ in range(5):
        decays.append(ema.current_decay())
        old = ema.model.weight.clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        d = decays[-1]
        assert close(ema.model.weight, d * old + (1 - d) * model.weight.detach(), tol=1e-12)
    assert decays == pytest.approx([(1 + n) / (10 + n) for n in range(5)], rel=1e-15)
    assert EMA(model, decay=0.05).current_decay() == 0.05  # the smaller of the two


def test_ema_state_dict_round_trip():
    torch.manual_seed(1)
    model = tiny_unet()
    ema = EMA(model, decay=0.95)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)
        ema.update(model)
    ema.step = 3
    state = copy.deepcopy(ema.state_dict())
    other = EMA(tiny_unet(seed=5), decay=0.5)
    other.load_state_dict(state)
    assert states_equal(other.model, ema.model)
    assert (other.decay, other.updates, other.step) == (0.95, 3, 3)
    # and they go on identically
    ema.update(model), other.update(model)
    assert states_equal(other.model, ema.model)
    # copy_to loads the average into a model
    target = tiny_unet(seed=9)
    ema.copy_to(target)
    assert states_equal(target, ema.model)
    with pytest.raises(ValueError, match="^decay: "):
        EMA(model, decay=1.5)
    with pytest.raises(ValueError, match="^model: "):
        EMA("model")


# --------------------------------------------------------------------------- training


RUN = dict(batch_size=16, progress=False)


def digits_like(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n tiny 8x8 images in [0, 1] with 10 classes: a bright bar whose position is the label."""
    g = gen(seed)
    labels = torch.arange(n) % 10
    images = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 5)
        images[i, 0, 1 + 4 * r : 3 + 4 * r, c : c + 3] = 0.9
    return images, labels


def test_train_diffusion_lowers_the_loss():
    data, _ = digits_like(64)
    s = linear_schedule(100)
    model = tiny_unet(perturb=False)
    before = copy.deepcopy(model)
    h, ema = train_diffusion(model, data, 40, schedule=s, lr=3e-3, ema_decay=0.9, **RUN)
    assert {"loss", "grad_norm"} <= set(h.metrics) and len(h) == 40 and h.steps == list(range(40))
    losses = h["loss"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(1.0, abs=0.15)  # the fresh U-Net predicts 0: the loss is mean(eps^2)
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, (losses[:8], losses[-8:])
    assert not states_equal(model, before) and model.training
    assert isinstance(ema, EMA) and ema.step == 40 and ema.updates == 40
    assert not states_equal(ema.model, model) and not states_equal(ema.model, before)
    # on the data, the trained model beats the fresh one for the same t and eps
    x0 = data[:32] * 2 - 1
    kw = dict(generator=gen(9))
    with torch.no_grad():
        assert diffusion_loss(model, x0, s, **kw) < 0.9 * diffusion_loss(before, x0, s, **kw)


def test_train_diffusion_scales_images_and_drops_labels_for_guidance():
    data, labels = digits_like(32)
    s = linear_schedule(50)
    for p_uncond in (0.0, 0.5, 1.0):
        model = tiny_unet(perturb=False, n_classes=10)
        seen = []
        model.register_forward_pre_hook(lambda m, args, seen=seen: seen.append([a.detach().clone() for a in args]))
        train_diffusion(model, data, 6, schedule=s, labels=labels, p_uncond=p_uncond, **RUN)
        assert len(seen) == 6
        ys = torch.cat([a[2] for a in seen])
        ts = torch.cat([a[1] for a in seen])
        assert ((ts >= 0) & (ts < s.T)).all() and len(ts.unique()) > 10
        null = (ys == 10).float().mean().item()
        if p_uncond == 0.0:
            assert null == 0
        elif p_uncond == 1.0:
            assert null == 1
        else:
            assert 0.3 < null < 0.7
    # the model sees q_sample of the images in [-1, 1]: at t = 0 x_t is close to 2 x - 1
    model = tiny_unet(perturb=False, n_classes=10)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append([a.detach().clone() for a in args]))
    one = linear_schedule(1, 1e-6, 1e-6)  # T = 1: t is 0, x_t = x0 up to 1e-3 of noise
    train_diffusion(model, data, 2, schedule=one, labels=labels, p_uncond=0.0, **RUN)
    for x, t, y in seen:
        assert (t == 0).all()
        flat = data.flatten(1) * 2 - 1
        idx = torch.cdist(x.flatten(1), flat).argmin(1)
        assert torch.allclose(x, flat[idx].view_as(x), atol=0.01)
        assert torch.equal(y, labels[idx])  # the labels travel with their images


def test_train_diffusion_v_prediction_runs():
    data, _ = digits_like(32)
    h, _ = train_diffusion(tiny_unet(perturb=False), data, 3, schedule=cosine_schedule(50), prediction="v", **RUN)
    assert len(h) == 3 and all(math.isfinite(v) for v in h["loss"])


def test_train_diffusion_same_seed_same_run_whatever_torch_rng():
    data, labels = digits_like(32)
    s = linear_schedule(50)
    runs = []
    for seed in (0, 0, 1):
        model = tiny_unet(perturb=False, n_classes=10)
        torch.manual_seed(100 + len(runs))  # the batches, t, eps and dropped labels come from `seed` alone
        h, ema = train_diffusion(model, data, 4, schedule=s, labels=labels, seed=seed, **RUN)
        runs.append((model, h, ema))
    assert states_equal(runs[0][0], runs[1][0]) and runs[0][1]["loss"] == runs[1][1]["loss"]
    assert states_equal(runs[0][2].model, runs[1][2].model)
    assert not states_equal(runs[0][0], runs[2][0])


def test_train_diffusion_resumes_exactly_from_a_checkpoint(tmp_path):
    # An interrupted run (Ctrl-C during step 3 of 6) resumed from its checkpoint ends where the straight
    # run does. (Not "3 steps, then 6": the cosine LR schedule spans `steps`, so a 3-step run is another run.)
    data, labels = digits_like(48)
    s = linear_schedule(100)
    kw = dict(schedule=s, labels=labels, ema_decay=0.8, **RUN)

    straight_model = tiny_unet(perturb=False, n_classes=10)
    straight, straight_ema = train_diffusion(straight_model, data, 6, **kw)

    path = tmp_path / "diffusion.pt"
    first_model = tiny_unet(perturb=False, n_classes=10)
    calls = []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 4:  # the forward of step 3, after the EMA folded in step 3's weights
            raise KeyboardInterrupt

    hook = first_model.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(first_model, data, 6, checkpoint=path, **kw)
    hook.remove()
    assert path.exists()
    resumed_model = tiny_unet(perturb=False, n_classes=10)
    torch.manual_seed(1234)  # whatever the RNG is now, the run does not depend on it
    resumed, resumed_ema = train_diffusion(resumed_model, data, 6, checkpoint=path, **kw)
    assert not states_equal(resumed_model, first_model)  # it went on from step 3
    assert states_equal(resumed_model, straight_model)
    assert states_equal(resumed_ema.model, straight_ema.model)
    assert (resumed_ema.updates, resumed_ema.step) == (straight_ema.updates, straight_ema.step) == (6, 6)
    assert resumed.steps == straight.steps == list(range(6))
    assert resumed["loss"] == straight["loss"]
    # a finished checkpoint: nothing more to do, the same weights and EMA
    again_model = tiny_unet(perturb=False, n_classes=10)
    _, again_ema = train_diffusion(again_model, data, 6, checkpoint=path, **kw)
    assert states_equal(again_model, straight_model) and states_equal(again_ema.model, straight_ema.model)
    # a shorter run saved at its end is picked up (not restarted) by a longer one
    short_path = tmp_path / "short.pt"
    three = tiny_unet(perturb=False, n_classes=10)
    h3, _ = train_diffusion(three, data, 3, checkpoint=short_path, **kw)
    more = tiny_unet(perturb=False, n_classes=10)
    h6, _ = train_diffusion(more, data, 6, checkpoint=short_path, **kw)
    assert h6.steps == list(range(6)) and h6["loss"][:3] == h3["loss"]


def test_train_diffusion_rejects_bad_arguments():
    data, labels = digits_like(16)
    s = linear_schedule(20)
    model, cond = tiny_unet(perturb=False), tiny_unet(perturb=False, n_classes=10)
    cases = [
        (dict(model=model, images=data, steps=0), r"^steps: expected an int >= 1, got 0"),
        (dict(model=model, images=data, steps=2, batch_size=0), r"^batch_size: "),
        (dict(model=model, images=data * 2 - 1, steps=2), r"^images: expected values in \[0, 1\]"),
        (dict(model=model, images=data[:, 0], steps=2), r"^images: "),
        (dict(model=model, images=data[:0], steps=2), r"^images: "),
        (dict(model=model, images=data, steps=2, labels=labels), r"^labels: .*unconditional"),
        (dict(model=cond, images=data, steps=2, labels=labels[:5]), r"^labels: .*\(16,\)"),
        (dict(model=cond, images=data, steps=2, labels=labels + 1), r"^labels: .*\[0, 9\]"),
        (dict(model=cond, images=data, steps=2, labels=labels, p_uncond=1.5), r"^p_uncond: "),
        (dict(model=model, images=data, steps=2, lr=0.0), r"^lr: "),
        (dict(model=model, images=data, steps=2, ema_decay=2.0), r"^ema_decay: "),
        (dict(model=model, images=data, steps=2, prediction="x0"), r"^prediction: "),
        (dict(model=model, images=data, steps=2, schedule="linear"), r"^schedule: "),
        (dict(model="unet", images=data, steps=2), r"^model: "),
    ]
    for kw, message in cases:
        kw = dict(schedule=s) | kw
        with pytest.raises(ValueError, match=message):
            train_diffusion(kw.pop("model"), kw.pop("images"), kw.pop("steps"), progress=False, **kw)
    # a NaN in the data stops the run with a clear message instead of training on it
    bad = data.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises((ValueError, FloatingPointError), match="(?i)images|nan|finite"):
        train_diffusion(tiny_unet(perturb=False), bad, 2, schedule=s, batch_size=16, progress=False)


# --------------------------------------------------------------------------- bad inputs


def test_formula_functions_reject_bad_inputs():
    s = short()
    x, e, t = randn(2, 1, 3, 3), randn(2, 1, 3, 3, seed=1), t_of(0, 9)
    cases = [
        (lambda: q_sample(x, t_of(0, 10), e, s), r"^t: expected timesteps in \[0, 9\], got values in \[0, 10\]"),
        (lambda: q_sample(x, t_of(-1, 3), e, s), r"^t: expected timesteps in \[0, 9\]"),
        (lambda: q_sample(x, torch.tensor([0.0, 1.0]), e, s), r"^t: expected an int64 tensor of shape \(2,\)"),
        (lambda: q_sample(x, t_of(0, 1, 2), e, s), r"^t: .*got torch.int64 \(3,\)"),
        (lambda: q_sample(x, 3, e, s), r"^t: .*got int"),
        (lambda: q_sample(x, t, e[:1], s), r"^eps: .*\(2, 1, 3, 3\), got \(1, 1, 3, 3\)"),
        (lambda: q_sample(x[:, 0], t, e[:, 0], s), r"^x0: "),
        (lambda: q_sample(x.long(), t, e, s), r"^x0: "),
        (lambda: q_sample(x, t, e, "cosine"), r"^schedule: .*got str"),
        (lambda: q_step(x, t_of(0, 10), e, s), r"^t: "),
        (lambda: q_step(x, t, e[..., :2], s), r"^eps: "),
        (lambda: posterior_mean_variance(x, e[:1], t, s), r"^xt: "),
        (lambda: posterior_mean_variance(x, e, t_of(0, 10), s), r"^t: "),
        (lambda: predict_x0(e[:1], x, t, s), r"^model_output: "),
        (lambda: predict_x0(e, x, 10, s), r"^t: expected an int in \[0, 9\], got 10"),
        (lambda: predict_eps(e, x, t_of(0, 10), s, prediction="v"), r"^t: "),
        (lambda: v_target(x, e, t_of(0, 10), s), r"^t: "),
        (lambda: ddpm_step(e, x, 10, s, e), r"^t: expected an int in \[0, 9\], got 10"),
        (lambda: ddpm_step(e, x, -1, s, e), r"^t: "),
        (lambda: ddpm_step(e, x, 2.0, s, e), r"^t: "),
        (lambda: ddpm_step(e, x, 3, s, e[:1]), r"^noise: "),
        (lambda: ddpm_step(e, x, 3, s, e, prediction="x0"), r"^prediction: "),
        (lambda: ddpm_step(e[:1], x, 3, s, e), r"^model_output: "),
        (lambda: ddim_step(e, x, 3, 3, s), r"^t_prev: expected an int < t=3"),
        (lambda: ddim_step(e, x, 3, 5, s), r"^t_prev: "),
        (lambda: ddim_step(e, x, 10, 5, s), r"^t: "),
        (lambda: ddim_step(e, x, 3, 1, s, eta=-0.5), r"^eta: "),
        (lambda: ddim_step(e, x, 3, 1, s, eta=0.5, noise=e[:1]), r"^noise: "),
        (lambda: ddim_timesteps(10, 11), r"^steps: expected an int in \[1, 10\], got 11"),
        (lambda: ddim_timesteps(10, 0), r"^steps: "),
        (lambda: ddim_timesteps(0, 1), r"^T: "),
        (lambda: guided_eps(e, x[:1], 2.0), r"^eps_uncond: "),
        (lambda: guided_eps(e, x, "2"), r"^scale: .*got '2'"),
        (lambda: guided_eps(e, x, float("nan")), r"^scale: "),
        (lambda: guided_eps(e, x, torch.tensor(2.0)), r"^scale: "),
        (lambda: guided_eps(e.long(), x, 2.0), r"^eps_cond: "),
        (lambda: diffusion_loss(Affine(10), x, s, t=t_of(0, 10)), r"^t: "),
        (lambda: diffusion_loss(Affine(10), x, s, eps=e[:1]), r"^eps: "),
        (lambda: diffusion_loss(Affine(10), x, s, prediction="x0"), r"^prediction: "),
        (lambda: diffusion_loss("model", x, s), r"^model: "),
        (lambda: diffusion_loss(Affine(10), x[0], s), r"^x0: "),
        (lambda: linear_schedule(10, 0.0, 0.02), r"^beta_start: "),
        (lambda: linear_schedule(10, 1e-4, 1.0), r"^beta_end: "),
        (lambda: cosine_schedule(10, max_beta=1.0), r"^max_beta: "),
        (lambda: cosine_schedule(10, s=-0.1), r"^s: "),
        (lambda: linear_schedule(2.5), r"^T: "),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()


def test_sample_rejects_bad_arguments():
    s = short()
    oracle = Oracle(torch.cat([point(0.1), point(-0.1)]), s)  # one class and ∅
    uncond = Oracle(point(0.1), s)
    kw = dict(progress=False)
    cases = [
        (lambda: sample(oracle, 2, s, steps=11, **kw), r"^steps: expected an int in \[1, 10\], got 11"),
        (lambda: sample(oracle, 2, s, steps=0, **kw), r"^steps: "),
        (lambda: sample(oracle, 2, s, sampler="ddpm", steps=5, **kw), r"^steps: DDPM runs all T=10 steps"),
        (lambda: sample(oracle, 2, s, sampler="euler", **kw), r"^sampler: "),
        (lambda: sample(oracle, 0, s, **kw), r"^n: "),
        (lambda: sample(oracle, 2, s, labels=0, guidance="3", **kw), r"^guidance: "),
        (lambda: sample(oracle, 2, s, labels=0, guidance=float("inf"), **kw), r"^guidance: "),
        (lambda: sample(oracle, 2, s, guidance=3.0, **kw), r"^guidance: .*needs labels"),
        (lambda: sample(oracle, 2, s, labels=t_of(0, 0, 0), **kw), r"^labels: .*\(2,\)"),
        (lambda: sample(oracle, 2, s, labels=2, **kw), r"^labels: .*\[0, 0\]"),
        (lambda: sample(oracle, 2, s, labels=-1, **kw), r"^labels: "),
        (lambda: sample(oracle, 2, s, labels="seven", **kw), r"^labels: "),
        (lambda: sample(uncond, 2, s, labels=0, **kw), r"^labels: .*unconditional"),
        (lambda: sample(oracle, 2, s, eta=-1.0, **kw), r"^eta: "),
        (lambda: sample(oracle, 2, s, trajectory="yes", **kw), r"^trajectory: "),
        (lambda: sample(oracle, 2, s, prediction="x0", **kw), r"^prediction: "),
        (lambda: sample(oracle, 2, "linear", **kw), r"^schedule: "),
        (lambda: sample(lambda x, t: x, 2, s, **kw), r"^model: "),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()


def test_to_unit():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert torch.equal(to_unit(x), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
    assert to_unit(randn(3, 1, 2, 2)).dtype == F64
    with pytest.raises(ValueError, match="^x: "):
        to_unit(torch.tensor([1, 2]))
