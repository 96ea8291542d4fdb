"""The variational bound in bits/dim (aigc_lib/diffusion/likelihood.py): each term against
torch.distributions, the whole sum against a loop written from the equations, the stratified
estimate's mean against the full sum."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from aigc_lib import diffusion as dm
from aigc_lib.diffusion.likelihood import gaussian_kl

F64 = torch.float64


def test_gaussian_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    v1, v2 = torch.rand(50, generator=g, dtype=F64) + 0.01, torch.rand(50, generator=g, dtype=F64) + 0.01
    ref = kl_divergence(Normal(m1, v1.sqrt()), Normal(m2, v2.sqrt()))
    torch.testing.assert_close(gaussian_kl(m1, v1, m2, v2), ref, rtol=1e-12, atol=1e-12)


def test_discretized_gaussian_is_the_mass_of_the_bin():
    levels = torch.arange(256, dtype=F64) * 2 / 255 - 1
    for mean, std in ((0.3, 0.05), (-0.9, 0.01), (1.0, 0.2)):
        nll = dm.discretized_gaussian_nll(levels, torch.full_like(levels, mean), std)
        n = Normal(torch.tensor(mean, dtype=F64), torch.tensor(std, dtype=F64))
        lo, hi = n.cdf(levels - 1 / 255), n.cdf(levels + 1 / 255)
        lo[0], hi[-1] = 0.0, 1.0  # the end bins reach to -inf and +inf
        mass = hi - lo
        ok = mass > 1e-4  # where the direct difference of cdfs keeps its digits (ours keeps them further out)
        torch.testing.assert_close(nll[ok], -mass[ok].log(), rtol=1e-9, atol=1e-9)
        assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-12)  # a distribution over the 256 levels


def test_discretized_gaussian_is_finite_far_from_the_mean():
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    nll = dm.discretized_gaussian_nll(x, torch.full_like(x, 5.0), 0.01)  # hundreds of std away
    assert torch.isfinite(nll).all() and bool((nll[:2] > 100).all())
    assert float(nll[2]) == pytest.approx(0.0, abs=1e-12)  # the top bin reaches to +inf and holds the mean
    # the far upper tail: the mirrored form keeps the digits the direct difference loses
    near = dm.discretized_gaussian_nll(torch.tensor([0.5], dtype=F64), torch.tensor([0.4], dtype=F64), 0.01)
    z_lo, z_hi = (0.5 - 1 / 255 - 0.4) / 0.01, (0.5 + 1 / 255 - 0.4) / 0.01
    ref = -math.log(0.5 * (math.erfc(z_lo / math.sqrt(2)) - math.erfc(z_hi / math.sqrt(2))))
    assert float(near) == pytest.approx(ref, rel=1e-9)


class Oracle(nn.Module):
    """Knows the images: returns the exact ε of x_t, so x̂_0 = x_0 at every t (one batch of all rows)."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        ab = self.schedule.alpha_bars[t].float().view(-1, 1, 1, 1)
        x0 = self.x0.repeat_interleave(len(x) // len(self.x0), 0)  # rows: each image's timesteps in turn
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (1 + t.float().view(-1, 1, 1, 1) / 100)


def images(n=3, hw=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, hw, hw), generator=g).float() / 255


class TinyV(Tiny):
    """Tiny read as a v-prediction network: the bound must convert its output the v way."""


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_full_sum_equals_the_equations_term_by_term(variance, prediction):
    """Every term rebuilt in the paper's 1-based notation from the betas alone (torch.distributions for
    the KLs): step n = 1..T has beta_n = betas[n - 1]; the middle terms are n = 2..T."""
    s, x, model = dm.linear_schedule(20), images(), Tiny()
    got = dm.vlb_bits_per_dim(
        model,
        x,
        s,
        timesteps=None,
        variance=variance,
        prediction=prediction,
        generator=torch.Generator().manual_seed(1),
    )
    g = torch.Generator().manual_seed(1)  # the same draws in the same order: eps per (image, t), then x_1's noise
    B, T, D = len(x), s.T, x[0].numel()
    beta = s.betas  # float64
    abar = torch.cumprod(1 - beta, 0)
    x0 = (x * 2 - 1).double()
    eps = torch.randn((B, T - 1, 1, 4, 4), generator=g).double()
    total = torch.zeros(B, dtype=F64)

    def x0_from(out, xt, ab):
        return (
            (xt - (1 - ab).sqrt() * out) / ab.sqrt() if prediction == "eps" else ab.sqrt() * xt - (1 - ab).sqrt() * out
        )

    with torch.no_grad():
        for n in range(2, T + 1):  # paper step n, library index n - 1
            ab, ab_prev = abar[n - 1], abar[n - 2]
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps[:, n - 2]
            out = model(xt.float(), torch.full((B,), n - 1)).double()
            x0_hat = x0_from(out, xt, ab)
            c0, ct = ab_prev.sqrt() * beta[n - 1] / (1 - ab), (1 - beta[n - 1]).sqrt() * (1 - ab_prev) / (1 - ab)
            var_q = (1 - ab_prev) / (1 - ab) * beta[n - 1]
            var_p = var_q if variance == "posterior" else beta[n - 1]
            q = Normal(c0 * x0 + ct * xt, var_q.sqrt())
            p = Normal(c0 * x0_hat + ct * xt, var_p.sqrt())
            total += kl_divergence(q, p).flatten(1).sum(1)
        prior = kl_divergence(Normal(abar[-1].sqrt() * x0, (1 - abar[-1]).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)
        x1 = abar[0].sqrt() * x0 + (1 - abar[0]).sqrt() * torch.randn(x0.shape, generator=g).double()
        x0_hat = x0_from(model(x1.float(), torch.zeros(B, dtype=torch.long)).double(), x1, abar[0])
        dec_std = ((1 - abar[0]) / (1 - abar[1]) * beta[1]).sqrt()  # the posterior variance of step 2
        levels = (x0 * 255 + 255) / 2  # 0..255
        n = Normal(x0_hat, dec_std)
        upper = torch.where(levels > 254.5, torch.ones_like(x0), n.cdf(x0 + 1 / 255))
        lower = torch.where(levels < 0.5, torch.zeros_like(x0), n.cdf(x0 - 1 / 255))
        dec = -(upper - lower).log().flatten(1).sum(1)
    to_bpd = 1 / (D * math.log(2))
    torch.testing.assert_close(got.diffusion, total * to_bpd, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(got.prior, prior * to_bpd, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.decoder, dec * to_bpd, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got.bpd, got.prior + got.diffusion + got.decoder)


def test_the_stratified_draws_weight_every_timestep_once(monkeypatch):
    """With L_t replaced by a known function of t, the stratified estimate's mean is the full sum:
    an off-by-one stratum edge or a mis-sized weight moves it by many standard errors."""
    from aigc_lib.diffusion import likelihood

    monkeypatch.setattr(likelihood, "_kl_terms", lambda model, x0, t, *rest: t.double().cpu() ** 1.5)
    for T, K in ((40, 4), (37, 5), (11, 10), (1000, 100)):
        s = dm.linear_schedule(T)
        x = torch.zeros(4000 if T < 1000 else 400, 1, 1, 1)
        got = dm.vlb_bits_per_dim(
            Tiny(), x, s, timesteps=K, generator=torch.Generator().manual_seed(T), batch_size=100_000
        )
        est = got.diffusion * math.log(2)  # D = 1: back to nats
        exact = float((torch.arange(1, T, dtype=F64) ** 1.5).sum())
        se = float(est.std()) / len(est) ** 0.5
        assert abs(float(est.mean()) - exact) < 5 * se + 1e-9, (T, K, float(est.mean()), exact, se)
        assert 100 * se < 0.01 * exact * 100  # the test can see a 1% error
        assert int(got.t.min()) >= 1 and int(got.t.max()) <= T - 1


def test_a_float64_model_is_evaluated_in_float64():
    s, x = dm.linear_schedule(10), images()
    got = dm.vlb_bits_per_dim(Tiny().double(), x, s, timesteps=3)
    assert torch.isfinite(got.bpd).all()


def test_an_oracle_pays_only_for_the_prior_and_the_bins():
    s, x = dm.linear_schedule(100), images(n=2, hw=4)
    terms = dm.vlb_bits_per_dim(Oracle(x * 2 - 1, s), x, s, timesteps=10)
    assert float(terms.diffusion.abs().max()) < 1e-6  # x̂_0 = x_0: every L_t vanishes with σ² = β̃
    # the decoder: N(x_0, σ_dec²) on a bin of half-width 1/255 around x_0, σ_dec² = posterior_variance[1]
    z = (1 / 255) / float(s.posterior_variance[1].sqrt())
    inner = -math.log(math.erf(z / math.sqrt(2)))  # an inner level: mass 2Φ(z) - 1
    assert float(terms.decoder.max()) <= inner / math.log(2) + 1e-6
    beta = dm.vlb_bits_per_dim(Oracle(x * 2 - 1, s), x, s, timesteps=10, variance="beta")
    assert bool((beta.diffusion > 0).all())  # σ² = β_t ≠ β̃_t costs a KL even for a perfect mean


def test_vlb_checks_its_inputs():
    s, model = dm.linear_schedule(10), Tiny()
    with pytest.raises(ValueError, match="8-bit"):
        dm.vlb_bits_per_dim(model, torch.rand(2, 1, 4, 4), s)
    with pytest.raises(ValueError, match="variance"):
        dm.vlb_bits_per_dim(model, images(), s, variance="learned")
    with pytest.raises(ValueError, match="images"):
        dm.vlb_bits_per_dim(model, torch.zeros(1, 4, 4), s)
    with pytest.raises(ValueError, match="timesteps"):
        dm.vlb_bits_per_dim(model, images(), s, timesteps=0)
