"""Chapter 04 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch04`)."""

from __future__ import annotations

import torch

from aigc_lib import transformer
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qkv_case(
    shape: tuple[int, ...], T: int, S: int, d_k: int, d_v: int, seed: int, causal: bool = False, dtype=torch.float32
) -> dict:
    g = _gen(seed)
    case = {
        "q": torch.randn(*shape, T, d_k, generator=g, dtype=dtype),
        "k": torch.randn(*shape, S, d_k, generator=g, dtype=dtype),
        "v": torch.randn(*shape, S, d_v, generator=g, dtype=dtype),
    }
    if causal:
        case["mask"] = transformer.causal_mask(T, S)
    return case


def far_scores(case: dict, shift: float) -> dict:
    """`case` with one vector added to every key, chosen so that each query's scores all move by
    `shift`: the attention is unchanged (softmax ignores a common shift), but exp(score) overflows."""
    q = case["q"]
    w = torch.linalg.pinv(q) @ torch.full(q.shape[:-1], shift * q.shape[-1] ** 0.5, dtype=q.dtype)[..., None]
    return {**case, "k": case["k"] + w.transpose(-2, -1)}


def heads_case(B: int, T: int, C: int, n_heads: int, seed: int, dtype=torch.float32) -> dict:
    return {"x": torch.randn(B, T, C, generator=_gen(seed), dtype=dtype), "n_heads": n_heads}


def merge_case(B: int, H: int, T: int, d: int, seed: int, dtype=torch.float32) -> dict:
    return {"x": torch.randn(B, H, T, d, generator=_gen(seed), dtype=dtype)}


EXERCISES = (
    Exercise(
        key="04.attention",
        function="attention",
        nudge="Which size scales the scores? Over which axis must the weights sum to 1? A masked key must get "
        "weight exactly 0, and a large score must not overflow exp.",
        reference=transformer.attention,
        hint="scores = q @ k.transpose(-2, -1) / sqrt(d_k) with d_k = q.shape[-1] (the per-head size, not the model "
        "width); where mask is False set the score to -inf (scores.masked_fill(~mask, float('-inf'))); then "
        "torch.softmax(scores, dim=-1) @ v.",
        cases=(
            Case(
                "one query, two keys (a soft lookup)",
                lambda: {
                    "q": torch.tensor([[1.0, 0.0]]),
                    "k": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                    "v": torch.tensor([[10.0], [20.0]]),
                },
            ),
            Case("B=2, T=S=4, d_k=8, no mask", lambda: qkv_case((2,), 4, 4, 8, 3, 0)),
            Case("B=1, T=S=5, causal mask", lambda: qkv_case((1,), 5, 5, 4, 4, 1, causal=True)),
        ),
    ),
    Exercise(
        key="04.causal_mask",
        function="causal_mask",
        nudge="Row t is query t: which keys (columns) may it read, itself included? The result is boolean.",
        reference=transformer.causal_mask,
        hint="A boolean (T, T) tensor, True on and below the diagonal: torch.ones(T, T, dtype=torch.bool).tril(). "
        "Row t is query t; it may read keys 0..t.",
        cases=(
            Case("T=1", lambda: {"T": 1}),
            Case("T=3", lambda: {"T": 3}),
            Case("T=6", lambda: {"T": 6}),
        ),
    ),
    Exercise(
        key="04.split_heads",
        function="split_heads",
        nudge="Each head owns a contiguous block of C / n_heads channels. Reshaping alone gives the right shape but "
        "mixes up the values: which axis must move?",
        reference=transformer.split_heads,
        hint="(B, T, C) -> x.view(B, T, n_heads, C // n_heads).transpose(1, 2): head h gets channels "
        "h*d .. (h+1)*d - 1, and the head axis comes before time. Result shape (B, n_heads, T, C // n_heads).",
        cases=(
            Case("B=1, T=2, C=4, 2 heads", lambda: {"x": torch.arange(8.0).view(1, 2, 4), "n_heads": 2}),
            Case("B=2, T=5, C=12, 3 heads", lambda: heads_case(2, 5, 12, 3, 2)),
            Case("one head keeps all channels", lambda: heads_case(3, 4, 6, 1, 3)),
        ),
    ),
    Exercise(
        key="04.merge_heads",
        function="merge_heads",
        nudge="This undoes split_heads: bring the head axis back next to the channels before flattening. Mind which "
        "of view and reshape works on a transposed tensor.",
        reference=transformer.merge_heads,
        hint="The inverse of split_heads: (B, h, T, d) -> x.transpose(1, 2).reshape(B, T, h * d) "
        "(reshape, not view: the transpose made the tensor non-contiguous).",
        cases=(
            Case("B=1, 2 heads, T=2, d=2", lambda: {"x": torch.arange(8.0).view(1, 2, 2, 2)}),
            Case("B=2, 4 heads, T=3, d=5", lambda: merge_case(2, 4, 3, 5, 4)),
            Case("B=3, 1 head, T=4, d=6", lambda: merge_case(3, 1, 4, 6, 5)),
        ),
    ),
    Exercise(
        key="04.sinusoidal_positions",
        function="sinusoidal_positions",
        nudge="Which columns take sin and which cos? How does the frequency of column pair i depend on i and d? "
        "Positions start at 0; the result is float32.",
        reference=transformer.sinusoidal_positions,
        hint="pos = torch.arange(T)[:, None]; freq = 10000 ** (-torch.arange(0, d, 2) / d); even columns "
        "sin(pos * freq), odd columns cos(pos * freq); a float32 tensor of shape (T, d).",
        cases=(
            Case("T=1, d=2: position 0 is (sin 0, cos 0) = (0, 1)", lambda: {"T": 1, "d": 2}, atol=1e-5),
            Case("T=4, d=4", lambda: {"T": 4, "d": 4}, atol=1e-5),
            Case("T=50, d=16", lambda: {"T": 50, "d": 16}, atol=1e-5),
        ),
    ),
)
