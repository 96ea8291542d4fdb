"""Captioned digits: real MNIST digits drawn with known attributes, captioned in English and Chinese.

The dataset of chapters 06 (CLIP in miniature) and 07 (text-to-image). Each image is one MNIST-5k
digit (`data.mnist5k`) drawn on a black 32 × 32 colour canvas with five attributes that are known
exactly, because the renderer sets them:

    digit      0 … 9                               the MNIST label of the source digit
    size       small, large                        the ink box's longer side: 12 or 20 pixels
    position   left, right, top, bottom, centre    the ink box against that edge (1 px margin), centred
                                                   along the other axis; or centred on both
    thickness  thin, thick                         the pen's width: 1.0 / 2.2 px (small), 1.4 / 3.2 px (large)
    colour     red, green, blue, white             ink × (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)

`captioned_digits(split)` -> CaptionedDigits: images (N, 3, 32, 32) float32 in [0, 1], attrs (a dict of
int64 (N,) value indices per attribute, e.g. attrs["colour"][i] == COLOURS.index("red")), source (N,)
the index of each image's digit in `data.mnist5k(split)`.

How a digit is drawn. Dilating and eroding MNIST's own strokes does not give a clean thin/thick:
writers' pens differ by 2× or more, and at 12 pixels an erosion wipes out a thin writer's digit while a
dilation blots a heavy one's. So each digit is redrawn along its own centre line with a pen of known width:

    1. the 28 × 28 digit, thresholded at 0.5, is thinned to its centre line, about one pixel wide
       (Zhang & Suen, "A fast parallel algorithm for thinning digital patterns", CACM 1984, with Lü &
       Wang's 1986 fix that keeps diagonal strokes);
    2. skeleton pixels that touch (8-neighbours) are joined by line segments;
    3. the segments are scaled so that the ink box's longer side is the size's pixels, and moved so
       that the box sits at the position;
    4. they are drawn with a round pen of width w, antialiased: a pixel's ink is clamp(w/2 + 1/2 − d, 0, 1),
       d the distance from the pixel's centre to the nearest segment (about the stroke's area in the pixel).

The shape is the writer's, the stroke the renderer's: a thick digit carries about twice the ink of the
same digit drawn thin, whoever wrote it, and a thin small digit stays legible.

Held-out combinations (compositional generalisation). `HOLDOUT` lists attribute combinations that the
train split never draws: a red seven, a three on the left, a thick five, a green digit at the top, a
small thick blue digit. Every single value still occurs in training (a red two, a seven in green), so a
model that understood the parts can be asked for the unseen whole. An image matches an entry when it has
every (attribute, value) of the entry (`matches_holdout`); the five entries cover 158 of the 800
(digit, combination) pairs (20%), 42 of a five's 80 combinations. For each image the digit comes from
its MNIST source, and the other four attributes are drawn uniformly among the 80 combinations (2 sizes ×
5 positions × 2 thicknesses × 4 colours) that `include_holdout` allows for that digit:

    "none"  the combinations matching no entry (the train split's default: what models train on)
    "both"  all 80 (the test split's default: held-out combinations as often as any other; with the
            train split, only for an evaluator that must know every combination, e.g. a judge)
    "only"  the combinations matching at least one entry (test split only); a source digit for which
            there is none (an entry names another digit and no entry is digit-free) is skipped

Captions. `caption(attrs_row, lang)` describes one image in one of two grammars, each with one word
order and three templates (`WORDS` holds the words, index for index with the value names):

    en: [template] a|an [size] [thickness] [colour] DIGIT [position]
        "a small thick red seven on the left", "a picture of a red 7", "an image of an eight at the top"
        templates "…", "a picture of …", "an image of …"; "an" before "eight" and "8"
        size small/large, thickness thin/thick, colour red/green/blue/white, DIGIT zero … nine or 0 … 9,
        position on the left / on the right / at the top / at the bottom / in the centre
    zh: [position] 一个 [size的] [thickness的] [colour的] DIGIT, in one of three templates
        "左边一个小的粗的红色的七", "图片里有一个红色的7", "一张上方有一个八的图片"
        templates "[位置]…", "图片[位置|里]有…", "一张[位置]有…的图片"
        小的/大的, 细的/粗的, 红色的/绿色的/蓝色的/白色的, DIGIT 零 … 九 or 0 … 9,
        左边/右边/上方/下方/中间 (上方, not 上面: 图片上面有… reads "on the picture there is …")

Each of size, thickness, colour and position is left out independently with probability `drop`; the
digit is always named, as a numeral ("7") with probability `numerals`, else as a word. `describe`
gives the full caption (nothing left out, the first template, the word), `prompt_for` the zero-shot
prompts: prompt_for("digit", 7) = "a seven", prompt_for("colour", "red") = "a red digit" (the one phrase
outside the grammar: "digit" stands for any digit; pass digit= to stay inside it).

Measuring. `measure_attributes(images)` reads size, position, thickness and colour back off any image
(a generated one, say) with no learning: the ink box, the stroke width (ink mass over centre-line
length) and the ink's channel sums, after removing the background and isolated specks; on the
renderer's own images it is right 99.6-100% of the time, and stays above 98% with pixel noise of σ 0.1.

Tokens: `caption_tokenizer()` is a `data.CharTokenizer` (71 ids) over every character the grammars and
prompts can produce, with id PAD_ID = 0 for padding (PAD_CHAR, never in a caption); `encode_captions`
pads a batch to (N, L) int64 ids and their lengths, `decode_captions` reads them back. The longest
caption has MAX_CAPTION_LEN = {"en": 52, "zh": 18} characters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aigc_lib import data
from aigc_lib.checks import check_int, check_number, shape_of

__all__ = [
    "ATTRIBUTES",
    "CANVAS",
    "COLOURS",
    "COLOUR_RGB",
    "CaptionedDigits",
    "DIGITS",
    "HOLDOUT",
    "LANGS",
    "MAX_CAPTION_LEN",
    "PAD_CHAR",
    "PAD_ID",
    "POSITIONS",
    "SIZES",
    "SIZE_PX",
    "STROKE_PX",
    "TEMPLATES",
    "THICKNESSES",
    "VALUES",
    "WORDS",
    "caption",
    "caption_tokenizer",
    "captioned_digits",
    "captions_for",
    "class_prompts",
    "decode_captions",
    "describe",
    "encode_captions",
    "matches_holdout",
    "measure_attributes",
    "prompt_for",
]

# --------------------------------------------------------------------------- attributes

ATTRIBUTES = ("digit", "size", "position", "thickness", "colour")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # index = the digit
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
THICKNESSES = ("thin", "thick")
COLOURS = ("red", "green", "blue", "white")
VALUES: dict[str, tuple[str, ...]] = {
    "digit": DIGITS,
    "size": SIZES,
    "position": POSITIONS,
    "thickness": THICKNESSES,
    "colour": COLOURS,
}

CANVAS = 32
SIZE_PX = (12.0, 20.0)  # the ink box's longer side, per size
STROKE_PX = ((1.0, 2.2), (1.4, 3.2))  # the pen's width [size][thickness]: thick has ≈ 2 × thin's ink
MARGIN_PX = 1.0  # between the ink box and the edge it sits against
COLOUR_RGB = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0))
INK_THRESHOLD = 0.5  # MNIST grey level that counts as ink when the skeleton is taken

# each entry: (attribute, value) pairs an image must all have to be held out; values by name or index
HOLDOUT: tuple[tuple[tuple[str, int | str], ...], ...] = (
    (("digit", 7), ("colour", "red")),
    (("digit", 3), ("position", "left")),
    (("digit", 5), ("thickness", "thick")),
    (("position", "top"), ("colour", "green")),
    (("size", "small"), ("thickness", "thick"), ("colour", "blue")),
)
_INCLUDE = ("none", "both", "only")

# the 80 combinations of the four drawn attributes, columns in ATTRIBUTES[1:] order
_COMBOS = torch.tensor(list(itertools.product(*(range(len(VALUES[a])) for a in ATTRIBUTES[1:]))), dtype=torch.int64)


def _value_index(name: str, attr: str, value: object) -> int:
    """A value of `attr` given by index (int, 0-D tensor) or by name -> its index."""
    names = VALUES[attr]
    if isinstance(value, Tensor | np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise ValueError(
        f"{name}: expected a {attr} index in 0..{len(names) - 1} or one of {', '.join(names)}, got {value!r}"
    )


def _check_split(split: object) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return split


def _check_lang(lang: object) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang: expected 'en' or 'zh', got {lang!r}")
    return lang


def _check_holdout(holdout: object) -> tuple[tuple[tuple[str, int], ...], ...]:
    """HOLDOUT-style entries -> the same with value indices, checked."""
    if isinstance(holdout, str) or not isinstance(holdout, Sequence):
        raise ValueError(f"holdout: expected a list of combinations like HOLDOUT, got {type(holdout).__name__}")
    entries = []
    for k, entry in enumerate(holdout):
        where = f"holdout[{k}]"
        if (
            isinstance(entry, str)
            or not isinstance(entry, Sequence)
            or len(entry) < 2
            or any(isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2 for p in entry)
        ):
            # one pair alone would remove a value from training altogether
            raise ValueError(f"{where}: expected two or more (attribute, value) pairs, got {entry!r:.80}")
        attrs = [attr for attr, _ in entry]
        if any(a not in ATTRIBUTES for a in attrs) or len(set(attrs)) != len(attrs):
            raise ValueError(f"{where}: expected distinct attributes from {', '.join(ATTRIBUTES)}, got {attrs!r}")
        entries.append(tuple((attr, _value_index(where, attr, value)) for attr, value in entry))
    return tuple(entries)


def _held_out(entries: tuple[tuple[tuple[str, int], ...], ...], attrs: Mapping[str, Tensor]) -> Tensor:
    """Which rows of `attrs` (value indices) match at least one entry: bool, the rows' shape."""
    hit = torch.zeros_like(attrs["digit"], dtype=torch.bool)
    for entry in entries:
        every = torch.ones_like(hit)
        for attr, value in entry:
            every &= attrs[attr] == value
        hit |= every
    return hit


def _check_attrs(name: str, attrs: object) -> dict[str, Tensor]:
    if isinstance(attrs, CaptionedDigits):
        attrs = attrs.attrs
    if not isinstance(attrs, Mapping) or set(attrs) != set(ATTRIBUTES):
        got = sorted(attrs) if isinstance(attrs, Mapping) else type(attrs).__name__
        raise ValueError(f"{name}: expected CaptionedDigits or a dict of the attributes {list(ATTRIBUTES)}, got {got}")
    out = {}
    for attr in ATTRIBUTES:
        t = attrs[attr]
        n = len(VALUES[attr])
        if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.ndim != 1 or len(t) != len(attrs["digit"]):
            raise ValueError(f"{name}[{attr!r}]: expected an int64 tensor (N,) like the others, got {t!r:.60}")
        if len(t) and (t.min() < 0 or t.max() >= n):
            raise ValueError(
                f"{name}[{attr!r}]: expected indices in 0..{n - 1}, got {t.min().item()}..{t.max().item()}"
            )
        out[attr] = t
    return out


def matches_holdout(attrs: CaptionedDigits | Mapping[str, Tensor], holdout: Sequence = HOLDOUT) -> Tensor:
    """bool (N,): which images have a combination of `holdout` (every pair of at least one entry)."""
    return _held_out(_check_holdout(holdout), _check_attrs("attrs", attrs))


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class CaptionedDigits:
    images: Tensor  # (N, 3, 32, 32) float32 in [0, 1]
    attrs: dict[str, Tensor]  # attribute -> (N,) int64 value indices into VALUES[attribute]
    source: Tensor  # (N,) int64: the digit's index in data.mnist5k(split)
    split: str
    VALUES: ClassVar[dict[str, tuple[str, ...]]] = VALUES

    def __len__(self) -> int:
        return len(self.source)

    def row(self, i: int) -> dict[str, int]:
        """Image i's attributes as value indices, e.g. {"digit": 7, "size": 0, …}: what `caption` takes."""
        check_int("i", i, low=0, high=len(self) - 1)
        return {attr: int(t[i]) for attr, t in self.attrs.items()}

    def subset(self, which: Tensor) -> CaptionedDigits:
        """The images selected by `which`: a bool mask (N,) or int64 indices, in that order."""
        if not isinstance(which, Tensor) or which.ndim != 1 or which.dtype not in (torch.bool, torch.int64):
            raise ValueError(f"which: expected a bool mask ({len(self)},) or int64 indices, got {which!r:.60}")
        if which.dtype == torch.bool and len(which) != len(self):
            raise ValueError(f"which: expected a bool mask of length {len(self)}, got {len(which)}")
        if (
            which.dtype == torch.int64
            and len(which)
            and (int(which.min()) < -len(self) or int(which.max()) >= len(self))
        ):
            raise ValueError(f"which: indices out of range for {len(self)} images")
        return CaptionedDigits(
            self.images[which], {a: t[which] for a, t in self.attrs.items()}, self.source[which], self.split
        )


def captioned_digits(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    holdout: Sequence = HOLDOUT,
    include_holdout: str | None = None,
) -> CaptionedDigits:
    """MNIST-5k digits drawn with known digit, size, position, thickness and colour (module docstring).

    One image per digit of `data.mnist5k(split)` in its order, or `n` images cycling through them. The
    digit is the source's label; the other attributes are drawn uniformly among the combinations
    `include_holdout` allows (None: "none" for train, "both" for test; "only" is test-only). Pass
    include_holdout="both" with the train split only for an evaluator, such as chapter 07's attribute
    judge, which must recognise every combination; never for a model whose generalisation is measured.
    The same arguments give the same attributes on every machine; the seed changes only the attributes."""
    split = _check_split(split)
    if n is not None:
        check_int("n", n)
    check_int("seed", seed, low=0)
    entries = _check_holdout(holdout)
    if include_holdout is None:
        include_holdout = "none" if split == "train" else "both"
    if include_holdout not in _INCLUDE:
        raise ValueError(f"include_holdout: expected None, 'none', 'both' or 'only', got {include_holdout!r}")
    if split == "train" and include_holdout == "only":
        raise ValueError(
            "include_holdout: the train split draws held-out combinations only beside the others, for an "
            "evaluator that must know them all (include_holdout='both'); expected None, 'none' or 'both' "
            "with split='train', got 'only'"
        )
    allowed = _allowed(entries, include_holdout)
    labels = data.mnist5k(split).labels
    candidates = torch.nonzero(allowed.any(1)[labels]).squeeze(1)
    if len(candidates) == 0:
        raise ValueError(f"holdout: include_holdout='only' needs at least one combination, got {holdout!r:.80}")
    source = candidates if n is None else candidates[torch.arange(n) % len(candidates)]
    digit = labels[source]

    # uniform among the allowed combinations of each digit: allowed ones sorted first, then pick one
    counts = allowed.sum(1)
    order = torch.argsort((~allowed).to(torch.int8), dim=1, stable=True)
    u = torch.rand(len(source), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pick = torch.minimum((u * counts[digit]).long(), counts[digit] - 1)
    combo = _COMBOS[order[digit, pick]]
    attrs = {"digit": digit.clone(), **{a: combo[:, k].contiguous() for k, a in enumerate(ATTRIBUTES[1:])}}
    images = _render(split, source, attrs)
    return CaptionedDigits(images, attrs, source, split)


def _allowed(entries: tuple, include: str) -> Tensor:
    """bool (10, 80): which combinations of _COMBOS `include` allows for each digit."""
    grid = {"digit": torch.arange(10).repeat_interleave(len(_COMBOS))}
    grid |= {a: _COMBOS[:, k].repeat(10) for k, a in enumerate(ATTRIBUTES[1:])}
    held = _held_out(entries, grid).view(10, len(_COMBOS))
    if include == "both":
        return torch.ones_like(held)
    if include == "only":
        return held
    allowed = ~held
    for d in range(10):
        if not allowed[d].any():
            raise ValueError(f"holdout: leaves no combination for digit {d} in the train split")
    for k, attr in enumerate(ATTRIBUTES[1:]):
        for v, name in enumerate(VALUES[attr]):
            if not allowed[:, _COMBOS[:, k] == v].any():
                raise ValueError(f"holdout: removes {attr} {name!r} altogether: every combination with it is held out")
    return allowed


# --------------------------------------------------------------------------- drawing


def _thinning_tables() -> tuple[Tensor, Tensor]:
    """Zhang & Suen's two deletion rules as lookup tables over a pixel's 3 × 3 neighbourhood code.

    Code bits 0-7 are the neighbours P2 … P9 (north, then clockwise), bit 8 the pixel itself. A pixel
    is deleted when it is set, has 3-6 set neighbours (B), exactly one 0 -> 1 step around the ring (A),
    and P2·P4·P6 = P4·P6·P8 = 0 (first sub-step) or P2·P4·P8 = P2·P6·P8 = 0 (second). Zhang & Suen
    allow B = 2, which erases diagonal strokes two pixels wide (a seven loses its stem); B >= 3 is Lü &
    Wang's fix ("A comment on 'A fast parallel algorithm for thinning digital patterns'", CACM 1986)."""
    tables = torch.zeros(2, 512, dtype=torch.bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # p[0] = P2, …, p[7] = P9
        ends = sum(b > 0 and a == 0 for a, b in itertools.pairwise(p + p[:1]))
        if 3 <= sum(p) <= 6 and ends == 1:
            p2, _, p4, _, p6, _, p8, _ = p
            tables[0, 256 + code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
            tables[1, 256 + code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return tables[0], tables[1]


_THIN_TABLES = _thinning_tables()
# weights that turn a 3 × 3 window into the code above: P9 P2 P3 / P8 · P4 / P7 P6 P5
_CODE_KERNEL = torch.tensor([[128, 1, 2], [64, 256, 4], [32, 16, 8]], dtype=torch.float32).view(1, 1, 3, 3)


def _skeletonize(ink: Tensor) -> Tensor:
    """bool (N, H, W) -> its centre lines (Zhang-Suen thinning with Lü & Wang's rule): about one pixel
    wide, 8-connected where the ink was."""
    x = ink.float().clone()
    active = torch.arange(len(x))  # images still changing: most are done after a few rounds
    while len(active):
        part = x[active].unsqueeze(0)  # (1, n, H, W): one channel per image, so a depthwise convolution
        kernel = _CODE_KERNEL.expand(len(active), 1, 3, 3)
        changed = torch.zeros(len(active), dtype=torch.bool)
        for table in _THIN_TABLES:
            code = F.conv2d(part, kernel, padding=1, groups=len(active)).long()
            delete = table[code]
            part.masked_fill_(delete, 0.0)
            changed |= delete[0].flatten(1).any(1)
        x[active] = part[0]
        active = active[changed]
    return x > 0


@lru_cache(maxsize=2)
def _strokes(split: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The centre lines of data.mnist5k(split): segments (M, 4) float32 (y0, x0, y1, x1) in source
    pixels, sorted by digit; start (N,) and count (N,) of each digit's segments; box (N, 4) of its
    skeleton (top, left, bottom, right)."""
    skel = _skeletonize(data.mnist5k(split).images[:, 0] >= INK_THRESHOLD)
    n, h, w = skel.shape
    padded = F.pad(skel, (1, 1, 1, 1))

    def on(dy: int, dx: int) -> Tensor:  # is the pixel at (dy, dx) from each pixel on the skeleton?
        return padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # each touching pair once; a diagonal step only where no corner pixel already joins the two
    pairs = {
        (0, 1): skel & on(0, 1),
        (1, 0): skel & on(1, 0),
        (1, 1): skel & on(1, 1) & ~on(0, 1) & ~on(1, 0),
        (1, -1): skel & on(1, -1) & ~on(0, -1) & ~on(1, 0),
    }
    alone = skel.clone()
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        if (dy, dx) != (0, 0):
            alone &= ~on(dy, dx)
    pieces = [torch.nonzero(alone).repeat(1, 2)[:, [0, 1, 2, 4, 5]]]  # a lone pixel: a segment of length 0
    for (dy, dx), mask in pairs.items():
        at = torch.nonzero(mask)  # (image, row, column)
        pieces.append(torch.cat([at, at[:, 1:] + torch.tensor([dy, dx])], dim=1))
    seg = torch.cat(pieces)
    seg = seg[torch.argsort(seg[:, 0], stable=True)]
    count = torch.bincount(seg[:, 0], minlength=n)
    start = torch.cumsum(count, 0) - count
    points = seg[:, 1:].float().view(-1, 2, 2)
    owner = seg[:, :1].expand(-1, 2)
    top = torch.full((n, 2), float(h)).scatter_reduce(0, owner, points.amin(1), "amin")
    bottom = torch.full((n, 2), 0.0).scatter_reduce(0, owner, points.amax(1), "amax")
    top[count == 0] = 0.0  # nothing reached the threshold: nothing is drawn, the box stays finite
    return seg[:, 1:].float(), start, count, torch.cat([top, bottom], dim=1)


def _render(split: str, source: Tensor, attrs: Mapping[str, Tensor]) -> Tensor:
    """(N, 3, CANVAS, CANVAS) float32: each source digit's centre line drawn with the row's attributes."""
    segments, start, count, box = _strokes(split)
    size, position = attrs["size"], attrs["position"]
    pen = torch.tensor(STROKE_PX)[size, attrs["thickness"]]
    extent = box[source, 2:] - box[source, :2]  # (N, 2) skeleton height, width
    scale = (torch.tensor(SIZE_PX)[size] - pen) / extent.amax(1).clamp(min=1.0)
    free = CANVAS - (extent * scale[:, None] + pen[:, None])  # canvas minus the ink box, per axis
    corner = free / 2  # the ink box's top left: centred, then pushed against the named edge
    for name, axis, far in (("left", 1, False), ("right", 1, True), ("top", 0, False), ("bottom", 0, True)):
        at = position == POSITIONS.index(name)
        corner[at, axis] = free[at, axis] - MARGIN_PX if far else MARGIN_PX
    # canvas point = origin + scale · source point; pixel (r, c) covers [r, r + 1) × [c, c + 1)
    origin = corner + pen[:, None] / 2 - box[source, :2] * scale[:, None]

    ink = torch.zeros(len(source) * CANVAS * CANVAS)
    order = torch.argsort(size * 2 + attrs["thickness"], stable=True)  # chunks of one pen: small windows
    chunk = 1024  # rows at a time: the segment × pixel tensors stay a few tens of MB
    for lo in range(0, len(source), chunk):
        rows = order[lo : lo + chunk]
        n_seg = count[source[rows]]
        row = rows.repeat_interleave(n_seg)
        first = (start[source[rows]] - (torch.cumsum(n_seg, 0) - n_seg)).repeat_interleave(n_seg)
        seg = segments[first + torch.arange(len(row))] * scale[row, None] + origin[row].repeat(1, 2)
        ay, ax, aby, abx = seg[:, 0], seg[:, 1], seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
        radius = pen[row] / 2 + 0.5  # ink = clamp(radius − distance, 0, 1)
        # the pixels a segment can ink lie within `radius` of it: of its middle plus half its length
        reach = float(radius.max()) + float(torch.hypot(aby, abx).max()) / 2
        steps = torch.arange(-math.ceil(reach + 0.5), math.ceil(reach + 0.5) + 1)
        py = ((ay + aby / 2).floor().long()[:, None] + steps.repeat_interleave(len(steps))).clamp_(0, CANVAS - 1)
        px = ((ax + abx / 2).floor().long()[:, None] + steps.repeat(len(steps))).clamp_(0, CANVAS - 1)
        dy = py + (0.5 - ay[:, None])  # (S, K): from the segment's start to each pixel's centre
        dx = px + (0.5 - ax[:, None])
        t = (dy * aby[:, None]).add_(dx * abx[:, None])
        t.mul_((1.0 / (aby * aby + abx * abx).clamp(min=1e-12))[:, None]).clamp_(0.0, 1.0)
        dist = torch.hypot(dy.sub_(t * aby[:, None]), dx.sub_(t * abx[:, None]))
        value = dist.neg_().add_(radius[:, None]).clamp_(0.0, 1.0)
        flat = (row[:, None] * CANVAS + py).mul_(CANVAS).add_(px)
        ink.scatter_reduce_(0, flat.view(-1), value.view(-1), "amax")  # the nearest segment's ink
    rgb = torch.tensor(COLOUR_RGB)[attrs["colour"]]
    return ink.view(-1, 1, CANVAS, CANVAS) * rgb[:, :, None, None]


# --------------------------------------------------------------------------- captions

LANGS = ("en", "zh")
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "digit": DIGITS,
        "size": SIZES,
        "position": ("on the left", "on the right", "at the top", "at the bottom", "in the centre"),
        "thickness": THICKNESSES,
        "colour": COLOURS,
    },
    "zh": {
        "digit": tuple("零一二三四五六七八九"),
        "size": ("小的", "大的"),
        "position": ("左边", "右边", "上方", "下方", "中间"),  # 上方: 图片上面 would read "on the picture"
        "thickness": ("细的", "粗的"),
        "colour": ("红色的", "绿色的", "蓝色的", "白色的"),
    },
}
# {np}: the noun phrase; {pos}: the position or ""; {where}: the position or 里 ("inside")
TEMPLATES = {
    "en": ("{np}{pos}", "a picture of {np}{pos}", "an image of {np}{pos}"),
    "zh": ("{pos}{np}", "图片{where}有{np}", "一张{pos}有{np}的图片"),
}
_ANY_DIGIT = {"en": "digit", "zh": "数字"}  # prompt_for's noun for "some digit"
_OPTIONAL = ("size", "thickness", "colour", "position")  # the attributes a caption may leave out
_DRAWS = len(_OPTIONAL) + 2  # random numbers per caption: one per optional attribute, numeral, template


def _phrase(lang: str, values: Mapping[str, int | None], numeral: bool = False, template: int = 0) -> str:
    """The caption naming `values` (attribute -> index, None = left out; digit None = "digit")."""
    words = WORDS[lang]
    d = values["digit"]
    noun = _ANY_DIGIT[lang] if d is None else str(d) if numeral else words["digit"][d]
    adjectives = [words[a][values[a]] for a in ("size", "thickness", "colour") if values.get(a) is not None]
    where = values.get("position")
    if lang == "en":
        first = (adjectives + [noun])[0]
        article = "an" if first in ("eight", "8") else "a"
        np_ = " ".join([article, *adjectives, noun])
        pos = "" if where is None else " " + words["position"][where]
        return TEMPLATES["en"][template].format(np=np_, pos=pos)
    pos = "" if where is None else words["position"][where]
    return TEMPLATES["zh"][template].format(np="一个" + "".join(adjectives) + noun, pos=pos, where=pos or "里")


def _check_row(attrs_row: object) -> dict[str, int]:
    if not isinstance(attrs_row, Mapping) or set(attrs_row) != set(ATTRIBUTES):
        got = sorted(attrs_row) if isinstance(attrs_row, Mapping) else type(attrs_row).__name__
        raise ValueError(
            f"attrs_row: expected a dict with the keys {list(ATTRIBUTES)} (CaptionedDigits.row), got {got}"
        )
    return {a: _value_index(f"attrs_row[{a!r}]", a, attrs_row[a]) for a in ATTRIBUTES}


def _caption(row: Mapping[str, int], lang: str, u: Sequence[float], drop: float, numerals: float) -> str:
    """u: _DRAWS uniform numbers in [0, 1): u[k] < drop leaves out _OPTIONAL[k]; u[4] < numerals writes a
    numeral; u[5] picks the template."""
    values = {"digit": row["digit"]} | {a: None if u[k] < drop else row[a] for k, a in enumerate(_OPTIONAL)}
    n_templates = len(TEMPLATES[lang])
    return _phrase(lang, values, numeral=u[4] < numerals, template=min(int(u[5] * n_templates), n_templates - 1))


def caption(
    attrs_row: Mapping[str, object],
    lang: str = "en",
    rng: torch.Generator | None = None,
    drop: float = 0.3,
    numerals: float = 0.3,
) -> str:
    """A random caption of one image, e.g. "a small thick red seven on the left" / "左边一个小的粗的红色的七".

    attrs_row: attribute -> value index or name (CaptionedDigits.row(i)). Each of size, thickness,
    colour and position is left out with probability `drop`; the digit is a numeral with probability
    `numerals`; one of the language's three templates is chosen uniformly. Six numbers are drawn from
    `rng` (torch's global generator when None), so the same generator state gives the same caption."""
    row = _check_row(attrs_row)
    _check_lang(lang)
    check_number("drop", drop, 0.0, 1.0)
    check_number("numerals", numerals, 0.0, 1.0)
    if rng is not None and not isinstance(rng, torch.Generator):
        raise ValueError(f"rng: expected a torch.Generator or None, got {type(rng).__name__}")
    u = torch.rand(_DRAWS, generator=rng, dtype=torch.float64).tolist()
    return _caption(row, lang, u, drop, numerals)


def captions_for(
    data: CaptionedDigits | Mapping[str, Tensor],
    lang: str = "en",
    seed: int = 0,
    drop: float = 0.3,
    numerals: float = 0.3,
) -> list[str]:
    """One random caption per image (`caption`'s rules); the same seed gives the same captions.

    Equal to [caption(data.row(i), lang, rng, drop, numerals) for each i] with
    rng = torch.Generator().manual_seed(seed): the numbers are drawn in that order, all at once."""
    attrs = _check_attrs("data", data)
    _check_lang(lang)
    check_int("seed", seed, low=0)
    check_number("drop", drop, 0.0, 1.0)
    check_number("numerals", numerals, 0.0, 1.0)
    n = len(attrs["digit"])
    u = torch.rand(n, _DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
    rows = torch.stack([attrs[a] for a in ATTRIBUTES], 1).tolist()
    return [_caption(dict(zip(ATTRIBUTES, r, strict=True)), lang, u[i], drop, numerals) for i, r in enumerate(rows)]


def describe(attrs_row: Mapping[str, object], lang: str = "en") -> str:
    """The full caption: every attribute, the digit as a word, the first template (retrieval targets).

    describe({"digit": 7, "size": "small", "position": "left", "thickness": "thick", "colour": "red"})
    = "a small thick red seven on the left" / "左边一个小的粗的红色的七"."""
    row = _check_row(attrs_row)
    return _phrase(_check_lang(lang), row)


def prompt_for(attr: str, value: object, lang: str = "en", digit: object = None) -> str:
    """A zero-shot prompt naming one attribute value: the caption that names only it (and a digit).

    prompt_for("digit", 7) = "a seven" / "一个七" (a caption of the grammar). For another attribute the
    noun is `digit` when given (prompt_for("colour", "red", digit=7) = "a red seven", in the grammar;
    average over the ten digits for a classifier), else the word "digit" / "数字", which no caption
    uses: prompt_for("position", "left") = "a digit on the left" / "左边一个数字"."""
    if attr not in ATTRIBUTES:
        raise ValueError(f"attr: expected one of {', '.join(ATTRIBUTES)}, got {attr!r}")
    index = _value_index("value", attr, value)
    _check_lang(lang)
    if attr == "digit":
        if digit is not None:
            raise ValueError(f"digit: expected None when attr is 'digit' (the value names the digit), got {digit!r}")
        return _phrase(lang, {"digit": index})
    noun = None if digit is None else _value_index("digit", "digit", digit)
    return _phrase(lang, {"digit": noun, attr: index})


def class_prompts(attrs: str | Sequence[str], lang: str = "en", ensemble: bool = True) -> tuple[list, list]:
    """Zero-shot classes over one attribute or a combination, with their prompts: (classes, prompts).

    classes: every value combination of `attrs` as value-index tuples, in itertools.product order (for a
    single attribute name, plain indices: class k is value k). prompts[k]: class k's prompts, all inside
    the grammar. With `ensemble`, every template, with the digit as word and as numeral when the digit is
    among `attrs`, else over all ten digits ("a red zero" … "a red nine": an image shows some digit, and
    the average over them names the attribute alone); without, the single prompt `prompt_for` gives
    (for a combination: its first template, with the word "digit" when the digit is not among `attrs`).
    class_prompts("digit", ensemble=False)[1][7] == ["a seven"]."""
    names = (attrs,) if isinstance(attrs, str) else tuple(attrs)
    if not names or len(set(names)) != len(names) or not set(names) <= set(ATTRIBUTES):
        raise ValueError(f"attrs: expected an attribute name or distinct names among {list(ATTRIBUTES)}, got {attrs!r}")
    _check_lang(lang)
    combos = list(itertools.product(*(range(len(VALUES[a])) for a in names)))
    prompts = []
    for combo in combos:
        fixed = dict(zip(names, combo, strict=True))
        if not ensemble:
            prompts.append([_phrase(lang, {"digit": None, **fixed})])
            continue
        digits = [fixed["digit"]] if "digit" in fixed else range(10)
        numerals = (False, True) if "digit" in fixed else (False,)
        prompts.append(
            [
                _phrase(lang, {**fixed, "digit": d}, numeral, template)
                for d in digits
                for numeral in numerals
                for template in range(len(TEMPLATES[lang]))
            ]
        )
    return ([c[0] for c in combos] if isinstance(attrs, str) else combos), prompts


# --------------------------------------------------------------------------- measuring attributes


def position_of_ink(ink: Tensor) -> Tensor:
    """ink (N, H, W) bool, each image with at least one ink pixel -> position indices (N,) int64 into
    POSITIONS, from the box around the ink: its centre's offset (dy, dx) from the canvas centre, in
    pixels (pixel i spans [i, i + 1)); "centre" when |dx| ≤ 2.5 and |dy| ≤ 2.5, else the side of the
    larger offset (left/right when |dx| ≥ |dy|, top/bottom otherwise; rows grow downwards)."""
    if not isinstance(ink, Tensor) or ink.dtype != torch.bool or ink.ndim != 3:
        raise ValueError(f"ink: expected a bool tensor (N, H, W), got {shape_of(ink)}")
    if len(ink) and not ink.flatten(1).any(1).all():
        raise ValueError("ink: every image needs at least one ink pixel to have a position")
    n, h, w = ink.shape
    rows, cols = torch.arange(h).expand(n, -1), torch.arange(w).expand(n, -1)
    any_row, any_col = ink.any(2), ink.any(1)
    top, bottom = torch.where(any_row, rows, h).amin(1), torch.where(any_row, rows, -1).amax(1)
    left, right = torch.where(any_col, cols, w).amin(1), torch.where(any_col, cols, -1).amax(1)
    return _position_of_box(top, left, bottom, right, h, w)


def _position_of_box(top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, h: int, w: int) -> Tensor:
    dy, dx = (top + bottom + 1) / 2 - h / 2, (left + right + 1) / 2 - w / 2  # box centre - canvas centre
    side = torch.where(
        dx.abs() >= dy.abs(),
        torch.where(dx < 0, POSITIONS.index("left"), POSITIONS.index("right")),
        torch.where(dy < 0, POSITIONS.index("top"), POSITIONS.index("bottom")),
    )
    return torch.where(torch.maximum(dx.abs(), dy.abs()) <= 2.5, POSITIONS.index("centre"), side).long()


def measure_attributes(images: Tensor, ink: float = 0.5) -> dict[str, Tensor]:
    """Read size, position, thickness and colour off images (N, 3, 32, 32) in [0, 1] with no learning
    (for judging generated images; the digit needs a learned judge). Returns value indices (int64 (N,),
    -1 where nothing is drawn: no 3 × 3 patch reaches 0.2 above the background) for "size",
    "position", "thickness" and "colour", and the measures they come from: "ink" (N, H, W) bool, the
    pixels counted as ink, "box" (top, left, bottom, right) of the ink pixels and "stroke_width" in pixels.

    Ink: each channel's median is the background and is subtracted; a pixel is ink when its brightest
    channel exceeds `ink` × the image's peak (the brightest 3 × 3 mean, so one hot pixel cannot set
    it) and at least two of its 8 neighbours are ink too (isolated specks are dropped). Then:

        size       the ink box's longer side: large when it is nearer 20 than 12 pixels (> 16)
        position   the box's centre against the canvas centre: centre when both offsets are
                   within 2.5 px, else the side of the larger offset. (The box, not the ink centroid:
                   a writer's ink leans within the box, and the renderer places the box.)
        thickness  stroke width = ink mass on and around the ink pixels, in units of a full-ink pixel (the
                   ink pixels' 90th percentile), over the centre-line length (their skeleton): thick above the midpoint of the two pens of
                   that size (STROKE_PX: 1.6 small, 2.3 large). A blurred thin stroke reads as thick.
        colour     the ink pixels' channel sums: white when the weakest is at least half the strongest,
                   else the strongest channel"""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images: expected a float tensor (N, 3, 32, 32) in [0, 1], got {images!r:.60}")
    if tuple(images.shape[2:]) != (CANVAS, CANVAS):
        raise ValueError(f"images: expected {CANVAS} × {CANVAS} canvases (sizes are in pixels), got {shape_of(images)}")
    if not torch.isfinite(images).all():
        raise ValueError("images: expected finite values, got NaN or inf")
    check_number("ink", ink, 0.0, 1.0, inclusive=False)
    x = images.detach().float().cpu().clamp(0, 1)
    x = (x - x.flatten(2).median(2).values[..., None, None]).clamp(min=0)  # the background removed
    value = x.amax(1)  # (N, H, W): colour-blind ink
    peak = F.avg_pool2d(value[:, None], 3, stride=1, padding=1).amax((1, 2, 3))
    found = peak >= 0.2
    on = value > ink * peak.clamp(min=1e-6)[:, None, None]
    ring = torch.ones(1, 1, 3, 3)
    on &= F.conv2d(on[:, None].float(), ring, padding=1)[:, 0] - on.float() >= 2  # drop isolated specks
    n, h, w = on.shape
    rows, cols = torch.arange(h).expand(n, -1), torch.arange(w).expand(n, -1)
    any_row, any_col = on.any(2), on.any(1)
    top, bottom = torch.where(any_row, rows, h).amin(1), torch.where(any_row, rows, -1).amax(1)
    left, right = torch.where(any_col, cols, w).amin(1), torch.where(any_col, cols, -1).amax(1)
    found &= on.flatten(1).any(1)
    large = torch.maximum(bottom - top, right - left) + 1 > sum(SIZE_PX) / 2
    position = _position_of_box(top, left, bottom, right, h, w)
    near = F.conv2d(on[:, None].float(), ring, padding=1)[:, 0] > 0  # the ink and a 1-pixel rim (antialiasing)
    level = torch.where(on, value, torch.nan).flatten(1).nanquantile(0.9, dim=1).nan_to_num(1.0)  # full ink's value
    mass = (value * near).sum((1, 2)) / level.clamp(min=1e-6)
    width = mass / _skeletonize(on).flatten(1).sum(1).clamp(min=1)
    pens = torch.tensor(STROKE_PX).mean(1)  # the midpoint of thin and thick, per size
    thick = width > pens[large.long()]
    channels = (x * on[:, None]).sum((2, 3))  # (N, 3): the ink pixels only
    white = channels.amin(1) >= 0.5 * channels.amax(1)
    colour = torch.where(white, COLOURS.index("white"), channels.argmax(1))
    missing = torch.tensor(-1)
    out = {
        "size": large.long(),
        "position": position.long(),
        "thickness": thick.long(),
        "colour": colour.long(),
    }
    out = {k: torch.where(found, v, missing) for k, v in out.items()}
    out["box"] = torch.stack([top, left, bottom, right], 1)
    out["ink"] = on
    out["stroke_width"] = torch.where(found, width, torch.tensor(float("nan")))
    return out


# --------------------------------------------------------------------------- tokens


def _every_caption(lang: str) -> list[str]:
    """Captions that hold every character and the longest caption of `lang`: each combination in full
    and with every optional attribute left out, in each template, with the digit as word and numeral.
    (Leaving attributes out only shortens a caption: 里 replaces a position of two characters.)"""
    out = []
    for digit, combo in itertools.product(range(10), _COMBOS.tolist()):
        full = {"digit": digit, **dict(zip(ATTRIBUTES[1:], combo, strict=True))}
        bare = {"digit": digit}
        for values, numeral, template in itertools.product((full, bare), (False, True), range(len(TEMPLATES[lang]))):
            out.append(_phrase(lang, values, numeral, template))
    return out


MAX_CAPTION_LEN = {lang: max(map(len, _every_caption(lang))) for lang in LANGS}  # characters
PAD_CHAR = "\x00"  # never in a caption
PAD_ID = 0  # caption_tokenizer's id of PAD_CHAR; encode_captions pads with it


@lru_cache(maxsize=1)
def caption_tokenizer() -> data.CharTokenizer:
    """A CharTokenizer over PAD_CHAR (id PAD_ID = 0), then every character of both grammars and of
    prompt_for, sorted: English letters, numerals, space, the Chinese characters."""
    chars = set().union(*map(set, _every_caption("en") + _every_caption("zh")), *_ANY_DIGIT.values())
    return data.CharTokenizer(PAD_CHAR + "".join(sorted(chars)))


def encode_captions(
    texts: Sequence[str], tokenizer: object = None, max_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """texts -> (ids (N, L) int64 padded with PAD_ID after each caption, lengths (N,) int64).

    tokenizer: anything with encode(str) -> 1-D ids and decode (caption_tokenizer() when None). L = max_len, or the
    longest caption's length when None; a longer caption raises ValueError naming it."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"texts: expected a non-empty list of str, got {texts!r:.80}")
    tokenizer = caption_tokenizer() if tokenizer is None else tokenizer
    if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
        raise ValueError(
            f"tokenizer: expected an object with encode and decode (CharTokenizer, BPETokenizer), got {tokenizer!r:.60}"
        )
    if max_len is not None:
        check_int("max_len", max_len)
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}]: expected a str, got {type(text).__name__}")
        try:
            ids = tokenizer.encode(text)
        except ValueError as err:  # name the caption, not just the tokenizer's argument
            raise ValueError(f"texts[{i}]: {text!r:.80} cannot be encoded: {err}") from err
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"texts[{i}]: {len(ids)} tokens, longer than max_len={max_len}: {text!r}")
        encoded.append(ids)
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
    out = torch.full((len(encoded), max_len or int(lengths.max())), PAD_ID, dtype=torch.int64)
    for i, ids in enumerate(encoded):
        out[i, : len(ids)] = ids
    return out, lengths


def decode_captions(ids: Tensor, lengths: Tensor, tokenizer: object = None) -> list[str]:
    """encode_captions' inverse: the first lengths[i] ids of each row, decoded."""
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise ValueError(f"ids: expected a 2-D tensor (N, L), got {ids!r:.60}")
    if not isinstance(lengths, Tensor) or lengths.shape != (len(ids),):
        raise ValueError(f"lengths: expected a tensor ({len(ids)},), got {lengths!r:.60}")
    tokenizer = caption_tokenizer() if tokenizer is None else tokenizer
    return [tokenizer.decode(row[:n]) for row, n in zip(ids, lengths.tolist(), strict=True)]
