"""Chapter 08 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch08`)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.core import Case, Exercise
from aigc_lib.speech import audio, fastspeech, wavenet


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _off_the_boundaries(wave: torch.Tensor, channels: int) -> torch.Tensor:
    """Move each sample so that (y + 1) / 2 · μ + 0.5 is at least 0.05 from an integer: then float32 and float64
    arithmetic round it the same way, and a correct answer in either precision gets the same codes."""
    mu = channels - 1
    y = audio.mu_law_compress(wave.double(), channels)
    u = (y + 1) / 2 * mu + 0.5
    u = u.floor() + (u - u.floor()).clamp(0.05, 0.95)
    y = (u - 0.5) * 2 / mu - 1
    x = torch.sign(y) * (torch.pow(1.0 + mu, y.abs()) - 1) / mu
    return torch.where(wave.abs() > 1, wave.double(), x).to(wave.dtype)


def wave_case(values=None, n: int = 0, seed: int = 0, scale: float = 1.0, dtype=torch.float32, channels=256) -> dict:
    """Samples to encode: given `values`, or n Laplace-like samples (speech: mostly quiet, sometimes loud), kept
    off the rounding boundaries."""
    if values is not None:
        wave = torch.tensor(values, dtype=dtype)
    else:
        g = _gen(seed)
        wave = (torch.randn(n, generator=g, dtype=dtype) * torch.rand(n, generator=g, dtype=dtype) ** 3) * scale
        wave = _off_the_boundaries(wave, channels)
    return {"wave": wave, "channels": channels}


def filterbank_case(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> dict:
    return {"n_fft": n_fft, "n_mels": n_mels, "sample_rate": sample_rate, "f_min": f_min, "f_max": f_max}


def mel_filterbank(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
    return audio.mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max)


def conv_case(B: int, C_in: int, C_out: int, T: int, k: int, dilation: int, seed: int, bias=True, dtype=torch.float32):
    g = _gen(seed)
    return {
        "x": torch.randn(B, C_in, T, generator=g, dtype=dtype),
        "weight": torch.randn(C_out, C_in, k, generator=g, dtype=dtype),
        "bias": torch.randn(C_out, generator=g, dtype=dtype) if bias else None,
        "dilation": dilation,
    }


def regulate_case(durations: list[list[int]], C: int, seed: int, dtype=torch.float32) -> dict:
    d = torch.tensor(durations, dtype=torch.long)
    return {"h": torch.randn(*d.shape, C, generator=_gen(seed), dtype=dtype), "durations": d}


def length_regulate(h, durations):
    return fastspeech.length_regulate(h, durations)[0]


EXERCISES = (
    Exercise(
        key="08.mu_law_encode",
        function="mu_law_encode",
        nudge="Two steps: compress, y = sign(x)·ln(1 + μ|x|)/ln(1 + μ) with μ = channels − 1 (after clamping x to "
        "[−1, 1]), then quantise y ∈ [−1, 1] to the nearest of `channels` evenly spaced levels: level i sits at "
        "2i/μ − 1. Codes are integers 0 … channels − 1 (int64), one per sample, in wave's shape; a half-way value "
        "rounds up.",
        reference=audio.mu_law_encode,
        hint="mu = channels - 1; x = wave.clamp(-1, 1); y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu); "
        "return torch.floor((y + 1) / 2 * mu + 0.5).long()",
        cases=(
            Case("silence, the extremes and a few values", lambda: wave_case([0.0, 1.0, -1.0, 0.5, -0.01, 0.001])),
            Case("1,000 speech-like samples (mostly quiet)", lambda: wave_case(n=1000, seed=1, scale=0.5)),
            Case("values beyond ±1 are clipped first", lambda: wave_case([-3.0, 2.5, 1.0001, -0.2])),
        ),
    ),
    Exercise(
        key="08.mel_filterbank",
        function="mel_filterbank",
        nudge="Slaney's mel scale (the cell's hz_to_mel / mel_to_hz, not 2595·log10(1 + f/700)). n_mels + 2 "
        "points evenly spaced in MEL between f_min and f_max (None: sample_rate / 2), taken back to Hz; FFT bin k "
        "sits at k·sample_rate/n_fft, k = 0 … n_fft//2. Filter m is a triangle, straight in Hz, rising from the "
        "frequency of point m to that of m + 1 and "
        "falling to m + 2, then scaled by 2 / (f_{m+2} − f_m) so every filter has the same area. float32 "
        "(n_mels, n_fft//2 + 1).",
        reference=mel_filterbank,
        hint="f_max = sample_rate / 2 if f_max is None else f_max; m = torch.linspace(float(hz_to_mel(f_min)), "
        "float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64); f = mel_to_hz(m); bins = torch.arange(n_fft "
        "// 2 + 1, dtype=torch.float64) * sample_rate / n_fft; up = (bins - f[:-2, None]) / (f[1:-1] - f[:-2])[:, "
        "None]; down = (f[2:, None] - bins) / (f[2:] - f[1:-1])[:, None]; w = torch.clamp(torch.minimum(up, down), "
        "min=0); return (w * (2 / (f[2:] - f[:-2]))[:, None]).float()",
        cases=(
            Case("16 mels of a 256-point FFT at 8 kHz", lambda: filterbank_case(256, 16, 8000), rtol=1e-4, atol=1e-7),
            Case(
                "the chapter's: 80 mels, 1024-point FFT, 22.05 kHz, up to 8 kHz",
                lambda: filterbank_case(1024, 80, 22050, 0.0, 8000.0),
                rtol=1e-4,
                atol=1e-7,
            ),
            Case(
                "40 mels from 300 Hz (all above 1 kHz is logarithmic)",
                lambda: filterbank_case(512, 40, 16000, 300.0, None),
                rtol=1e-4,
                atol=1e-7,
            ),
        ),
    ),
    Exercise(
        key="08.causal_conv",
        function="causal_conv",
        nudge="Output t may read only x[t], x[t − d], …, x[t − (k − 1)·d]: pad (k − 1)·dilation zeros on the LEFT "
        "only (F.pad's last-dimension pair is (left, right)), then an ordinary dilated F.conv1d. weight[..., -1] "
        "meets x[t]. The output has as many steps as the input; bias may be None. Return a plain tensor: built "
        "with torch.nn.Conv1d, detach it (.detach()).",
        reference=wavenet.causal_conv1d,
        hint="k = weight.shape[-1]; return F.conv1d(F.pad(x, ((k - 1) * dilation, 0)), weight, bias, dilation=dilation)",
        cases=(
            Case("kernel 2, dilation 1 (WaveNet's first layer)", lambda: conv_case(1, 2, 3, 10, 2, 1, 0)),
            Case("kernel 2, dilation 4", lambda: conv_case(2, 3, 2, 16, 2, 4, 1)),
            Case("kernel 3, dilation 2, no bias", lambda: conv_case(2, 2, 4, 12, 3, 2, 2, bias=False)),
        ),
    ),
    Exercise(
        key="08.length_regulate",
        function="length_regulate",
        nudge="Each phoneme's state is repeated for its number of frames, in order; a duration of 0 removes the "
        "phoneme. Items of a batch have different totals: pad the shorter ones with zero frames up to the longest "
        "total, (B, T, C), dtype of h.",
        reference=length_regulate,
        hint="rows = [torch.repeat_interleave(h[b], durations[b], dim=0) for b in range(len(h))]; return "
        "torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)",
        cases=(
            Case("one item, durations 2, 1, 3", lambda: regulate_case([[2, 1, 3]], 2, 0)),
            Case("two items of totals 5 and 3 (pad the second)", lambda: regulate_case([[1, 4], [2, 1]], 3, 1)),
            Case("a duration of 0 drops its phoneme", lambda: regulate_case([[0, 2, 0, 1], [1, 1, 1, 1]], 2, 2)),
        ),
    ),
)
