"""Chapter 05 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch05`)."""

from __future__ import annotations

import torch

from aigc_lib import diffusion
from aigc_lib.exercises.core import Case, Exercise, computed_in_float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# The exercises take the schedule as its betas (a float64 tensor (T,)): the grader sends learners
# plain tensors and numbers only, and the learner derives alphas and alpha_bars from them.


def q_sample(x0, t, eps, betas):
    return diffusion.q_sample(x0, t, eps, diffusion.NoiseSchedule(betas))


def posterior_mean(x0, xt, t, betas):
    """The mean of q(x_{t-1} | x_t, x_0) alone (the library returns it with the variance)."""
    return diffusion.posterior_mean_variance(x0, xt, t, diffusion.NoiseSchedule(betas))[0]


def ddim_step(model_output, xt, t, t_prev, betas):
    return diffusion.ddim_step(model_output, xt, t, t_prev, diffusion.NoiseSchedule(betas))


def images(B: int, seed: int, shape=(1, 4, 4), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, *shape, generator=_gen(seed), dtype=dtype)


def q_case(t: list[int], seed: int, T: int = 1000, shape=(1, 4, 4), dtype=torch.float32) -> dict:
    B = len(t)
    return {
        "x0": images(B, seed, shape, dtype).clamp(-1, 1),
        "t": torch.tensor(t),
        "eps": images(B, seed + 1, shape, dtype),
        "betas": diffusion.linear_schedule(T).betas,
    }


def posterior_case(t: list[int], seed: int, T: int = 1000, shape=(1, 4, 4), dtype=torch.float32) -> dict:
    B = len(t)
    return {
        "x0": images(B, seed, shape, dtype).clamp(-1, 1),
        "xt": images(B, seed + 1, shape, dtype),
        "t": torch.tensor(t),
        "betas": diffusion.linear_schedule(T).betas,
    }


def ddim_case(
    t: int, t_prev: int, seed: int, B: int = 2, T: int = 1000, shape=(1, 4, 4), dtype=torch.float32, betas=None
) -> dict:
    return {
        "model_output": images(B, seed, shape, dtype),
        "xt": images(B, seed + 1, shape, dtype),
        "t": t,
        "t_prev": t_prev,
        "betas": diffusion.linear_schedule(T).betas if betas is None else betas,
    }


def guidance_case(scale: float, seed: int, B: int = 2, shape=(1, 4, 4), dtype=torch.float32) -> dict:
    return {"eps_cond": images(B, seed, shape, dtype), "eps_uncond": images(B, seed + 1, shape, dtype), "scale": scale}


_DTYPE_HINT = (
    "alpha_bars = torch.cumprod(1 - betas, 0) is float64 (T,): index it with t and compute the coefficients "
    "in float64 (in float32, 1 - alpha_bar loses most of its digits when alpha_bar is close to 1), then "
    ".to(x0.dtype).view(-1, 1, 1, 1) so they broadcast over (B, C, H, W) and the result keeps the images' dtype."
)

EXERCISES = (
    Exercise(
        key="05.q_sample",
        function="q_sample",
        nudge="You need alpha_bar (the running product), at each image's own t; the coefficients are square roots; "
        "the result keeps the images' dtype, not the schedule's float64.",
        reference=q_sample,
        hint="x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps with alpha_bar_t = alpha_bars[t] "
        "(one value per image). " + _DTYPE_HINT,
        cases=(
            Case("t = 0: almost the clean image", lambda: q_case([0], 0)),
            Case("B=3, t = 10, 500, 999", lambda: q_case([10, 500, 999], 1)),
            Case("B=2, 1x28x28 digits-sized, T=100", lambda: q_case([3, 99], 2, T=100, shape=(1, 28, 28))),
        ),
    ),
    Exercise(
        key="05.posterior_mean",
        function="posterior_mean",
        nudge="At t = 0 there is no alpha_bar_{t-1}: it is 1 (careful: index -1 is the LAST entry). Check each "
        "square root. 1 - alpha_bar is tiny at small t: keep the schedule in float64 until the end.",
        # the library computes the coefficients in the images' dtype: 1 - alpha_bar then carries float32
        # rounding magnified up to 1e4 times at small t, so the expected value is the float64 computation
        reference=computed_in_float64(posterior_mean),
        hint="mu = sqrt(ab_prev) * beta_t / (1 - ab_t) * x0 + sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t) * xt with "
        "alpha_t = 1 - betas[t], ab_t = alpha_bars[t] and ab_prev = alpha_bars[t - 1] (1 at t = 0: e.g. "
        "torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bars[:-1]])[t]). " + _DTYPE_HINT,
        cases=(
            Case("t = 0: the mean is x0 itself", lambda: posterior_case([0], 3)),
            Case("B=3, t = 1, 400, 999", lambda: posterior_case([1, 400, 999], 4)),
            Case("B=2, 3x5x5, T=50", lambda: posterior_case([7, 49], 5, T=50, shape=(3, 5, 5))),
        ),
    ),
    Exercise(
        key="05.ddim_step",
        function="ddim_step",
        nudge="t_prev < 0 means the end of the chain (alpha_bar = 1), not alpha_bars[-1]. First recover the clean "
        "image from xt and the predicted noise, then move it to t_prev's noise level.",
        reference=ddim_step,
        hint="Deterministic DDIM (eta = 0): alpha_bars = torch.cumprod(1 - betas, 0); ab = alpha_bars[t], "
        "ab_prev = alpha_bars[t_prev] (1.0 when t_prev < 0); "
        "x0_hat = (xt - sqrt(1 - ab) * eps) / sqrt(ab) with eps = model_output; return "
        "sqrt(ab_prev) * x0_hat + sqrt(1 - ab_prev) * eps. t and t_prev are Python ints: float(...) the "
        "values and use math.sqrt.",
        cases=(
            Case("t = 980 -> 960 (a 50-step sampler's first step)", lambda: ddim_case(980, 960, 6)),
            Case("t = 500 -> 250", lambda: ddim_case(500, 250, 7, B=3)),
            Case("the last step: t = 20 -> t_prev = -1 (alpha_bar = 1: returns x0_hat)", lambda: ddim_case(20, -1, 8)),
        ),
    ),
    Exercise(
        key="05.guided_eps",
        function="guided_eps",
        nudge="Test your formula on its two fixed points: scale 0 must give eps_uncond exactly, scale 1 eps_cond; "
        "other scales lie on the straight line through them.",
        reference=diffusion.guided_eps,
        hint="eps_uncond + scale * (eps_cond - eps_uncond): scale 0 is the unconditional prediction, 1 the "
        "conditional one, larger values push further towards the condition.",
        cases=(
            Case("scale 1 gives eps_cond", lambda: guidance_case(1.0, 9)),
            Case("scale 0 gives eps_uncond", lambda: guidance_case(0.0, 10)),
            Case("scale 3.5", lambda: guidance_case(3.5, 11, B=4)),
        ),
    ),
)
