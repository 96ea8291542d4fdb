"""Audio signal processing for the speech chapters, in plain torch (no torchaudio, no librosa).

Short-time Fourier transforms, Slaney mel filterbanks and log-mel features (equal to librosa's
defaults), the way back from a mel spectrogram to a waveform (non-negative least squares, then
fast Griffin-Lim), mu-law companding for WaveNet, band-limited resampling, mel-cepstral distortion
(frame-aligned or along a DTW path) and a YIN pitch tracker for tone contours.

Every function takes waves as `(..., samples)` and spectrograms as `(..., bins, frames)`, float32 or
float64, on the device of its input. The STFT is centred with reflect padding (torch.stft's and
librosa's `center=True`; note that librosa 0.11's default pad_mode is "constant", so compare with
`librosa.stft(..., pad_mode="reflect")`): frame t is centred on sample t * hop, and a wave of n
samples has 1 + n // hop frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aigc_lib.checks import check_float_tensor, check_int, check_number, shape_of

SAMPLE_RATE = 22050  # espeak-ng's rate, the course's audio rate

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mel
_LOGSTEP = math.log(6.4) / 27.0


@dataclass(frozen=True)
class MelConfig:
    """The course's mel features: 80 Slaney mels up to 8 kHz from a 1024-point STFT, hop 256 (11.6 ms)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0

    def __post_init__(self) -> None:
        check_int("sample_rate", self.sample_rate)
        check_int("n_fft", self.n_fft, 2)
        check_int("hop", self.hop, 1, self.n_fft)
        check_int("n_mels", self.n_mels)
        check_number("f_min", self.f_min, 0.0, self.sample_rate / 2, inclusive=True)
        check_number("f_max", self.f_max, self.f_min, self.sample_rate / 2)
        if self.f_max <= self.f_min:
            raise ValueError(f"f_max: expected a number > f_min={self.f_min:g}, got {self.f_max!r}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, n_samples: int) -> int:
        """Frames of a centred STFT of `n_samples` samples."""
        return 1 + n_samples // self.hop


# ----------------------------------------------------------------------------------------------- checks


def _check_wave(name: str, wave: object, min_samples: int = 1) -> Tensor:
    check_float_tensor(name, wave)
    if wave.ndim < 1 or wave.shape[-1] < min_samples:
        raise ValueError(f"{name}: expected shape (..., samples) with samples >= {min_samples}, got {shape_of(wave)}")
    return wave


def _check_spec(name: str, spec: object, bins: int, what: str = "bins") -> Tensor:
    check_float_tensor(name, spec)
    if spec.ndim < 2 or spec.shape[-2] != bins or spec.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., {bins} {what}, frames), got {shape_of(spec)}")
    return spec


def _check_stft_args(n_fft: object, hop: object, *, invertible: bool = False) -> None:
    check_int("n_fft", n_fft, 2)
    # A periodic Hann window is zero at its first sample: with hop == n_fft that sample is never covered.
    check_int("hop", hop, 1, n_fft - 1 if invertible else n_fft)


# ------------------------------------------------------------------------------------------------- STFT


def _window(n_fft: int, like: Tensor) -> Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return _hann(n_fft, dtype, like.device)


@lru_cache(maxsize=16)
def _hann(n_fft: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device)  # Griffin-Lim asks 120 times


def _stft(wave: Tensor, n_fft: int, hop: int) -> Tensor:
    lead = wave.shape[:-1]
    spec = torch.stft(
        wave.reshape(-1, wave.shape[-1]),
        n_fft,
        hop,
        window=_window(n_fft, wave),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def _istft(spec: Tensor, n_fft: int, hop: int, length: int | None) -> Tensor:
    lead = spec.shape[:-2]
    wave = torch.istft(
        spec.reshape(-1, *spec.shape[-2:]), n_fft, hop, window=_window(n_fft, spec), center=True, length=length
    )
    return wave.reshape(*lead, wave.shape[-1])


def stft(wave: Tensor, n_fft: int = 1024, hop: int = 256) -> Tensor:
    """Complex STFT `(..., n_fft // 2 + 1, 1 + samples // hop)`: periodic Hann window, centred, reflect padding."""
    _check_stft_args(n_fft, hop)
    # Reflect padding needs more samples than the n_fft // 2 it mirrors.
    _check_wave("wave", wave, n_fft // 2 + 1)
    return _stft(wave, n_fft, hop)


def istft(spec: Tensor, n_fft: int = 1024, hop: int = 256, length: int | None = None) -> Tensor:
    """Inverse of `stft` (weighted overlap-add); `length` trims or pads the wave, else hop * (frames - 1)."""
    _check_stft_args(n_fft, hop, invertible=True)
    if not isinstance(spec, Tensor) or not spec.is_complex():
        raise ValueError(
            f"spec: expected a complex tensor, got {spec.dtype if isinstance(spec, Tensor) else type(spec)}"
        )
    if spec.ndim < 2 or spec.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"spec: expected shape (..., {n_fft // 2 + 1} bins, frames), got {shape_of(spec)}")
    if length is not None:
        check_int("length", length)
    return _istft(spec, n_fft, hop, length)


# ------------------------------------------------------------------------------------------------- mels


def hz_to_mel(f: Tensor | float) -> Tensor | float:
    """Hz to Slaney mels (librosa.hz_to_mel with htk=False)."""
    if isinstance(f, Tensor):
        check_float_tensor("f", f)
        linear = f / _F_SP
        log = _MIN_LOG_MEL + torch.log(f.clamp_min(_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
        return torch.where(f >= _MIN_LOG_HZ, log, linear)
    f = check_number("f", f, -math.inf)
    return _MIN_LOG_MEL + math.log(f / _MIN_LOG_HZ) / _LOGSTEP if f >= _MIN_LOG_HZ else f / _F_SP


def mel_to_hz(m: Tensor | float) -> Tensor | float:
    """Slaney mels to Hz (librosa.mel_to_hz with htk=False)."""
    if isinstance(m, Tensor):
        check_float_tensor("m", m)
        return torch.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)
    m = check_number("m", m, -math.inf)
    return _MIN_LOG_HZ * math.exp(_LOGSTEP * (m - _MIN_LOG_MEL)) if m >= _MIN_LOG_MEL else _F_SP * m


@lru_cache(maxsize=16)
def _filterbank64(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    # Built in float64 on the CPU, then cast, like librosa (which builds in float64 and returns float32).
    fft_freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # bin k at k·sr/n_fft
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    mel_f = mel_to_hz(mels)
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.minimum(lower, upper).clamp_min(0)
    # Slaney normalisation: each triangle has unit area in Hz, so wide high filters are not louder.
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def mel_filterbank(
    n_fft: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Slaney mel filterbank `(n_mels, n_fft // 2 + 1)`, equal to librosa.filters.mel (htk=False, norm="slaney")."""
    check_int("n_fft", n_fft, 2)
    check_int("n_mels", n_mels)
    check_int("sample_rate", sample_rate)
    f_max = sample_rate / 2 if f_max is None else f_max
    check_number("f_max", f_max, 0.0, sample_rate / 2)
    check_number("f_min", f_min, 0.0, f_max)
    if not f_max > f_min:
        raise ValueError(f"f_max: expected a number > f_min={f_min:g}, got {f_max!r}")
    return _filterbank64(n_fft, n_mels, sample_rate, float(f_min), float(f_max)).to(
        device=device, dtype=dtype, copy=True
    )


def _fb(cfg: MelConfig, like: Tensor) -> Tensor:
    return mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max, like.dtype, device=like.device)


def _check_cfg(cfg: object) -> MelConfig:
    if not isinstance(cfg, MelConfig):
        raise ValueError(f"cfg: expected a MelConfig, got {type(cfg).__name__}")
    return cfg


def mel_spectrogram(wave: Tensor, cfg: MelConfig = MelConfig()) -> Tensor:
    """Mel power spectrogram `(..., n_mels, frames)`: |STFT|^2 through the Slaney filterbank."""
    _check_cfg(cfg)
    power = stft(wave, cfg.n_fft, cfg.hop).abs().square()
    return _fb(cfg, wave) @ power


def log_mel(wave: Tensor, cfg: MelConfig = MelConfig(), floor: float = 1e-5) -> Tensor:
    """ln(max(mel power, floor)): the natural log of POWER (half of it is the log of mel amplitude)."""
    check_number("floor", floor, 0.0, inclusive=False)
    return mel_spectrogram(wave, cfg).clamp_min(floor).log()


def mel_to_linear(mel_power: Tensor, cfg: MelConfig = MelConfig(), iters: int = 200) -> Tensor:
    """A non-negative linear power spectrogram `(..., n_fft // 2 + 1, frames)` whose mels are `mel_power`.

    Non-negative least squares min ||M x - y||^2, x >= 0, per frame, as librosa.feature.inverse.mel_to_stft
    (which runs L-BFGS-B). Here: the pseudo-inverse clamped at 0 as the start (librosa's start too), then
    `iters` steps of accelerated projected gradient (FISTA), which is batched, differentiable-free and runs
    unchanged on a GPU. Plain pinv-then-clamp leaves the mels of the result off by the clamped energy;
    multiplicative updates would keep those zeros at zero forever. Bins above f_max (no filter) stay 0.
    """
    _check_cfg(cfg)
    _check_spec("mel_power", mel_power, cfg.n_mels, "mels")
    check_int("iters", iters, 0)
    fb = _fb(cfg, mel_power)
    y = mel_power.clamp_min(0)
    x = (torch.linalg.pinv(fb) @ y).clamp_min(0)
    fb_y = fb.T @ y
    step = 1.0 / torch.linalg.matrix_norm(fb, ord=2).square()
    z, t = x, 1.0
    for _ in range(iters):
        # the gradient M^T (M z - y) as two thin products: M is n_mels x bins, 3x fewer FLOPs than M^T M z
        x_next = (z - step * (fb.T @ (fb @ z) - fb_y)).clamp_min(0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_next + ((t - 1) / t_next) * (x_next - x)
        x, t = x_next, t_next
    return x


# ------------------------------------------------------------------------------------------ Griffin-Lim


def griffin_lim(
    magnitude: Tensor,
    n_fft: int = 1024,
    hop: int = 256,
    iters: int = 60,
    momentum: float = 0.99,
    length: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A wave whose STFT magnitude is close to `magnitude` `(..., n_fft // 2 + 1, frames)`.

    Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013), the update of librosa.griffinlim: project on
    consistent spectrograms (istft -> stft), extrapolate by `momentum`, keep the phase, restore the magnitude.
    The initial phase is uniform random from `generator` (a CPU generator seeded 0 when None, so the result
    is deterministic); random phase converges better than zero phase, which starts from a symmetric impulse.
    """
    _check_stft_args(n_fft, hop, invertible=True)
    _check_spec("magnitude", magnitude, n_fft // 2 + 1)
    check_int("iters", iters, 0)
    check_number("momentum", momentum, 0.0, 1.0)
    if length is not None:
        check_int("length", length)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    magnitude = magnitude.clamp_min(0)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype, device=generator.device)
    angles = torch.polar(magnitude, 2 * math.pi * phase.to(magnitude.device))
    eps = torch.finfo(magnitude.dtype).tiny
    # Iterate at the final length when it gives the same frames: the last frame then sees the same samples
    # (and reflect padding) as the STFT of the result, which otherwise stalls the convergence at the end.
    inner = length if length is not None and 1 + length // hop == magnitude.shape[-1] else None
    previous = None
    for _ in range(iters):
        rebuilt = _stft(_istft(angles, n_fft, hop, inner), n_fft, hop)
        angles = rebuilt if previous is None else rebuilt - (momentum / (1 + momentum)) * previous
        angles = magnitude * angles / (angles.abs() + eps)
        previous = rebuilt
    return _istft(angles, n_fft, hop, length)


def mel_to_audio(
    log_mel_spec: Tensor,
    cfg: MelConfig = MelConfig(),
    iters: int = 60,
    *,
    length: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-mel power (as `log_mel` makes it) back to a wave: exp -> mel_to_linear -> sqrt -> griffin_lim."""
    _check_cfg(cfg)
    _check_spec("log_mel_spec", log_mel_spec, cfg.n_mels, "mels")
    power = mel_to_linear(log_mel_spec.exp(), cfg)
    return griffin_lim(power.sqrt(), cfg.n_fft, cfg.hop, iters, length=length, generator=generator)


def spectral_convergence(target_magnitude: Tensor, magnitude: Tensor) -> Tensor:
    """||S - S_hat||_F / ||S||_F over the last two dims: one value per item (0 is a perfect match)."""
    check_float_tensor("target_magnitude", target_magnitude)
    check_float_tensor("magnitude", magnitude)
    if target_magnitude.ndim < 2 or magnitude.shape != target_magnitude.shape:
        raise ValueError(
            f"magnitude: expected the shape of target_magnitude {shape_of(target_magnitude)}, got {shape_of(magnitude)}"
        )
    diff = torch.linalg.matrix_norm(target_magnitude - magnitude)
    return diff / torch.linalg.matrix_norm(target_magnitude)


# ------------------------------------------------------------------------------------------------ mu-law


def mu_law_compress(wave: Tensor, channels: int = 256) -> Tensor:
    """y = sign(x) ln(1 + μ|x|) / ln(1 + μ) with μ = channels - 1, for x clamped to [-1, 1]: a logarithmic
    scale that spends the codes on quiet sounds, where the ear hears fine differences."""
    check_float_tensor("wave", wave)
    mu = check_int("channels", channels, 2) - 1
    x = wave.clamp(-1, 1)
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def mu_law_encode(wave: Tensor, channels: int = 256) -> Tensor:
    """Codes in [0, channels - 1] (int64): μ-law compression, then rounding to the nearest of `channels`
    evenly spaced levels in [-1, 1]: code = floor((y + 1) / 2 · μ + 0.5), as WaveNet implementations do
    (librosa instead takes the first level at or above y, and decodes on a grid shifted from it)."""
    mu = channels - 1
    y = mu_law_compress(wave, channels)
    return torch.floor((y.to(torch.float64) + 1) / 2 * mu + 0.5).long()


def mu_law_decode(codes: Tensor, channels: int = 256, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of `mu_law_encode`: the level y = 2 · code / μ - 1, expanded by x = sign(y) ((1 + μ)^|y| - 1) / μ.
    decode(0) = -1, decode(μ) = 1; decode(encode(x)) is x up to half a level of the compressed scale."""
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(
            f"codes: expected an integer tensor, got {codes.dtype if isinstance(codes, Tensor) else type(codes)}"
        )
    check_int("channels", channels, 2)
    if codes.numel() and (codes.min() < 0 or codes.max() >= channels):
        raise ValueError(
            f"codes: expected values in [0, {channels - 1}], got values in [{int(codes.min())}, {int(codes.max())}]"
        )
    mu = channels - 1
    y = codes.to(torch.float64) * (2.0 / mu) - 1.0
    x = torch.sign(y) / mu * (torch.pow(1.0 + mu, y.abs()) - 1)
    return x.to(dtype)


# ---------------------------------------------------------------------------------------- mel cepstrum


@lru_cache(maxsize=8)
def _dct_ortho(n: int) -> Tensor:
    # Orthonormal DCT-II matrix (scipy.fft.dct(type=2, norm="ortho")): rows are the cosine bases.
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def mel_cepstrum(log_mel_spec: Tensor, n_coeffs: int = 13) -> Tensor:
    """Mel cepstrum `(..., n_coeffs, frames)`: orthonormal DCT-II over the mels of ln(mel amplitude) =
    log_mel / 2, keeping c1..c_n_coeffs (c0, the energy, is dropped as MCD conventionally does)."""
    check_float_tensor("log_mel_spec", log_mel_spec)
    if log_mel_spec.ndim < 2 or log_mel_spec.shape[-2] < 2:
        raise ValueError(f"log_mel_spec: expected shape (..., mels >= 2, frames), got {shape_of(log_mel_spec)}")
    n_mels = log_mel_spec.shape[-2]
    check_int("n_coeffs", n_coeffs, 1, n_mels - 1)
    basis = _dct_ortho(n_mels)[1 : n_coeffs + 1].to(device=log_mel_spec.device, dtype=log_mel_spec.dtype)
    return basis @ (log_mel_spec / 2)


_MCD_SCALE = 10.0 / math.log(10.0)  # natural-log cepstra to decibels


def _mcd_frames(ca: Tensor, cb: Tensor) -> Tensor:
    return _MCD_SCALE * torch.sqrt(2 * (ca - cb).square().sum(-2))


def mel_cepstral_distortion(log_mel_a: Tensor, log_mel_b: Tensor, n_coeffs: int = 13) -> Tensor:
    """Mel-cepstral distortion in dB per item, over frame-aligned inputs `(..., n_mels, frames)`:
    mean over frames of (10 / ln 10) sqrt(2 sum_d (c_d - c_hat_d)^2). Use `mcd_dtw` for different lengths."""
    check_float_tensor("log_mel_a", log_mel_a)
    check_float_tensor("log_mel_b", log_mel_b)
    if log_mel_b.shape != log_mel_a.shape:
        raise ValueError(
            f"log_mel_b: expected the shape of log_mel_a {shape_of(log_mel_a)} (aligned frames; use mcd_dtw "
            f"otherwise), got {shape_of(log_mel_b)}"
        )
    return _mcd_frames(mel_cepstrum(log_mel_a, n_coeffs), mel_cepstrum(log_mel_b, n_coeffs)).mean(-1)


def dtw_align(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The optimal dynamic-time-warping path between the frames of a `(D, Ta)` and b `(D, Tb)`.

    Local cost: the Euclidean distance between frames; steps (1, 0), (0, 1), (1, 1), each paying the cost
    of the cell it enters; the path runs from (0, 0) to (Ta - 1, Tb - 1). Returns (index_a, index_b), two
    int64 tensors on a's device. The dynamic programme is sequential, so it runs in float64 numpy on the
    CPU, one anti-diagonal at a time (Ta + Tb vector steps, not Ta * Tb scalar ones).
    """
    check_float_tensor("a", a, ndim=2)
    check_float_tensor("b", b, ndim=2)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b: expected shape ({a.shape[0]}, frames) like a {shape_of(a)}, got {shape_of(b)}")
    if a.shape[1] < 1 or b.shape[1] < 1:
        raise ValueError(f"a, b: expected at least one frame each, got {shape_of(a)} and {shape_of(b)}")
    cost = torch.cdist(a.T.detach().double().cpu(), b.T.detach().double().cpu()).numpy()
    ta, tb = cost.shape
    acc = np.full((ta + 1, tb + 1), np.inf)  # acc[i + 1, j + 1]: cheapest path to (i, j); a border of inf
    acc[0, 0] = 0.0
    for k in range(ta + tb - 1):  # cells with i + j == k
        i = np.arange(max(0, k - tb + 1), min(ta - 1, k) + 1)
        j = k - i
        best = np.minimum(np.minimum(acc[i, j], acc[i, j + 1]), acc[i + 1, j])
        acc[i + 1, j + 1] = cost[i, j] + best
    # Walk back from the end; on ties prefer the diagonal, then a step in a, then in b.
    i, j = ta - 1, tb - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        moves = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
        i, j = min(moves, key=lambda m: acc[m[0] + 1, m[1] + 1])
        path.append((i, j))
    index = torch.tensor(path[::-1], dtype=torch.int64, device=a.device)
    return index[:, 0], index[:, 1]


def mcd_dtw(log_mel_a: Tensor, log_mel_b: Tensor, n_coeffs: int = 13) -> float:
    """MCD in dB along the DTW path between the cepstra of two utterances `(n_mels, Ta)` and `(n_mels, Tb)`."""
    check_float_tensor("log_mel_a", log_mel_a, ndim=2)
    check_float_tensor("log_mel_b", log_mel_b, ndim=2)
    if log_mel_b.shape[0] != log_mel_a.shape[0]:
        raise ValueError(f"log_mel_b: expected {log_mel_a.shape[0]} mels like log_mel_a, got {shape_of(log_mel_b)}")
    ca, cb = mel_cepstrum(log_mel_a, n_coeffs), mel_cepstrum(log_mel_b, n_coeffs)
    ia, ib = dtw_align(ca, cb)
    return float(_mcd_frames(ca[:, ia], cb[:, ib]).mean())


# ------------------------------------------------------------------------------------------- resampling


@lru_cache(maxsize=16)
def _sinc_kernels(orig: int, new: int, zeros: int, rolloff: float, beta: float) -> tuple[Tensor, int]:
    # One Kaiser-windowed sinc per output phase (torchaudio's sinc_interp_kaiser, polyphase): output sample
    # m * orig + p reads inputs around (m * orig * new + p * orig) / new; `width` inputs either side.
    cutoff = min(orig, new) * rolloff  # cycles per `orig`-input period, below both Nyquists
    width = math.ceil(zeros * orig / cutoff)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig
    t = (idx - torch.arange(new, dtype=torch.float64)[:, None] / new) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.special.i0(beta * torch.sqrt(1 - (t / zeros).square())) / torch.special.i0(torch.tensor(beta))
    kernels = torch.sinc(t) * window * (cutoff / orig)
    return kernels[:, None, :], width


def resample(wave: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling of `(..., samples)` to ceil(samples * new_sr / orig_sr) samples (as librosa).

    Kaiser-windowed sinc (16 zero crossings, beta 14.77, cutoff at 0.945 of the lower Nyquist: ~ resampy's
    kaiser_best), applied as a strided polyphase convolution, so it is local (no wrap-around, unlike an FFT
    resampler) and runs on the input's device. Edges see zeros beyond the ends.
    """
    _check_wave("wave", wave)
    check_int("orig_sr", orig_sr)
    check_int("new_sr", new_sr)
    if orig_sr == new_sr:
        return wave.clone()
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernels, width = _sinc_kernels(orig, new, 16, 0.945, 14.769656)
    n = wave.shape[-1]
    x = F.pad(wave.reshape(-1, 1, n), (width, width + orig))
    out = F.conv1d(x, kernels.to(device=wave.device, dtype=wave.dtype), stride=orig)  # (B, new, blocks)
    out = out.transpose(1, 2).reshape(*wave.shape[:-1], -1)
    return out[..., : math.ceil(n * new / orig)]


# ------------------------------------------------------------------------------------------------ pitch


def pitch_track(
    wave: Tensor,
    sample_rate: int = SAMPLE_RATE,
    hop: int = 256,
    f_min: float = 60.0,
    f_max: float = 500.0,
    *,
    threshold: float = 0.15,
    silence_db: float = -40.0,
) -> tuple[Tensor, Tensor]:
    """Fundamental frequency per frame (YIN, de Cheveigne & Kawahara 2002), aligned with the mel frames.

    Frame t is centred on sample t * hop (1 + samples // hop frames, as MelConfig). Per frame: the cumulative-
    mean-normalised difference function d'(tau) over one longest period (sample_rate / f_min) of samples; the
    period is the first local minimum of d' below `threshold` in [sample_rate / f_max, sample_rate / f_min],
    refined by a parabola. A frame is unvoiced when there is none, or when its energy is more than
    `silence_db` below the loudest frame's. Returns (f0 in Hz with NaN where unvoiced, voiced), both
    `(..., frames)`. Good enough for tone contours of clean (synthetic) speech, not a research tracker.
    """
    _check_wave("wave", wave)
    check_int("sample_rate", sample_rate)
    check_int("hop", hop)
    check_number("f_min", f_min, 1.0)
    check_number("f_max", f_max, f_min, sample_rate / 2, inclusive=False)
    check_number("threshold", threshold, 0.0, 1.0, inclusive=False)
    check_number("silence_db", silence_db, -math.inf, 0.0)
    tau_min = max(2, math.floor(sample_rate / f_max))
    tau_max = math.ceil(sample_rate / f_min)
    win = tau_max + 1  # integration window: one longest period
    seg = win + tau_max + 1
    n = wave.shape[-1]
    frames_n = 1 + n // hop
    x = wave.reshape(-1, n)
    # Zero padding (not reflect) so a short wave works and the ends read as silence.
    x = F.pad(x, (seg // 2, seg + hop))
    frames = x.unfold(-1, seg, hop)[:, :frames_n]  # (B, T, seg), frame t centred on t * hop
    # d(tau) = sum_j (x_j - x_{j+tau})^2 = E(0) + E(tau) - 2 r(tau), with r by FFT correlation.
    nfft = 1 << (seg + win - 1).bit_length()
    spec = torch.fft.rfft(frames, nfft) * torch.fft.rfft(frames[..., :win], nfft).conj()
    r = torch.fft.irfft(spec, nfft)[..., : tau_max + 2]
    sq = F.pad(frames.square().cumsum(-1), (1, 0))
    energy = sq[..., win : win + tau_max + 2] - sq[..., : tau_max + 2]  # sum_{j<win} x_{j+tau}^2
    d = (energy[..., :1] + energy - 2 * r).clamp_min(0)
    tau = torch.arange(tau_max + 2, device=wave.device, dtype=wave.dtype)
    cum = d[..., 1:].cumsum(-1)
    dn = torch.ones_like(d)
    dn[..., 1:] = d[..., 1:] * tau[1:] / cum.clamp_min(torch.finfo(wave.dtype).tiny)
    # First local minimum below threshold, in the allowed range.
    mid = dn[..., 1:-1]
    is_min = (mid <= dn[..., :-2]) & (mid <= dn[..., 2:]) & (mid < threshold)
    lags = torch.arange(1, tau_max + 1, device=wave.device)
    is_min &= (lags >= tau_min) & (lags <= tau_max)
    found = is_min.any(-1)
    best = torch.where(found, is_min.int().argmax(-1) + 1, torch.full_like(found, tau_min, dtype=torch.int64))
    # Parabolic interpolation through d'(best - 1), d'(best), d'(best + 1).
    ym, y0, yp = (dn.gather(-1, (best + k)[..., None])[..., 0] for k in (-1, 0, 1))
    denom = ym - 2 * y0 + yp
    shift = torch.where(denom > 0, 0.5 * (ym - yp) / denom.clamp_min(1e-12), torch.zeros_like(denom)).clamp(-1, 1)
    period = best.to(wave.dtype) + shift
    frame_energy = sq[..., -1]  # the whole segment, centred on the frame
    loud = frame_energy.amax(-1, keepdim=True)
    voiced = found & (frame_energy > loud * 10 ** (silence_db / 10)) & (frame_energy > 0)
    f0 = torch.where(voiced, sample_rate / period, torch.full_like(period, math.nan))
    lead = wave.shape[:-1]
    return f0.reshape(*lead, frames_n), voiced.reshape(*lead, frames_n)
