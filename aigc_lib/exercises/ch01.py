"""Chapter 01 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch01`)."""

from __future__ import annotations

import torch

from aigc_lib import rnn
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rnn_case(B: int, D: int, H: int, seed: int, dtype=torch.float32) -> dict:
    g = _gen(seed)
    p = rnn.init_rnn_params(D, H, generator=g, dtype=dtype)
    x, h = torch.randn(B, D, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype)
    return {"x": x, "h_prev": torch.tanh(h), **p}


def lstm_case(B: int, D: int, H: int, seed: int, dtype=torch.float32) -> dict:
    g = _gen(seed)
    params = rnn.init_lstm_params(D, H, generator=g, dtype=dtype)
    x, h, c = (torch.randn(B, n, generator=g, dtype=dtype) for n in (D, H, H))
    return {"x": x, "h_prev": torch.tanh(h), "c_prev": c, "params": params}


def backward_case(B: int, D: int, H: int, seed: int, dtype=torch.float32) -> dict:
    inputs = rnn_case(B, D, H, seed, dtype)
    h = rnn.rnn_cell(**inputs)
    dh = torch.randn(B, H, generator=_gen(seed + 1), dtype=dtype)
    return {
        "dh": dh,
        "x": inputs["x"],
        "h_prev": inputs["h_prev"],
        "h": h,
        "W_xh": inputs["W_xh"],
        "W_hh": inputs["W_hh"],
    }


def backward_reference(**kwargs) -> tuple:
    return tuple(rnn.rnn_cell_backward(**kwargs))  # a plain tuple, as the exercise asks


EXERCISES = (
    Exercise(
        key="01.rnn_cell",
        function="rnn_cell",
        nudge="Rows are batch items: make the weights (H, D) and (H, H) meet x (B, D) and h_prev (B, H) the right "
        "way round. Are all three terms there, and the nonlinearity?",
        reference=rnn.rnn_cell,
        hint="h_t = tanh(x W_xh^T + h_prev W_hh^T + b_h): rows are batch items, so multiply by the transposed weights.",
        cases=(
            Case("one step, B=1, D=3, H=2", lambda: rnn_case(1, 3, 2, 0)),
            Case("a batch, B=4, D=5, H=3", lambda: rnn_case(4, 5, 3, 1)),
            Case(
                "zero input and state give tanh(b_h)",
                lambda: {**rnn_case(2, 3, 4, 2), "x": torch.zeros(2, 3), "h_prev": torch.zeros(2, 4)},
            ),
        ),
    ),
    Exercise(
        key="01.lstm_cell",
        function="lstm_cell",
        nudge="Which gate multiplies what? One keeps the old cell, one admits the candidate, one decides what h "
        "shows. Which squashing function does each use, is h made from the new c or the old one, and is the "
        "order (h, c)?",
        reference=rnn.lstm_cell,
        hint="Gates i, f, o use the sigmoid, the candidate uses tanh; c = f*c_prev + i*candidate, h = o*tanh(c). Return the tuple (h, c).",
        cases=(
            Case("one step, B=1, D=3, H=2", lambda: lstm_case(1, 3, 2, 3)),
            Case("a batch, B=4, D=5, H=3", lambda: lstm_case(4, 5, 3, 4)),
            Case(
                "zero weights: c = c_prev / 2, h = tanh(c) / 2",
                lambda: {
                    **lstm_case(2, 3, 2, 5),
                    "params": {k: torch.zeros_like(v) for k, v in lstm_case(2, 3, 2, 5)["params"].items()},
                },
            ),
        ),
    ),
    Exercise(
        key="01.rnn_cell_backward",
        function="rnn_cell_backward",
        nudge="Start from the gradient at the pre-activation: what is the derivative of tanh, written with h? Each "
        "gradient has the shape of what it is the gradient of; the batch is summed, not averaged.",
        reference=backward_reference,
        hint="First da = dh * (1 - h**2) (the tanh derivative), then dx = da W_xh, dh_prev = da W_hh, "
        "dW_xh = da^T x, dW_hh = da^T h_prev, db_h = da summed over the batch.",
        cases=(
            Case("B=1, D=3, H=2", lambda: backward_case(1, 3, 2, 6)),
            Case("B=4, D=5, H=3", lambda: backward_case(4, 5, 3, 7)),
            Case("dh = 0 gives all-zero gradients", lambda: {**backward_case(2, 3, 2, 8), "dh": torch.zeros(2, 2)}),
        ),
    ),
    Exercise(
        key="01.sample_probs",
        function="sample_probs",
        nudge="Filter first: the logits you drop must end with probability exactly 0, the others stay in the race. "
        "The temperature divides logits, not probabilities.",
        reference=rnn.sample_probs,
        hint="Keep the top_k largest logits (set the others to -inf), divide the logits by the temperature, "
        "then softmax over the last dimension.",
        cases=(
            Case(
                "T = 1, no filtering (top_k = V)",
                lambda: {"logits": torch.tensor([2.0, 1.0, 0.5, -1.0]), "temperature": 1.0, "top_k": 4},
            ),
            Case(
                "T = 0.5, top_k = 2",
                lambda: {"logits": torch.tensor([2.0, 1.0, 0.5, -1.0]), "temperature": 0.5, "top_k": 2},
            ),
            Case(
                "a (3, 10) batch, T = 2, top_k = 5",
                lambda: {"logits": torch.randn(3, 10, generator=_gen(9)), "temperature": 2.0, "top_k": 5},
            ),
        ),
    ),
)
