"""Chapter 09's library: int8 quantisation error bounds and where PyTorch's choice differs, the
distillation loss against its closed form and gradient, the watermark's z-test at its nominal
false-positive rate and its power (text and images), nearest neighbours against brute force, the copy
score with duplicated data, the real-vs-generated detector."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from aigc_lib import generation
from aigc_lib import transformer as tr
from aigc_lib.responsible import compress, detect, memorization, watermark
from tests.numerics import gen


@pytest.mark.filterwarnings("ignore:torch.quantize_per:UserWarning")
def test_int8_quantisation_is_within_half_a_step_and_equals_torchs_per_channel_rounding():
    w = torch.randn(16, 40, generator=gen(0)) * torch.linspace(0.01, 3, 16)[:, None]
    w[3] = 0  # a row of zeros
    q, scale = compress.quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (16,)
    assert torch.equal(q.abs().amax(1)[[0, 1, 15]], torch.full((3,), 127, dtype=torch.int8))  # each row's max
    back = compress.dequantize_int8(q, scale)
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-7).all() and not back[3].any()
    # torch's own quantiser, given our scales, rounds to the same integers
    theirs = torch.quantize_per_channel(w, scale.double(), torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(theirs.int_repr(), q)


def test_int8_quantisation_is_float32_whatever_the_input_and_refuses_non_finite_rows():
    w = torch.randn(8, 64, generator=gen(1)) * 1e-6  # fp16 would underflow amax / 127
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        q, scale = compress.quantize_int8(w.to(dtype))
        assert scale.dtype == torch.float32 and (scale > 0).all()
        back = compress.dequantize_int8(q, scale)
        assert ((back - w.to(dtype).float()).abs() <= scale[:, None] / 2 + 1e-12).all()
    bad = w.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compress.quantize_int8(bad)
    with pytest.raises(ValueError, match="weight"):
        compress.quantize_int8(torch.randn(3))


def test_per_row_scales_lose_less_than_one_scale_per_tensor_on_uneven_rows():
    w = torch.randn(32, 64, generator=gen(2)) * torch.logspace(-2, 0, 32)[:, None]
    model = nn.Sequential(nn.Linear(64, 32, bias=False)).eval()
    model[0].weight.data.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantize_linears keeps the deprecation noise to itself
        small = compress.quantize_linears(model)
    torch_w = small[0].weight()
    assert torch_w.qscheme() == torch.per_tensor_affine  # symmetric range, one scale for the tensor
    assert torch_w.q_scale() == pytest.approx(float(w.abs().max()) / 127.5, rel=1e-6)
    ours = compress.dequantize_int8(*compress.quantize_int8(w))
    assert (ours - w).norm() < 0.5 * (torch_w.dequantize() - w).norm()


def test_dynamic_quantisation_shrinks_linears_and_keeps_outputs_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    small = compress.quantize_linears(model)
    x = torch.randn(8, 256, generator=gen(1))
    with torch.no_grad():
        ref, out = model(x), small(x)
    assert (out - ref).norm() / ref.norm() < 0.05
    assert compress.linear_bytes(model) == 4 * sum(p.numel() for p in model.parameters())
    assert compress.linear_bytes(model) / compress.linear_bytes(small) > 3.5


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


def test_distillation_loss_is_finite_where_the_teacher_rules_a_token_out():
    t = torch.tensor([[0.0, 1.0, -math.inf]])
    s = torch.tensor([[0.5, 0.2, 3.0]], requires_grad=True)
    loss = compress.distillation_loss(s, t, 2.0)
    p, q = torch.softmax(t[:, :2] / 2, -1), torch.softmax(s / 2, -1)[:, :2]
    assert torch.isfinite(loss) and loss.detach().item() == pytest.approx(
        4 * float((p * (p.log() - q.log())).sum()), rel=1e-6
    )
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_a_student_trained_with_the_distillation_objective_moves_towards_its_teacher():
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (3000,), generator=gen(4))
    config = tr.GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16)
    teacher, student = tr.GPT(config), tr.GPT(config)
    x = ids[:160].view(10, 16)
    kl_before = compress.distillation_loss(student(x)[0], teacher(x)[0], 1.0).item()
    objective = compress.distillation_objective(teacher, temperature=1.0, alpha=1.0)
    tr.train_gpt(student, ids, 60, batch_size=8, lr=3e-3, warmup_steps=5, loss=objective, progress=False)
    assert compress.distillation_loss(student(x)[0], teacher(x)[0], 1.0).item() < 0.5 * kl_before
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen
    with pytest.raises(ValueError, match="loss"):
        tr.train_gpt(student, ids, 1, loss="kl", progress=False)


def test_green_lists_are_keyed_of_the_stated_size_and_safe_to_mutate():
    a = watermark.green_table(65, key=7)
    assert a.shape == (65, 65) and (a.sum(1) == 33).all() and watermark.green_count_of(65, 0.5) == 33
    assert watermark.green_count_of(10, 0.25) == 3 and watermark.green_count_of(10, 0.35) == 4  # half up
    b = watermark._green_table.__wrapped__(65, 7, 0.5)  # built afresh, not from the cache
    assert torch.equal(a, b) and not torch.equal(a, watermark.green_table(65, key=8))
    a[:] = False  # a caller's copy: the lists themselves are untouched
    assert torch.equal(watermark.green_table(65, key=7), b)
    for bad in (dict(vocab_size=65.0), dict(vocab_size=True), dict(key=-1), dict(gamma=1.0)):
        with pytest.raises(ValueError):
            watermark.green_table(**({"vocab_size": 65, "key": 7} | bad))
    with pytest.raises(ValueError, match="previous"):
        watermark.green_mask(torch.tensor([3, 65]), 65, key=7)
    assert watermark.z_score(60, 100, 0.5) == pytest.approx(2.0)


def test_unwatermarked_text_is_flagged_at_the_nominal_rate():
    V, n_texts, length, z_crit = 65, 4000, 200, 2.326  # one-sided 1%
    ids = torch.randint(0, V, (n_texts, length), generator=gen(4))
    z = torch.tensor([watermark.detect(row, V, key=11) for row in ids])
    rate = float((z > z_crit).float().mean())
    sd = math.sqrt(0.01 * 0.99 / n_texts)
    assert abs(rate - 0.01) < 4 * sd, rate  # within 4 standard errors of 1%
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1


def test_repeated_pairs_are_scored_once():
    V, key = 65, 11
    green = watermark.green_table(V, key)
    a = 0
    b = int(green[a].nonzero()[0])  # a -> b is green
    c = int((~green[b]).nonzero()[0])  # b -> c is red
    looping = torch.tensor([a, b, c] * 60 + [a])  # three pairs, repeated 60 times
    assert watermark.green_count(looping, V, key, unique=True)[1] <= 3
    assert abs(watermark.detect(looping, V, key)) < 3  # counted 60 times over, the z would be large


def test_the_bias_makes_green_tokens_likelier_and_the_text_detectable():
    V, length, delta = 65, 200, 2.0
    g = gen(5)
    ids = [int(torch.randint(0, V, (1,), generator=g))]
    for _ in range(length):  # sampling from uniform logits with the bias
        logits = watermark.bias_logits(torch.zeros(1, V), torch.tensor(ids[-1:]), key=11, delta=delta)
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g)))
    ids = torch.tensor(ids)
    green, scored = watermark.green_count(ids, V, key=11, unique=False)
    expected = 33 * math.e**delta / (33 * math.e**delta + 32)  # P(green) under the bias
    assert abs(green / scored - expected) < 0.1 and watermark.detect(ids, V, key=11) > 4
    assert abs(watermark.detect(ids, V, key=12)) < 3  # the wrong key sees no watermark


def test_the_watermarked_model_biases_every_position_and_generates_in_batches():
    torch.manual_seed(0)
    gpt = tr.GPT(tr.GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    marked = watermark.WatermarkedLM(gpt, key=3, delta=1.5)
    idx = torch.randint(0, 20, (2, 10), generator=gen(6))
    with torch.no_grad():
        plain, biased = gpt(idx)[0], marked(idx)[0]
    assert torch.allclose(biased - plain, 1.5 * watermark.green_mask(idx, 20, key=3).float(), atol=1e-6)
    prompts = torch.randint(0, 20, (4, 3), generator=gen(7))
    out = generation.generate_batch(marked, prompts, 30, generator=gen(8))  # past the 16-token block
    assert out.shape == (4, 30) and out.dtype == torch.int64
    one = torch.tensor(list(generation.generate(marked, prompts[0], 30, generator=gen(8))))
    assert torch.equal(generation.generate_batch(marked, prompts[:1], 30, generator=gen(8))[0], one)


def test_image_watermark_z_is_standard_normal_without_the_key_and_large_with_it():
    images = torch.rand(1000, 1, 28, 28, generator=gen(9)) ** 3  # mostly dark, like digits
    z = watermark.image_z_scores(images, key=5)
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1
    marked = watermark.embed_image_watermark(images, key=5, strength=0.05)
    assert marked.min() >= 0 and marked.max() <= 1 and (marked - images).abs().max() <= 0.05 + 1e-7
    assert float(watermark.image_z_scores(marked, key=5).median()) > 2.5
    assert abs(float(watermark.image_z_scores(marked, key=6).mean())) < 0.15  # another key: nothing


def test_image_watermark_detector_removes_the_content_first():
    # a smooth bright blob (content) plus the mark: correlating the raw image drowns the mark, the
    # high-pass residual finds it
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 40)[None, None].expand(200, 1, 28, 28)
    images = (blob * torch.rand(200, 1, 1, 1, generator=gen(10))).contiguous()
    marked = watermark.embed_image_watermark(images, key=3, strength=0.02)
    z = watermark.image_z_scores(marked, key=3)
    assert float(z.min()) > 5
    x = (marked - marked.mean((1, 2, 3), keepdim=True)).flatten(1)
    raw = x @ watermark.image_pattern((1, 28, 28), 3).flatten() / x.norm(dim=1)
    assert float(raw.median()) < float(z.median()) / 2
    assert float(watermark.highpass(blob[:1]).abs().max()) < 0.05
    assert float(watermark.highpass(torch.ones(1, 1, 5, 5)).abs().max()) == 0
    with pytest.raises(ValueError, match="images"):
        watermark.image_z_scores(torch.rand(3, 28), key=1)


def test_nearest_neighbours_match_brute_force_in_chunks():
    train = torch.rand(50, 1, 6, 6, generator=gen(6))
    samples = torch.cat([train[[4, 9]] + 1e-4, torch.rand(6, 1, 6, 6, generator=gen(7))])
    d, idx = memorization.nearest_neighbours(samples, train, k=3, chunk=7)
    brute = torch.cdist(samples.flatten(1).double(), train.flatten(1).double())
    assert torch.allclose(d, brute.sort(1).values[:, :3]) and idx[:2, 0].tolist() == [4, 9]
    assert torch.allclose(brute.gather(1, idx), d, rtol=1e-10, atol=1e-7)
    with pytest.raises(ValueError, match="at least one"):
        memorization.nearest_neighbours(samples[:0], train)


def test_copy_score_sees_copies_of_duplicated_images():
    train = torch.rand(60, 1, 6, 6, generator=gen(10))
    duplicated = torch.cat([train, train[[4]].expand(20, -1, -1, -1)])  # image 4 twenty-one times
    distinct, counts = memorization.deduplicate(duplicated)
    assert torch.equal(distinct, train) and counts[4] == 21 and counts.sum() == 80
    samples = torch.cat([train[[4]] + 1e-3, torch.rand(5, 1, 6, 6, generator=gen(11))])
    score, nearest = memorization.copy_score(samples, duplicated, k=10)
    assert score[0] < 0.01 and nearest[0] == 4 and (score[1:] > 0.5).all()
    # without removing duplicates the copy's neighbourhood would be its own copies: no signal
    d, _ = memorization.nearest_neighbours(samples[:1], duplicated, k=10)
    assert d[0, 0] / d[0].mean() > 0.9


def test_the_detector_learns_a_generator_fingerprint():
    real = torch.rand(400, 1, 12, 12, generator=gen(12)) * 0.5
    fake = real + 0.2 * (torch.arange(12) % 2).float()  # striped: an artefact a detector can find
    torch.manual_seed(0)
    model = detect.FakeDetector()
    detect.train_detector(model, real[:300], fake[:300], 150, batch_size=32, progress=False)
    assert detect.detection_accuracy(model, real[300:], fake[300:]) > 0.95
    with pytest.raises(ValueError, match="real, fake"):
        detect.train_detector(model, real, fake[:, :, :6], 1, progress=False)
