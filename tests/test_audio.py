"""Tests for aigc_lib.speech.audio, against librosa (a test-only reference) where librosa has the same thing.

Our STFT pads by reflection (torch.stft's center=True); librosa 0.11 pads with zeros by default, so every
comparison passes pad_mode="reflect" to librosa.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aigc_lib.speech import audio as A

librosa = pytest.importorskip("librosa")

SR = A.SAMPLE_RATE


def glide(seconds: float = 1.0, pad: int = 0, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic complex (5 harmonics, 1/k amplitudes) gliding 120 -> 240 Hz, with `pad` zeros either side;
    returns the wave and f0(t) on the unpadded part's samples."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 * 2 ** (t / seconds)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 6))
    return np.concatenate([np.zeros(pad), x, np.zeros(pad)]), f0


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SR // 2)


# ------------------------------------------------------------------------------------------- mels, STFT


@pytest.mark.parametrize(
    "sr, n_fft, n_mels, fmin, fmax",
    [(22050, 1024, 80, 0.0, 8000.0), (16000, 512, 40, 20.0, None), (8000, 255, 10, 0.0, None)],
)
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels, fmin, fmax):
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)
    ours = A.mel_filterbank(n_fft, n_mels, sr, fmin, fmax, dtype=torch.float64)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6 * ref.max())
    assert A.mel_filterbank(n_fft, n_mels, sr, fmin, fmax).dtype == torch.float32


def test_mel_scale_equals_librosa():
    hz = np.array([0.0, 50.0, 440.0, 999.9, 1000.0, 1000.1, 4000.0, 8000.0, 11025.0])
    np.testing.assert_allclose(A.hz_to_mel(torch.tensor(hz)).numpy(), librosa.hz_to_mel(hz), rtol=1e-12)
    mels = librosa.hz_to_mel(hz)
    np.testing.assert_allclose(A.mel_to_hz(torch.tensor(mels)).numpy(), librosa.mel_to_hz(mels), rtol=1e-12)
    for f in hz:
        assert A.hz_to_mel(float(f)) == pytest.approx(float(librosa.hz_to_mel(f)), rel=1e-12)
        assert A.mel_to_hz(A.hz_to_mel(float(f))) == pytest.approx(f, rel=1e-12, abs=1e-9)


def test_stft_equals_librosa_and_round_trips(noise):
    x = torch.tensor(noise)
    ref = librosa.stft(noise, n_fft=1024, hop_length=256, pad_mode="reflect")
    ours = A.stft(x)
    assert ours.shape == ref.shape == (513, A.MelConfig().frames(len(noise)))
    assert np.abs(ours.numpy() - ref).max() <= 1e-6 * np.abs(ref).max()
    np.testing.assert_allclose(A.istft(ours, length=len(noise)).numpy(), noise, atol=1e-6)
    assert A.istft(ours).shape[-1] == 256 * (ours.shape[-1] - 1)  # librosa's length without `length`
    # Batched, float32.
    batch = torch.stack([x, 2 * x]).float()
    spec = A.stft(batch, n_fft=512, hop=128)
    assert spec.shape == (2, 257, 1 + len(noise) // 128) and spec.dtype == torch.complex64
    torch.testing.assert_close(A.istft(spec, 512, 128, length=len(noise)), batch, atol=1e-5, rtol=0)


def test_mel_spectrogram_and_log_mel_equal_librosa(noise):
    ref = librosa.feature.melspectrogram(
        y=noise, sr=SR, n_fft=1024, hop_length=256, n_mels=80, fmin=0.0, fmax=8000.0, power=2.0, pad_mode="reflect"
    )
    ours = A.mel_spectrogram(torch.tensor(noise))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-6 * ref.max())  # librosa's bank is float32
    np.testing.assert_allclose(A.log_mel(torch.tensor(noise)).numpy(), np.log(np.maximum(ref, 1e-5)), atol=1e-5)
    assert A.log_mel(torch.zeros(2, 3, 1000)).shape == (2, 3, 80, 1 + 1000 // 256)
    assert (A.log_mel(torch.zeros(1000)) == math.log(1e-5)).all()


# ------------------------------------------------------------------------------------- back to audio


@pytest.fixture(scope="module")
def glide_mag() -> torch.Tensor:
    x, _ = glide()
    return A.stft(torch.tensor(x)).abs()


def test_griffin_lim_converges_like_librosa(glide_mag):
    # Measured (seed 0): ours 0.159 after 10 iterations and 0.051 after 60; librosa 0.190 and 0.064
    # (other seeds: ours 0.06-0.08 after 60).
    sc = {}
    for iters in (10, 60):
        wave = A.griffin_lim(glide_mag, iters=iters, length=SR)
        assert wave.shape == (SR,)
        sc[iters] = A.spectral_convergence(glide_mag, A.stft(wave).abs()).item()
    ref_wave = librosa.griffinlim(
        glide_mag.numpy(), n_iter=60, hop_length=256, n_fft=1024, pad_mode="reflect", length=SR, random_state=0
    )
    sc_ref = A.spectral_convergence(glide_mag, A.stft(torch.tensor(ref_wave)).abs()).item()
    assert sc[60] < 0.1
    assert sc[60] <= 1.25 * sc_ref
    assert sc[60] < 0.5 * sc[10]
    # Deterministic given the generator (seed 0 by default); float32 works too.
    again = A.griffin_lim(glide_mag, iters=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(A.griffin_lim(glide_mag, iters=3), again, rtol=0, atol=0)
    assert A.griffin_lim(glide_mag.float(), iters=3).dtype == torch.float32


def test_mel_to_linear_inverts_the_filterbank(glide_mag):
    cfg = A.MelConfig()
    mel = A.mel_spectrogram(torch.tensor(glide()[0]), cfg)
    linear = A.mel_to_linear(mel, cfg)
    assert linear.shape == (cfg.n_freqs, mel.shape[-1]) and (linear >= 0).all()
    fb = A.mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max, torch.float64)
    # Measured 1e-4 after 200 steps (the clamped pseudo-inverse alone: 0.10).
    assert (fb @ linear - mel).norm() / mel.norm() < 2e-3
    batched = A.mel_to_linear(torch.stack([mel, mel]).float(), cfg, iters=20)
    assert batched.shape == (2, cfg.n_freqs, mel.shape[-1]) and batched.dtype == torch.float32


def test_mel_to_audio_reconstructs_the_mels():
    x = torch.tensor(glide()[0])
    wave = A.mel_to_audio(A.log_mel(x), iters=30, length=SR)
    assert wave.shape == (SR,) and torch.isfinite(wave).all()
    mel, mel_back = A.mel_spectrogram(x), A.mel_spectrogram(wave)
    assert A.spectral_convergence(mel.sqrt(), mel_back.sqrt()) < 0.15  # measured 0.05


# ------------------------------------------------------------------------------------------------ mu-law


def test_mu_law_follows_librosa_and_rounds_to_the_nearest_level():
    grid = np.concatenate([np.linspace(-1, 1, 4001), [0.0, 1e-12, -1e-12, 0.5, -0.5]])
    y = A.mu_law_compress(torch.tensor(grid)).numpy()
    np.testing.assert_allclose(y, librosa.mu_compress(grid, mu=255, quantize=False), rtol=1e-14, atol=1e-15)
    codes = A.mu_law_encode(torch.tensor(grid))
    assert codes.dtype == torch.int64
    levels = np.arange(256) * 2 / 255 - 1
    assert np.abs(levels[codes.numpy()] - y).max() <= 1 / 255 + 1e-12  # the nearest level
    assert A.mu_law_encode(torch.zeros(1)).item() == 128  # silence sits on a tie between 127 and 128: rounds up
    # librosa quantises to the first level at or above y: never more than one code away
    assert np.abs(codes.numpy() - (librosa.mu_compress(grid, mu=255, quantize=True) + 128)).max() <= 1
    # Outside [-1, 1]: clamped (librosa refuses such input).
    outside = A.mu_law_encode(torch.tensor([-3.0, -1.0, 1.0, 1.5]))
    assert outside.tolist() == [0, 0, 255, 255]
    all_codes = torch.arange(256)
    decoded = A.mu_law_decode(all_codes, dtype=torch.float64).numpy()
    np.testing.assert_allclose(decoded, librosa.mu_expand(levels, mu=255, quantize=False), rtol=1e-13, atol=1e-15)
    assert decoded[0] == -1.0 and decoded[255] == 1.0
    assert A.mu_law_decode(all_codes).dtype == torch.float32
    # Round trip: within half a level (1/255) on the compressed scale.
    back = A.mu_law_decode(codes, dtype=torch.float64).numpy()
    assert np.abs(librosa.mu_compress(back, mu=255, quantize=False) - y).max() <= 1 / 255 + 1e-12
    assert A.mu_law_encode(torch.linspace(-1, 1, 9), channels=16).max() == 15


# --------------------------------------------------------------------------------------------------- MCD


def test_mel_cepstrum_is_the_orthonormal_dct_of_half_the_log_mel():
    scipy_fft = pytest.importorskip("scipy.fft")
    lm = torch.randn(2, 80, 7, dtype=torch.float64)
    ref = scipy_fft.dct(lm.numpy() / 2, type=2, norm="ortho", axis=-2)[:, 1:14]
    np.testing.assert_allclose(A.mel_cepstrum(lm).numpy(), ref, atol=1e-12)


def test_mcd_zero_and_closed_form():
    lm = torch.randn(3, 80, 20, dtype=torch.float64)
    torch.testing.assert_close(A.mel_cepstral_distortion(lm, lm), torch.zeros(3, dtype=torch.float64))
    # Shift every kept coefficient by delta: log_mel moves by 2 * delta * (sum of DCT basis rows 1..13).
    delta, n = 0.1, 13
    rows = A._dct_ortho(80)[1 : n + 1].sum(0)
    shifted = lm + 2 * delta * rows[:, None]
    expected = 10 / math.log(10) * math.sqrt(2 * n * delta**2)
    torch.testing.assert_close(A.mel_cepstral_distortion(lm, shifted), torch.full((3,), expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="log_mel_b"):
        A.mel_cepstral_distortion(lm, lm[..., :-1])


def brute_force_dtw(cost: np.ndarray) -> tuple[float, list[tuple[int, int]]]:
    """Every monotone path from (0, 0) to the end with steps (1,0), (0,1), (1,1): the cheapest one."""
    ta, tb = cost.shape
    best: tuple[float, list] = (math.inf, [])

    def walk(i: int, j: int, total: float, path: list) -> None:
        nonlocal best
        total += cost[i, j]
        path = path + [(i, j)]
        if (i, j) == (ta - 1, tb - 1):
            best = min(best, (total, path), key=lambda b: b[0])
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < ta and j + dj < tb:
                walk(i + di, j + dj, total, path)

    walk(0, 0, 0.0, [])
    return best


def test_dtw_align_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for ta, tb in [(4, 5), (5, 3), (1, 4), (6, 6)]:
        a, b = torch.randn(3, ta, generator=g), torch.randn(3, tb, generator=g)
        ia, ib = A.dtw_align(a, b)
        cost = torch.cdist(a.T.double(), b.T.double()).numpy()
        total, path = brute_force_dtw(cost)
        assert list(zip(ia.tolist(), ib.tolist(), strict=True)) == path
        assert cost[ia, ib].sum() == pytest.approx(total)
        assert ia.dtype == torch.int64


def test_mcd_dtw_of_a_time_stretched_copy_is_zero():
    lm = A.log_mel(torch.tensor(glide(0.5)[0]))
    stretched = lm.repeat_interleave(torch.tensor([1, 2, 3] * (lm.shape[-1] // 3) + [1] * (lm.shape[-1] % 3)), -1)
    assert stretched.shape[-1] > lm.shape[-1]
    assert A.mcd_dtw(lm, stretched) == pytest.approx(0.0, abs=1e-9)
    assert A.mcd_dtw(lm, lm + 0.5 * torch.randn_like(lm)) > 1.0


# -------------------------------------------------------------------------------------- resample, pitch


def test_resample_a_sine():
    x = np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    y = A.resample(torch.tensor(x), SR, 8000).numpy()
    assert len(y) == math.ceil(SR * 8000 / SR) == len(librosa.resample(x, orig_sr=SR, target_sr=8000))
    inner = slice(200, -200)
    analytic = np.sin(2 * np.pi * 440 * np.arange(len(y)) / 8000)
    assert np.abs(y - analytic)[inner].max() < 1e-4  # measured 1.3e-7
    for res_type in ("soxr_hq", "fft"):
        ref = librosa.resample(x, orig_sr=SR, target_sr=8000, res_type=res_type)
        assert np.abs(y - ref)[inner].max() < 1e-3
    # Batched float32, odd length, and back up (upsampling).
    batch = torch.tensor(np.stack([x, -x])[:, :12345]).float()
    down = A.resample(batch, SR, 8000)
    assert down.shape == (2, math.ceil(12345 * 8000 / SR)) and down.dtype == torch.float32
    up = A.resample(torch.tensor(y), 8000, SR).numpy()
    assert len(up) == SR and np.abs(up - x)[500:-500].max() < 1e-4


def test_pitch_track_follows_a_glide_and_skips_silence():
    pad = 6000
    x, f0 = glide(pad=pad)
    track, voiced = A.pitch_track(torch.tensor(x))
    frames = A.MelConfig().frames(len(x))
    assert track.shape == voiced.shape == (frames,)
    t = np.arange(frames) * 256 - pad  # frame centres, in samples of the glide
    inside = (t > 800) & (t < SR - 800)
    silent = (t < -1200) | (t > SR + 1200)
    assert voiced[inside].all() and not voiced[silent].any()
    assert torch.isnan(track[~voiced]).all()
    truth = f0[t[inside]]
    assert np.abs(track[inside].numpy() / truth - 1).max() < 0.03  # measured 0.5 %
    batched, _ = A.pitch_track(torch.tensor(np.stack([x, 0.5 * x])).float())
    assert batched.shape == (2, frames)
    np.testing.assert_allclose(batched[1, inside].numpy(), track[inside].numpy(), rtol=1e-3)


# ------------------------------------------------------------------------------------------ arguments


def test_argument_errors():
    wave = torch.randn(2048)
    with pytest.raises(ValueError, match="n_fft"):
        A.stft(wave, n_fft=1)
    with pytest.raises(ValueError, match="hop"):
        A.stft(wave, hop=0)
    with pytest.raises(ValueError, match="wave"):
        A.stft(wave.to(torch.complex64))
    with pytest.raises(ValueError, match="wave"):
        A.stft(wave[:100])  # too short to reflect-pad
    with pytest.raises(ValueError, match="spec"):
        A.istft(wave.reshape(2, 1024))
    with pytest.raises(ValueError, match="magnitude"):
        A.griffin_lim(A.stft(wave))  # complex where a magnitude is expected
    with pytest.raises(ValueError, match="codes"):
        A.mu_law_decode(torch.tensor([0, 256]))
    with pytest.raises(ValueError, match="codes"):
        A.mu_law_decode(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="codes"):
        A.mu_law_decode(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="n_coeffs"):
        A.mel_cepstrum(torch.zeros(80, 3), n_coeffs=80)
    with pytest.raises(ValueError, match="mel_power"):
        A.mel_to_linear(torch.zeros(40, 3))
    with pytest.raises(ValueError, match="f_max"):
        A.MelConfig(f_max=20000.0)
    with pytest.raises(ValueError, match="new_sr"):
        A.resample(wave, 22050, 0)
    with pytest.raises(ValueError, match="b:"):
        A.dtw_align(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="f_max"):
        A.pitch_track(wave, f_min=300.0, f_max=200.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(noise):
    x = torch.tensor(noise, dtype=torch.float32)
    xc = x.cuda()
    torch.testing.assert_close(A.log_mel(xc).cpu(), A.log_mel(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(A.resample(xc, SR, 8000).cpu(), A.resample(x, SR, 8000), atol=1e-5, rtol=1e-4)
    mag = A.stft(xc).abs()
    assert A.griffin_lim(mag, iters=5).device == xc.device
    assert A.mel_to_linear(A.mel_spectrogram(xc), iters=5).device == xc.device
    assert A.mu_law_decode(A.mu_law_encode(xc)).device == xc.device
    f0, voiced = A.pitch_track(xc)
    assert f0.device == voiced.device == xc.device
    ia, _ = A.dtw_align(A.log_mel(xc)[:, :20], A.log_mel(xc)[:, :25])
    assert ia.device == xc.device
