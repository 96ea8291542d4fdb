"""Quality metrics for the course's generators.

Images (GAN, VAE, diffusion on 28x28 digits). Inception weights cannot be downloaded here, so the
Fréchet distance is taken on the 128-d penultimate features of a small, fixed digit classifier
(`DigitClassifier`) whose weights ship with the library (`aigc_lib/assets/digit_classifier.pt`):

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

A FD only means something next to the real-vs-real floor: the FD between real digits the generator
never had to produce and the same reference, at the same sample size (FD is biased upwards at small
n). Here the reference is mnist5k("test") (1,000 digits, unseen by the classifier) and the floor
draws n real digits from mnist5k("train") (`real_floor`). Next to it: recognisability (share of
samples the classifier labels with >= 0.9 confidence) and class coverage (share per predicted class).

Text: nats and bits per character, bpc = nll_nats / ln 2.

Retrain the classifier (rewrites the asset; 1-2 minutes on 2 idle CPU cores, deterministic):

    python -m aigc_lib classifier --retrain
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc_lib.data import mnist5k
from aigc_lib.runtime import get_device, seed_everything

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "digit_classifier.pt"
# Bump ARCH_VERSION when DigitClassifier changes shape; the asset records the version it was made for.
ARCH_VERSION = 1
TRAIN_SEED = 0
NUM_CLASSES = 10
CONFIDENT = 0.9  # recognisability threshold on the max softmax probability

Tensorish = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------
# The digit classifier


@dataclass(frozen=True)
class DigitClassifierConfig:
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 128  # D, the dimension the Fréchet distance is taken in
    dropout: float = 0.2


class DigitClassifier(nn.Module):
    """Two conv blocks -> D-d feature layer -> linear head, for (B, 1, 28, 28) inputs in [0, 1]."""

    def __init__(self, config: DigitClassifierConfig = DigitClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        # spatial size 28 -> 14 -> 7 -> 3
        self.conv = nn.Sequential(block(1, c1), block(c1, c2), nn.MaxPool2d(2))
        self.fc = nn.Linear(c2 * 3 * 3, config.feature_dim)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations h = ReLU(W flatten(conv(x)) + b), the space FD is measured in."""
        h = self.conv(x)  # (B, C2, 3, 3)
        return F.relu(self.fc(h.flatten(1)))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits z = W_head h (B, 10); softmax(z) is the class probability."""
        return self.head(self.drop(self.features(x)))  # (B, 10)


def _random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Meaning-preserving augmentation: rotate +-12 deg, scale 0.9-1.1, shear +-0.15, shift +-2.5 px.

    No flips: a mirrored digit is a different symbol (or none)."""
    b = x.shape[0]
    u = torch.rand(b, 5, generator=gen) * 2 - 1  # (B, 5) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(12)
    scale = 1 + 0.1 * u[:, 1]
    shear = 0.15 * u[:, 2]
    shift = u[:, 3:] * (2.5 / 14)  # affine_grid works in [-1, 1] coordinates: 14 px = 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
            torch.stack([sin, cos + shear * sin, shift[:, 1]], 1),
        ],
        1,
    )  # (B, 2, 3) maps output coords to input coords
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _augment(x: torch.Tensor, gen: torch.Generator, noisy: float = 0.3) -> torch.Tensor:
    """Random affine, then on a share `noisy` of the digits light pixel noise (amplitude <= 0.3):
    a digit on a slightly noisy background is still that digit (as a half-trained generator draws it)."""
    x = _random_affine(x, gen)  # (B, 1, 28, 28)
    b = x.shape[0]
    amp = 0.3 * torch.rand(b, 1, 1, 1, generator=gen)  # (B, 1, 1, 1)
    amp = amp * (torch.rand(b, 1, 1, 1, generator=gen) < noisy)  # noise on a share `noisy` only
    return (x + amp * torch.rand(x.shape, generator=gen)).clamp(0, 1)


def _outliers(digits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Non-digits for outlier exposure (B, 1, 28, 28) in [0, 1]: noise of several kinds and pixel-shuffled digits.

    Trained towards a uniform prediction, they teach the classifier to be unsure of garbage, so that
    recognisability of noise (an untrained generator) is low instead of a confident "8"."""
    b = digits.shape[0]
    r = torch.rand(b, 1, 1, 1, generator=gen)  # (B, 1, 1, 1) per-image strength
    uniform = torch.rand(b, 1, 28, 28, generator=gen) * (0.3 + 0.7 * r)
    sd = 0.1 + 0.4 * torch.rand(b, 1, 1, 1, generator=gen)
    gauss = (0.6 * r + sd * torch.randn(b, 1, 28, 28, generator=gen)).clamp(0, 1)
    sparse = (torch.rand(b, 1, 28, 28, generator=gen) < 0.05 + 0.35 * r).float()
    k = 4 + int(torch.randint(0, 4, (1,), generator=gen))  # blobs of 28 / k pixels
    blobs = torch.sigmoid(4 * F.interpolate(torch.randn(b, 1, k, k, generator=gen), size=28, mode="bilinear") - 2)
    shuffled = digits.flatten(1)[:, torch.randperm(784, generator=gen)].reshape(b, 1, 28, 28)
    constant = r.expand(b, 1, 28, 28)
    kinds = torch.stack([uniform, gauss, sparse, blobs, shuffled, constant])  # (6, B, 1, 28, 28)
    pick = torch.randint(0, len(kinds), (b,), generator=gen)  # (B,)
    return kinds[pick, torch.arange(b)]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of `images` whose argmax logit equals the label."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(images[i : i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == labels[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(labels)


def train_digit_classifier(
    epochs: int = 12,
    seed: int = TRAIN_SEED,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    outlier_weight: float = 0.5,
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> tuple[DigitClassifier, float]:
    """Train `DigitClassifier` on mnist5k("train") with meaning-preserving augmentation (`_augment`).

    AdamW with a one-cycle learning rate. Loss, with outlier exposure (Hendrycks et al., 2019):
        L = CE(z(x), y) + outlier_weight * mean_k(-log softmax(z(x_out))_k)
    where x_out are non-digits (`_outliers`, half a batch) pushed towards the uniform prediction.
    Returns (model in eval mode, test accuracy on mnist5k("test")). CPU, 2 idle cores: 1-2 minutes.
    """
    seed_everything(seed)
    device = get_device(device) if not isinstance(device, torch.device) else device
    train, test = mnist5k("train"), mnist5k("test")
    gen = torch.Generator().manual_seed(seed)  # owns shuffling and augmentation
    model = DigitClassifier().to(device)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        totals = torch.zeros(2, device=device)  # summed (digit CE, outlier CE to uniform)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = _augment(train.images[idx], gen).to(device)  # (B, 1, 28, 28)
            y = train.labels[idx].to(device)  # (B,)
            x_out = _outliers(train.images[idx[: len(idx) // 2]], gen).to(device)  # (B/2, 1, 28, 28)
            logits = model(torch.cat([x, x_out]))  # (3B/2, 10)
            ce = F.cross_entropy(logits[: len(y)], y)
            ce_out = -logits[len(y) :].log_softmax(-1).mean()  # CE to the uniform target; >= ln 10
            loss = ce + outlier_weight * ce_out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals += torch.stack([ce.detach(), ce_out.detach()])
        ce_mean, out_mean = (totals / steps_per_epoch).tolist()  # one host sync per epoch
        if not (math.isfinite(ce_mean) and math.isfinite(out_mean)):
            raise FloatingPointError(f"digit classifier: loss became NaN/inf in epoch {epoch + 1}")
        if verbose:
            print(
                f"epoch {epoch + 1:2d}/{epochs}  digit CE {ce_mean:.4f}  outlier CE {out_mean:.4f} (min ln10 = 2.3026)"
                f"  {time.perf_counter() - t0:5.1f}s",
                flush=True,
            )
    model.eval()
    test_acc = accuracy(model, test.images, test.labels)
    if verbose:
        print(f"test accuracy {test_acc:.4f} on {len(test)} digits, {time.perf_counter() - t0:.1f}s")
    return model, test_acc


def save_digit_classifier(model: DigitClassifier, test_accuracy: float, seed: int, path: Path = ASSET_PATH) -> Path:
    """Write the float32 state_dict with its metadata (architecture version, config, accuracy, seed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    config = asdict(model.config)
    config["channels"] = list(config["channels"])
    torch.save(
        {
            "arch_version": ARCH_VERSION,
            "config": config,
            "test_accuracy": float(test_accuracy),
            "seed": int(seed),
            "torch_version": str(torch.__version__),
            "state_dict": state,
        },
        path,
    )
    return path


def read_asset(path: Path = ASSET_PATH) -> dict:
    """The asset's contents: metadata and state_dict (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digit classifier weights not found at {path}; run `python -m aigc_lib classifier --retrain`"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("arch_version") != ARCH_VERSION:
        raise RuntimeError(
            f"{path}: weights are for DigitClassifier version {blob.get('arch_version')}, the code is version "
            f"{ARCH_VERSION}; run `python -m aigc_lib classifier --retrain`"
        )
    return blob


_CLASSIFIERS: dict[str, DigitClassifier] = {}


def load_digit_classifier(device: str | torch.device | None = None) -> DigitClassifier:
    """The shipped classifier on `device`: loaded once per device, eval mode, frozen. Never retrains."""
    device = get_device(device) if not isinstance(device, torch.device) else device
    key = str(device)
    if key not in _CLASSIFIERS:
        blob = read_asset()
        cfg = dict(blob["config"])
        cfg["channels"] = tuple(cfg["channels"])
        model = DigitClassifier(DigitClassifierConfig(**cfg))
        model.load_state_dict(blob["state_dict"])
        model.eval().requires_grad_(False)
        # channels_last: ~1.4x faster convs at inference on CPU, and what cuDNN prefers
        _CLASSIFIERS[key] = model.to(device, memory_format=torch.channels_last)
    return _CLASSIFIERS[key]


# ----------------------------------------------------------------------------------------------
# The Fréchet distance


def _as_float64_2d(x: Tensorish, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array of shape (N, D), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of features (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 rows (samples) to estimate a covariance, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu = mean over rows (D,), S = (X - mu)^T (X - mu) / (N - 1) (D, D), the unbiased covariance."""
    mu = x.mean(0)  # (D,)
    xc = x - mu  # (N, D)
    return mu, xc.T @ xc / (x.shape[0] - 1)  # (D,), (D, D)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """S^{1/2} = U diag(sqrt(max(lambda, 0))) U^T from the symmetric eigendecomposition S = U diag(lambda) U^T."""
    lam, u = torch.linalg.eigh((s + s.T) / 2)
    return (u * lam.clamp_min(0).sqrt()) @ u.T


def frechet_from_stats(mu_a: torch.Tensor, s_a: torch.Tensor, mu_b: torch.Tensor, s_b: torch.Tensor) -> float:
    """FD = ||mu_a - mu_b||^2 + Tr S_a + Tr S_b - 2 Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}, in float64.

    The last trace is the sum of sqrt(eigenvalues) of the symmetric PSD matrix M = S_a^{1/2} S_b S_a^{1/2};
    tiny negative eigenvalues from rounding are clamped to 0, so no complex parts appear (unlike sqrtm).
    """
    root_a = _psd_sqrt(s_a)  # (D, D)
    m = root_a @ s_b @ root_a  # (D, D)
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)  # FD >= 0; a tiny negative is rounding


def frechet_distance(feats_a: Tensorish, feats_b: Tensorish) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (N_a, D) and (N_b, D).

    FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}), computed in float64.
    """
    a = _as_float64_2d(feats_a, "feats_a")
    b = _as_float64_2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feats_a and feats_b: expected the same feature dimension D, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return frechet_from_stats(*_mean_cov(a), *_mean_cov(b))


# ----------------------------------------------------------------------------------------------
# Classifier-based image metrics

RANGE_TOLERANCE = 0.02  # values within [-tol, 1 + tol] are clamped to [0, 1]; beyond that is an error


def check_digit_images(images: Tensorish, name: str = "images") -> torch.Tensor:
    """Validate and reshape to float32 (N, 1, 28, 28) in [0, 1]; accepts (N, 1, 28, 28), (N, 28, 28), (N, 784)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim == 4 and shape[1:] == (1, 28, 28):
        x = images
    elif images.ndim == 3 and shape[1:] == (28, 28):
        x = images.unsqueeze(1)
    elif images.ndim == 2 and shape[1] == 784:
        x = images.reshape(-1, 1, 28, 28)
    else:
        raise ValueError(f"{name}: expected shape (N, 1, 28, 28), (N, 28, 28) or (N, 784), got {shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: got no images (shape {shape})")
    if x.dtype == torch.uint8:
        raise ValueError(f"{name}: got uint8 pixels (0..255); pass images.float() / 255 so values lie in [0, 1]")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point pixels in [0, 1], got dtype {x.dtype}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    lo, hi = x.min().item(), x.max().item()
    if hi > 1 + RANGE_TOLERANCE and hi > 2:
        raise ValueError(
            f"{name}: values should lie in [0, 1] but range over [{lo:.3g}, {hi:.3g}], which looks like [0, 255]; pass images / 255"
        )
    if lo < -RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: values should lie in [0, 1] but range over [{lo:.3g}, {hi:.3g}], which looks like [-1, 1] "
            f"(e.g. a tanh output); pass (images + 1) / 2"
        )
    if hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: values should lie in [0, 1] but range over [{lo:.3g}, {hi:.3g}]; pass images.clamp(0, 1)"
        )
    return x.clamp(0, 1)


@torch.no_grad()
def _features_and_probs(
    images: Tensorish, batch_size: int = 500, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the classifier: features (N, D) and softmax probabilities (N, 10), float32 on CPU."""
    x = check_digit_images(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    model = load_digit_classifier(device)
    dev = next(model.parameters()).device
    feats, probs = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(dev, memory_format=torch.channels_last)  # (B, 1, 28, 28)
        h = model.features(xb)  # (B, D)
        feats.append(h.float().cpu())
        probs.append(model.head(h).float().softmax(-1).cpu())  # (B, 10), dropout is off in eval
    return torch.cat(feats), torch.cat(probs)


def digit_features(images: Tensorish, batch_size: int = 500, device: str | torch.device | None = None) -> torch.Tensor:
    """Classifier features (N, D) of digit images in [0, 1], float32 on CPU."""
    return _features_and_probs(images, batch_size, device)[0]


def digit_probs(images: Tensorish, batch_size: int = 500, device: str | torch.device | None = None) -> torch.Tensor:
    """Classifier class probabilities softmax(z) (N, 10) of digit images in [0, 1], float32 on CPU."""
    return _features_and_probs(images, batch_size, device)[1]


def _device_key(device: str | torch.device | None) -> str:
    return str(get_device(device) if not isinstance(device, torch.device) else device)


@lru_cache(maxsize=4)
def _reference_features(device_key: str) -> torch.Tensor:
    """Features of all of mnist5k("test"), computed once per device and kept in memory. (1000, D)"""
    return digit_features(mnist5k("test").images, device=device_key)


@lru_cache(maxsize=32)
def _reference_stats(n_ref: int, device_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, S) of the first n_ref reference digits."""
    return _mean_cov(_as_float64_2d(_reference_features(device_key)[:n_ref], "reference features"))


def _check_count(value: int | None, name: str, low: int, high: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")
    return value


def _resolve_n_ref(n_ref: int | None, device_key: str) -> int:
    n_test = len(_reference_features(device_key))
    return _check_count(n_ref, "n_ref", 2, n_test, default=n_test)


@lru_cache(maxsize=1)
def _train_images() -> torch.Tensor:
    return mnist5k("train").images  # (4000, 1, 28, 28)


def reference_features(n_ref: int | None = None, device: str | torch.device | None = None) -> torch.Tensor:
    """Features (n_ref, D) of the reference set: the first n_ref of mnist5k("test") (default 1,000)."""
    device_key = _device_key(device)
    n_ref = _resolve_n_ref(n_ref, device_key)
    return _reference_features(device_key)[:n_ref].clone()  # a copy: callers cannot edit the cache


def frechet_digit_distance(
    samples: Tensorish, reference: Tensorish | None = None, device: str | torch.device | None = None
) -> float:
    """FD between classifier features of `samples` and of `reference` images (default: all of
    mnist5k("test"), whose statistics are cached)."""
    device_key = _device_key(device)
    feats = _as_float64_2d(digit_features(samples, device=device_key), "samples")  # (N, D)
    if reference is None:
        ref_stats = _reference_stats(_resolve_n_ref(None, device_key), device_key)
        return frechet_from_stats(*_mean_cov(feats), *ref_stats)
    return frechet_distance(feats, digit_features(reference, device=device_key))


def real_floor(n: int, seed: int = 0, n_ref: int | None = None, device: str | torch.device | None = None) -> float:
    """The real-vs-real floor: FD between n real digits of mnist5k("train"), drawn without replacement
    with `seed`, and the reference (the first n_ref digits of mnist5k("test"), default all 1,000).
    The two sets are disjoint; with n = n_ref = 1000 they are two real sets of the same size.

    FD is biased upwards at small n, so read a generator's FD over n samples against real_floor(n).
    The classifier was trained on the train digits, which makes their features a little tighter than
    those of unseen digits: this floor is slightly higher (easier to reach) than one between two
    unseen sets. Cached: repeated calls with the same arguments cost nothing.
    """
    n = _check_count(n, "n", 2, len(_train_images()))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    device_key = _device_key(device)
    return _real_floor(n, seed, _resolve_n_ref(n_ref, device_key), device_key)


@lru_cache(maxsize=64)
def _real_floor(n: int, seed: int, n_ref: int, device_key: str) -> float:
    train = _train_images()
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]  # (n,)
    feats = _as_float64_2d(digit_features(train[idx], device=device_key), "train features")
    return frechet_from_stats(*_mean_cov(feats), *_reference_stats(n_ref, device_key))


def recognisability(images: Tensorish, threshold: float = CONFIDENT, device: str | torch.device | None = None) -> float:
    """Share of images the classifier labels with confidence max_k softmax(z)_k >= threshold."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold!r}")
    probs = digit_probs(images, device=device)  # (N, 10)
    return (probs.max(1).values >= threshold).float().mean().item()


class Coverage(NamedTuple):
    shares: torch.Tensor  # (10,) share of images predicted as each class (argmax), sums to 1
    n_classes: int  # classes with at least one image predicted with confidence >= threshold


def _coverage(probs: torch.Tensor, threshold: float) -> Coverage:
    conf, pred = probs.max(1)  # (N,), (N,)
    shares = torch.bincount(pred, minlength=NUM_CLASSES).double() / len(pred)  # (10,)
    return Coverage(shares, int(torch.unique(pred[conf >= threshold]).numel()))


def class_coverage(
    images: Tensorish, threshold: float = CONFIDENT, device: str | torch.device | None = None
) -> Coverage:
    """Per-class shares of the classifier's argmax labels (10,), and how many classes are present
    (predicted at least once with confidence >= threshold). Uniform coverage is 0.1 per class."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold!r}")
    return _coverage(digit_probs(images, device=device), threshold)


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row. (N,)"""
    d = torch.cdist(feats, feats)  # (N, N), 0 on the diagonal
    return d.kthvalue(k + 1, dim=1).values  # the +1 skips the point itself


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of `points` inside at least one ball (centre_j, radius_j)."""
    inside = (torch.cdist(points, centres) <= radii[None, :]).any(1)  # (P,)
    return inside.double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall for generative models (Kynkäänniemi et al., NeurIPS 2019).

    Each set's manifold is the union of balls around its points, each ball's radius the distance to
    that point's k-th nearest neighbour in its own set:
        precision = share of fake points inside the real manifold   (are samples realistic?)
        recall    = share of real points inside the fake manifold   (is the data's variety covered?)
    real (N, D), fake (M, D) feature vectors (here the digit classifier's); k >= 1, N and M > k.

    A known weakness (Naeem et al., ICML 2020): an outlier among the real points has a large ball, and
    degenerate samples can fall into it. With the course's 1,000 reference digits, blank or pure-noise
    images score precision 1.0 (and recall 0.0); read precision beside recall and recognisability."""
    if (
        not isinstance(real, torch.Tensor)
        or not isinstance(fake, torch.Tensor)
        or real.ndim != 2
        or fake.ndim != 2
        or real.shape[1] != fake.shape[1]
    ):
        raise ValueError(
            f"real, fake: expected 2-D feature tensors of the same width, got "
            f"{tuple(getattr(real, 'shape', ()))} and {tuple(getattr(fake, 'shape', ()))}"
        )
    k = _check_count(k, "k", 1, min(len(real), len(fake)) - 1)
    real, fake = real.double(), fake.double()
    precision = _fraction_inside(fake, real, _knn_radii(real, k))
    recall = _fraction_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


def evaluate_digits(
    samples: Tensorish,
    n_ref: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """All image metrics for a batch of generated digits in [0, 1] (one classifier pass over `samples`).

    Returns a dict: n, n_ref, fd (vs the first n_ref of mnist5k("test")), fd_floor (`real_floor` at the
    same n, capped at 4,000 real train digits), fd_ratio = fd / fd_floor, recognisability,
    coverage (10 shares of the classifier's argmax over ALL samples, unrecognisable ones included),
    min_class_share, max_class_share, n_classes; confident_coverage, min_confident_share,
    max_confident_share (the same shares over the samples classified with confidence >= 0.9 only:
    what mode-collapse claims should use; zeros if none is confident); precision and recall
    (`precision_recall`, k = 3, on classifier features against the same reference digits).
    """
    device_key = _device_key(device)
    feats, probs = _features_and_probs(samples, device=device_key)  # (N, D), (N, 10)
    if feats.shape[0] < 2:
        raise ValueError(f"samples: need at least 2 images for a Fréchet distance, got shape {tuple(feats.shape)}")
    n, n_ref = feats.shape[0], _resolve_n_ref(n_ref, device_key)
    mu_s, cov_s = _mean_cov(_as_float64_2d(feats, "samples"))
    fd = frechet_from_stats(mu_s, cov_s, *_reference_stats(n_ref, device_key))
    floor = real_floor(min(n, len(_train_images())), seed, n_ref, device_key)
    cov = _coverage(probs, CONFIDENT)
    conf, pred = probs.max(1)
    confident = torch.bincount(pred[conf >= CONFIDENT], minlength=NUM_CLASSES).double()
    confident = confident / confident.sum().clamp_min(1)  # (10,)
    precision, recall = precision_recall(_reference_features(device_key)[:n_ref], feats, k=min(3, n - 1))
    return {
        "n": n,
        "n_ref": n_ref,
        "fd": fd,
        "fd_floor": floor,
        "fd_ratio": fd / floor if floor > 0 else float("inf"),
        "recognisability": (probs.max(1).values >= CONFIDENT).float().mean().item(),
        "coverage": cov.shares.tolist(),
        "min_class_share": cov.shares.min().item(),
        "max_class_share": cov.shares.max().item(),
        "n_classes": cov.n_classes,
        "confident_coverage": confident.tolist(),
        "min_confident_share": confident.min().item(),
        "max_confident_share": confident.max().item(),
        "precision": precision,
        "recall": recall,
    }


def digit_table(results: dict[str, dict]) -> str:
    """One line per model of `evaluate_digits` results, the same columns in every chapter: FD and its
    ratio to the floor, recognisability, precision and recall, and the smallest and largest class
    share among the CONFIDENT samples (how many there were is the recognisability x n)."""
    head = (
        f"{'model':<28}{'FD':>8}{'FD/floor':>9}{'recognisable':>13}{'precision':>10}{'recall':>8}"
        f"{'classes (confident)':>21}"
    )
    rows = [head]
    for name, r in results.items():
        rows.append(
            f"{name:<28}{r['fd']:8.1f}{r['fd_ratio']:9.1f}{r['recognisability']:13.1%}{r['precision']:10.2f}"
            f"{r['recall']:8.2f}{r['min_confident_share']:>13.1%} – {r['max_confident_share']:.1%}"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Text: nats and bits per character

LN2 = math.log(2)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion, k successes in n trials (Wilson, JASA 1927), at
    z = 1.96 for 95%: centre ± half with

        centre = (p + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) · √(p(1 − p)/n + z²/4n²),   p = k / n.

    Unlike p ± z√(p(1 − p)/n), it stays inside [0, 1] and is not empty at k = 0 or k = n (100 of 100
    gives 96.3%–100%). scipy.stats.binomtest(k, n).proportion_ci(method="wilson") is the reference."""
    if isinstance(successes, bool) or not isinstance(successes, int | np.integer):
        raise TypeError(f"successes: expected an int (a count), got {successes!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: expected 0 <= successes <= n = {n}, got {successes}")
    if isinstance(z, bool) or not isinstance(z, int | float) or not 0 < z < math.inf:
        raise ValueError(f"z: expected a positive finite number (1.96 for 95%), got {z!r}")
    successes, n = int(successes), int(n)  # Python ints: numpy's overflow in n * n
    p, zz = successes / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z / (1 + zz / n) * math.sqrt(p * (1 - p) / n + zz / (4 * n * n))
    # exactly 0 at k = 0 and 1 at k = n (the formula's two terms cancel there, up to rounding)
    return (centre - half if successes else 0.0), (centre + half if successes < n else 1.0)


def nats_to_bits(x: float | torch.Tensor) -> float | torch.Tensor:
    """bits = nats / ln 2."""
    return x / LN2


def bits_per_char(nll_nats: float | torch.Tensor) -> float | torch.Tensor:
    """bpc = (mean negative log-likelihood per character, in nats) / ln 2."""
    return nats_to_bits(nll_nats)


def cross_entropy_nats_per_char(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean NLL in nats per character: -(1/N) sum_i log softmax(z_i)[y_i], over targets != ignore_index.

    logits (B, T, V) or (N, V); targets (B, T) or (N,) of class indices. Returns a 0-d tensor.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("logits and targets: expected torch.Tensors")
    if logits.ndim < 2 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"logits and targets: expected logits (..., V) and targets (...) with matching leading dims, "
            f"got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise ValueError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1).long(),
        ignore_index=ignore_index,
    )
