"""Chapter 03 library: the pieces of the ELBO vs torch.distributions (KL in closed form and by Monte
Carlo, the reparameterisation trick by statistics and gradcheck, Bernoulli and Gaussian likelihoods
that stay finite), the models' layer sizes and shapes, config and input checks, elbo_terms, the IWAE
bound in closed-form cases (q = prior with a decoder that ignores z; a linear-Gaussian model with the
exact posterior), evaluate_nelbo, train_vae / train_autoencoder (learning, exact resume), and the
latent-space helpers."""

from __future__ import annotations

import copy
import math
import re
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from aigc_lib.vae import (
    VAE,
    Autoencoder,
    VAEConfig,
    bernoulli_log_likelihood,
    binarize,
    elbo_terms,
    evaluate_nelbo,
    gaussian_kl,
    gaussian_log_likelihood,
    interpolate,
    iwae_bound,
    latent_grid,
    latent_usage,
    reparameterize,
    train_autoencoder,
    train_vae,
    vae_loss,
)

B, D = 5, 4
TINY = dict(latent_dim=2, hidden=16)


def rand(*shape: int, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.rand(*shape, generator=gen(seed), dtype=dtype)


def images(n: int = 64, seed: int = 0, shape=(1, 28, 28), dtype=torch.float32) -> torch.Tensor:
    return rand(n, *shape, seed=seed, dtype=dtype)


def tiny_vae(seed: int = 0, dtype=F64, **kw) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(**(TINY | kw))).to(dtype)


def tiny_ae(seed: int = 0, dtype=torch.float32, **kw) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(VAEConfig(**(TINY | kw))).to(dtype)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def softplus(y: float) -> float:
    return max(y, 0.0) + math.log1p(math.exp(-abs(y)))


# --------------------------------------------------------------------------- gaussian_kl


def test_gaussian_kl_equals_torch_distributions():
    mu, logvar = 2 * randn(6, D, seed=1), 2 * randn(6, D, seed=2)
    kl = gaussian_kl(mu, logvar)
    want = kl_divergence(Normal(mu, torch.exp(logvar / 2)), Normal(0.0, 1.0)).sum(-1)
    assert kl.dtype == F64 and kl.shape == (6,)
    assert close(kl, want)
    # one dimension by hand: KL(N(2, 1) || N(0, 1)) = 2, KL(N(0, e) || N(0, 1)) = (e - 2) / 2
    assert gaussian_kl(torch.tensor([[2.0]], dtype=F64), torch.zeros(1, 1, dtype=F64)).item() == 2.0
    assert gaussian_kl(torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64)).item() == pytest.approx(
        (math.e - 2) / 2, rel=1e-14
    )


def test_gaussian_kl_equals_a_monte_carlo_estimate():
    mu = torch.tensor([[0.5, -1.0, 0.0], [1.5, 0.2, -0.3]], dtype=F64)
    logvar = torch.tensor([[0.3, -0.5, 1.0], [-1.0, 0.0, 0.4]], dtype=F64)
    q, p = Normal(mu, torch.exp(logvar / 2)), Normal(0.0, 1.0)
    n = 200_000
    z = mu + torch.exp(logvar / 2) * randn(n, *mu.shape, seed=3)  # (n, B, D) samples of q
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # (n, B)
    est, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    kl = gaussian_kl(mu, logvar)
    assert (se < 0.01).all()  # the test has power
    assert ((est - kl).abs() < 5 * se).all(), (est, kl, se)


def test_gaussian_kl_zero_at_the_prior_and_nonnegative():
    assert torch.equal(gaussian_kl(torch.zeros(3, D), torch.zeros(3, D)), torch.zeros(3))
    assert torch.equal(
        gaussian_kl(torch.zeros(3, D, dtype=F64), torch.zeros(3, D, dtype=F64)), torch.zeros(3, dtype=F64)
    )
    mu, logvar = 3 * randn(1000, 8, seed=4), 3 * randn(1000, 8, seed=5)
    kl = gaussian_kl(mu, logvar)
    assert (kl >= 0).all() and (kl > 0).all()  # 0 only at q = p
    # each dimension is non-negative too, and KL grows with |mu| at fixed variance
    assert (gaussian_kl(mu[:, :1], logvar[:, :1]) >= 0).all()
    assert (gaussian_kl(mu + mu.sign(), logvar) > kl).all()


def test_gaussian_kl_gradients_and_bad_inputs():
    mu, logvar = randn(3, D, seed=6, requires_grad=True), randn(3, D, seed=7, requires_grad=True)
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))
    gaussian_kl(mu, logvar).sum().backward()
    assert close(mu.grad, mu.detach())  # dKL/dmu = mu, dKL/dlogvar = (sigma^2 - 1) / 2
    assert close(logvar.grad, 0.5 * (logvar.detach().exp() - 1))
    with pytest.raises(ValueError, match=r"mu: expected a 2-D floating-point tensor, got \(4,\)"):
        gaussian_kl(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"logvar: expected a 2-D floating-point tensor, got \(2, 4, 1\)"):
        gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match=r"mu, logvar: expected the same shape, got \(2, 4\) and \(2, 3\)"):
        gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mu: expected a 2-D floating-point tensor, got list"):
        gaussian_kl([[0.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match="logvar"):
        gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int64))


# --------------------------------------------------------------------------- reparameterize


def test_reparameterize_is_mu_plus_sigma_eps():
    mu, logvar, eps = randn(B, D, seed=1), randn(B, D, seed=2), randn(B, D, seed=3)
    z = reparameterize(mu, logvar, eps)
    assert z.shape == (B, D) and z.dtype == F64
    assert close(z, mu + torch.exp(logvar / 2) * eps)
    assert close(z, mu + torch.sqrt(torch.exp(logvar)) * eps)  # sigma = sqrt(exp(log sigma^2))
    assert torch.equal(reparameterize(mu, torch.zeros_like(mu), eps), mu + eps)
    assert torch.equal(reparameterize(mu, logvar, torch.zeros_like(eps)), mu)
    # any shape, as long as mu, logvar (and eps) agree
    m3 = randn(2, 3, 4, seed=4)
    assert close(reparameterize(m3, m3, m3), m3 + torch.exp(m3 / 2) * m3)


def test_reparameterize_fresh_noise_has_the_right_statistics():
    n = 100_000
    mu_row = torch.tensor([-1.0, 0.5, 2.0], dtype=F64)
    sigma_row = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    mu, logvar = mu_row.expand(n, 3), (2 * sigma_row.log()).expand(n, 3)
    torch.manual_seed(0)
    z = reparameterize(mu, logvar)
    assert z.shape == (n, 3)
    assert ((z.mean(0) - mu_row).abs() < 5 * sigma_row / math.sqrt(n)).all(), z.mean(0)
    assert ((z.std(0) - sigma_row).abs() < 5 * sigma_row / math.sqrt(2 * n)).all(), z.std(0)
    # Gaussian, not just the right two moments: P(|z - mu| < sigma) = 0.6827
    inside = ((z - mu_row).abs() < sigma_row).double().mean(0)
    p = 2 * NormalDist().cdf(1) - 1
    assert ((inside - p).abs() < 5 * math.sqrt(p * (1 - p) / n)).all(), inside
    # the dimensions are independent
    corr = torch.corrcoef(z.T)
    assert (corr - torch.eye(3, dtype=F64)).abs().max() < 5 / math.sqrt(n)
    # fresh noise each call, from torch's RNG
    assert not torch.equal(reparameterize(mu[:4], logvar[:4]), reparameterize(mu[:4], logvar[:4]))
    torch.manual_seed(7)
    a = reparameterize(mu[:4], logvar[:4])
    torch.manual_seed(7)
    assert torch.equal(a, reparameterize(mu[:4], logvar[:4]))


def test_reparameterize_gradients_flow_to_mu_and_logvar():
    mu, logvar = randn(3, D, seed=1, requires_grad=True), randn(3, D, seed=2, requires_grad=True)
    eps = randn(3, D, seed=3)
    assert torch.autograd.gradcheck(lambda m, lv: reparameterize(m, lv, eps), (mu, logvar))
    reparameterize(mu, logvar, eps).sum().backward()
    assert close(mu.grad, torch.ones_like(mu))  # dz/dmu = 1, dz/dlogvar = sigma * eps / 2
    assert close(logvar.grad, 0.5 * torch.exp(logvar.detach() / 2) * eps)
    # with fresh noise the gradient still reaches both
    mu.grad = logvar.grad = None
    reparameterize(mu, logvar).pow(2).sum().backward()
    assert mu.grad is not None and logvar.grad is not None and (logvar.grad != 0).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 4)), r"mu, logvar: expected the same shape, got \(2, 3\) and \(2, 4\)"),
        (
            (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2)),
            r"mu, eps: expected the same shape, got \(2, 3\) and \(3, 2\)",
        ),
        (
            (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3)),
            r"mu: expected a floating-point tensor, got \(2, 3\)",
        ),
        ((torch.zeros(2, 3), [[0.0] * 3] * 2), "logvar: expected a floating-point tensor, got list"),
        (
            (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64)),
            "eps: expected a floating-point tensor",
        ),
    ],
)
def test_reparameterize_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        reparameterize(*args)


# --------------------------------------------------------------------------- likelihoods


def test_bernoulli_log_likelihood_equals_torch_on_binary_pixels():
    logits = 3 * randn(B, 1, 5, 5, seed=1)
    x = (rand(B, 1, 5, 5, seed=2) > 0.5).to(F64)
    ll = bernoulli_log_likelihood(logits, x)
    assert ll.shape == (B,) and ll.dtype == F64
    assert close(ll, Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1))
    assert (ll < 0).all()
    # per image: image 0's value does not depend on image 1
    assert close(bernoulli_log_likelihood(logits[:1], x[:1]), ll[:1])
    # any trailing shape: (B, P)
    assert close(bernoulli_log_likelihood(logits.flatten(1), x.flatten(1)), ll)


def test_bernoulli_log_likelihood_on_grey_pixels_is_the_formula():
    logits, x = 3 * randn(B, 1, 4, 6, seed=3), rand(B, 1, 4, 6, seed=4)
    s = torch.sigmoid(logits)
    want = (x * torch.log(s) + (1 - x) * torch.log(1 - s)).flatten(1).sum(1)
    assert close(bernoulli_log_likelihood(logits, x), want, tol=1e-10)
    # the grey-level score is maximised by sigma(l) = x: the entropy of the pixels
    best = torch.logit(x)
    h = (x * torch.log(x) + (1 - x) * torch.log(1 - x)).flatten(1).sum(1)
    assert close(bernoulli_log_likelihood(best, x), h, tol=1e-10)
    assert (bernoulli_log_likelihood(logits, x) < h).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bernoulli_log_likelihood_finite_for_confident_logits(dtype):
    logits = torch.tensor(
        [[100.0, -100.0, 100.0, -100.0], [100.0, 100.0, -100.0, 3.0]], dtype=dtype, requires_grad=True
    )
    x = torch.tensor([[1.0, 0.0, 0.3, 0.7], [1.0, 0.0, 1.0, 0.5]], dtype=dtype)
    with torch.no_grad():  # the case is meaningful: the naive formula is nan / -inf here
        s = torch.sigmoid(logits)
        naive = (x * torch.log(s) + (1 - x) * torch.log(1 - s)).sum(1)
        assert not torch.isfinite(naive).any()
    ll = bernoulli_log_likelihood(logits, x)
    want = [
        -sum(xi * softplus(-li) + (1 - xi) * softplus(li) for li, xi in zip(lr, xr, strict=True))
        for lr, xr in zip(logits.tolist(), x.tolist(), strict=True)
    ]
    assert torch.isfinite(ll).all()
    assert ll.tolist() == pytest.approx(want, rel=1e-6)
    assert ll[0].item() == pytest.approx(-140.0, rel=1e-6)
    ll.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert close(logits.grad, x - torch.sigmoid(logits.detach()), tol=1e-6)  # d/dl = x - sigma(l)


def test_bernoulli_log_likelihood_bad_inputs():
    with pytest.raises(ValueError, match=r"logits, x: expected the same shape, got \(2, 3\) and \(2, 4\)"):
        bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x: expected a floating-point tensor"):
        bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="logits: expected a floating-point tensor"):
        bernoulli_log_likelihood(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3))


@pytest.mark.parametrize("kind", ["float", "0-d tensor", "per-pixel tensor"])
def test_gaussian_log_likelihood_equals_torch(kind):
    mean, x = randn(B, 1, 4, 5, seed=1), rand(B, 1, 4, 5, seed=2)
    log_scale = {
        "float": -0.7,
        "0-d tensor": torch.tensor(0.3, dtype=F64),
        "per-pixel tensor": 0.5 * randn(1, 4, 5, seed=3),
    }[kind]
    ll = gaussian_log_likelihood(mean, x, log_scale)
    scale = torch.exp(torch.as_tensor(log_scale, dtype=F64))
    want = Normal(mean, scale).log_prob(x).flatten(1).sum(1)
    assert ll.shape == (B,) and ll.dtype == F64
    assert close(ll, want)
    written = (-0.5 * ((x - mean) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    assert close(ll, written)


def test_gaussian_log_likelihood_special_values_and_gradients():
    x = rand(3, 1, 2, 2, seed=4)
    # mean = x, s = 1: every pixel scores -log(2 pi) / 2
    assert close(gaussian_log_likelihood(x, x, 0.0), torch.full((3,), -2 * math.log(2 * math.pi), dtype=F64))
    mean = randn(3, 1, 2, 2, seed=5, requires_grad=True)
    log_scale = torch.tensor(-0.4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: gaussian_log_likelihood(m, x, s), (mean, log_scale))
    gaussian_log_likelihood(mean, x, log_scale).sum().backward()
    # d/dlog s of sum_i [-(r_i / s)^2 / 2 - log s] = sum_i (r_i / s)^2 - n
    r2 = ((x - mean.detach()) * torch.exp(-log_scale.detach())).pow(2).sum()
    assert log_scale.grad.item() == pytest.approx((r2 - x.numel()).item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"mean, x: expected the same shape"):
        gaussian_log_likelihood(torch.zeros(2, 3), torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="mean: expected a floating-point tensor"):
        gaussian_log_likelihood(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3), 0.0)


def test_gaussian_log_likelihood_keeps_the_log_scale_precision_with_a_bf16_mean():
    mean = rand(4, 1, 28, 28, seed=1, dtype=torch.float32).bfloat16()
    x = rand(4, 1, 28, 28, seed=2, dtype=torch.float32)
    log_scale = torch.tensor(-2.3)  # float32, as the model's parameter
    got = gaussian_log_likelihood(mean, x, log_scale)
    want = gaussian_log_likelihood(mean.double(), x.double(), log_scale.double())  # the same numbers in float64
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want.tolist(), rel=1e-5)


# --------------------------------------------------------------------------- vae_loss


@pytest.mark.parametrize("beta", [1.0, 0.5, 4.0, 0])
def test_vae_loss_is_the_mean_negative_beta_elbo(beta):
    logits, x = 3 * randn(B, 1, 28, 28, seed=1), rand(B, 1, 28, 28, seed=2)
    mu, logvar = randn(B, D, seed=3), randn(B, D, seed=4)
    loss = vae_loss(logits, x, mu, logvar, beta)
    assert loss.shape == () and loss.dtype == F64
    ll, kl = bernoulli_log_likelihood(logits, x), gaussian_kl(mu, logvar)
    assert close(loss, (-ll + beta * kl).mean())
    s = torch.sigmoid(logits)
    recon = -(x * torch.log(s) + (1 - x) * torch.log(1 - s)).sum(dim=(1, 2, 3))
    kl_written = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    assert close(loss, (recon + beta * kl_written).sum() / B, tol=1e-10)
    if beta == 1.0:
        assert torch.equal(vae_loss(logits, x, mu, logvar), loss)  # the default: the plain negative ELBO


def test_vae_loss_beta_zero_is_only_reconstruction_and_beta_must_be_valid():
    logits, x = randn(B, 1, 6, 6, seed=1), rand(B, 1, 6, 6, seed=2)
    mu, logvar = randn(B, D, seed=3), randn(B, D, seed=4)
    recon = -bernoulli_log_likelihood(logits, x).mean()
    assert close(vae_loss(logits, x, mu, logvar, beta=0.0), recon)
    assert close(vae_loss(logits, x, 5 * mu, logvar - 3, beta=0.0), recon)  # the encoder's output is ignored
    assert vae_loss(logits, x, mu, logvar, beta=2.0) > vae_loss(logits, x, mu, logvar, beta=1.0)
    for bad in (-0.1, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"beta: expected a finite number >= 0, got"):
            vae_loss(logits, x, mu, logvar, beta=bad)


# --------------------------------------------------------------------------- models


def linear_sizes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_mlp_vae_has_the_pytorch_example_sizes():
    model = VAE(VAEConfig())
    c = model.config
    assert (c.kind, c.latent_dim, c.hidden, c.image_shape, c.likelihood) == ("mlp", 20, 400, (1, 28, 28), "bernoulli")
    assert linear_sizes(model.encoder) == [(784, 400)]
    assert linear_sizes(model.to_mu) == linear_sizes(model.to_logvar) == [(400, 20)]
    assert linear_sizes(model.decoder) == [(20, 400), (400, 784)]
    # fc1, fc21, fc22, fc3, fc4 of the PyTorch example, and nothing else
    n = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in model.parameters()) == n == 652_824
    assert model.log_scale is None
    assert not any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())
    x = images(3)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 20)
    assert model.decode(mu).shape == (3, 1, 28, 28)


def layer_shapes(seq: nn.Sequential, x: torch.Tensor) -> list[tuple[str, tuple]]:
    out = []
    for m in seq:
        x = m(x)
        out.append((type(m).__name__, tuple(x.shape)))
    return out


@pytest.mark.parametrize(("channels", "hidden"), [(32, 400), (8, 24)])
def test_conv_vae_layer_shapes(channels, hidden):
    torch.manual_seed(0)
    model = VAE(VAEConfig(kind="conv", channels=channels, hidden=hidden, latent_dim=3))
    ch, b = channels, 2
    x = images(b)
    assert layer_shapes(model.encoder, x) == [
        ("Conv2d", (b, ch, 14, 14)),
        ("ReLU", (b, ch, 14, 14)),
        ("Conv2d", (b, 2 * ch, 7, 7)),
        ("ReLU", (b, 2 * ch, 7, 7)),
        ("Flatten", (b, 2 * ch * 49)),
        ("Linear", (b, hidden)),
        ("ReLU", (b, hidden)),
    ]
    assert linear_sizes(model.to_mu) == linear_sizes(model.to_logvar) == [(hidden, 3)]
    z = randn(b, 3, seed=1, dtype=torch.float32)
    assert layer_shapes(model.decoder, z) == [
        ("Linear", (b, hidden)),
        ("ReLU", (b, hidden)),
        ("Linear", (b, 2 * ch * 49)),
        ("ReLU", (b, 2 * ch * 49)),
        ("Unflatten", (b, 2 * ch, 7, 7)),
        ("ConvTranspose2d", (b, ch, 14, 14)),
        ("ReLU", (b, ch, 14, 14)),
        ("ConvTranspose2d", (b, 1, 28, 28)),
    ]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [(m.kernel_size, m.stride, m.padding) for m in convs] == [((4, 4), (2, 2), (1, 1))] * 4
    with torch.no_grad():
        out, mu, logvar = model(x)
    assert out.shape == (b, 1, 28, 28) and mu.shape == logvar.shape == (b, 3)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(kind="mlp"),
        dict(kind="conv", channels=4),
        dict(kind="mlp", image_shape=(3, 5, 7)),
        dict(kind="conv", channels=4, image_shape=(3, 28, 28)),
    ],
)
def test_encode_decode_forward_shapes(cfg):
    model = tiny_vae(**cfg)
    shape = model.config.image_shape
    x = images(B, shape=shape, dtype=F64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (B, 2) and mu.dtype == F64
    assert model.decode(mu).shape == (B, *shape)
    torch.manual_seed(3)
    out, mu2, logvar2 = model(x)
    assert out.shape == (B, *shape)
    assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
    # forward decodes z = mu + sigma * eps with eps drawn from torch's RNG
    torch.manual_seed(3)
    eps = torch.randn(B, 2, dtype=F64)
    assert close(out, model.decode(mu + torch.exp(logvar / 2) * eps))
    assert not torch.equal(model(x)[0], out)  # a fresh sample each call


def test_sample_is_in_the_unit_interval_and_reproducible():
    model = tiny_vae()
    s = model.sample(6, seed=1)
    assert s.shape == (6, 1, 28, 28) and s.dtype == F64
    assert ((s >= 0) & (s <= 1)).all()
    state = torch.get_rng_state()
    assert torch.equal(model.sample(6, seed=1), s)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded sample leaves the global RNG alone
    assert not torch.equal(model.sample(6, seed=2), s)
    z = torch.randn(6, 2, generator=gen(1), dtype=F64)  # z ~ N(0, I), decoded to the Bernoulli means
    assert close(s, torch.sigmoid(model.decode(z)))
    torch.manual_seed(4)
    a = model.sample(3)
    torch.manual_seed(4)
    assert torch.equal(model.sample(3), a)
    with pytest.raises(ValueError, match="n: expected an int >= 1, got 0"):
        model.sample(0)
    # a Gaussian decoder samples its clamped means
    g = tiny_vae(likelihood="gaussian", image_shape=(1, 3, 4))
    with torch.no_grad():
        g.decoder[2].bias.fill_(0.5).add_(torch.linspace(-2, 2, 12, dtype=F64))  # means far outside [0, 1] too
    sg = g.sample(50, seed=0)
    assert sg.shape == (50, 1, 3, 4) and ((sg >= 0) & (sg <= 1)).all()
    assert (sg == 0).any() and (sg == 1).any()
    assert close(sg, g.decode(torch.randn(50, 2, generator=gen(0), dtype=F64)).clamp(0, 1))


def test_autoencoder_shapes_and_determinism():
    for kind in ("mlp", "conv"):
        ae = tiny_ae(kind=kind, channels=4)
        x = images(B)
        z = ae.encode(x)
        assert z.shape == (B, 2)
        out = ae(x)
        assert out.shape == (B, 1, 28, 28)
        assert torch.equal(ae(x), out)  # deterministic: no noise anywhere
        assert torch.equal(ae.decode(z), out)
        assert not hasattr(ae, "to_mu") and not hasattr(ae, "log_scale")
        assert linear_sizes(ae.to_z) == [(16, 2)]
    ae = tiny_ae(**{"hidden": 400, "latent_dim": 20})
    assert linear_sizes(ae.encoder) + linear_sizes(ae.to_z) + linear_sizes(ae.decoder) == [
        (784, 400),
        (400, 20),
        (20, 400),
        (400, 784),
    ]


def test_gaussian_likelihood_model_has_a_learnable_log_scale():
    model = tiny_vae(likelihood="gaussian")
    assert isinstance(model.log_scale, nn.Parameter) and model.log_scale.shape == ()
    assert model.log_scale.item() == 0.0 and model.log_scale.requires_grad
    assert any(p is model.log_scale for p in model.parameters())
    assert "log_scale" in model.state_dict()
    x = images(3, dtype=F64)
    out = model.decode(model.encode(x)[0])
    with torch.no_grad():
        model.log_scale.fill_(-1.3)
    assert close(model.log_likelihood(out, x), gaussian_log_likelihood(out, x, -1.3))
    assert close(model.log_likelihood(out, x), Normal(out, math.exp(-1.3)).log_prob(x).flatten(1).sum(1))
    elbo_terms(model, x)["loss"].backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.item() != 0
    # the Bernoulli model scores the decoder output as logits
    bern = tiny_vae()
    assert close(bern.log_likelihood(out, x), bernoulli_log_likelihood(out, x))
    assert close(bern.mean_image(out), torch.sigmoid(out))
    assert close(model.mean_image(out), out.clamp(0, 1))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(kind="cnn"), "kind: expected 'mlp' or 'conv', got 'cnn'"),
        (dict(likelihood="poisson"), "likelihood: expected 'bernoulli' or 'gaussian', got 'poisson'"),
        (dict(latent_dim=0), "latent_dim: expected an int >= 1, got 0"),
        (dict(latent_dim=2.0), "latent_dim: expected an int >= 1, got 2.0"),
        (dict(latent_dim=True), "latent_dim: expected an int >= 1, got True"),
        (dict(hidden=-3), "hidden: expected an int >= 1, got -3"),
        (dict(channels=0), "channels: expected an int >= 1, got 0"),
        (dict(image_shape=(28, 28)), "image_shape: expected (C, H, W) of positive ints, got (28, 28)"),
        (dict(image_shape=(1, 28, 0)), "image_shape: expected (C, H, W) of positive ints, got (1, 28, 0)"),
        (dict(image_shape=(1, 28.0, 28)), "image_shape: expected (C, H, W) of positive ints"),
        (
            dict(kind="conv", image_shape=(1, 32, 32)),
            "image_shape: the conv model is built for 28×28 images, got (1, 32, 32)",
        ),
        (dict(kind="conv", image_shape=(3, 28, 14)), "image_shape: the conv model is built for 28×28 images"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VAEConfig(**kw)


def test_config_normalises_and_models_check_their_config():
    assert VAEConfig(image_shape=[1, 4, 4]).image_shape == (1, 4, 4)
    assert VAEConfig(kind="conv", image_shape=(3, 28, 28)).image_shape == (3, 28, 28)
    for cls in (VAE, Autoencoder):
        with pytest.raises(ValueError, match="config: expected a VAEConfig, got str"):
            cls("mlp")
        with pytest.raises(ValueError, match="config: expected a VAEConfig, got dict"):
            cls(dict(TINY))


@pytest.mark.parametrize("make", [tiny_vae, tiny_ae])
def test_models_name_the_bad_argument(make):
    model = make(dtype=torch.float32)
    with pytest.raises(ValueError, match=re.escape("z: expected latent codes of shape (B, 2), got (3, 3)")):
        model.decode(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=re.escape("z: expected latent codes of shape (B, 2), got (2,)")):
        model.decode(torch.zeros(2))
    with pytest.raises(ValueError, match=re.escape("x: expected images of shape (B, 1, 28, 28), got (3, 28, 28)")):
        model.encode(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match=re.escape("x: expected images of shape (B, 1, 28, 28), got (3, 1, 28, 27)")):
        model.encode(torch.zeros(3, 1, 28, 27))
    with pytest.raises(ValueError, match=re.escape("x: expected images of shape (B, 1, 28, 28), got (3, 1, 28, 28)")):
        model.encode(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))  # raw bytes: scale to [0, 1] first
    with pytest.raises(ValueError, match=re.escape("x: expected images of shape (B, 1, 28, 28), got (3, 784)")):
        model(torch.zeros(3, 784))
    other = make(dtype=torch.float32, image_shape=(2, 5, 7))
    with pytest.raises(ValueError, match=re.escape("x: expected images of shape (B, 2, 5, 7), got (1, 1, 28, 28)")):
        other.encode(torch.zeros(1, 1, 28, 28))


# --------------------------------------------------------------------------- elbo_terms


@pytest.mark.parametrize(("likelihood", "beta"), [("bernoulli", 1.0), ("bernoulli", 0.25), ("gaussian", 3.0)])
def test_elbo_terms_is_the_one_sample_beta_elbo(likelihood, beta):
    model = tiny_vae(likelihood=likelihood)
    if likelihood == "gaussian":
        with torch.no_grad():
            model.log_scale.fill_(-0.8)
    x = images(B, dtype=F64)
    torch.manual_seed(11)
    terms = elbo_terms(model, x, beta)
    assert set(terms) == {"loss", "recon", "kl"} and all(v.shape == () for v in terms.values())
    assert close(terms["loss"], terms["recon"] + beta * terms["kl"])
    torch.manual_seed(11)  # the same noise: recon is -log p(x | z) for the reparameterised z
    mu, logvar = model.encode(x)
    out = model.decode(reparameterize(mu, logvar))
    assert close(terms["recon"], -model.log_likelihood(out, x).mean())
    assert close(terms["kl"], gaussian_kl(mu, logvar).mean())
    if likelihood == "bernoulli":
        assert close(terms["loss"], vae_loss(out, x, mu, logvar, beta))
    assert terms["kl"] > 0
    # one backward reaches every parameter
    terms["loss"].backward()
    assert all(p.grad is not None and (p.grad != 0).any() for p in model.parameters())


def test_elbo_terms_checks_beta():
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0, got -1"):
        elbo_terms(tiny_vae(), images(2, dtype=F64), beta=-1)


# --------------------------------------------------------------------------- iwae_bound, evaluate_nelbo


def prior_model(likelihood: str = "bernoulli", seed: int = 0) -> VAE:
    """q(z | x) = N(0, I) = p(z) and a decoder that ignores z: p(x) = p(x | z) for any z."""
    model = tiny_vae(seed=seed, likelihood=likelihood)
    with torch.no_grad():
        model.decoder[0].weight.zero_()
        for lin in (model.to_mu, model.to_logvar):
            lin.weight.zero_()
            lin.bias.zero_()
        model.decoder[0].bias.normal_(generator=gen(seed + 1))  # a non-trivial constant decoder output
        if likelihood == "gaussian":
            model.log_scale.fill_(-1.0)
    return model


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_and_nelbo_are_exact_when_q_is_the_prior_and_the_decoder_ignores_z(likelihood):
    model = prior_model(likelihood)
    x = images(10, dtype=F64)
    const = model.decode(torch.zeros(1, 2, dtype=F64))
    assert close(model.decode(randn(4, 2, seed=9)), const.expand(4, -1, -1, -1))  # the construction works
    log_px = model.log_likelihood(const.expand(10, -1, -1, -1), x)  # log p(x), per image
    want = -log_px.mean().item()
    for k in (1, 7, 64):
        for batch_size in (3, 100):
            assert iwae_bound(model, x, k=k, batch_size=batch_size, seed=k) == pytest.approx(want, rel=1e-12, abs=1e-9)
    ev = evaluate_nelbo(model, x, batch_size=4, seed=5)
    assert ev["kl"] == 0.0
    assert ev["nelbo"] == pytest.approx(want, rel=1e-12) and ev["recon"] == pytest.approx(want, rel=1e-12)


def linear_gaussian(posterior: bool = True, seed: int = 0):
    """A linear-Gaussian VAE on 6-pixel images built from the MLP by keeping every ReLU in its linear
    range (+50 biases): p(z) = N(0, I), p(x | z) = N(A z + c, s^2 I) with orthogonal columns of A, so
    that the exact posterior N(m(x), S) has a diagonal S and the encoder can output it exactly.
    Returns the model and log p(x) = log N(x; c, A A^T + s^2 I) as a function."""
    P, Dz, H, s = 6, 2, 4, 0.6
    model = tiny_vae(likelihood="gaussian", image_shape=(1, 2, 3), hidden=H, latent_dim=Dz)
    g = gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, Dz, generator=g, dtype=F64))
    a = torch.tensor([1.5, 0.7], dtype=F64)
    A, c = Q * a, 0.5 + 0.3 * torch.randn(P, generator=g, dtype=F64)
    S = 1 / (1 + a**2 / s**2)  # diagonal posterior covariance
    eye = torch.eye(H, Dz, dtype=F64)  # (H, Dz): the first Dz units carry z (or A^T x)
    big = torch.full((H,), 50.0, dtype=F64)
    with torch.no_grad():
        dec0, dec2 = model.decoder[0], model.decoder[2]
        dec0.weight.copy_(eye), dec0.bias.copy_(big)  # h = z + 50 (and 50s)
        dec2.weight.copy_(A @ eye.T), dec2.bias.copy_(c - A @ big[:Dz])  # A (z + 50) + c - 50 A 1 = A z + c
        enc = model.encoder[1]
        enc.weight.copy_(eye @ A.T), enc.bias.copy_(big)  # h = A^T x + 50
        gain = torch.diag(S / s**2)
        model.to_mu.weight.copy_(gain @ eye.T)
        model.to_mu.bias.copy_(-gain @ (A.T @ c + big[:Dz]))  # m = S A^T (x - c) / s^2
        model.to_logvar.weight.zero_()
        model.to_logvar.bias.copy_(torch.log(S) + (0.0 if posterior else math.log(3.0)))
        model.log_scale.fill_(math.log(s))
    marginal = MultivariateNormal(c, A @ A.T + s**2 * torch.eye(P, dtype=F64))

    def log_px(x: torch.Tensor) -> torch.Tensor:
        return marginal.log_prob(x.flatten(1))

    return model, log_px, S, A, c, s


def test_linear_gaussian_construction_is_what_it_claims():
    model, _, S, A, c, s = linear_gaussian()
    z = 3 * randn(7, 2, seed=1)
    assert close(model.decode(z).flatten(1), z @ A.T + c, tol=1e-10)
    x = images(7, shape=(1, 2, 3), dtype=F64)
    mu, logvar = model.encode(x)
    post_cov = torch.linalg.inv(torch.eye(2, dtype=F64) + A.T @ A / s**2)
    assert close(post_cov, torch.diag(S), tol=1e-12)  # A has orthogonal columns: diagonal posterior
    assert close(mu, (x.flatten(1) - c) @ A @ post_cov / s**2, tol=1e-10)
    assert close(logvar, torch.log(S).expand(7, 2), tol=1e-12)


def test_iwae_is_exact_with_the_exact_posterior_for_every_k():
    model, log_px, S, *_ = linear_gaussian()
    x = images(40, shape=(1, 2, 3), dtype=F64)
    want = -log_px(x).mean().item()
    for k in (1, 3, 50):
        assert iwae_bound(model, x, k=k, batch_size=16, seed=k) == pytest.approx(want, rel=1e-10)
    # evaluate_nelbo's KL is the analytic KL of the posterior, its NELBO -log p(x) on average
    ev = evaluate_nelbo(model, x, seed=0)
    mu, logvar = model.encode(x)
    assert ev["kl"] == pytest.approx(gaussian_kl(mu, logvar).mean().item(), rel=1e-12)
    nelbos = torch.tensor([evaluate_nelbo(model, x, seed=s)["nelbo"] for s in range(20)], dtype=F64)
    assert abs(nelbos.mean().item() - want) < 5 * nelbos.std().item() / math.sqrt(20)


def test_iwae_tightens_towards_minus_log_px_with_a_too_wide_q():
    """q = N(m, 3 S): the k = 1 gap is KL(q || posterior) = D (3 - 1 - log 3) / 2 per image; large k closes it."""
    model, log_px, *_ = linear_gaussian(posterior=False)
    x = images(2000, shape=(1, 2, 3), dtype=F64)
    want = -log_px(x).mean().item()
    gap = 2 * 0.5 * (3 - 1 - math.log(3))
    b1 = iwae_bound(model, x, k=1, batch_size=500, seed=0)
    se = 2 / math.sqrt(len(x))  # log w - log p(x) = sum_j (-u_j^2 + log(3) / 2): std 2 for D = 2
    assert abs(b1 - want - gap) < 5 * se, (b1 - want, gap)
    small = x[:500]
    want_small = -log_px(small).mean().item()
    gaps = [iwae_bound(model, small, k=k, batch_size=250, seed=1) - want_small for k in (1, 10, 100, 1000)]
    # an upper bound on -log p(x) in nats (in expectation: k = 1000 is within its Monte-Carlo noise, ~1e-3)
    assert all(g > -0.005 for g in gaps), gaps
    assert gaps[0] > gaps[1] > gaps[2] and gaps[3] < gaps[2] + 0.005, gaps  # tighter as k grows
    assert gaps[1] < gaps[0] / 5 and abs(gaps[3]) < 0.005, gaps  # and it closes the gap


def trained_tiny(seed: int = 0) -> tuple[VAE, torch.Tensor]:
    data = images(64, seed=seed)
    torch.manual_seed(seed)
    model = VAE(VAEConfig(**TINY))
    train_vae(model, data, 30, batch_size=16, progress=False)
    return model, data


@pytest.fixture(scope="module")
def trained():
    return trained_tiny()


def test_iwae_bound_does_not_increase_with_k(trained):
    model, data = trained
    means = {k: sum(iwae_bound(model, data, k=k, batch_size=64, seed=s) for s in range(3)) / 3 for k in (1, 10, 100)}
    assert means[1] >= means[10] >= means[100] - 0.02, means
    assert means[1] - means[100] > 0.05, means  # the test has power: the bound moved


def test_iwae_k1_matches_the_nelbo_on_average(trained):
    """k = 1 is the one-sample ELBO with a Monte-Carlo KL; evaluate_nelbo uses the analytic KL: same mean."""
    model, data = trained
    n = 30
    iw = torch.tensor([iwae_bound(model, data, k=1, batch_size=64, seed=s) for s in range(n)], dtype=F64)
    ne = torch.tensor([evaluate_nelbo(model, data, seed=100 + s)["nelbo"] for s in range(n)], dtype=F64)
    se = math.sqrt(iw.var().item() / n + ne.var().item() / n)
    assert abs(iw.mean().item() - ne.mean().item()) < 5 * se + 1e-9, (iw.mean(), ne.mean(), se)


def assert_evaluates_in_eval_mode_and_restores(model, evaluate) -> None:
    """`evaluate()` runs the encoder in eval mode, leaves the caller's mode and no gradients behind."""
    model.zero_grad(set_to_none=True)  # (training left the last step's gradients)
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda m, args: seen.append(model.training))
    try:
        for mode in (True, False):
            model.train(mode)
            evaluate()
            assert model.training is mode
    finally:
        hook.remove()
        model.train()
    assert seen == [False, False]  # evaluated in eval mode
    assert all(p.grad is None for p in model.parameters())


def test_iwae_bound_is_deterministic_restores_the_mode_and_checks_its_arguments(trained):
    model, data = trained
    a = iwae_bound(model, data[:16], k=5, seed=3)
    assert isinstance(a, float) and math.isfinite(a)
    assert iwae_bound(model, data[:16], k=5, seed=3) == a
    assert iwae_bound(model, data[:16], k=5, seed=4) != a
    assert_evaluates_in_eval_mode_and_restores(model, lambda: iwae_bound(model, data[:4], k=2))
    with pytest.raises(ValueError, match="k: expected an int >= 1, got 0"):
        iwae_bound(model, data, k=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        iwae_bound(model, data, batch_size=0)
    with pytest.raises(ValueError, match=r"images: expected a non-empty tensor of images, got \(0, 1, 28, 28\)"):
        iwae_bound(model, data[:0])
    with pytest.raises(ValueError, match="x: expected images of shape"):
        iwae_bound(model, data[:, 0])


def test_evaluate_nelbo(trained):
    model, data = trained
    ev = evaluate_nelbo(model, data, batch_size=20, seed=1)
    assert set(ev) == {"nelbo", "recon", "kl"} and all(isinstance(v, float) for v in ev.values())
    assert ev["nelbo"] == pytest.approx(ev["recon"] + ev["kl"], rel=1e-6)  # (per-image sums in float32)
    with torch.no_grad():
        mu, logvar = model.encode(data)
    assert ev["kl"] == pytest.approx(gaussian_kl(mu.double(), logvar.double()).mean().item(), rel=1e-5)
    assert evaluate_nelbo(model, data, batch_size=20, seed=1) == ev  # deterministic for a seed
    assert evaluate_nelbo(model, data, batch_size=20, seed=2)["recon"] != ev["recon"]
    assert evaluate_nelbo(model, data.double(), batch_size=20, seed=1)["nelbo"] == pytest.approx(ev["nelbo"], rel=1e-6)
    assert_evaluates_in_eval_mode_and_restores(model, lambda: evaluate_nelbo(model, data[:8]))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        evaluate_nelbo(model, data, batch_size=0)
    with pytest.raises(ValueError, match="images: expected a non-empty tensor of images, got list"):
        evaluate_nelbo(model, [])


# --------------------------------------------------------------------------- training


KEYS = {"loss", "recon", "kl"}
RUN = dict(batch_size=16, progress=False)


def test_train_vae_lowers_the_loss_and_logs_the_terms():
    data = images(64, seed=1)
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY))
    before = copy.deepcopy(model)
    h = train_vae(model, data, 30, **RUN)
    assert KEYS <= set(h.metrics) and h.steps == list(range(30))
    assert all(len(h[k]) == 30 and all(math.isfinite(v) for v in h[k]) for k in KEYS)
    losses = h["loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, (losses[:5], losses[-5:])
    assert all(lo == pytest.approx(r + k, rel=1e-5) for lo, r, k in zip(h["loss"], h["recon"], h["kl"], strict=True))
    assert all(k >= 0 for k in h["kl"])
    assert not states_equal(model, before) and model.training
    # the training NELBO and the evaluated one agree roughly at the end
    assert evaluate_nelbo(model, data)["nelbo"] == pytest.approx(sum(losses[-5:]) / 5, rel=0.02)


def test_train_vae_beta_weights_the_kl():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY))
    h = train_vae(model, images(32), 4, beta=0.25, **RUN)
    assert all(
        lo == pytest.approx(r + 0.25 * k, rel=1e-5) for lo, r, k in zip(h["loss"], h["recon"], h["kl"], strict=True)
    )
    assert any(abs(lo - r - k) > 1e-3 for lo, r, k in zip(h["loss"], h["recon"], h["kl"], strict=True))


def test_train_vae_same_seeds_same_run_other_batch_seed_other_run():
    data = images(64, seed=1)
    runs = []
    for batch_seed in (0, 0, 1):
        torch.manual_seed(0)
        model = VAE(VAEConfig(**TINY))
        runs.append((model, train_vae(model, data, 6, seed=batch_seed, **RUN)))
    assert states_equal(runs[0][0], runs[1][0]) and runs[0][1]["loss"] == runs[1][1]["loss"]
    assert not states_equal(runs[0][0], runs[2][0])


def test_train_vae_batches_are_fresh_permutations_each_epoch():
    data = images(32, seed=5)
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY))
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    train_vae(model, data, 8, batch_size=8, progress=False)  # 32 images / 8 = 4 steps per epoch
    assert len(seen) == 8 and all(b.shape == (8, 1, 28, 28) for b in seen)
    flat = data.flatten(1)
    idx = [(b.flatten(1)[:, None] == flat[None]).all(-1).int().argmax(1).tolist() for b in seen]
    assert all((b.flatten(1) == flat[i]).all() for b, i in zip(seen, idx, strict=True))  # rows of the data
    epoch0, epoch1 = sum(idx[:4], []), sum(idx[4:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(32))  # every image once per epoch
    assert epoch0 != epoch1 and epoch0 != list(range(32))  # shuffled, and shuffled anew


def test_train_vae_resumes_exactly_from_a_checkpoint(tmp_path):
    data = images(64, seed=2)

    def fresh() -> VAE:
        torch.manual_seed(0)
        return VAE(VAEConfig(**TINY))

    straight_model = fresh()
    straight = train_vae(straight_model, data, 10, **RUN)

    path = tmp_path / "vae.pt"
    first_model = fresh()
    first = train_vae(first_model, data, 5, checkpoint=path, **RUN)
    assert path.exists() and len(first) == 5
    resumed_model = fresh()
    torch.manual_seed(1234)  # whatever the RNG is now, the checkpoint restores it
    resumed = train_vae(resumed_model, data, 10, checkpoint=path, **RUN)
    assert not states_equal(resumed_model, first_model)  # it went on from step 5
    assert states_equal(resumed_model, straight_model)
    assert resumed.steps == straight.steps == list(range(10))
    for k in KEYS:
        assert resumed[k] == straight[k], k
    # the same holds for the Gaussian decoder's log-scale
    torch.manual_seed(0)
    g_straight = VAE(VAEConfig(likelihood="gaussian", **TINY))
    train_vae(g_straight, data, 4, **RUN)
    torch.manual_seed(0)
    fresh_g = VAE(VAEConfig(likelihood="gaussian", **TINY))
    train_vae(fresh_g, data, 2, checkpoint=tmp_path / "g.pt", **RUN)
    torch.manual_seed(0)
    fresh_g = VAE(VAEConfig(likelihood="gaussian", **TINY))
    train_vae(fresh_g, data, 4, checkpoint=tmp_path / "g.pt", **RUN)
    assert states_equal(fresh_g, g_straight) and g_straight.log_scale.item() != 0.0


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_train_autoencoder_lowers_its_loss(likelihood):
    data = images(64, seed=3)
    ae = tiny_ae(likelihood=likelihood)
    x = data[:16]
    with torch.no_grad():
        out = ae(x)
        want = (
            (-bernoulli_log_likelihood(out, x) if likelihood == "bernoulli" else (out - x).pow(2).flatten(1).sum(1))
            .mean()
            .item()
        )
    h = train_autoencoder(ae, data, 30, **RUN)
    assert set(h.metrics) == {"loss"} and len(h) == 30
    assert sum(h["loss"][-5:]) / 5 < sum(h["loss"][:5]) / 5, h["loss"]
    with torch.no_grad():  # and on the data it was trained on, not just in the log
        out = ae(x)
        after = (
            (-bernoulli_log_likelihood(out, x) if likelihood == "bernoulli" else (out - x).pow(2).flatten(1).sum(1))
            .mean()
            .item()
        )
    assert after < want, (after, want)


def test_train_autoencoder_first_loss_is_the_reconstruction_loss():
    data = images(16, seed=4)
    for likelihood in ("bernoulli", "gaussian"):
        ae = tiny_ae(likelihood=likelihood)
        with torch.no_grad():  # one batch = the whole (shuffled) data set: the mean does not depend on the order
            out = ae(data)
            want = (
                (
                    -bernoulli_log_likelihood(out, data)
                    if likelihood == "bernoulli"
                    else F.mse_loss(out, data, reduction="none").flatten(1).sum(1)
                )
                .mean()
                .item()
            )
        h = train_autoencoder(ae, data, 1, batch_size=16, progress=False)
        assert h["loss"][0] == pytest.approx(want, rel=1e-5)


def test_training_rejects_the_wrong_model_and_bad_arguments():
    data = images(16)
    with pytest.raises(ValueError, match="model: expected a VAE, got Autoencoder"):
        train_vae(tiny_ae(), data, 2, **RUN)
    with pytest.raises(ValueError, match="model: expected an Autoencoder, got VAE"):
        train_autoencoder(tiny_vae(dtype=torch.float32), data, 2, **RUN)
    with pytest.raises(ValueError, match="model: expected a VAE, got Sequential"):
        train_vae(nn.Sequential(nn.Linear(2, 2)), data, 2, **RUN)
    model = tiny_vae(dtype=torch.float32)
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        train_vae(model, data, 0, **RUN)
    with pytest.raises(ValueError, match="lr: expected a finite number > 0, got 0"):
        train_vae(model, data, 2, lr=0, **RUN)
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0, got -0.5"):
        train_vae(model, data, 2, beta=-0.5, **RUN)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        train_vae(model, data, 2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"x: expected images of shape \(B, 1, 28, 28\), got \(16, 28, 28\)"):
        train_vae(model, data[:, 0], 2, **RUN)


# --------------------------------------------------------------------------- latent-space helpers


def test_interpolate():
    z0, z1 = randn(D, seed=1), randn(D, seed=2)
    path = interpolate(z0, z1, 5)
    assert path.shape == (5, D) and path.dtype == F64
    assert torch.equal(path[0], z0) and torch.equal(path[-1], z1)  # endpoints exact
    assert close(path[2], (z0 + z1) / 2)  # the midpoint is the average
    for i in range(5):
        assert close(path[i], z0 + i / 4 * (z1 - z0))
    assert close(interpolate(z0, z1, 3)[1], (z0 + z1) / 2)
    two = interpolate(z0, z1, 2)
    assert torch.equal(two, torch.stack([z0, z1]))
    assert close(interpolate(z0, z0, 4), z0.expand(4, D))
    # decodes into images with the model
    model = tiny_vae()
    assert model.decode(interpolate(z0[:2], z1[:2], 7)).shape == (7, 1, 28, 28)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((randn(3), randn(3), 1), "steps: expected an int >= 2, got 1"),
        ((randn(3), randn(3), 0), "steps: expected an int >= 2, got 0"),
        ((randn(3), randn(3), 3.0), "steps: expected an int >= 2, got 3.0"),
        ((randn(3), randn(4), 3), r"z0, z1: expected the same shape, got \(3,\) and \(4,\)"),
        ((randn(1, 3), randn(1, 3), 3), r"z0: expected a 1-D floating-point tensor, got \(1, 3\)"),
        ((randn(3), torch.zeros(3, dtype=torch.int64), 3), "z1: expected a 1-D floating-point tensor"),
    ],
)
def test_interpolate_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        interpolate(*args)


def expected_grid(n: int, span: float) -> torch.Tensor:
    lo, hi = (1 - span) / 2, (1 + span) / 2
    q = [NormalDist().inv_cdf(lo + (hi - lo) * j / (n - 1)) for j in range(n)]
    # row-major, z1 increasing along a row, z2 decreasing down the rows
    return torch.tensor([[q[j], q[n - 1 - i]] for i in range(n) for j in range(n)], dtype=F64)


@pytest.mark.parametrize(("n", "span"), [(4, 0.95), (5, 0.5)])
def test_latent_grid_decodes_normal_quantiles(n, span):
    model = tiny_vae()
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        grid = latent_grid(model, n=n, span=span)
    finally:
        hook.remove()
    assert grid.shape == (n * n, 1, 28, 28) and grid.dtype == torch.float32
    assert ((grid >= 0) & (grid <= 1)).all()
    want = expected_grid(n, span)
    assert len(seen) == 1 and close(seen[0], want, tol=1e-10)  # the grid points are normal quantiles
    z_max = NormalDist().inv_cdf((1 + span) / 2)
    assert seen[0][0].tolist() == pytest.approx([-z_max, z_max], rel=1e-12)  # top-left: smallest z1, largest z2
    # the first image decodes that corner, the last the opposite one
    corner = torch.tensor([[-z_max, z_max], [z_max, -z_max]], dtype=F64)
    with torch.no_grad():
        assert close(grid[[0, -1]].double(), torch.sigmoid(model.decode(corner)), tol=1e-6)
        assert close(grid.double(), torch.sigmoid(model.decode(want)), tol=1e-6)


def test_latent_grid_checks_and_modes():
    with pytest.raises(ValueError, match="model: latent_grid needs a 2-D latent space, got latent_dim=3"):
        latent_grid(tiny_vae(latent_dim=3))
    model = tiny_vae()
    with pytest.raises(ValueError, match="n: expected an int >= 2, got 1"):
        latent_grid(model, n=1)
    for span in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match="span: expected a number in"):
            latent_grid(model, n=3, span=span)
    for mode in (True, False):
        model.train(mode)
        latent_grid(model, n=2)
        assert model.training is mode
    assert latent_grid(model).shape == (15 * 15, 1, 28, 28)  # the default: Kingma & Welling's 15 x 15
    # the autoencoder works too (its decoder output is also read as logits)
    ae = tiny_ae()
    g = latent_grid(ae, n=3)
    with torch.no_grad():
        assert close(g, torch.sigmoid(ae.decode(expected_grid(3, 0.95).float())), tol=1e-6)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vae_on_cuda():
    device = torch.device("cuda")
    data = images(64, seed=1)
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY)).to(device)
    h = train_vae(model, data, 20, lr=1e-2, **RUN)  # the data stays on the host; batches move
    assert len(h) == 20 and all(math.isfinite(v) for k in KEYS for v in h[k])
    assert sum(h["loss"][-5:]) < sum(h["loss"][:5])
    assert next(model.parameters()).device.type == "cuda"
    b = iwae_bound(model, data, k=10, batch_size=32)
    ev = evaluate_nelbo(model, data)
    assert math.isfinite(b) and b <= ev["nelbo"] + 1.0
    assert iwae_bound(model, data, k=10, batch_size=32) == b
    s = model.sample(4, seed=0)
    assert s.device.type == "cuda" and s.shape == (4, 1, 28, 28)
    g = latent_grid(model, n=3)
    assert g.device.type == "cuda" and g.dtype == torch.float32 and ((g >= 0) & (g <= 1)).all()
    # the CPU model with the same weights agrees with the GPU (fp32 here, no autocast outside training)
    cpu = copy.deepcopy(model).cpu()
    assert iwae_bound(cpu, data, k=1, batch_size=64, seed=0) == pytest.approx(
        iwae_bound(model, data, k=1, batch_size=64, seed=0), rel=0.01
    )
    # a conv VAE trains there too
    torch.manual_seed(0)
    conv = VAE(VAEConfig(kind="conv", channels=8, hidden=32, latent_dim=2)).to(device)
    hc = train_vae(conv, data, 3, **RUN)
    assert len(hc) == 3 and all(math.isfinite(v) for v in hc["loss"])


# --------------------------------------------------------------------------- binarised digits


def test_binarize_draws_each_pixel_with_its_grey_level_and_is_seeded():
    grey = torch.full((400, 1, 28, 28), 0.3)
    grey[:, :, :14] = 0.9
    b = binarize(grey, seed=3)
    assert set(b.unique().tolist()) <= {0.0, 1.0} and b.dtype == grey.dtype and b.shape == grey.shape
    assert b[:, :, :14].mean().item() == pytest.approx(0.9, abs=0.01)
    assert b[:, :, 14:].mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(b, binarize(grey, seed=3)) and not torch.equal(b, binarize(grey, seed=4))
    edge = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 28, 28).contiguous()
    assert torch.equal(binarize(edge), edge)  # 0 and 1 stay as they are
    with pytest.raises(ValueError, match=r"images: expected values in \[0, 1\], got \[-1, 1\]"):
        binarize(edge * 2 - 1)


def test_train_vae_binarize_trains_on_fresh_binary_draws_and_resumes_exactly(tmp_path):
    data = images(32, seed=5)
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY))
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    train_vae(model, data, 8, batch_size=8, binarize=True, progress=False)
    assert all(set(b.unique().tolist()) <= {0.0, 1.0} for b in seen)
    assert not torch.equal(seen[0].sum(0), seen[4].sum(0))  # epoch 2: new draws (and a new order)

    def run(steps, **kw):
        torch.manual_seed(0)
        m = VAE(VAEConfig(**TINY))
        return m, train_vae(m, data, steps, binarize=True, **RUN, **kw)

    straight, h = run(6)
    run(3, checkpoint=tmp_path / "b.pt")
    resumed, h2 = run(6, checkpoint=tmp_path / "b.pt")
    assert states_equal(straight, resumed) and h["loss"] == h2["loss"]


# --------------------------------------------------------------------------- posterior collapse


def test_latent_usage_counts_the_dimensions_the_encoder_uses():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY)).double()
    data = images(50, seed=3).double()
    u = latent_usage(model, data, batch_size=7)
    mu, logvar = model.encode(data)
    want_kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean(0)
    torch.testing.assert_close(u["kl"], want_kl.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(u["activity"], mu.var(0, unbiased=False).double(), rtol=1e-9, atol=1e-12)
    assert int(u["active"]) == int((mu.var(0, unbiased=False) > 0.01).sum())
    assert u["kl"].sum().item() == pytest.approx(gaussian_kl(mu, logvar).mean().item(), rel=1e-9)


def test_free_bits_charge_each_dimension_at_least_lambda_and_keep_the_true_kl():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**TINY)).double()
    x = images(16, seed=4).double()
    torch.manual_seed(1)
    plain = elbo_terms(model, x)
    torch.manual_seed(1)
    floored = elbo_terms(model, x, free_bits=5.0)  # far above every dimension's KL
    assert floored["kl"].item() == pytest.approx(plain["kl"].item())  # the logged KL is the true one
    assert floored["loss"].item() == pytest.approx(plain["recon"].item() + 5.0 * TINY["latent_dim"])
    torch.manual_seed(1)
    assert elbo_terms(model, x, free_bits=0.0)["loss"].item() == pytest.approx(plain["loss"].item())
    with pytest.raises(ValueError, match="free_bits"):
        elbo_terms(model, x, free_bits=-1.0)
