"""Chapter 09's library (in progress): int8 quantisation error bounds and PyTorch's agreement, the
distillation loss against its closed form and gradient, the watermark's z-test at its nominal
false-positive rate and its power, nearest-neighbour distances against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aigc_lib.responsible import compress, memorization, watermark
from tests.numerics import gen


def test_int8_quantisation_is_within_half_a_step_and_equals_pytorchs():
    w = torch.randn(16, 40, generator=gen(0)) * torch.linspace(0.01, 3, 16)[:, None]
    w[3] = 0  # a row of zeros
    q, scale = compress.quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (16,)
    back = compress.dequantize_int8(q, scale)
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-7).all() and not back[3].any()
    theirs = torch.quantize_per_channel(w, scale.double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(theirs.int_repr(), q)
    with pytest.raises(ValueError, match="weight"):
        compress.quantize_int8(torch.randn(3))


def test_dynamic_quantisation_shrinks_linears_and_keeps_outputs_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    small = compress.quantize_linears(model)
    x = torch.randn(8, 256, generator=gen(1))
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert compress.serialized_bytes(model) / compress.serialized_bytes(small) > 3.5


def test_distillation_loss_matches_its_closed_form_and_gradient():
    s = torch.randn(5, 7, generator=gen(2), dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, generator=gen(3), dtype=torch.float64)
    T = 3.0
    p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = T * T * (p * (p.log() - q.log())).sum(-1).mean()
    loss = compress.distillation_loss(s, t, T)
    assert torch.allclose(loss, expected, atol=1e-12)
    loss.backward()  # Hinton et al. §2.1: dL/dz_s = T (q - p), here over a mean of 5 rows
    assert torch.allclose(s.grad, T * (q - p).detach() / 5, atol=1e-12)
    assert compress.distillation_loss(t, t, T).abs() < 1e-12


def test_green_lists_are_keyed_and_of_the_stated_size():
    a = watermark.green_table(65, key=7)
    assert a.shape == (65, 65) and (a.sum(1) == 32).all()
    assert torch.equal(a, watermark.green_table(65, key=7)) and not torch.equal(a, watermark.green_table(65, key=8))
    assert watermark.z_score(60, 100, 0.5) == pytest.approx(2.0)


def test_unwatermarked_text_is_flagged_at_the_nominal_rate():
    V, n_texts, length, z_crit = 65, 4000, 200, 2.326  # one-sided 1%
    ids = torch.randint(0, V, (n_texts, length), generator=gen(4))
    z = torch.tensor([watermark.detect(row, V, key=11) for row in ids])
    rate = float((z > z_crit).float().mean())
    sd = math.sqrt(0.01 * 0.99 / n_texts)
    assert abs(rate - 0.01) < 4 * sd, rate  # within 4 standard errors of 1%
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1


def test_the_bias_makes_green_tokens_likelier_and_the_text_detectable():
    V, length, delta = 65, 200, 2.0
    g = gen(5)
    ids = [int(torch.randint(0, V, (1,), generator=g))]
    for _ in range(length):  # sampling from uniform logits with the bias
        logits = watermark.bias_logits(torch.zeros(1, V), torch.tensor(ids[-1:]), key=11, delta=delta)
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g)))
    ids = torch.tensor(ids)
    green, scored = watermark.green_count(ids, V, key=11)
    expected = 32 * math.e**delta / (32 * math.e**delta + 33)  # P(green) under the bias
    assert abs(green / scored - expected) < 0.1 and watermark.detect(ids, V, key=11) > 4
    assert abs(watermark.detect(ids, V, key=12)) < 3  # the wrong key sees no watermark


def test_nearest_neighbours_match_brute_force_and_spot_copies():
    train = torch.rand(50, 1, 6, 6, generator=gen(6))
    samples = torch.cat([train[[4, 9]] + 1e-4, torch.rand(6, 1, 6, 6, generator=gen(7))])
    d, idx = memorization.nearest_neighbours(samples, train, k=3, chunk=3)
    brute = torch.cdist(samples.flatten(1).double(), train.flatten(1).double())
    assert torch.allclose(d, brute.sort(1).values[:, :3]) and idx[:2, 0].tolist() == [4, 9]
    ratio = memorization.copy_ratio(samples, train)
    assert (ratio[:2] < 0.01).all() and (ratio[2:] > 0.3).all()
