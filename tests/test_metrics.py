"""Tests for aigc_lib.metrics: the Fréchet distance against closed forms and scipy, the shipped digit
classifier, the classifier-based image metrics and the text metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aigc_lib import metrics as M
from aigc_lib.data import mnist5k

# ----------------------------------------------------------------------------------------------
# Fréchet distance


def _exact_moments(n: int, mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    """n rows whose sample mean is exactly `mean` and sample covariance (1/(n-1)) exactly diag(std^2)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(chol).T  # sample covariance = I
    return z * std + mean


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The pytorch-fid formula: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    linalg = pytest.importorskip("scipy.linalg")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def _correlated(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + shift * rng.standard_normal(d)


def test_fd_identical_sets_is_zero():
    a = _correlated(300, 32, seed=0)
    scale = np.trace(np.cov(a, rowvar=False))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * scale)
    t = torch.from_numpy(a).float()
    assert M.frechet_distance(t, t.clone()) == pytest.approx(0.0, abs=1e-6 * scale)


def test_fd_closed_form_diagonal_gaussians():
    # diagonal covariances: Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) = sum_i (sigma_a,i - sigma_b,i)^2
    d = 8
    mu_a, mu_b = np.arange(d, dtype=float), np.linspace(-1, 2, d)
    sd_a, sd_b = np.linspace(0.5, 2.0, d), np.linspace(3.0, 0.1, d)
    a = _exact_moments(500, mu_a, sd_a, seed=1)
    b = _exact_moments(400, mu_b, sd_b, seed=2)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # equal covariances: only the means differ
    c = _exact_moments(300, mu_b, sd_a, seed=3)
    assert M.frechet_distance(a, c) == pytest.approx(((mu_a - mu_b) ** 2).sum(), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fd_matches_scipy_sqrtm_reference(seed: int):
    a = _correlated(400, 24, seed=seed)
    b = _correlated(300, 24, seed=seed + 100, shift=0.5)
    assert M.frechet_distance(a, b) == pytest.approx(_scipy_fd(a, b), rel=1e-6)


def test_fd_symmetric_and_invariances():
    a, b = _correlated(200, 16, seed=4), _correlated(250, 16, seed=5, shift=1.0)
    fd = M.frechet_distance(a, b)
    assert M.frechet_distance(b, a) == pytest.approx(fd, rel=1e-9)
    assert M.frechet_distance(a + 3.0, b + 3.0) == pytest.approx(fd, rel=1e-9)  # translation
    assert M.frechet_distance(2 * a, 2 * b) == pytest.approx(4 * fd, rel=1e-9)  # FD scales as k^2
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((16, 16)))
    assert M.frechet_distance(a @ q, b @ q) == pytest.approx(fd, rel=1e-8)  # rotation


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fd_rank_deficient_features_are_stable():
    # fewer rows than dimensions and dead (all-zero) features, as post-ReLU features can have
    a, b = _correlated(20, 64, seed=7), _correlated(30, 64, seed=8)
    a[:, :10] = 0
    b[:, :10] = 0
    fd = M.frechet_distance(a, b)
    assert math.isfinite(fd) and fd >= 0
    assert fd == pytest.approx(_scipy_fd(a, b), rel=1e-4)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros(10), np.zeros((10, 3)), r"feats_a: expected a 2-D .* got shape \(10,\)"),
        (np.zeros((10, 3)), np.zeros((10, 4)), r"same feature dimension.*\(10, 3\) and \(10, 4\)"),
        (np.zeros((10, 3)), np.zeros((1, 3)), r"feats_b: need at least 2 rows.*\(1, 3\)"),
        (np.full((10, 3), np.nan), np.zeros((10, 3)), r"feats_a: contains NaN"),
    ],
)
def test_fd_bad_inputs(a, b, match):
    with pytest.raises(ValueError, match=match):
        M.frechet_distance(a, b)


def test_fd_rejects_lists():
    with pytest.raises(TypeError, match="feats_a"):
        M.frechet_distance([[0.0, 1.0], [1.0, 0.0]], np.zeros((2, 2)))


# ----------------------------------------------------------------------------------------------
# The shipped classifier


@pytest.fixture(scope="module")
def test_set():
    return mnist5k("test")


@pytest.fixture(scope="module")
def noise():
    return torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_asset_metadata_and_size():
    assert M.ASSET_PATH.is_file()
    assert M.ASSET_PATH.stat().st_size < 1_000_000
    blob = M.read_asset()
    assert blob["arch_version"] == M.ARCH_VERSION
    assert blob["seed"] == M.TRAIN_SEED
    assert blob["test_accuracy"] >= 0.985
    assert all(v.dtype == torch.float32 for v in blob["state_dict"].values() if v.is_floating_point())


def test_classifier_loads_once_frozen_and_accurate(test_set):
    model = M.load_digit_classifier("cpu")
    assert M.load_digit_classifier("cpu") is model  # cached per device
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    acc = M.accuracy(model, test_set.images, test_set.labels)
    assert acc >= 0.985, f"shipped classifier reaches only {acc:.4f} on mnist5k('test')"  # 0.991 when shipped
    assert acc == pytest.approx(M.read_asset()["test_accuracy"], abs=1e-9)
    # the same architecture with random weights is near chance: the test above needs the trained asset
    torch.manual_seed(0)
    assert M.accuracy(M.DigitClassifier().eval(), test_set.images, test_set.labels) < 0.5


def test_classifier_shapes():
    model = M.load_digit_classifier("cpu")
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, model.config.feature_dim)


def test_features_accept_three_layouts_and_any_batch_size(test_set):
    x = test_set.images[:50]
    f = M.digit_features(x, device="cpu")
    assert f.shape == (50, 128) and f.dtype == torch.float32
    torch.testing.assert_close(M.digit_features(x[:, 0], device="cpu"), f)
    torch.testing.assert_close(M.digit_features(x.reshape(50, 784).numpy(), device="cpu"), f)
    torch.testing.assert_close(M.digit_features(x, batch_size=7, device="cpu"), f, atol=1e-5, rtol=1e-5)


def test_recognisability_real_vs_noise(test_set, noise):
    assert M.recognisability(test_set.images) >= 0.95  # 0.985 when shipped
    assert M.recognisability(noise) <= 0.05  # 0.0 when shipped
    assert M.recognisability(torch.zeros(20, 1, 28, 28)) == 0.0  # a blank canvas is no digit
    with pytest.raises(ValueError, match="threshold"):
        M.recognisability(noise[:2], threshold=1.5)


def test_class_coverage(test_set, noise):
    cov = M.class_coverage(test_set.images)
    assert cov.shares.shape == (10,)
    assert cov.shares.sum().item() == pytest.approx(1.0)
    assert cov.shares.min().item() > 0.07 and cov.shares.max().item() < 0.13  # ~10% per class
    assert cov.n_classes == 10
    assert M.class_coverage(noise).n_classes <= 1
    ones = test_set.images[test_set.labels == 1]
    cov_ones = M.class_coverage(ones)  # a mode-collapsed "generator"
    assert cov_ones.n_classes == 1 and cov_ones.shares[1].item() > 0.95


def test_real_floor_against_bad_generators(noise):
    train = mnist5k("train").images[:1000]
    floor = M.real_floor(1000)
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).view(1, 1, 3, 3) / 16
    blurred = F.conv2d(train, blur, padding=1)  # a 3x3 Gaussian blur, as a blurry VAE draws
    fd_noise = M.frechet_digit_distance(noise)
    fd_blur = M.frechet_digit_distance(blurred)
    assert 0 < floor < fd_blur / 5
    assert fd_blur < fd_noise
    assert floor < fd_noise / 50
    # real train digits against the reference score at the floor; a generator that collapsed to one class does not
    assert M.frechet_digit_distance(train) == pytest.approx(floor, rel=0.3)
    ones = mnist5k("train")
    assert M.frechet_digit_distance(ones.images[ones.labels == 1]) > 20 * floor
    # FD is biased upwards at small n: the floor falls as n grows
    assert M.real_floor(200) > M.real_floor(1000)


def test_frechet_digit_distance_with_explicit_reference(test_set):
    a, b = test_set.images[:500], test_set.images[500:]
    fd = M.frechet_digit_distance(a, b)
    assert fd == pytest.approx(M.frechet_distance(M.digit_features(a), M.digit_features(b)), rel=1e-12)
    assert M.frechet_digit_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_digits_real_samples_and_determinism():
    train = mnist5k("train").images
    samples = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(42))[:1000]]
    out = M.evaluate_digits(samples)
    expected_keys = {"n", "n_ref", "fd", "fd_floor", "fd_ratio", "recognisability", "coverage",
                     "min_class_share", "max_class_share", "n_classes", "confident_coverage",
                     "min_confident_share", "max_confident_share", "precision", "recall"}  # fmt: skip
    assert set(out) == expected_keys
    assert out["precision"] > 0.9 and out["recall"] > 0.9  # held-out real digits (train split vs test reference)
    assert out["n"] == 1000 and out["n_ref"] == 1000 and len(out["coverage"]) == 10
    assert out["fd_floor"] == M.real_floor(1000)
    assert 0.5 < out["fd_ratio"] < 2.0  # real digits score at the floor
    assert out["recognisability"] > 0.95 and out["n_classes"] == 10
    assert 0.05 < out["min_class_share"] <= 0.1 <= out["max_class_share"] < 0.15
    assert M.evaluate_digits(samples.clone()) == out  # same inputs, same numbers
    assert M.evaluate_digits(samples[:300], n_ref=500)["fd_floor"] == M.real_floor(300, n_ref=500)


def test_reference_cache_is_not_mutable_from_outside():
    ref = M.reference_features()
    ref.zero_()
    assert M.reference_features().abs().sum() > 0


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(4, 1, 28, 28) * 2 - 1, r"looks like \[-1, 1\].*\(images \+ 1\) / 2"),
        (torch.rand(4, 1, 28, 28) * 255, r"looks like \[0, 255\].*images / 255"),
        ((torch.rand(4, 1, 28, 28) * 255).to(torch.uint8), r"uint8.*/ 255"),
        (torch.rand(4, 1, 28, 28) * 1.5, r"clamp\(0, 1\)"),
        (
            torch.rand(4, 3, 28, 28),
            r"expected shape \(N, 1, 28, 28\), \(N, 28, 28\) or \(N, 784\), got \(4, 3, 28, 28\)",
        ),
        (torch.rand(4, 1, 32, 32), r"got \(4, 1, 32, 32\)"),
        (torch.full((4, 784), float("nan")), r"NaN"),
        (torch.rand(0, 784), r"no images"),
    ],
)
def test_digit_images_bad_inputs(images, match):
    with pytest.raises(ValueError, match=match):
        M.digit_features(images)


def test_evaluate_and_floor_bad_arguments():
    with pytest.raises(ValueError, match="samples: need at least 2"):
        M.evaluate_digits(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"n_ref: expected an int in \[2, 1000\], got 5000"):
        M.evaluate_digits(torch.rand(10, 1, 28, 28), n_ref=5000)
    with pytest.raises(ValueError, match=r"n: expected an int in \[2, 4000\], got 0"):
        M.real_floor(0)
    with pytest.raises(ValueError, match="seed"):
        M.real_floor(10, seed=-1)


def test_values_slightly_outside_unit_range_are_clamped(test_set):
    x = test_set.images[:20]
    y = x * 1.01 - 0.005  # in [-0.005, 1.005]: rounding overshoot, within the tolerance
    torch.testing.assert_close(M.digit_features(y), M.digit_features(y.clamp(0, 1)))


def test_cli_info(capsys):
    from aigc_lib.__main__ import main

    assert main(["classifier"]) == 0
    out = capsys.readouterr().out
    assert "arch_version" in out and "test accuracy now: 0.99" in out and "real floor" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_match_cpu(test_set):
    x = test_set.images[:200]
    torch.testing.assert_close(
        M.digit_features(x, device="cuda"), M.digit_features(x, device="cpu"), atol=1e-3, rtol=1e-3
    )
    assert M.real_floor(1000, device="cuda") == pytest.approx(M.real_floor(1000, device="cpu"), rel=1e-2)


# ----------------------------------------------------------------------------------------------
# Text metrics


def test_nats_and_bits():
    assert M.nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert M.bits_per_char(1.0) == pytest.approx(1 / math.log(2))
    assert M.bits_per_char(math.log(256)) == pytest.approx(8.0)  # uniform over bytes = 8 bits
    t = torch.tensor([math.log(2), 2 * math.log(2)])
    torch.testing.assert_close(M.nats_to_bits(t), torch.tensor([1.0, 2.0]))


def test_cross_entropy_nats_per_char():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 30, generator=g)  # (B, T, V)
    targets = torch.randint(0, 30, (4, 7), generator=g)  # (B, T)
    ce = M.cross_entropy_nats_per_char(logits, targets)
    torch.testing.assert_close(ce, F.cross_entropy(logits.transpose(1, 2), targets))
    manual = -logits.log_softmax(-1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(ce, manual)
    # uniform logits: log V nats, log2 V bits per character
    uniform = M.cross_entropy_nats_per_char(torch.zeros(5, 30), torch.zeros(5, dtype=torch.long))
    assert uniform.item() == pytest.approx(math.log(30))
    assert M.bits_per_char(uniform).item() == pytest.approx(math.log2(30))
    # padding is skipped
    masked = targets.clone()
    masked[:, -2:] = -100
    torch.testing.assert_close(
        M.cross_entropy_nats_per_char(logits, masked),
        F.cross_entropy(logits[:, :-2].transpose(1, 2), targets[:, :-2]),
    )


def test_cross_entropy_bad_inputs():
    with pytest.raises(ValueError, match=r"logits \(4, 7, 30\) and targets \(4, 6\)"):
        M.cross_entropy_nats_per_char(torch.zeros(4, 7, 30), torch.zeros(4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="targets: expected integer"):
        M.cross_entropy_nats_per_char(torch.zeros(4, 30), torch.zeros(4))


# ------------------------------------------------------------------------ precision and recall


def _precision_recall_by_loops(real, fake, k):
    """Kynkäänniemi et al.'s definition written out point by point."""

    def radius(points, i):
        d = sorted(float((points[i] - points[j]).norm()) for j in range(len(points)) if j != i)
        return d[k - 1]

    def inside(x, centres):
        return any(float((x - c).norm()) <= radius(centres, j) for j, c in enumerate(centres))

    precision = sum(inside(f, real) for f in fake) / len(fake)
    recall = sum(inside(r, fake) for r in real) / len(real)
    return precision, recall


def test_precision_recall_matches_the_definition_point_by_point():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = 0.7 * torch.randn(30, 3, generator=g, dtype=torch.float64) + 0.8
    for k in (1, 3, 5):
        got = M.precision_recall(real, fake, k=k)
        want = _precision_recall_by_loops(real, fake, k)
        assert got == pytest.approx(want, abs=1e-12)


def test_precision_recall_extremes_and_mode_collapse():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 8, generator=g)
    assert M.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert M.precision_recall(real, real + 100.0) == (0.0, 0.0)
    collapsed = real[:1] + 0.01 * torch.randn(200, 8, generator=g)  # every sample near one real point
    precision, recall = M.precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.05  # realistic, but none of the variety


def test_precision_recall_bad_arguments():
    with pytest.raises(ValueError, match="same width"):
        M.precision_recall(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="k: expected an int in"):
        M.precision_recall(torch.randn(5, 3), torch.randn(3, 3), k=3)


def test_evaluate_digits_reports_confident_shares_and_precision_recall(test_set):
    real = test_set.images[:300]
    r = M.evaluate_digits(real)
    assert sum(r["confident_coverage"]) == pytest.approx(1.0)
    assert r["min_confident_share"] <= 0.1 <= r["max_confident_share"]
    assert r["precision"] > 0.9 and r["recall"] > 0.9  # real digits are on the real manifold
    ones = test_set.images[test_set.labels == 1][:100]
    r1 = M.evaluate_digits(ones)  # a perfectly collapsed "generator": realistic, no variety
    assert r1["confident_coverage"][1] > 0.95 and r1["precision"] > 0.9 and r1["recall"] < 0.3


def test_digit_table_prints_every_model_with_confident_shares(test_set):
    real = M.evaluate_digits(test_set.images[:300])
    ones = M.evaluate_digits(test_set.images[test_set.labels == 1][:100])
    table = M.digit_table({"real digits": real, "collapsed (only 1s)": ones})
    head, row_real, row_ones = table.splitlines()
    assert "precision" in head and "recall" in head and "classes (confident)" in head
    assert row_real.startswith("real digits") and f"{real['fd']:.1f}" in row_real
    assert f"{real['min_confident_share']:.1%} – {real['max_confident_share']:.1%}" in row_real
    assert row_ones.split()[-1] == f"{ones['max_confident_share']:.1%}"  # the collapse shows: ~100% one class


def test_precision_is_fooled_by_degenerate_samples_as_the_chapters_warn():
    """Documented weakness (metrics.precision_recall, chapter 02 §7): blank and pure-noise images fall into
    the large ball of an unusual reference digit, so their precision is 1.0 while recall is 0."""
    for images in (torch.zeros(200, 1, 28, 28), torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))):
        r = M.evaluate_digits(images)
        assert r["precision"] == 1.0 and r["recall"] == 0.0 and r["recognisability"] < 0.05


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 100), (100, 100), (37, 100), (1, 3), (498, 500), (5, 2000)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest, norm

    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = M.wilson_interval(k, n, z=float(norm.ppf(0.975)))
    assert low == pytest.approx(want.low, abs=1e-12) and high == pytest.approx(want.high, abs=1e-12)
    assert 0 <= low <= k / n <= high <= 1


def test_wilson_interval_rejects_a_proportion_or_impossible_counts():
    with pytest.raises(TypeError, match="a count"):
        M.wilson_interval(0.97, 100)  # a proportion passed where the count goes
    for k, n in ((3, 0), (101, 100), (-1, 10)):
        with pytest.raises(ValueError):
            M.wilson_interval(k, n)
    for z in (-1.96, 0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="z: expected a positive finite number"):
            M.wilson_interval(3, 10, z=z)
    # numpy counts: computed as Python ints (uint8 would overflow in n * n)
    assert M.wilson_interval(np.uint8(100), np.uint8(200)) == M.wilson_interval(100, 200)
    assert M.wilson_interval(np.int32(25_000), np.int32(50_000)) == M.wilson_interval(25_000, 50_000)
