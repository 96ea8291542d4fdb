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


def test_the_full_sum_equals_the_equations_term_by_term():
    s, x, model = dm.linear_schedule(20), images(), Tiny()
    got = dm.vlb_bits_per_dim(model, x, s, timesteps=None, generator=torch.Generator().manual_seed(1))
    # the same draws, in the order the function makes them: ε for every (image, t), then x_1's noise
    g = torch.Generator().manual_seed(1)
    B, T, D = len(x), s.T, x[0].numel()
    x0 = x * 2 - 1
    eps = torch.randn((B, T - 1, 1, 4, 4), generator=g)
    total = torch.zeros(B, dtype=F64)
    with torch.no_grad():
        for t in range(1, T):
            tt = torch.full((B,), t)
            xt = dm.q_sample(x0, tt, eps[:, t - 1], s)
            x0_hat = dm.predict_x0(model(xt, tt), xt, tt, s)
            mq, vq = dm.posterior_mean_variance(x0.double(), xt.double(), tt, s)
            mp, _ = dm.posterior_mean_variance(x0_hat.double(), xt.double(), tt, s)
            total += kl_divergence(Normal(mq, vq.sqrt()), Normal(mp, vq.sqrt())).flatten(1).sum(1)
        ab_T = s.alpha_bars[-1]
        prior = kl_divergence(Normal(ab_T.sqrt() * x0.double(), (1 - ab_T).sqrt()), Normal(0.0, 1.0)).flatten(1).sum(1)
        x1 = dm.q_sample(x0, torch.zeros(B, dtype=torch.long), torch.randn(x0.shape, generator=g), s)
        x0_hat = dm.predict_x0(model(x1, torch.zeros(B, dtype=torch.long)), x1, 0, s)
        dec = dm.discretized_gaussian_nll(x0, x0_hat, math.sqrt(float(s.betas[0]))).flatten(1).sum(1)
    to_bpd = 1 / (D * math.log(2))
    torch.testing.assert_close(got.diffusion, total * to_bpd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.prior, prior * to_bpd, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.decoder, dec * to_bpd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got.bpd, got.prior + got.diffusion + got.decoder)


def test_the_stratified_estimate_is_unbiased():
    s, x, model = dm.linear_schedule(40), images(n=2, hw=2), Tiny()
    full = torch.stack(
        [
            dm.vlb_bits_per_dim(model, x, s, timesteps=None, generator=torch.Generator().manual_seed(i)).diffusion
            for i in range(60)
        ]
    )
    strat = torch.stack(
        [
            dm.vlb_bits_per_dim(model, x, s, timesteps=4, generator=torch.Generator().manual_seed(1000 + i)).diffusion
            for i in range(600)
        ]
    )
    se = (full.var(0) / len(full) + strat.var(0) / len(strat)).sqrt()
    assert bool(((full.mean(0) - strat.mean(0)).abs() < 4 * se).all()), (full.mean(0), strat.mean(0), se)
    assert strat.shape == (600, 2)


def test_an_oracle_pays_only_for_the_prior_and_the_bins():
    s, x = dm.linear_schedule(100), images(n=2, hw=4)
    terms = dm.vlb_bits_per_dim(Oracle(x * 2 - 1, s), x, s, timesteps=10)
    assert float(terms.diffusion.abs().max()) < 1e-6  # x̂_0 = x_0: every L_t vanishes with σ² = β̃
    # the decoder: N(x_0, β_1) on a bin of half-width 1/255 around x_0 (β_1 = 1e-4: σ = 0.01)
    z = (1 / 255) / 0.01
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
