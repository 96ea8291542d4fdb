"""Chapter 08 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch08 import conv_case, filterbank_case, regulate_case, wave_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "08.mu_law_encode": (
        Case("hidden: float64 speech, 16 levels", lambda: wave_case(n=500, seed=101, dtype=torch.float64, channels=16)),
        Case("hidden: a loud signal near full scale", lambda: wave_case(n=300, seed=102, scale=3.0), points=0.5),
        Case(
            "hidden: tiny values and a batch of two rows",
            lambda: {"wave": torch.tensor([[1e-4, -1e-4, 2e-3], [0.3, -0.7, 0.0]]), "channels": 256},
            points=0.5,
        ),
    ),
    "08.mel_filterbank": (
        Case(
            "hidden: 128 mels of a 2048-point FFT at 44.1 kHz",
            lambda: filterbank_case(2048, 128, 44100),
            rtol=1e-4,
            atol=1e-7,
        ),  # fmt: skip
        Case(
            "hidden: a band from 50 Hz to 4 kHz",
            lambda: filterbank_case(400, 24, 16000, 50.0, 4000.0),
            rtol=1e-4,
            atol=1e-7,
            points=0.5,
        ),  # fmt: skip
        Case(
            "hidden: an odd FFT size, few bins per filter",
            lambda: filterbank_case(63, 10, 8000, 0.0, 3000.0),
            rtol=1e-4,
            atol=1e-7,
            points=0.5,
        ),  # fmt: skip
    ),
    "08.causal_conv": (
        Case("hidden: float64, kernel 2, dilation 8", lambda: conv_case(3, 4, 5, 20, 2, 8, 103, dtype=torch.float64)),
        Case("hidden: a dilation reaching past the start", lambda: conv_case(1, 2, 2, 6, 3, 4, 104), points=0.5),
        Case("hidden: kernel 1 (a pointwise convolution)", lambda: conv_case(2, 3, 3, 7, 1, 5, 105), points=0.5),
    ),
    "08.length_regulate": (
        Case(
            "hidden: float64, three items",
            lambda: regulate_case([[3, 0, 2], [1, 1, 0], [0, 0, 4]], 4, 106, torch.float64),
        ),  # fmt: skip
        Case("hidden: long durations", lambda: regulate_case([[12, 7, 30]], 2, 107), points=0.5),
        Case("hidden: an item of total 0 beside one of 2", lambda: regulate_case([[0, 0], [1, 1]], 3, 108), points=0.5),
    ),
}
