"""Chapter 09 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch09`)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.core import Case, Exercise, computed_in_float64
from aigc_lib.responsible import compress, memorization, watermark


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ quantize_int8


def weight_case(values=None, sizes=(), cols: int = 0, seed: int = 0, dtype=torch.float32) -> dict:
    """A weight to quantise: given `values`, or one row per entry of `sizes` (the row's largest magnitude;
    0: a row of zeros) and `cols` columns. Every entry of a random row is (k + f) · size / 127 with k an
    integer and |f| ≤ 0.4, one entry is ±size itself: w / s is then at least 0.1 from a half-way point, so
    rounding half to even or half up, in float32 or in float64, gives the same q."""
    if values is not None:
        return {"weight": torch.tensor(values, dtype=dtype)}
    g = _gen(seed)
    rows = []
    for size in sizes:
        k = torch.randint(-126, 127, (cols,), generator=g, dtype=torch.float64)
        f = (torch.rand(cols, generator=g, dtype=torch.float64) - 0.5) * 0.8
        row = (k + f) * size / 127
        sign = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
        row[torch.randint(0, cols, (1,), generator=g)] = sign * size
        rows.append(row)
    return {"weight": torch.stack(rows).to(dtype)}


# ------------------------------------------------------------------------------------------ distillation_loss


def logits_case(shape: tuple, seed: int, temperature: float, dtype=torch.float32, ruled_out: float = 0.0) -> dict:
    """Teacher logits with a spread of about 3, a student that agrees with it only in part; with
    `ruled_out` > 0, that fraction of the teacher's logits is −inf (never a whole row)."""
    g = _gen(seed)
    teacher = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    student = 0.5 * teacher + torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    if ruled_out:
        out = torch.rand(shape, generator=g, dtype=torch.float64) < ruled_out
        out[..., 0] = False  # every row keeps a token
        teacher = teacher.masked_fill(out, float("-inf"))
    return {"student_logits": student.to(dtype), "teacher_logits": teacher.to(dtype), "temperature": temperature}


# ------------------------------------------------------------------------------------------ watermark_z


def watermark_z(ids, green):
    """The watermark z-score of one text (T,) against a (V, V) green table: each distinct (previous, token)
    pair scored once, against the table's own green fraction. The library's `detect`, given the table."""
    pairs = torch.unique(torch.stack([ids[:-1], ids[1:]], 1), dim=0)
    green_pairs = int(green[pairs[:, 0], pairs[:, 1]].sum())
    return watermark.z_score(green_pairs, len(pairs), int(green[0].sum()) / green.shape[0])


def text_case(vocab_size: int, key: int, gamma: float, ids=None, n: int = 0, seed: int = 0, bias: float = 0.0) -> dict:
    """A text and the key's green table: given `ids`, or n tokens drawn at random; with `bias` > 0 each next
    token is drawn from the previous token's green list with that probability (a watermarked text)."""
    green = watermark.green_table(vocab_size, key, gamma)
    if ids is None:
        g = _gen(seed)
        ids = [int(torch.randint(0, vocab_size, (1,), generator=g))]
        for _ in range(n - 1):
            row = (
                green[ids[-1]] if torch.rand(1, generator=g).item() < bias else torch.ones(vocab_size, dtype=torch.bool)
            )
            choices = row.nonzero().flatten()
            ids.append(int(choices[torch.randint(0, len(choices), (1,), generator=g)]))
    return {"ids": torch.tensor(ids, dtype=torch.int64), "green": green}


# ------------------------------------------------------------------------------------------ copy_score


def copy_score(samples, train, k):
    return memorization.copy_score(samples, train, k)[0].to(samples.dtype)


def copy_case(
    N: int, M: int, shape: tuple, k: int, seed: int, near=(), exact=(), noise: float = 0.02, dtype=torch.float32
) -> dict:
    """N samples and M distinct training images in [0, 1] of `shape`; sample i of `near` is training image j
    (i, j) plus a little noise, sample i of `exact` is training image j itself."""
    g = _gen(seed)
    train = torch.rand(M, *shape, generator=g, dtype=torch.float64)
    samples = torch.rand(N, *shape, generator=g, dtype=torch.float64)
    for i, j in near:
        samples[i] = train[j] + noise * torch.randn(shape, generator=g, dtype=torch.float64)
    for i, j in exact:
        samples[i] = train[j]
    return {"samples": samples.to(dtype), "train": train.to(dtype), "k": k}


EXERCISES = (
    Exercise(
        key="09.quantize_int8",
        function="quantize_int8",
        nudge="One scale per output ROW: s = max|w| / 127 over the row (its largest magnitude, whatever the sign), "
        "and s = 1 for a row of zeros; q = round(w / s), int8 in [−127, 127], weight's shape. Work in float32 "
        "(weight.float() first): the scale is a float32 (out,) tensor even for a float64 weight. Return the "
        "tuple (q, scale).",
        reference=compress.quantize_int8,
        hint="w = weight.float(); scale = w.abs().amax(dim=1) / 127; scale = torch.where(scale > 0, scale, "
        "torch.ones_like(scale)); return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale",
        cases=(
            Case(
                "three rows by hand: a row of zeros, a row whose largest magnitude is negative",
                lambda: weight_case([[0.0, 0.0, 0.0, 0.0], [0.3, -1.0, 0.55, -0.12], [2.0, 1.1, -0.7, 0.05]]),
            ),
            Case(
                "five random rows of very different sizes (one scale per row)",
                lambda: weight_case(sizes=(0.05, 3.0, 0.4, 12.0, 0.001), cols=16, seed=1),
            ),
            Case(
                "a float64 weight: q is int8, the scale still float32",
                lambda: weight_case(sizes=(0.7, 0.02, 5.0), cols=9, seed=2, dtype=torch.float64),
            ),
        ),
    ),
    Exercise(
        key="09.distillation_loss",
        function="distillation_loss",
        nudge="Soften BOTH logits by the same temperature T: p = softmax(teacher / T), q = softmax(student / T), "
        "over the last dimension (the vocabulary). KL(p ‖ q) = Σ p (log p − log q): the teacher's distribution "
        "comes first. Average it over every other position (the rows, and the time steps of a 3-D input), then "
        "multiply by T². A teacher logit of −inf gives p = 0, whose term is 0 (0 · log 0 = 0), never NaN. A 0-d "
        "tensor in the logits' dtype.",
        reference=computed_in_float64(compress.distillation_loss),
        hint="log_q = F.log_softmax(student_logits / temperature, -1); p = F.softmax(teacher_logits / temperature, "
        "-1); return temperature**2 * F.kl_div(log_q, p, reduction='none').sum(-1).mean()",
        cases=(
            Case("a batch of 4 rows over 10 tokens, temperature 2", lambda: logits_case((4, 10), 0, 2.0)),
            Case(
                "sequences (B, L, V): the mean runs over every row and time step, temperature 3",
                lambda: logits_case((2, 5, 7), 1, 3.0),
            ),
            Case("temperature 1: the plain KL divergence, teacher first", lambda: logits_case((3, 12), 2, 1.0)),
        ),
    ),
    Exercise(
        key="09.watermark_z",
        function="watermark_z",
        nudge="Pair each token with the one before it, (ids[t − 1], ids[t]) for t ≥ 1; the pair is green when "
        "green[previous, token] is True (the row is the PREVIOUS token). Score each DISTINCT pair once: n distinct "
        "pairs, s of them green. γ is the table's own green fraction, green[0].sum() / V (every row holds as many), "
        "not 0.5. z = (s − γn) / sqrt(n γ (1 − γ)), returned as a Python float.",
        reference=watermark_z,
        hint="pairs = torch.unique(torch.stack([ids[:-1], ids[1:]], 1), dim=0); n = len(pairs); s = "
        "int(green[pairs[:, 0], pairs[:, 1]].sum()); gamma = int(green[0].sum()) / green.shape[0]; "
        "return (s - gamma * n) / math.sqrt(n * gamma * (1 - gamma))",
        cases=(
            Case(
                "twelve tokens over a vocabulary of 8, half of each list green, no pair repeated",
                lambda: text_case(8, 1, 0.5, ids=[0, 3, 1, 7, 2, 2, 5, 4, 6, 1, 0, 5]),
            ),
            Case(
                "a text that repeats its pairs (abab…): each distinct pair is scored once",
                lambda: text_case(10, 6, 0.5, ids=[1, 4, 1, 4, 1, 4, 1, 4, 2, 5, 2, 5, 2, 5, 9, 3, 9, 3]),
            ),
            Case(
                "the chapter's 69 characters: 35 of 69 green per list, so γ is 35/69, not 0.5",
                lambda: text_case(69, 3, 0.5, n=120, seed=3, bias=0.6),
            ),
        ),
    ),
    Exercise(
        key="09.copy_score",
        function="copy_score",
        nudge="Flatten each image to a vector; use plain Euclidean distances (not squared, not cosine) from each "
        "sample to every training image. Per sample, the score is the distance to the nearest training image "
        "divided by the MEAN distance to its k nearest, the nearest one included: near 0 for a copy, near 1 "
        "otherwise. The training images are all distinct. Compute the distances in float64 (float32's "
        "|a|² − 2a·b + |b|², what torch.cdist does for more than 25 rows, loses small distances) and return (N,) in "
        "samples' dtype.",
        reference=copy_score,
        hint="d = torch.cdist(samples.flatten(1).double(), train.flatten(1).double()); nearest = d.topk(k, dim=1, "
        "largest=False).values; return (nearest[:, 0] / nearest.mean(1)).to(samples.dtype)",
        cases=(
            Case("points in the plane: 4 samples, 12 training points, k of 3", lambda: copy_case(4, 12, (2,), 3, 0)),
            Case(
                "images (N, 1, 6, 6), k of 5: a near-copy scores far below the others",
                lambda: copy_case(6, 20, (1, 6, 6), 5, 1, near=[(2, 7)]),
            ),
            Case(
                "30 samples, one equal to a training image: it scores 0 (to 1e-6; float32 distances give 1e-3)",
                lambda: copy_case(30, 40, (3, 4, 4), 4, 2, exact=[(1, 11)], near=[(0, 3)]),
            ),
        ),
    ),
)
