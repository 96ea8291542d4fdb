"""Chapter 07 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch07`)."""

from __future__ import annotations

import torch

from aigc_lib import captions, diffusion
from aigc_lib.exercises.core import Case, Exercise
from aigc_lib.text_to_image import autoencoder


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cross_attention(q, k, v, mask):
    return diffusion.masked_attention(q, k, v, mask)[0]


def attention_case(
    B: int, N: int, L: int, d: int, seed: int, lengths=None, dtype=torch.float32, pad=1e4, mask=None
) -> dict:
    """Queries from image positions, keys/values from caption tokens; padding holds large junk values,
    so attending to it (or averaging it in) moves the output far from the right one. `mask` (B, L)
    overrides `lengths` (real tokens anywhere, not only first)."""
    g = _gen(seed)
    q, k, v = (torch.randn(B, n, d, generator=g, dtype=dtype) for n in (N, L, L))
    lengths = [L] * B if lengths is None else lengths
    if mask is None:
        mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    if pad is not None:
        k, v = k.masked_fill(~mask[..., None], pad), v.masked_fill(~mask[..., None], pad)
    return {"q": q, "k": k, "v": v, "mask": mask}


def latent_case(shape: tuple, seed: int, mean, stds=None, dtype=torch.float32) -> dict:
    """Latents (N, c, h, w) with a nonzero mean (one number, or one per channel) and, if `stds` is
    given, a different spread per channel."""
    g = _gen(seed)
    z = torch.randn(shape, generator=g, dtype=dtype)
    if stds is not None:
        z = z * torch.tensor(stds, dtype=dtype)[None, :, None, None]
    return {"latents": z + torch.as_tensor(mean, dtype=dtype).reshape(-1, 1, 1)}


def guidance_case(B: int, L: int, D: int, seed: int, lengths=None, dtype=torch.float32) -> dict:
    g = _gen(seed)
    lengths = [L] * B if lengths is None else lengths
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    context = torch.randn(B, L, D, generator=g, dtype=dtype) * mask[..., None]
    return {"context": context, "mask": mask}


def boxes_case(boxes: list[tuple[int, int, int, int]], size: int = 32, width: int | None = None) -> dict:
    """Ink masks (size rows x width columns) holding one filled rectangle each: (top, left, bottom, right),
    inclusive pixel rows/columns."""
    ink = torch.zeros(len(boxes), size, width or size, dtype=torch.bool)
    for i, (top, left, bottom, right) in enumerate(boxes):
        ink[i, top : bottom + 1, left : right + 1] = True
    return {"ink": ink}


def l_shape_case() -> dict:
    """An L: a 2-pixel-wide bar down the left of a centred 12 x 12 box and a 1-pixel foot along its bottom.
    The box is centred (centre); the ink's centre of mass sits 3 pixels left of it (left)."""
    ink = torch.zeros(1, 32, 32, dtype=torch.bool)
    ink[0, 10:22, 10:12] = True
    ink[0, 21, 10:22] = True
    return {"ink": ink}


def renders_case(n: int, seed: int) -> dict:
    """The ink of rendered test digits (the brightest channel above 0.5): thin strokes, holes, leaning shapes."""
    images = captions.captioned_digits("test", n=n, seed=seed).images
    return {"ink": images.amax(1) > 0.5}


EXERCISES = (
    Exercise(
        key="07.cross_attention",
        function="cross_attention",
        nudge="Scores are q·k/√d for every (position, token) pair. Padding must get no weight at all: not a small "
        "one, none — so mask the scores before the softmax, not after. Real tokens are where the mask is True, "
        "wherever they are. A caption of padding only has nothing to attend to: what should its output be? The "
        "output keeps q's dtype.",
        reference=cross_attention,
        hint="scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5; scores = scores.masked_fill(~mask[:, None, :], "
        "float('-inf')); w = torch.softmax(scores, dim=-1); w = torch.nan_to_num(w) (a row of -inf gives NaN: "
        "padding only -> weights 0); return w @ v.masked_fill(~mask[..., None], 0) — padding values must not "
        "reach the output even multiplied by 0 (inf * 0 is NaN).",
        cases=(
            Case("one caption of 3 real tokens, 4 positions, no padding", lambda: attention_case(1, 4, 3, 2, 0)),
            Case(
                "2 captions of 2 and 5 real tokens in 5 slots (padding holds 1e4)",
                lambda: attention_case(2, 6, 5, 4, 1, lengths=[2, 5]),
            ),
            Case(
                "2 captions: 3 real tokens, and padding only (nothing to attend to: its output is 0)",
                lambda: attention_case(2, 3, 4, 4, 2, lengths=[3, 0]),
            ),
        ),
    ),
    Exercise(
        key="07.latent_scale",
        function="latent_scale",
        nudge="One number for the whole latent space, so that scale * latents has unit variance: a spread, not a "
        "size (the mean does not count), over every element at once, not per channel.",
        reference=autoencoder.latent_scale,
        hint="return 1.0 / float(latents.std()) — the standard deviation over all elements (torch's default, "
        "N - 1 in the denominator, or N: with this many values both agree), then its reciprocal, as a Python float.",
        cases=(
            Case("latents of std 1 and mean 0: scale about 1", lambda: latent_case((64, 4, 8, 8), 0, 0.0), rtol=1e-3),
            Case(
                "std 5 around a mean of 2 (the mean is not spread)",
                lambda: latent_case((64, 4, 8, 8), 1, 2.0, [5.0] * 4),
                rtol=1e-3,
            ),
            Case(
                "channels of different spreads 0.5, 1, 4, 8: one scale for all",
                lambda: latent_case((64, 4, 8, 8), 2, 0.0, [0.5, 1.0, 4.0, 8.0]),
                rtol=1e-3,
            ),
        ),
    ),
    Exercise(
        key="07.guidance_batch",
        function="guidance_batch",
        nudge="Guidance needs the network's estimate with the caption and without it, in one call. 'Without a "
        "caption' is a caption of padding only: which of the two tensors says what is padding? Zero vectors that "
        "the mask calls real are still a caption the network reads. The second half repeats the same token "
        "states; only its mask changes.",
        reference=diffusion.caption_guidance_batch,
        hint="return torch.cat([context, context]), torch.cat([mask, torch.zeros_like(mask)]) — the captions first, "
        "then the same states with every token masked out (the unconditional branch ∅).",
        cases=(
            Case("one caption of 4 tokens", lambda: guidance_case(1, 4, 3, 3)),
            Case("3 captions of 2, 5 and 3 tokens in 5 slots", lambda: guidance_case(3, 5, 4, 4, lengths=[2, 5, 3])),
            Case(
                "a batch already holding a caption of padding only", lambda: guidance_case(2, 3, 2, 5, lengths=[0, 3])
            ),
        ),
    ),
    Exercise(
        key="07.position_of_ink",
        function="position_of_ink",
        nudge="Use the box around the ink, not the ink's centre of mass: its centre against the canvas centre "
        "(pixel i covers [i, i + 1), so a box from column l to r has its centre at (l + r + 1) / 2 and the canvas's "
        "is at W / 2; pixel-centre coordinates, (l + r) / 2 against (W - 1) / 2, give the same offsets). "
        "Rows grow downwards. Centre means BOTH offsets are within 2.5 pixels (not the distance); otherwise the larger "
        "offset decides, and a tie goes to left/right.",
        reference=captions.position_of_ink,
        hint="rows = ink.any(2); cols = ink.any(1); for each image top/bottom = first/last True row, left/right = "
        "first/last True column; dy = (top + bottom + 1) / 2 - H / 2, dx = (left + right + 1) / 2 - W / 2; centre "
        "(index 4) if max(|dx|, |dy|) <= 2.5, else left (0) / right (1) when |dx| >= |dy| by the sign of dx, else "
        "top (2) / bottom (3) by the sign of dy; return an int64 tensor (N,).",
        cases=(
            Case(
                "boxes at the left, right, top, bottom and centre",
                lambda: boxes_case(
                    [(10, 1, 21, 12), (10, 19, 21, 30), (1, 10, 12, 21), (19, 10, 30, 21), (10, 10, 21, 21)]
                ),
            ),
            Case(
                "offsets of 2 and 2 (centre: each within 2.5), exactly 2.5 (centre), 3 (not), and a corner box "
                "(|dx| = |dy|: right)",
                lambda: boxes_case([(12, 12, 23, 23), (10, 13, 21, 23), (10, 13, 21, 24), (0, 20, 11, 31)]),
            ),
            Case(
                "an L whose box is centred but whose ink leans left (the box decides: centre)", lambda: l_shape_case()
            ),
        ),
    ),
)
