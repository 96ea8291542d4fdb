"""Chapter 02 library: GAN losses from logits vs trusted references (and the naive formulas that
overflow), the WGAN-GP penalty on a linear critic, every layer's shape, the functional DCGAN
generator, DCGAN init, one training step done right (detached fakes, fresh D outputs for G, no G
step on D), the toy SGD step vs modules + optimizers, conditional labels, train_gan (history,
snapshots, exact checkpoint resume), sampling, and the ring-of-Gaussians toy."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn

from aigc_lib import gan
from aigc_lib.gan import (
    LOSSES,
    DCGANConfig,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    PackedDiscriminator,
    d_loss_minimax,
    dcgan_generator_forward,
    dcgan_init_,
    discriminator_step,
    g_loss_minimax,
    g_loss_nonsaturating,
    gan_step,
    generator_params,
    gradient_penalty,
    hinge_d_loss,
    hinge_g_loss,
    ring_modes,
    ring_of_gaussians,
    ring_quality,
    sample,
    to_unit,
    toy_gan_sgd_step,
    train_gan,
    wgan_d_loss,
    wgan_g_loss,
)

B = 5


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


TINY = dict(z_dim=8, ngf=4, ndf=4)


def dcgan_pair(seed: int = 0, dtype=torch.float32, **kw) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    torch.manual_seed(seed)
    cfg = DCGANConfig(**(TINY | kw))
    return DCGANGenerator(cfg).to(dtype), DCGANDiscriminator(cfg).to(dtype)


def mlp_pair(seed: int = 0, z_dim: int = 3, in_shape=(1, 2, 3)) -> tuple[MLPGenerator, MLPDiscriminator]:
    torch.manual_seed(seed)
    G = MLPGenerator(z_dim, hidden=(6,), out_shape=in_shape).to(F64)
    D = MLPDiscriminator(in_shape, hidden=(7, 4)).to(F64)
    return G, D


def images(n: int = 32, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=gen(seed)) * 2 - 1


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --------------------------------------------------------------------------- losses vs references


def naive_d(r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return -torch.log(torch.sigmoid(r)).mean() - torch.log(1 - torch.sigmoid(f)).mean()


def test_losses_equal_bce_and_the_naive_formulas():
    r, f = 3 * randn(7, seed=1), 3 * randn(7, seed=2)
    d = d_loss_minimax(r, f)
    assert d.dtype == F64 and d.shape == ()
    assert close(d, bce(r, 1.0) + bce(f, 0.0))
    assert close(d, naive_d(r, f))
    assert close(g_loss_nonsaturating(f), bce(f, 1.0))
    assert close(g_loss_nonsaturating(f), -torch.log(torch.sigmoid(f)).mean())
    assert close(g_loss_minimax(f), torch.log(1 - torch.sigmoid(f)).mean())
    assert close(g_loss_minimax(f), -bce(f, 0.0))  # G's minimax loss = minus D's loss on the fakes
    # the two generator losses move the same way in f but saturate differently (see below)
    assert g_loss_minimax(f + 1) < g_loss_minimax(f) and g_loss_nonsaturating(f + 1) < g_loss_nonsaturating(f)


def test_hinge_and_wgan_losses_are_their_formulas():
    r, f = 2 * randn(9, seed=3), 2 * randn(9, seed=4)
    rl, fl = r.tolist(), f.tolist()
    want_hinge = sum(max(0.0, 1 - x) for x in rl) / 9 + sum(max(0.0, 1 + x) for x in fl) / 9
    assert hinge_d_loss(r, f).item() == pytest.approx(want_hinge, abs=1e-12)
    assert hinge_g_loss(f).item() == pytest.approx(-sum(fl) / 9, abs=1e-12)
    assert wgan_d_loss(r, f).item() == pytest.approx(sum(fl) / 9 - sum(rl) / 9, abs=1e-12)
    assert wgan_g_loss(f).item() == pytest.approx(-sum(fl) / 9, abs=1e-12)
    # beyond the margins the hinge loss is exactly zero; at r = f = 0 it is 2
    assert hinge_d_loss(torch.tensor([1.0, 5.0]), torch.tensor([-1.0, -3.0])).item() == 0.0
    assert hinge_d_loss(torch.zeros(3), torch.zeros(3)).item() == 2.0
    assert wgan_d_loss(torch.zeros(2), torch.zeros(2)).item() == 0.0


def test_loss_table():
    assert set(LOSSES) == {"minimax", "non-saturating", "hinge", "wgan-gp"}
    assert LOSSES["minimax"].d is d_loss_minimax and LOSSES["minimax"].g is g_loss_minimax
    assert LOSSES["non-saturating"].d is d_loss_minimax and LOSSES["non-saturating"].g is g_loss_nonsaturating
    assert LOSSES["hinge"].d is hinge_d_loss and LOSSES["hinge"].g is hinge_g_loss
    assert LOSSES["wgan-gp"].d is wgan_d_loss and LOSSES["wgan-gp"].g is wgan_g_loss
    assert [LOSSES[k].gp_weight for k in ("minimax", "non-saturating", "hinge")] == [0.0, 0.0, 0.0]
    assert LOSSES["wgan-gp"].gp_weight == 10.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("big", [100.0, 1000.0])
def test_losses_and_gradients_finite_for_confident_logits(dtype, big):
    if dtype == F64 and big == 100.0:
        big = 800.0  # float64 rounds σ(100) to 1 too, but σ(−100) is not 0 yet: push further for the naive −inf
    r = torch.tensor([-big, big, 0.5], dtype=dtype, requires_grad=True)
    f = torch.tensor([big, -big, -0.5], dtype=dtype, requires_grad=True)
    with torch.no_grad():  # the test case is meaningful: the naive formulas overflow
        assert not torch.isfinite(naive_d(r, f))
        assert not torch.isfinite(torch.log(1 - torch.sigmoid(f)).mean())
        assert not torch.isfinite(-torch.log(torch.sigmoid(f)).mean())
    sp = lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0)  # noqa: E731 — exact softplus
    rl, fl = r.tolist(), f.tolist()
    want = {
        "d": (sum(sp(-x) for x in rl) + sum(sp(x) for x in fl)) / 3,
        "g_min": -sum(sp(x) for x in fl) / 3,
        "g_ns": sum(sp(-x) for x in fl) / 3,
    }
    for name, fn in (
        ("d", lambda: d_loss_minimax(r, f)),
        ("g_min", lambda: g_loss_minimax(f)),
        ("g_ns", lambda: g_loss_nonsaturating(f)),
    ):
        r.grad = f.grad = None
        loss = fn()
        assert torch.isfinite(loss) and loss.item() == pytest.approx(want[name], rel=1e-6)
        loss.backward()
        for t in (r, f):
            assert t.grad is None or torch.isfinite(t.grad).all()
    # analytic gradients: ∂softplus(−r)/∂r = −σ(−r), ∂softplus(f)/∂f = σ(f)
    r.grad = f.grad = None
    d_loss_minimax(r, f).backward()
    assert torch.allclose(r.grad, -torch.sigmoid(-r.detach()) / 3) and torch.allclose(
        f.grad, torch.sigmoid(f.detach()) / 3
    )
    # the teaching point: when D is sure a fake is fake (f = −big) the minimax G loss has no gradient
    # there, the non-saturating one has the full −1/B
    f.grad = None
    g_loss_minimax(f).backward()
    assert abs(f.grad[1].item()) < 1e-30
    f.grad = None
    g_loss_nonsaturating(f).backward()
    assert f.grad[1].item() == pytest.approx(-1 / 3, rel=1e-6)
    for fn in (hinge_d_loss, wgan_d_loss):
        assert torch.isfinite(fn(r, f))


def test_losses_pass_gradcheck():
    r, f = randn(6, seed=5, requires_grad=True), randn(6, seed=6, requires_grad=True)
    assert torch.autograd.gradcheck(d_loss_minimax, (r, f))
    assert torch.autograd.gradcheck(g_loss_nonsaturating, (f,))
    assert torch.autograd.gradcheck(g_loss_minimax, (f,))
    assert torch.autograd.gradcheck(wgan_d_loss, (r, f))
    assert torch.autograd.gradgradcheck(d_loss_minimax, (r, f))


@pytest.mark.parametrize("fn", [d_loss_minimax, hinge_d_loss, wgan_d_loss])
def test_two_argument_losses_reject_non_logits(fn):
    ok = torch.zeros(4)
    with pytest.raises(
        ValueError, match=r"real_logits: expected a 1-D floating-point tensor of logits, shape \(B,\), got \(4, 1\)"
    ):
        fn(torch.zeros(4, 1), ok)
    with pytest.raises(
        ValueError, match=r"fake_logits: expected a 1-D floating-point tensor of logits, shape \(B,\), got \(4, 1\)"
    ):
        fn(ok, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="real_logits"):
        fn(torch.zeros(4, dtype=torch.int64), ok)
    with pytest.raises(ValueError, match="fake_logits: .* got list"):
        fn(ok, [0.0, 1.0])


@pytest.mark.parametrize("fn", [g_loss_minimax, g_loss_nonsaturating, hinge_g_loss, wgan_g_loss])
def test_generator_losses_reject_non_logits(fn):
    with pytest.raises(
        ValueError, match=r"fake_logits: expected a 1-D floating-point tensor of logits, shape \(B,\), got \(3, 1\)"
    ):
        fn(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"fake_logits: .* got \(\)"):
        fn(torch.tensor(0.5))


# --------------------------------------------------------------------------- gradient penalty


class LinearCritic(nn.Module):
    """D(x) = flatten(x)·w + b: its input gradient is w everywhere."""

    def __init__(self, w: torch.Tensor, b: float = 0.3):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x, labels=None):
        return x.flatten(1) @ self.w + self.b


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5])
def test_gradient_penalty_of_a_linear_critic(scale):
    w = randn(16, seed=7)
    w = scale * w / w.norm()  # ‖w‖ = scale
    D = LinearCritic(w)
    real = randn(B, 1, 4, 4, seed=8, requires_grad=True)
    fake = randn(B, 1, 4, 4, seed=9, requires_grad=True)
    gp = gradient_penalty(D, real, fake)
    norm = D.w.detach().norm()
    assert close(gp, (norm - 1) ** 2)
    # differentiable w.r.t. the critic: ∂(‖w‖ − 1)²/∂w = 2(‖w‖ − 1) w/‖w‖; nothing reaches b or the inputs
    gw, gb, gr, gf = torch.autograd.grad(gp, (D.w, D.b, real, fake), allow_unused=True)
    assert close(gw, 2 * (norm - 1) * D.w.detach() / norm)
    assert gb is None or gb.abs().max() == 0
    assert gr is None and gf is None  # real and fake are detached
    if scale == 1.0:
        assert gp.item() == pytest.approx(0.0, abs=1e-24)


class QuadraticCritic(nn.Module):
    """D(x) = ½‖x‖² per sample, so ∇D(x̂) = x̂; records the points it was asked about."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, labels=None):
        self.seen.append(x.detach().clone())
        return 0.5 * (x.flatten(1) ** 2).sum(1) + self.dummy


def test_gradient_penalty_interpolates_per_sample():
    D = QuadraticCritic()
    real, fake = randn(64, 2, 3, seed=10), randn(64, 2, 3, seed=11)
    torch.manual_seed(0)
    gp = gradient_penalty(D, real, fake)
    (x_hat,) = D.seen
    # x̂ = ε x + (1 − ε) G(z) with one ε ∈ [0, 1] per sample (the same for all its elements)
    eps = ((x_hat - fake) / (real - fake)).flatten(1)
    assert close(eps, eps[:, :1].expand_as(eps), 1e-9)
    assert (eps >= 0).all() and (eps <= 1).all() and eps[:, 0].std() > 0.1  # spread over [0, 1], not one value
    assert close(gp, ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean())
    with pytest.raises(
        ValueError, match=r"real, fake: expected tensors of one shape, got \(64, 2, 3\) and \(63, 2, 3\)"
    ):
        gradient_penalty(D, real, fake[1:])
    with pytest.raises(ValueError, match="real, fake: .* got list"):
        gradient_penalty(D, [0.0], fake)


def test_gradient_penalty_of_a_conditional_critic_reaches_its_parameters():
    _, D = dcgan_pair(dtype=F64, n_classes=3, d_norm="none")
    real, fake = images(4).double(), images(4, seed=1).double()
    labels = torch.tensor([0, 2, 1, 2])
    gp = gradient_penalty(D, real, fake, labels)
    assert gp.shape == () and torch.isfinite(gp)
    gp.backward()
    assert D.embed.weight.grad is not None and D.embed.weight.grad.abs().sum() > 0
    assert D.features[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- shapes


def trace(layers: nn.Sequential, x: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    shapes = []
    for layer in layers:
        x = layer(x)
        shapes.append(tuple(x.shape))
    return shapes, x


@pytest.mark.parametrize("n_classes", [0, 10])
def test_dcgan_generator_layer_shapes(n_classes):
    Z, ngf, C, E, b = 7, 3, 2, 5, 3
    cfg = DCGANConfig(z_dim=Z, ngf=ngf, ndf=4, channels=C, n_classes=n_classes, embed_dim=E)
    torch.manual_seed(0)
    G = DCGANGenerator(cfg).to(F64)
    z = randn(b, Z, seed=1)
    labels = torch.tensor([0, 9, 4]) if n_classes else None
    h = torch.cat([z, G.embed(labels)], 1) if n_classes else z
    assert h.shape == (b, Z + (E if n_classes else 0))
    shapes, out = trace(G.net, h[:, :, None, None])
    s7, s14, s28 = (b, 4 * ngf, 7, 7), (b, 2 * ngf, 14, 14), (b, C, 28, 28)
    assert shapes == [s7, s7, s7, s14, s14, s14, s28, s28]
    assert isinstance(G.net[0], nn.ConvTranspose2d) and G.net[0].in_channels == Z + (E if n_classes else 0)
    assert close(out, G(z, labels))  # the forward is exactly this stack
    assert (out.abs() <= 1).all()


@pytest.mark.parametrize(("n_classes", "d_norm"), [(0, "batch"), (0, "none"), (10, "batch"), (10, "spectral")])
def test_dcgan_discriminator_layer_shapes(n_classes, d_norm):
    ndf, C, b = 3, 2, 4
    cfg = DCGANConfig(z_dim=5, ngf=4, ndf=ndf, channels=C, n_classes=n_classes, d_norm=d_norm)
    torch.manual_seed(0)
    D = DCGANDiscriminator(cfg).to(F64)
    if d_norm == "spectral":
        D.eval()  # in training mode every forward runs a power iteration, changing the weights between calls
    x = randn(b, C, 28, 28, seed=1)
    shapes, phi = trace(D.features, x)
    s14, s7 = (b, ndf, 14, 14), (b, 2 * ndf, 7, 7)
    assert shapes == [s14, s14, s7, s7, s7, (b, 2 * ndf * 49)]
    assert isinstance(D.features[3], nn.BatchNorm2d if d_norm == "batch" else nn.Identity)
    assert (D.features[2].bias is None) == (d_norm == "batch")  # BatchNorm's β replaces the conv bias
    assert nn.utils.parametrize.is_parametrized(D.head) == (d_norm == "spectral")
    head = D.head(phi)
    assert head.shape == (b, 1)
    labels = torch.tensor([3, 0, 9, 3]) if n_classes else None
    logits = D(x, labels)
    assert logits.shape == (b,) and logits.dtype == F64
    want = head.squeeze(1) + ((D.embed(labels) * phi).sum(1) if n_classes else 0)  # projection term
    assert close(logits, want)


def test_mlp_gan_sizes_and_shapes():
    torch.manual_seed(0)
    G, D = MLPGenerator(), MLPDiscriminator()
    lin = [(m.in_features, m.out_features) for m in G.net if isinstance(m, nn.Linear)]
    assert lin == [(100, 256), (256, 512), (512, 784)]
    assert [(m.in_features, m.out_features) for m in D.net if isinstance(m, nn.Linear)] == [
        (784, 512),
        (512, 256),
        (256, 1),
    ]
    assert isinstance(G.net[-1], nn.Tanh) and isinstance(G.net[1], nn.LeakyReLU) and G.net[1].negative_slope == 0.2
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())  # D returns logits
    z = torch.randn(6, 100)
    shapes, _ = trace(G.net, z)
    assert shapes == [(6, 256), (6, 256), (6, 512), (6, 512), (6, 784), (6, 784)]
    x = G(z)
    assert x.shape == (6, 1, 28, 28) and (x.abs() <= 1).all()
    shapes, _ = trace(D.net, x.flatten(1))
    assert shapes == [(6, 512), (6, 512), (6, 256), (6, 256), (6, 1)]
    assert D(x).shape == (6,)
    assert MLPGenerator(4, hidden=(), out_shape=(2, 3), tanh=False)(torch.zeros(2, 4)).shape == (2, 2, 3)


@pytest.mark.parametrize("kind", ["mlp", "dcgan"])
def test_generator_output_stays_in_tanh_range_even_when_saturated(kind):
    torch.manual_seed(0)
    G = MLPGenerator(8, hidden=(16,)) if kind == "mlp" else DCGANGenerator(DCGANConfig(**TINY))
    with torch.no_grad():
        for p in G.parameters():
            p.mul_(300)
        out = G(torch.randn(16, 8))
    assert out.shape == (16, 1, 28, 28) and (out.abs() <= 1).all()
    assert out.abs().max() > 0.999  # really saturated, so the bound was tested


# --------------------------------------------------------------------------- the functional generator


def test_dcgan_generator_forward_equals_the_module_in_train_mode():
    G, _ = dcgan_pair(dtype=F64, z_dim=6, ngf=3, channels=2)
    with torch.no_grad():  # non-trivial γ, β, bias so that every parameter matters
        for name, p in G.named_parameters():
            if p.ndim == 1:
                p.copy_(randn(*p.shape, seed=hash(name) % 1000))
    G.train()
    z = randn(4, 6, seed=3)
    params = generator_params(G)
    assert list(params) == list(gan.GENERATOR_KEYS)
    out = dcgan_generator_forward(z, params)
    assert out.shape == (4, 2, 28, 28)
    assert close(out, G(z))
    # eval mode (running statistics) is a different function: the comparison above is not vacuous
    G.eval()
    assert not close(G(z), out, 1e-3)
    # the gradients reach G's own parameters, the same as through the module
    G.train()
    g_fun = torch.autograd.grad(dcgan_generator_forward(z, params).square().sum(), list(params.values()))
    g_mod = torch.autograd.grad(G(z).square().sum(), list(params.values()))
    assert all(close(a, b, 1e-10) for a, b in zip(g_fun, g_mod, strict=True))


def test_dcgan_generator_forward_bad_inputs():
    G, _ = dcgan_pair(z_dim=8)
    params = generator_params(G)
    with pytest.raises(ValueError, match=r"params: expected a dict with keys \['w1', 'gamma1'.*'b3'\], got \['w1'\]"):
        dcgan_generator_forward(torch.zeros(2, 8), {"w1": params["w1"]})
    with pytest.raises(ValueError, match="params: expected a dict .* got list"):
        dcgan_generator_forward(torch.zeros(2, 8), [params["w1"]])
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 8\), got \(2, 7\)"):
        dcgan_generator_forward(torch.zeros(2, 7), params)
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 8\), got \(8,\)"):
        dcgan_generator_forward(torch.zeros(8), params)
    cond, _ = dcgan_pair(n_classes=10)
    with pytest.raises(ValueError, match="G: expected an unconditional DCGANGenerator"):
        generator_params(cond)
    with pytest.raises(ValueError, match="G: expected an unconditional DCGANGenerator"):
        generator_params(MLPGenerator(4, hidden=(3,)))


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("n_classes", [0, 10])
def test_dcgan_init_statistics(n_classes):
    torch.manual_seed(0)
    cfg = DCGANConfig(n_classes=n_classes)  # the real widths: enough weights for the statistics
    checked = 0
    for model in (DCGANGenerator(cfg), DCGANDiscriminator(cfg)):
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
                w, n = m.weight.detach().double(), m.weight.numel()
                assert abs(w.mean().item()) < 5 * 0.02 / math.sqrt(n), m
                assert abs(w.std().item() - 0.02) < 5 * 0.02 / math.sqrt(2 * n), m
                if getattr(m, "bias", None) is not None:
                    assert m.bias.abs().max() == 0, m
                checked += 1
            elif isinstance(m, nn.BatchNorm2d):
                g = m.weight.detach().double()
                assert abs(g.mean().item() - 1) < 5 * 0.02 / math.sqrt(g.numel())
                assert (g - 1).abs().max() < 0.1 and g.std() > 0.005  # N(1, 0.02), not exactly 1
                assert m.bias.abs().max() == 0
                checked += 1
    assert checked == 5 + 4 + (2 if n_classes else 0)  # G: 3 convs, 2 BN (+ embed); D: 2 convs, BN, head (+ embed)
    # dcgan_init_ works on any module and returns it
    lin = nn.Linear(500, 400)
    assert dcgan_init_(lin) is lin and abs(lin.weight.std().item() - 0.02) < 1e-3 and lin.bias.abs().max() == 0


# --------------------------------------------------------------------------- one training step


def test_discriminator_step_detaches_fakes_and_updates_only_d():
    G, D = dcgan_pair(dtype=F64)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    opt_d = torch.optim.SGD(D.parameters(), lr=0.1)
    real, z = images(B).double(), randn(B, 8, seed=1)
    fake = G(z)
    assert fake.requires_grad
    stats = discriminator_step(D, opt_d, real, fake)
    assert params_equal(G, G0) and all(p.grad is None for p in G.parameters())
    assert max_param_diff(D, D0) > 1e-6
    # the diagnostics: D's loss and σ(logits) BEFORE its update, and the gradient norm it applied
    D0.train()
    r0, f0 = D0(real), D0(fake.detach())
    assert set(stats) == {"d_loss", "d_real", "d_fake", "d_grad_norm"}
    assert all(not v.requires_grad and v.shape == () for v in stats.values())
    assert close(stats["d_loss"], d_loss_minimax(r0, f0), 1e-10)
    assert close(stats["d_real"], torch.sigmoid(r0).mean(), 1e-10)
    assert close(stats["d_fake"], torch.sigmoid(f0).mean(), 1e-10)
    grads = torch.autograd.grad(d_loss_minimax(r0, f0), list(D0.parameters()))
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    assert stats["d_grad_norm"].item() == pytest.approx(norm.item(), rel=1e-5)
    # SGD: D's new parameters are the manual update
    for p, p0, g in zip(D.parameters(), D0.parameters(), grads, strict=True):
        assert close(p, p0 - 0.1 * g, 1e-10)


@pytest.mark.parametrize("loss", ["minimax", "non-saturating", "hinge", "wgan-gp"])
def test_gan_step_equals_a_manual_reference(loss):
    G, D = mlp_pair()
    Gr, Dr = copy.deepcopy(G), copy.deepcopy(D)
    lr_g, lr_d = 0.05, 0.2
    opt_g, opt_d = torch.optim.SGD(G.parameters(), lr=lr_g), torch.optim.SGD(D.parameters(), lr=lr_d)
    real, z = randn(B, 1, 2, 3, seed=1), randn(B, 3, seed=2)
    spec = LOSSES[loss]

    torch.manual_seed(5)  # the gradient penalty draws its ε from torch's RNG
    out = gan_step(G, D, opt_g, opt_d, real, z, loss=loss)

    torch.manual_seed(5)
    fake = Gr(z)
    d_loss = spec.d(Dr(real), Dr(fake.detach()))
    if spec.gp_weight:
        d_loss = d_loss + spec.gp_weight * gradient_penalty(Dr, real, fake)
    gd = torch.autograd.grad(d_loss, list(Dr.parameters()))
    with torch.no_grad():
        for p, g in zip(Dr.parameters(), gd, strict=True):
            p -= lr_d * g
    g_loss = spec.g(Dr(fake))  # D after its update
    gg = torch.autograd.grad(g_loss, list(Gr.parameters()))
    with torch.no_grad():
        for p, g in zip(Gr.parameters(), gg, strict=True):
            p -= lr_g * g

    assert set(out) == {"g_loss", "d_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"}
    assert close(out["g_loss"], g_loss) and close(out["d_loss"], d_loss)
    assert out["g_grad_norm"].item() == pytest.approx(torch.sqrt(sum(g.square().sum() for g in gg)).item(), rel=1e-5)
    assert max_param_diff(G, Gr) < 1e-12 and max_param_diff(D, Dr) < 1e-12
    assert max_param_diff(G, mlp_pair()[0]) > 1e-6  # G really moved


def test_gan_step_g_loss_uses_d_after_its_update():
    G, D = mlp_pair(seed=1)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    opt_g, opt_d = torch.optim.SGD(G.parameters(), lr=0.1), torch.optim.SGD(D.parameters(), lr=0.5)
    real, z = randn(B, 1, 2, 3, seed=3), randn(B, 3, seed=4)
    out = gan_step(G, D, opt_g, opt_d, real, z)
    fake = G0(z)  # the fakes of this step (G before its update)
    with torch.no_grad():
        fresh = g_loss_nonsaturating(D(fake))  # D after the step (the G step did not touch D)
        stale = g_loss_nonsaturating(D0(fake))  # D before the step: the source articles' bug
    assert close(out["g_loss"], fresh)
    assert abs(out["g_loss"].item() - stale.item()) > 1e-3


def test_g_step_never_applies_gradients_to_d():
    G1, D1 = dcgan_pair(dtype=F64, seed=2)
    G2, D2 = copy.deepcopy(G1), copy.deepcopy(D1)
    real, z = images(B, seed=3).double(), randn(B, 8, seed=4)
    opt_g1 = torch.optim.Adam(G1.parameters(), lr=1e-2)
    opt_d1, opt_d2 = torch.optim.Adam(D1.parameters(), lr=1e-2), torch.optim.Adam(D2.parameters(), lr=1e-2)
    gan_step(G1, D1, opt_g1, opt_d1, real, z)
    discriminator_step(D2, opt_d2, real, G2(z))
    assert params_equal(D1, D2)
    # G's loss did leave gradients on D (so the check above is meaningful) ...
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D1.parameters())
    # ... but the next D step starts from zero: stale garbage in .grad changes nothing
    for p in D1.parameters():
        p.grad = torch.full_like(p, 1e6)
    fake1, fake2 = G1(z), copy.deepcopy(G1)(z)
    D3 = copy.deepcopy(D1)
    opt_d3 = torch.optim.Adam(D3.parameters(), lr=1e-2)
    opt_d3.load_state_dict(copy.deepcopy(opt_d1.state_dict()))  # Adam's moments, not shared
    for p in D3.parameters():
        p.grad = None
    discriminator_step(D1, opt_d1, real, fake1)
    discriminator_step(D3, opt_d3, real, fake2)
    assert params_equal(D1, D3)


SHAPES = [(4, 2, 3), (7, 5, 2), (1, 3, 1), (16, 1, 4)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("b", "z_dim", "dim"), SHAPES)
def test_toy_gan_sgd_step_equals_gan_step_with_modules(seed, b, z_dim, dim):
    g = gen(seed)
    gw, gb = torch.randn(dim, z_dim, generator=g, dtype=F64), torch.randn(dim, generator=g, dtype=F64)
    dw, db = torch.randn(1, dim, generator=g, dtype=F64), torch.randn(1, generator=g, dtype=F64)
    real, z = 2 * torch.randn(b, dim, generator=g, dtype=F64) + 1, torch.randn(b, z_dim, generator=g, dtype=F64)
    lr = 0.3
    inputs = [t.clone() for t in (gw, gb, dw, db, real, z)]
    got = toy_gan_sgd_step(gw, gb, dw, db, real, z, lr)
    assert all(torch.equal(a, b_) for a, b_ in zip(inputs, (gw, gb, dw, db, real, z), strict=True))  # inputs untouched

    G = nn.Linear(z_dim, dim).to(F64)
    lin = nn.Linear(dim, 1).to(F64)
    with torch.no_grad():
        G.weight.copy_(gw), G.bias.copy_(gb), lin.weight.copy_(dw), lin.bias.copy_(db)

    class LinearD(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x).squeeze(1)  # (B,) logits

    D = LinearD()
    out = gan_step(G, D, torch.optim.SGD(G.parameters(), lr=lr), torch.optim.SGD(D.parameters(), lr=lr), real, z)
    want = (G.weight, G.bias, lin.weight, lin.bias, out["d_loss"], out["g_loss"])
    assert len(got) == 6
    for a, w in zip(got, want, strict=True):
        assert not a.requires_grad and close(a, w.detach())
    assert not close(got[0], gw, 1e-6) and not close(got[2], dw, 1e-6)  # both players moved


def test_toy_gan_sgd_step_bad_inputs():
    gw, gb, dw, db = torch.zeros(2, 3), torch.zeros(2), torch.zeros(1, 2), torch.zeros(1)
    real, z = torch.zeros(4, 2), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="lr: expected a positive finite number, got 0"):
        toy_gan_sgd_step(gw, gb, dw, db, real, z, 0)
    with pytest.raises(ValueError, match="lr: expected a positive finite number, got inf"):
        toy_gan_sgd_step(gw, gb, dw, db, real, z, math.inf)
    with pytest.raises(ValueError, match=r"d_bias: expected a floating-point tensor, got \(1,\)"):
        toy_gan_sgd_step(gw, gb, dw, torch.zeros(1, dtype=torch.int64), real, z, 0.1)
    with pytest.raises(ValueError, match="z: expected a floating-point tensor, got list"):
        toy_gan_sgd_step(gw, gb, dw, db, real, [[0.0] * 3], 0.1)


def test_step_functions_reject_unknown_losses():
    G, D = mlp_pair()
    opt = torch.optim.SGD(D.parameters(), lr=0.1)
    real, z = randn(B, 1, 2, 3), randn(B, 3)
    msg = r"loss: expected one of \['hinge', 'minimax', 'non-saturating', 'wgan-gp'\], got 'lsgan'"
    with pytest.raises(ValueError, match=msg):
        discriminator_step(D, opt, real, G(z), loss="lsgan")
    with pytest.raises(ValueError, match=msg):
        gan_step(G, D, torch.optim.SGD(G.parameters(), lr=0.1), opt, real, z, loss="lsgan")
    with pytest.raises(ValueError, match="loss: expected one of .* got None"):
        discriminator_step(D, opt, real, G(z), loss=None)


def test_wgan_gp_step_adds_ten_times_the_penalty():
    w = randn(6, seed=12)
    w = 2.0 * w / w.norm()
    D = LinearCritic(w)
    real, fake = randn(B, 1, 2, 3, seed=13), randn(B, 1, 2, 3, seed=14)
    stats = discriminator_step(D, torch.optim.SGD(D.parameters(), lr=1.0), real, fake, loss="wgan-gp")
    wgan = (fake.flatten(1) @ w).mean() - (real.flatten(1) @ w).mean()
    assert close(stats["d_loss"], wgan + 10 * (w.norm() - 1) ** 2)
    grad_w = fake.flatten(1).mean(0) - real.flatten(1).mean(0) + 10 * 2 * (w.norm() - 1) * w / w.norm()
    assert close(D.w.detach(), w - grad_w)


# --------------------------------------------------------------------------- conditional models


def test_labels_condition_the_generator_and_the_discriminator():
    G, D = dcgan_pair(n_classes=10)
    G.eval(), D.eval()
    with torch.no_grad():  # N(0, 0.02) embeddings barely move an untrained G: make them matter
        G.embed.weight.normal_(), D.embed.weight.normal_()
    z = torch.randn(4, 8).repeat(2, 1)
    a, b = torch.tensor([3, 3, 3, 3, 7, 7, 7, 7]), torch.tensor([1, 2, 3, 4, 1, 2, 3, 4])
    with torch.no_grad():
        x_a, x_b = G(z, a), G(z, b)
        assert (x_a[:4] - x_a[4:]).abs().max() > 1e-4  # same z, labels 3 vs 7: different images
        assert torch.allclose(x_a[2], x_b[2])  # same z, same label (3): the same image
        assert D(x_a, a).shape == (8,)
        assert (D(x_a, a) - D(x_a, b)).abs()[torch.arange(8) != 2].min() > 0  # the label moves D's logit


BAD_LABELS = [
    (
        torch.tensor([1.0, 2.0, 3.0]),
        r"labels: expected an int64 tensor of shape \(3,\) for a conditional model, got torch.float32 \(3,\)",
    ),
    (torch.tensor([1, 2, 3], dtype=torch.int32), r"got torch.int32 \(3,\)"),
    (torch.tensor([[1], [2], [3]]), r"labels: expected an int64 tensor of shape \(3,\) .* got torch.int64 \(3, 1\)"),
    (torch.tensor([1, 2]), r"labels: expected an int64 tensor of shape \(3,\) .* got torch.int64 \(2,\)"),
    (torch.tensor([0, 10, 2]), r"labels: expected classes in \[0, 10\), got values in \[0, 10\]"),
    (torch.tensor([-1, 3, 2]), r"labels: expected classes in \[0, 10\), got values in \[-1, 3\]"),
    (None, r"labels: expected an int64 tensor of shape \(3,\) for a conditional model, got NoneType"),
    ([1, 2, 3], "labels: expected an int64 tensor .* got list"),
]


@pytest.mark.parametrize(("labels", "message"), BAD_LABELS)
def test_conditional_models_reject_bad_labels(labels, message):
    G, D = dcgan_pair(n_classes=10)
    with pytest.raises(ValueError, match=message):
        G(torch.zeros(3, 8), labels)
    with pytest.raises(ValueError, match=message):
        D(torch.zeros(3, 1, 28, 28), labels)


@pytest.mark.parametrize("kind", ["dcgan", "mlp"])
def test_unconditional_models_reject_labels(kind):
    if kind == "dcgan":
        G, D = dcgan_pair()
    else:
        G, D = MLPGenerator(8, hidden=(4,)), MLPDiscriminator(hidden=(4,))
    msg = r"labels: this model is unconditional \(n_classes=0\); pass labels=None"
    with pytest.raises(ValueError, match=msg):
        G(torch.zeros(3, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=msg):
        D(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1, 2]))


def test_conditional_gan_step():
    G, D = dcgan_pair(n_classes=10, dtype=F64)
    G0 = copy.deepcopy(G)
    labels = torch.tensor([0, 9, 5, 5, 1])
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    out = gan_step(G, D, opt_g, opt_d, images(B).double(), randn(B, 8), labels)
    assert all(torch.isfinite(v) for v in out.values())
    assert G.embed.weight.grad is not None and D.embed.weight.grad is not None
    assert max_param_diff(G, G0) > 0
    with pytest.raises(ValueError, match="labels"):
        gan_step(G, D, opt_g, opt_d, images(B).double(), randn(B, 8), None)


# --------------------------------------------------------------------------- train_gan


KEYS = {"loss", "d_loss", "d_real", "d_fake", "d_grad_norm"}
DATA = images(32)
RUN = dict(batch_size=8, progress=False)


def default_snapshot_z(seed: int = 0, z_dim: int = 8) -> torch.Tensor:
    return torch.randn(64, z_dim, generator=gen(seed + 1))


@pytest.mark.parametrize(("every", "want"), [(2, [0, 2, 4, 6]), (4, [0, 4, 6]), (3, [0, 3, 6]), (10, [0, 6])])
def test_train_gan_history_and_snapshots(every, want):
    G, D = dcgan_pair()
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    run = train_gan(G, D, DATA, 6, snapshot_every=every, **RUN)
    h = run.history
    assert KEYS <= set(h.metrics) and h.steps == list(range(6))
    assert all(len(h[k]) == 6 and all(math.isfinite(x) for x in h[k]) for k in KEYS)
    assert all(0 < x < 1 for x in h["d_real"] + h["d_fake"])
    assert list(run.snapshots) == want
    for s in run.snapshots.values():
        assert s.shape == (64, 1, 28, 28) and s.device.type == "cpu" and s.dtype == torch.float32
        assert (s.abs() <= 1).all()
    zs = default_snapshot_z()
    assert torch.equal(run.snapshots[0], sample(G0, z=zs))  # step 0: before any update
    assert torch.equal(run.snapshots[6], sample(G, z=zs))  # the end: the trained G
    assert not torch.equal(run.snapshots[0], run.snapshots[6])
    assert max_param_diff(G, G0) > 0 and max_param_diff(D, D0) > 0
    assert G.training and D.training


def test_train_gan_history_has_g_grad_norm():
    G, D = dcgan_pair()
    h = train_gan(G, D, DATA, 2, **RUN).history
    assert "g_grad_norm" in h.metrics and len(h["g_grad_norm"]) == 2
    assert "grad_norm" not in h.metrics
    assert all(0 < v < float("inf") for v in h["g_grad_norm"])


def test_train_gan_rejects_wgan_gp_with_a_batchnorm_critic():
    G, D = dcgan_pair()
    with pytest.raises(ValueError, match="needs a critic without BatchNorm"):
        train_gan(G, D, DATA, 1, loss="wgan-gp", **RUN)


def test_sample_rejects_labels_for_an_unconditional_model_and_mismatched_n():
    G, _ = dcgan_pair()
    with pytest.raises(ValueError, match="labels: this model is unconditional"):
        sample(G, 3, labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="z: expected a tensor of 2 codes"):
        sample(G, 2, z=torch.randn(3, G.z_dim))


def test_mlp_shapes_must_be_ints():
    with pytest.raises(ValueError, match="out_shape: expected an int >= 1, got 2.7"):
        MLPGenerator(out_shape=(1, 2.7))


def test_snapshot_k_shows_g_after_k_steps():
    G, D = dcgan_pair()
    run = train_gan(G, D, DATA, 6, snapshot_every=4, **RUN)
    G4, D4 = dcgan_pair()
    hist4 = train_gan(G4, D4, DATA, 4, **RUN).history
    assert torch.equal(run.snapshots[4], sample(G4, z=default_snapshot_z()))
    assert hist4["loss"] == run.history["loss"][:4]  # the same first four steps (z and batches replay)
    # another seed: other batches, another run
    G5, D5 = dcgan_pair()
    assert train_gan(G5, D5, DATA, 4, seed=1, **RUN).history["d_loss"] != hist4["d_loss"]


def test_train_gan_resumes_exactly_from_a_checkpoint(tmp_path):
    kw = dict(snapshot_every=2, **RUN)
    G, D = dcgan_pair()
    straight = train_gan(G, D, DATA, 6, **kw)

    path = tmp_path / "c.pt"
    G1, D1 = dcgan_pair()
    first = train_gan(G1, D1, DATA, 3, checkpoint=path, **kw)
    assert path.exists() and list(first.snapshots) == [0, 2, 3]
    torch.manual_seed(1234)  # whatever the RNG is now, the checkpoint restores it
    G2, D2 = dcgan_pair()
    resumed = train_gan(G2, D2, DATA, 6, checkpoint=path, **kw)
    assert max_param_diff(G2, G1) > 0  # it continued from step 3, not stopped there
    for a, b in ((G, G2), (D, D2)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name  # parameters and BatchNorm buffers
    assert list(resumed.snapshots) == list(straight.snapshots) == [0, 2, 4, 6]
    for s in straight.snapshots:
        assert torch.equal(resumed.snapshots[s], straight.snapshots[s]), s
    assert resumed.history.steps == straight.history.steps
    for k in KEYS:
        assert resumed.history[k] == straight.history[k], k
    # the finished run just loads
    G3, D3 = dcgan_pair()
    again = train_gan(G3, D3, DATA, 6, checkpoint=path, **kw)
    assert params_equal(G3, G) and again.history["loss"] == straight.history["loss"]
    assert all(torch.equal(again.snapshots[s], straight.snapshots[s]) for s in straight.snapshots)


def test_train_gan_conditional():
    G, D = dcgan_pair(n_classes=10)
    G0 = copy.deepcopy(G)
    labels = torch.randint(10, (32,), generator=gen(1))
    run = train_gan(G, D, DATA, 4, labels=labels, snapshot_every=2, **RUN)
    assert list(run.snapshots) == [0, 2, 4] and len(run.history) == 4
    # default snapshot labels: 0, 1, ..., 9, 0, 1, ... for the 64 fixed codes
    assert torch.equal(run.snapshots[0], sample(G0, z=default_snapshot_z(), labels=torch.arange(64) % 10))
    with pytest.raises(ValueError, match=r"labels: expected an int64 tensor of shape \(32,\)"):
        train_gan(G, D, DATA, 2, **RUN)
    with pytest.raises(ValueError, match=r"labels: expected classes in \[0, 10\)"):
        train_gan(G, D, DATA, 2, labels=labels + 1, **RUN)
    Gu, Du = dcgan_pair()
    with pytest.raises(ValueError, match="labels: G is unconditional; pass labels=None"):
        train_gan(Gu, Du, DATA, 2, labels=labels, **RUN)


class RecordingD(MLPDiscriminator):
    def __init__(self):
        super().__init__(hidden=(4,))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, labels=None):
        self.inputs.append(x.detach().clone())
        return super().forward(x, labels)


def real_batches(seed: int, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    G, D = MLPGenerator(8, hidden=(4,)), RecordingD()
    train_gan(G, D, DATA, steps, seed=seed, **RUN)
    n = len(D.inputs) // steps
    assert n == 3  # per step: D(real), D(fake) in D's step, D(fake) for G's loss
    return [D.inputs[n * s] for s in range(steps)]


def test_train_gan_draws_fresh_reproducible_batches():
    batches = real_batches(seed=0)
    flat = DATA.flatten(1)
    for real in batches:
        assert real.shape == (8, 1, 28, 28)
        assert (real.flatten(1)[:, None] == flat[None]).all(-1).any(1).all()  # rows of the data
    assert all(not torch.equal(batches[0], b) for b in batches[1:])  # a new batch every step
    assert all(torch.equal(a, b) for a, b in zip(batches, real_batches(seed=0), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(batches, real_batches(seed=7), strict=True))


def test_train_gan_d_steps(tmp_path):
    torch.manual_seed(0)
    G, D = MLPGenerator(8, hidden=(4,)), RecordingD()
    path = tmp_path / "d.pt"
    run = train_gan(G, D, DATA, 3, d_steps=2, checkpoint=path, **RUN)
    assert len(run.history) == 3 and KEYS <= set(run.history.metrics)
    assert len(D.inputs) == 3 * (2 * 2 + 1)  # per G step: two D steps (real, fake) and G's D(fake)
    reals = [D.inputs[5 * s + 2 * k] for s in range(3) for k in range(2)]
    assert all(r.shape == (8, 1, 28, 28) for r in reals)
    assert all(not torch.equal(a, b) for i, a in enumerate(reals) for b in reals[i + 1 :])  # fresh reals each D step
    fakes = [D.inputs[5 * s + 2 * k + 1] for s in range(3) for k in range(2)]
    assert not torch.equal(fakes[0], fakes[1])  # and fresh fakes
    state = torch.load(path, weights_only=True)
    assert state["extra"]["opt_d"]["state"][0]["step"].item() == 6  # D: d_steps updates per G update
    assert state["optimizer"]["state"][0]["step"].item() == 3
    # resuming with d_steps is exact too
    G1, D1 = dcgan_pair()
    straight = train_gan(G1, D1, DATA, 4, d_steps=2, **RUN)
    G2, D2 = dcgan_pair()
    train_gan(G2, D2, DATA, 2, d_steps=2, checkpoint=tmp_path / "e.pt", **RUN)
    G3, D3 = dcgan_pair()
    resumed = train_gan(G3, D3, DATA, 4, d_steps=2, checkpoint=tmp_path / "e.pt", **RUN)
    assert params_equal(G1, G3) and params_equal(D1, D3) and resumed.history["loss"] == straight.history["loss"]
    with pytest.raises(ValueError, match="d_steps: expected an int >= 1, got 0"):
        train_gan(G, D, DATA, 2, d_steps=0, **RUN)


def test_packed_discriminator():
    torch.manual_seed(0)
    inner = MLPDiscriminator((3 * 2,), hidden=(5,)).to(F64)
    D = PackedDiscriminator(inner, 3)
    x = randn(6, 2, seed=1)
    logits = D(x)
    assert logits.shape == (2,)
    assert close(
        logits, inner(torch.cat([x[:3].flatten(), x[3:].flatten()]).view(2, 6))
    )  # packs of consecutive samples
    with pytest.raises(
        ValueError, match=r"x: expected a batch \(B, \.\.\.\) with B a multiple of pack=3, got \(5, 2\)"
    ):
        D(x[:5])
    with pytest.raises(ValueError, match="labels: this model is unconditional"):
        D(x, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(ValueError, match="pack: expected an int >= 1, got 0"):
        PackedDiscriminator(inner, 0)
    # it trains like any D (B = 8 is a multiple of the pack)
    G = MLPGenerator(2, hidden=(8,), out_shape=(2,), tanh=False)
    Dp = PackedDiscriminator(MLPDiscriminator((4,), hidden=(8,)), 2)
    run = train_gan(G, Dp, ring_of_gaussians(64, generator=gen(0)), 2, lr_g=1e-3, lr_d=1e-3, **RUN)
    assert len(run.history) == 2 and all(math.isfinite(x) for x in run.history["d_loss"])


@pytest.mark.parametrize("loss", ["minimax", "hinge", "wgan-gp"])
def test_train_gan_other_losses(loss):
    G, D = dcgan_pair(d_norm="batch" if loss != "wgan-gp" else "none")
    h = train_gan(G, D, DATA, 2, loss=loss, **RUN).history
    assert KEYS <= set(h.metrics) and all(math.isfinite(x) for k in KEYS for x in h[k])


def test_train_gan_with_mlp_models_on_ring_data():
    torch.manual_seed(0)
    G, D = MLPGenerator(2, hidden=(16,), out_shape=(2,), tanh=False), MLPDiscriminator((2,), hidden=(16,))
    data = ring_of_gaussians(256, generator=gen(0))
    run = train_gan(G, D, data, 3, lr_g=1e-3, lr_d=1e-3, snapshot_every=2, **RUN)
    assert len(run.history) == 3 and run.snapshots[3].shape == (64, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss="lsgan"), r"loss: expected one of \['hinge', 'minimax', 'non-saturating', 'wgan-gp'\], got 'lsgan'"),
        (dict(steps=0), "steps: expected an int >= 1, got 0"),
        (dict(steps=2.0), "steps: expected an int >= 1, got 2.0"),
        (dict(batch_size=0), "batch_size: expected an int >= 1, got 0"),
        (dict(lr_g=0.0), "lr_g: expected a positive finite number, got 0.0"),
        (dict(lr_d=-1e-3), "lr_d: expected a positive finite number"),
        (dict(snapshot_every=0), "snapshot_every: expected an int >= 1, got 0"),
        (dict(data=DATA.long()), r"data: expected a floating-point tensor \(N, \.\.\.\), got \(32, 1, 28, 28\)"),
        (dict(data=torch.zeros(32)), r"data: expected a floating-point tensor \(N, \.\.\.\), got \(32,\)"),
        (dict(G="G"), "G, D: expected nn.Modules, got str and DCGANDiscriminator"),
    ],
)
def test_train_gan_bad_arguments(kwargs, message):
    G, D = dcgan_pair()
    args = dict(G=G, D=D, data=DATA, steps=2) | RUN | kwargs
    with pytest.raises(ValueError, match=message):
        train_gan(args.pop("G"), args.pop("D"), args.pop("data"), args.pop("steps"), **args)


# --------------------------------------------------------------------------- sampling


class Recording(DCGANGenerator):
    def __init__(self, config):
        super().__init__(config)
        self.modes, self.labels = [], []

    def forward(self, z, labels=None):
        self.modes.append(self.training)
        self.labels.append(labels)
        return super().forward(z, labels)


@pytest.mark.parametrize("start_training", [True, False])
def test_sample_uses_eval_mode_and_restores_the_mode(start_training):
    torch.manual_seed(0)
    G = Recording(DCGANConfig(**TINY))
    with torch.no_grad():  # running statistics far from the batch's: eval and train modes differ a lot
        G.net[1].running_mean.fill_(3.0)
    G.train(start_training)
    z = torch.randn(6, 8)
    out = sample(G, z=z)
    assert G.modes == [False] and G.training == start_training
    assert G.net[1].training == start_training  # submodules restored too
    assert out.shape == (6, 1, 28, 28) and out.dtype == torch.float32 and not out.requires_grad
    G.eval()
    with torch.no_grad():
        assert torch.equal(out, G(z))
        G.train()
        assert not torch.allclose(out, G(z), atol=1e-3)  # train mode would give other images


def test_sample_restores_the_mode_on_error_and_checks_n():
    G, _ = dcgan_pair(n_classes=10)
    G.train()
    with pytest.raises(ValueError, match="labels"):
        sample(G, 3, labels=torch.tensor([0.0, 1.0, 2.0]))
    assert G.training
    with pytest.raises(ValueError, match="n: expected an int >= 1, got None"):
        sample(G)
    with pytest.raises(ValueError, match="n: expected an int >= 1, got 0"):
        sample(G, 0)


def test_sample_seed_reproducibility():
    G, _ = dcgan_pair()
    a, b, c = sample(G, 5, seed=3), sample(G, 5, seed=3), sample(G, 5, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.equal(a, sample(G, z=torch.randn(5, 8, generator=gen(3))))
    torch.manual_seed(9)  # without a seed: torch's global RNG
    d = sample(G, 5)
    torch.manual_seed(9)
    assert torch.equal(d, sample(G, 5))


def test_sample_conditional_default_labels_cycle():
    torch.manual_seed(0)
    G = Recording(DCGANConfig(n_classes=10, **TINY))
    out = sample(G, 23, seed=0)
    assert out.shape == (23, 1, 28, 28)
    assert G.labels[-1].tolist() == [*range(10), *range(10), 0, 1, 2]
    mine = torch.tensor([7] * 23)
    sample(G, 23, seed=0, labels=mine)
    assert torch.equal(G.labels[-1], mine)


def test_to_unit():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.0, 0.5])
    assert torch.equal(to_unit(x), torch.tensor([0.0, 0.5, 1.0, 0.0, 1.0, 0.75]))


# --------------------------------------------------------------------------- the ring toy


@pytest.mark.parametrize(("modes", "radius"), [(8, 2.0), (5, 3.0), (1, 1.5)])
def test_ring_modes(modes, radius):
    m = ring_modes(modes, radius).double()
    assert m.shape == (modes, 2)
    assert torch.allclose(m.norm(dim=1), torch.full((modes,), radius, dtype=F64), atol=1e-6)
    assert torch.allclose(m[0], torch.tensor([radius, 0.0], dtype=F64), atol=1e-6)
    angles = torch.atan2(m[:, 1], m[:, 0]) % (2 * math.pi)
    steps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    assert torch.allclose(steps, torch.full((modes,), 2 * math.pi / modes, dtype=F64), atol=1e-6)
    if modes > 1:
        assert m.sum(0).abs().max() < 1e-5  # evenly spaced: the centre of mass is the origin


def test_ring_of_gaussians_statistics():
    n, std = 40_000, 0.05
    x = ring_of_gaussians(n, std=std, generator=gen(0))
    assert x.shape == (n, 2) and x.dtype == torch.float32
    dist, which = torch.cdist(x.double(), ring_modes().double()).min(dim=1)
    # the distance to the own centre is Rayleigh(std): mean std·√(π/2), and 1 − e^{−9/2} within 3 std
    assert dist.mean().item() == pytest.approx(std * math.sqrt(math.pi / 2), rel=0.02)
    assert (dist <= 3 * std).double().mean().item() == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    freq = torch.bincount(which, minlength=8).double() / n
    assert (freq - 1 / 8).abs().max() < 0.01  # modes chosen uniformly
    assert torch.equal(x, ring_of_gaussians(n, std=std, generator=gen(0)))
    assert not torch.equal(x, ring_of_gaussians(n, std=std, generator=gen(1)))
    wide = ring_of_gaussians(1000, modes=3, radius=5.0, std=0.1, generator=gen(2))
    assert (wide.norm(dim=1) - 5).abs().max() < 1.0


def test_ring_quality_perfect_collapsed_and_off_ring():
    good = ring_quality(ring_of_gaussians(8000, generator=gen(3)))
    assert good.modes_covered == 8
    assert good.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.006)  # ≈ 0.989
    assert len(good.shares) == 8 and all(abs(s - good.high_quality / 8) < 0.015 for s in good.shares)
    assert sum(good.shares) == pytest.approx(good.high_quality, abs=1e-6)

    collapsed = ring_quality(ring_modes()[3].repeat(500, 1))
    assert collapsed.modes_covered == 1 and collapsed.high_quality == 1.0
    assert collapsed.shares == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]

    origin = ring_quality(torch.zeros(100, 2))
    assert origin.modes_covered == 0 and origin.high_quality == 0.0 and sum(origin.shares) == 0

    # a mode needs at least min_share of all samples: 1 % of them at mode 5 is not coverage
    m = ring_modes()
    mixed = torch.cat([m[0].repeat(99, 1), m[5].repeat(1, 1)])
    q = ring_quality(mixed)
    assert q.modes_covered == 1 and q.high_quality == 1.0 and q.shares[5] == pytest.approx(0.01)
    assert ring_quality(mixed, min_share=0.005).modes_covered == 2
    exactly = torch.cat([m[0].repeat(98, 1), m[5].repeat(2, 1)])  # mode 5 holds exactly min_share = 2 %
    assert ring_quality(exactly, min_share=0.02).modes_covered == 2  # "at least"
    # just outside 3 std of a centre is not high quality
    assert ring_quality(m[:1] + torch.tensor([[3.01 * 0.05, 0.0]])).high_quality == 0.0
    assert ring_quality(m[:1] + torch.tensor([[2.99 * 0.05, 0.0]])).high_quality == 1.0


@pytest.mark.parametrize(
    "samples", [torch.zeros(10, 3), torch.zeros(10), torch.zeros(0, 2), torch.zeros(2, 2, 2), [[0.0, 0.0]]]
)
def test_ring_quality_bad_shapes(samples):
    with pytest.raises(ValueError, match=r"samples: expected a non-empty tensor of shape \(N, 2\)"):
        ring_quality(samples)


def test_ring_bad_arguments():
    with pytest.raises(ValueError, match="modes: expected an int >= 1, got 0"):
        ring_modes(0)
    with pytest.raises(ValueError, match="n: expected an int >= 1, got 0"):
        ring_of_gaussians(0)
    with pytest.raises(ValueError, match="std: expected a positive finite number, got 0"):
        ring_of_gaussians(10, std=0)
    with pytest.raises(ValueError, match="radius: expected a positive finite number, got -1.0"):
        ring_of_gaussians(10, radius=-1.0)


# --------------------------------------------------------------------------- bad inputs of the models


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ngf=0), "ngf: expected an int >= 1, got 0"),
        (dict(ndf=2.0), "ndf: expected an int >= 1, got 2.0"),
        (dict(z_dim=True), "z_dim: expected an int >= 1, got True"),
        (dict(channels=-3), "channels: expected an int >= 1, got -3"),
        (dict(embed_dim=0), "embed_dim: expected an int >= 1, got 0"),
        (dict(n_classes=-1), "n_classes: expected an int >= 0, got -1"),
    ],
)
def test_dcgan_config_bad_ints(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DCGANConfig(**kwargs)


def test_models_bad_inputs():
    G, D = dcgan_pair()
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 8\), got \(3, 7\)"):
        G(torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 8\), got \(3, 8, 1, 1\)"):
        G(torch.zeros(3, 8, 1, 1))
    with pytest.raises(ValueError, match=r"x: expected images of shape \(B, 1, 28, 28\), got \(3, 1, 32, 32\)"):
        D(torch.zeros(3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"x: expected images of shape \(B, 1, 28, 28\), got \(1, 28, 28\)"):
        D(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="config: expected a DCGANConfig, got dict"):
        DCGANGenerator(dict(z_dim=8))
    with pytest.raises(ValueError, match="config: expected a DCGANConfig, got NoneType"):
        DCGANDiscriminator(None)
    mg, md = MLPGenerator(4, hidden=(3,)), MLPDiscriminator(hidden=(3,))
    with pytest.raises(ValueError, match=r"z: expected a tensor of shape \(B, 4\), got \(2, 5\)"):
        mg(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"x: expected a tensor of shape \(B, 1, 28, 28\), got \(2, 784\)"):
        md(torch.zeros(2, 784))
    with pytest.raises(ValueError, match="z_dim: expected an int >= 1, got 0"):
        MLPGenerator(0)
    with pytest.raises(ValueError, match="hidden: expected an int >= 1, got 0"):
        MLPDiscriminator(hidden=(8, 0))
    with pytest.raises(ValueError, match="out_shape: expected an int >= 1, got 0"):
        MLPGenerator(4, out_shape=(1, 0))


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_gan_on_cuda():
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg = DCGANConfig(n_classes=10, **TINY)
    G, D = DCGANGenerator(cfg).to(device), DCGANDiscriminator(cfg).to(device)
    G0 = copy.deepcopy(G)
    labels = torch.randint(10, (32,), generator=gen(1))
    run = train_gan(G, D, DATA, 3, labels=labels, snapshot_every=2, **RUN)  # data and labels on the CPU
    assert len(run.history) == 3 and all(math.isfinite(x) for k in KEYS for x in run.history[k])
    assert list(run.snapshots) == [0, 2, 3] and all(s.device.type == "cpu" for s in run.snapshots.values())
    assert all(p.device.type == "cuda" for p in G.parameters()) and max_param_diff(G, G0) > 0
    out = sample(G, 12, seed=0)  # bf16 autocast inside, float32 out
    assert out.device.type == "cuda" and out.dtype == torch.float32 and (out.abs() <= 1).all()
    # one explicit step on the GPU
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    y = labels[:8].to(device)
    stats = gan_step(G, D, opt_g, opt_d, DATA[:8].to(device), torch.randn(8, 8, device=device), y)
    assert all(v.device.type == "cuda" and torch.isfinite(v) for v in stats.values())


def test_spectral_norm_discriminator_weights_have_unit_spectral_norm():
    torch.manual_seed(0)
    D = DCGANDiscriminator(DCGANConfig(ndf=4, n_classes=3, d_norm="spectral"))
    for _ in range(30):  # each training-mode forward runs one power iteration
        D(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0]))
    for m in (D.features[0], D.features[2], D.head, D.embed):
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, rel=1e-2)


def test_bad_d_norm_is_named():
    with pytest.raises(ValueError, match="d_norm: expected 'batch', 'spectral' or 'none', got 'layer'"):
        DCGANConfig(d_norm="layer")


def test_g_step_computes_no_gradients_for_d_and_leaves_d_trainable():
    """G's backward runs through D, but D's .grad stays what D's own step left (no wasted weight gradients)."""
    G, D = dcgan_pair(seed=3)
    opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=0.01) for m in (G, D))
    real, z = images(4, seed=5), randn(4, G.z_dim, seed=6, dtype=torch.float32)
    gan.gan_step(G, D, opt_g, opt_d, real, z)
    after_step = [p.grad.clone() for p in D.parameters()]
    G2, D2 = dcgan_pair(seed=3)
    gan.discriminator_step(D2, torch.optim.SGD(D2.parameters(), lr=0.01), real, G2(z))
    for got, want in zip(after_step, (p.grad for p in D2.parameters()), strict=True):
        assert torch.equal(got, want)
    assert all(p.requires_grad for p in D.parameters())
    train_gan(G, D, DATA, 2, **RUN)
    assert all(p.requires_grad for p in D.parameters())


# --------------------------------------------------------------------------- 32×32 and 64×64 colour DCGANs (E2)


class OldGenerator(nn.Module):
    """DCGANGenerator as it was written before image_size existed (28×28 only), layer for layer."""

    def __init__(self, c: DCGANConfig):
        super().__init__()
        self.embed = nn.Embedding(c.n_classes, c.embed_dim) if c.n_classes else None
        z_in = c.z_dim + (c.embed_dim if c.n_classes else 0)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_in, 4 * c.ngf, 7, 1, 0, bias=False),
            nn.BatchNorm2d(4 * c.ngf),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * c.ngf, 2 * c.ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * c.ngf),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c.ngf, c.channels, 4, 2, 1),
            nn.Tanh(),
        )
        dcgan_init_(self)


class OldDiscriminator(nn.Module):
    """DCGANDiscriminator as it was written before image_size existed (28×28 only), layer for layer."""

    def __init__(self, c: DCGANConfig):
        super().__init__()
        bn = c.d_norm == "batch"
        self.features = nn.Sequential(
            nn.Conv2d(c.channels, c.ndf, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c.ndf, 2 * c.ndf, 4, 2, 1, bias=not bn),
            nn.BatchNorm2d(2 * c.ndf) if bn else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * c.ndf * 49, 1)
        self.embed = nn.Embedding(c.n_classes, 2 * c.ndf * 49) if c.n_classes else None
        dcgan_init_(self)
        if c.d_norm == "spectral":
            for m in (self.features[0], self.features[2], self.head, self.embed):
                if m is not None:
                    nn.utils.parametrizations.spectral_norm(m)


@pytest.mark.parametrize(
    "kw", [{}, dict(channels=3), dict(n_classes=10), dict(n_classes=3, d_norm="spectral"), dict(d_norm="none")]
)
def test_dcgan_28_builds_exactly_the_old_layers_in_the_old_order(kw):
    """image_size=28 (the default) gives bit-identical seeded weights: checkpoints and recipes still load."""
    cfg = DCGANConfig(**(TINY | kw))
    assert cfg.image_size == 28 and DCGANConfig(**(TINY | kw), image_size=28) == cfg
    for new, old in ((DCGANGenerator, OldGenerator), (DCGANDiscriminator, OldDiscriminator)):
        torch.manual_seed(0)
        a = new(cfg)
        after_new = torch.randn(3)  # the RNG advanced by the same draws
        torch.manual_seed(0)
        b = old(cfg)
        assert torch.equal(after_new, torch.randn(3))
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert [type(m).__name__ for m in a.modules()][1:] == [type(m).__name__ for m in b.modules()][1:]


def test_dcgan_28_parameter_shapes_are_pinned():
    G, D = dcgan_pair(channels=3)  # z 8, ngf = ndf = 4
    assert [(n, tuple(p.shape)) for n, p in G.named_parameters()] == [
        ("net.0.weight", (8, 16, 7, 7)),
        ("net.1.weight", (16,)),
        ("net.1.bias", (16,)),
        ("net.3.weight", (16, 8, 4, 4)),
        ("net.4.weight", (8,)),
        ("net.4.bias", (8,)),
        ("net.6.weight", (8, 3, 4, 4)),
        ("net.6.bias", (3,)),
    ]
    assert [(n, tuple(p.shape)) for n, p in D.named_parameters()] == [
        ("features.0.weight", (4, 3, 4, 4)),
        ("features.0.bias", (4,)),
        ("features.2.weight", (8, 4, 4, 4)),
        ("features.3.weight", (8,)),
        ("features.3.bias", (8,)),
        ("head.weight", (1, 392)),
        ("head.bias", (1,)),
    ]


SIZES = {  # image side -> G's map sides after each transposed conv, and D's after each conv
    28: ([7, 14, 28], [14, 7]),
    32: ([4, 8, 16, 32], [16, 8, 4]),
    64: ([4, 8, 16, 32, 64], [32, 16, 8, 4]),
}


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n_classes", [0, 4])
def test_dcgan_output_shapes_for_every_size(size, channels, n_classes):
    G, D = dcgan_pair(channels=channels, n_classes=n_classes, image_size=size)
    b = 3
    labels = torch.tensor([0, 3, 1]) if n_classes else None
    fake = G(randn(b, 8, dtype=torch.float32), labels)
    assert fake.shape == (b, channels, size, size) and (fake.abs() <= 1).all()
    logits = D(fake, labels)
    assert logits.shape == (b,) and torch.isfinite(logits).all()
    assert sample(G, 2, seed=0).shape == (2, channels, size, size)


def hooked_sides(model: nn.Module, kind: type, x: torch.Tensor, *args) -> list[tuple]:
    """(in side, out side, out channels, layer) of every `kind` layer, in the order they run."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, inp, out: seen.append((inp[0].shape[-1], out.shape[-1], out.shape[1], m)))
        for m in model.modules()
        if isinstance(m, kind)
    ]
    try:
        model(x, *args)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("size", [28, 32, 64])
def test_every_transposed_conv_follows_the_size_formula(size):
    ngf, ndf, C = 3, 2, 3
    G, D = dcgan_pair(ngf=ngf, ndf=ndf, channels=C, image_size=size)
    g_sides, d_sides = SIZES[size]
    seen = hooked_sides(G, nn.ConvTranspose2d, torch.randn(2, 8))
    assert [out for _, out, _, _ in seen] == g_sides
    for n_in, n_out, _, m in seen:  # n_out = (n_in − 1)·s − 2p + k
        (k,), (s,), (p,) = m.kernel_size[:1], m.stride[:1], m.padding[:1]
        assert n_out == (n_in - 1) * s - 2 * p + k
    assert seen[0][0] == 1 and (seen[0][3].kernel_size, seen[0][3].stride) == (
        ((7, 7), (1, 1)) if size == 28 else ((4, 4), (1, 1))
    )
    assert all((m.kernel_size, m.stride, m.padding) == ((4, 4), (2, 2), (1, 1)) for *_, m in seen[1:])
    widths = {28: [4, 2], 32: [4, 2, 1], 64: [8, 4, 2, 1]}[size]
    assert [c for *_, c, _ in seen] == [w * ngf for w in widths] + [C]
    seen = hooked_sides(D, nn.Conv2d, torch.randn(2, C, size, size))
    assert [out for _, out, _, _ in seen] == d_sides
    for n_in, n_out, _, m in seen:  # a conv: n_out = ⌊(n_in + 2p − k) / s⌋ + 1
        assert n_out == (n_in + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
    assert [c for *_, c, _ in seen] == [ndf * 2**i for i in range(len(d_sides))]
    assert D.head.in_features == seen[-1][2] * d_sides[-1] ** 2


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize(("n_classes", "d_norm"), [(0, "batch"), (0, "none"), (5, "batch"), (5, "spectral")])
def test_larger_discriminators_keep_every_option(size, n_classes, d_norm):
    ndf, C, b = 2, 3, 4
    torch.manual_seed(0)
    D = DCGANDiscriminator(
        DCGANConfig(z_dim=5, ndf=ndf, channels=C, n_classes=n_classes, d_norm=d_norm, image_size=size)
    )
    if d_norm == "spectral":
        D.eval()
    convs = [m for m in D.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(SIZES[size][1])
    assert convs[0].bias is not None and all((m.bias is None) == (d_norm == "batch") for m in convs[1:])
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in D.features)
    assert n_bn == (len(convs) - 1 if d_norm == "batch" else 0)
    spectral = [nn.utils.parametrize.is_parametrized(m) for m in (*convs, D.head)]
    assert all(spectral) if d_norm == "spectral" else not any(spectral)
    x = randn(b, C, size, size, seed=1, dtype=torch.float32)
    labels = torch.tensor([3, 0, 4, 3]) if n_classes else None
    phi = D.features(x)
    assert phi.shape == (b, D.head.in_features)
    want = D.head(phi).squeeze(1) + ((D.embed(labels) * phi).sum(1) if n_classes else 0)  # projection term
    assert torch.allclose(D(x, labels), want, atol=1e-6)


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_checks_the_configured_size(size):
    _, D = dcgan_pair(channels=3, image_size=size)
    with pytest.raises(
        ValueError, match=rf"x: expected images of shape \(B, 3, {size}, {size}\), got \(2, 3, 28, 28\)"
    ):
        D(torch.zeros(2, 3, 28, 28))
    with pytest.raises(
        ValueError, match=rf"x: expected images of shape \(B, 3, {size}, {size}\), got \(2, 1, {size}, {size}\)"
    ):
        D(torch.zeros(2, 1, size, size))


@pytest.mark.parametrize("size", [32, 64])
def test_rgb_gan_step_and_train_gan_run_and_change_both_players(size):
    G, D = dcgan_pair(seed=1, channels=3, image_size=size)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    real = torch.rand(8, 3, size, size, generator=gen(2)) * 2 - 1
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    stats = gan_step(G, D, opt_g, opt_d, real, torch.randn(8, 8, generator=gen(3)))
    assert all(torch.isfinite(v) for v in stats.values())
    assert max_param_diff(G, G0) > 0 and max_param_diff(D, D0) > 0
    G1, D1 = copy.deepcopy(G), copy.deepcopy(D)
    run = train_gan(G, D, real, 2, batch_size=4, snapshot_every=1, progress=False)
    assert len(run.history) == 2 and all(math.isfinite(x) for k in KEYS for x in run.history[k])
    assert run.snapshots[2].shape == (64, 3, size, size)
    assert max_param_diff(G, G1) > 0 and max_param_diff(D, D1) > 0


def test_conditional_rgb_64_trains():
    G, D = dcgan_pair(channels=3, image_size=64, n_classes=3)
    G0 = copy.deepcopy(G)
    real = torch.rand(8, 3, 64, 64, generator=gen(2)) * 2 - 1
    run = train_gan(G, D, real, 1, labels=torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), batch_size=4, progress=False)
    assert len(run.history) == 1 and max_param_diff(G, G0) > 0


@pytest.mark.parametrize("bad", [48, 0, 16, 128, 28.0, True, "32", None])
def test_bad_image_size_names_the_allowed_sizes(bad):
    with pytest.raises(ValueError, match=rf"image_size: expected one of 28, 32, 64, got {re.escape(repr(bad))}"):
        DCGANConfig(image_size=bad)
    assert gan.DCGAN_SIZES == (28, 32, 64)


def test_generator_params_is_for_the_28_layout_only():
    G, _ = dcgan_pair(image_size=32)
    with pytest.raises(ValueError, match="G: expected an unconditional DCGANGenerator with image_size=28"):
        generator_params(G)


# --------------------------------------------------------------------------- R1 and spectral normalisation


def test_r1_penalty_is_the_mean_squared_input_gradient_at_real_data():
    torch.manual_seed(0)
    D = gan.MLPDiscriminator(in_shape=(2,), hidden=(8,)).double()
    real = torch.randn(5, 2, dtype=torch.float64)
    want = 0.0
    for x in real:  # one sample at a time, by autograd
        x = x[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x)
        want += g.pow(2).sum().item() / len(real)
    got = gan.r1_penalty(D, real)
    assert got.item() == pytest.approx(want, rel=1e-12)
    got.backward()  # differentiable: it reaches D's weights
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters() if p.ndim == 2)
    # a linear D(x) = w.x + b has the constant slope w: R1 = |w|^2
    lin = gan.MLPDiscriminator(in_shape=(3,), hidden=()).double()
    assert gan.r1_penalty(lin, torch.randn(4, 3, dtype=torch.float64)).item() == pytest.approx(
        lin.net[0].weight.pow(2).sum().item()
    )


def test_discriminator_step_adds_half_gamma_r1_and_train_gan_takes_r1_gamma():
    torch.manual_seed(0)
    D = gan.MLPDiscriminator(in_shape=(2,), hidden=(8,)).double()
    real, fake = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    opt = torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: the loss is reported, D does not move
    plain = gan.discriminator_step(D, opt, real, fake)["d_loss"].item()
    with_r1 = gan.discriminator_step(D, opt, real, fake, r1_gamma=4.0)["d_loss"].item()
    assert with_r1 == pytest.approx(plain + 2.0 * gan.r1_penalty(D, real).item(), rel=1e-10)
    G = gan.MLPGenerator(z_dim=2, hidden=(8,), out_shape=(2,), tanh=False)
    run = gan.train_gan(
        G,
        gan.MLPDiscriminator(in_shape=(2,), hidden=(8,)),
        torch.randn(64, 2),
        3,
        batch_size=8,
        r1_gamma=1.0,
        progress=False,
    )
    assert len(run.history["d_loss"]) == 3
    with pytest.raises(ValueError, match="R1 penalty is per sample"):
        gan.train_gan(
            gan.DCGANGenerator(gan.DCGANConfig(z_dim=4, ngf=4, ndf=4)),
            gan.DCGANDiscriminator(gan.DCGANConfig(z_dim=4, ngf=4, ndf=4)),
            torch.zeros(8, 1, 28, 28),
            1,
            r1_gamma=1.0,
            progress=False,
        )


def test_spectral_mlp_discriminator_has_unit_spectral_norm_layers():
    torch.manual_seed(0)
    D = gan.MLPDiscriminator(in_shape=(2,), hidden=(16, 16), spectral=True)
    for _ in range(20):  # power iterations run in training-mode forwards
        D(torch.randn(4, 2))
    D.eval()
    for m in D.net:
        if isinstance(m, torch.nn.Linear):
            assert torch.linalg.matrix_norm(m.weight, ord=2).item() == pytest.approx(1.0, abs=0.02)
