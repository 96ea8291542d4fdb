"""Chapter 01 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch01 import _gen, backward_case, lstm_case, rnn_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "01.rnn_cell": (
        Case("hidden: float64 inputs, a larger batch", lambda: rnn_case(8, 16, 12, 100, torch.float64)),
        Case(
            "hidden: large pre-activations (tanh saturates)",
            lambda: {k: v * 50 if k == "x" else v for k, v in rnn_case(3, 4, 5, 101).items()},
        ),
    ),
    "01.lstm_cell": (
        Case("hidden: float64 inputs, a larger batch", lambda: lstm_case(8, 16, 12, 102, torch.float64)),
        Case("hidden: a hidden state of size 1", lambda: lstm_case(5, 2, 1, 103)),
    ),
    "01.rnn_cell_backward": (
        Case("hidden: float64 inputs, every size different", lambda: backward_case(6, 7, 9, 104, torch.float64)),
        Case("hidden: every size 1", lambda: backward_case(1, 1, 1, 105)),
    ),
    "01.sample_probs": (
        Case(
            "hidden: greedy filtering (only the most likely token kept), large logits (exp must not overflow)",
            lambda: {"logits": 100 * torch.randn(4, 7, generator=_gen(106)), "temperature": 1.0, "top_k": 1},
        ),
        Case(
            "hidden: float64 logits with several leading dimensions",
            lambda: {
                "logits": torch.randn(2, 3, 65, generator=_gen(107), dtype=torch.float64),
                "temperature": 0.7,
                "top_k": 10,
            },
        ),
    ),
}
