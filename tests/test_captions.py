"""Tests for aigc_lib.captions: every attribute is measured on the images, every caption parsed back.

Nothing here trusts the renderer's bookkeeping: positions, sizes, thicknesses and colours are read off
the pixels, the held-out combinations are checked with a matcher written here, and the captions are
parsed by a small parser written here from the word lists.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from aigc_lib import captions as C
from aigc_lib import data

INK = 0.3  # a pixel counts as ink above this (the pens' antialiased edges fall below)


@pytest.fixture(scope="module")
def train() -> C.CaptionedDigits:
    return C.captioned_digits("train")


@pytest.fixture(scope="module")
def test_cycled() -> C.CaptionedDigits:
    """Each test digit three times, held-out combinations included: pairs of the same digit drawn twice."""
    return C.captioned_digits("test", n=3000, seed=1)


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the pixels show: ink mass, ink centroid (y, x), ink box (top, left, bottom, right)."""
    ink = images.amax(1)  # colour-blind ink (N, 32, 32)
    mass = ink.sum((1, 2))
    centre = torch.arange(C.CANVAS, dtype=torch.float32) + 0.5
    cy = (ink.sum(2) * centre).sum(1) / mass
    cx = (ink.sum(1) * centre).sum(1) / mass
    on = ink > INK
    idx = torch.arange(C.CANVAS).expand(len(ink), -1)

    def span(mask):  # first and last index where mask is set, per row
        return torch.where(mask, idx, C.CANVAS).amin(1), torch.where(mask, idx, -1).amax(1)

    top, bottom = span(on.any(2))
    left, right = span(on.any(1))
    return {"mass": mass, "cy": cy, "cx": cx, "top": top, "left": left, "bottom": bottom, "right": right}


def held_out(attrs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The test's own matcher for HOLDOUT: values by name or index, every pair of an entry must match."""
    hit = torch.zeros(len(attrs["digit"]), dtype=torch.bool)
    for entry in C.HOLDOUT:
        every = torch.ones_like(hit)
        for attr, value in entry:
            index = value if isinstance(value, int) else C.VALUES[attr].index(value)
            every &= attrs[attr] == index
        hit |= every
    return hit


# --------------------------------------------------------------------------- the dataset


def test_shapes_dtypes_ranges_and_sources(train):
    n = len(data.mnist5k("train"))
    assert len(train) == n and train.split == "train"
    assert train.images.shape == (n, 3, 32, 32) and train.images.dtype == torch.float32
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert set(train.attrs) == set(C.ATTRIBUTES)
    for attr, t in train.attrs.items():
        assert t.dtype == torch.int64 and t.shape == (n,)
        assert 0 <= t.min() and t.max() < len(C.VALUES[attr])
    assert torch.equal(train.source, torch.arange(n))  # one drawing per digit of the split, in order
    assert torch.equal(train.attrs["digit"], data.mnist5k("train").labels)
    assert C.VALUES["size"] == C.SIZES == ("small", "large") and train.VALUES is C.VALUES
    assert train.row(3) == {a: int(train.attrs[a][3]) for a in C.ATTRIBUTES}


def test_n_cycles_through_the_split_and_test_uses_test_digits(test_cycled):
    labels = data.mnist5k("test").labels
    assert len(test_cycled) == 3000 and test_cycled.split == "test"
    assert torch.equal(test_cycled.source, torch.arange(3000) % len(labels))
    assert torch.equal(test_cycled.attrs["digit"], labels[test_cycled.source])


def test_deterministic_under_the_seed_and_seeds_differ():
    a = C.captioned_digits("test", n=200, seed=5)
    b = C.captioned_digits("test", n=200, seed=5)
    c = C.captioned_digits("test", n=200, seed=6)
    assert torch.equal(a.images, b.images) and all(torch.equal(a.attrs[k], b.attrs[k]) for k in C.ATTRIBUTES)
    assert not all(torch.equal(a.attrs[k], c.attrs[k]) for k in C.ATTRIBUTES[1:])
    assert not torch.equal(a.images, c.images)
    assert torch.equal(a.attrs["digit"], c.attrs["digit"])  # the seed draws attributes, not digits


def test_every_position_is_where_the_ink_is(train):
    m, pos = measure(train.images), train.attrs["position"]
    left, right, top, bottom, centre = (pos == C.POSITIONS.index(p) for p in C.POSITIONS)
    mid = C.CANVAS / 2
    # the ink box touches the named edge's margin (1 px): first/last inked column or row
    assert (m["left"][left] == 1).all() and (m["right"][right] == C.CANVAS - 2).all()
    assert (m["top"][top] == 1).all() and (m["bottom"][bottom] == C.CANVAS - 2).all()
    # and is centred along the other axis (or both, for centre)
    box_x = (m["left"] + m["right"] + 1) / 2
    box_y = (m["top"] + m["bottom"] + 1) / 2
    assert ((box_y - mid).abs()[left | right | centre] <= 1).all()
    assert ((box_x - mid).abs()[top | bottom | centre] <= 1).all()
    # the ink centroid lies in the stated region: past the middle by a pixel on the named side ...
    assert (m["cx"][left] < mid - 1).all() and (m["cx"][right] > mid + 1).all()
    assert (m["cy"][top] < mid - 1).all() and (m["cy"][bottom] > mid + 1).all()
    # ... within 6 px of the middle across it (a 20-px digit's ink may lean to one side of its box) ...
    assert ((m["cy"] - mid).abs()[left | right] < 6).all() and ((m["cx"] - mid).abs()[top | bottom] < 6).all()
    # ... and in the central 9 x 9 pixels for centre
    assert ((m["cy"] - mid).abs()[centre] < 4.5).all() and ((m["cx"] - mid).abs()[centre] < 4.5).all()
    # and far from the middle for small digits, which have room to move
    small = train.attrs["size"] == 0
    assert (m["cx"][left & small] < mid - 6).all() and (m["cy"][bottom & small] > mid + 6).all()


def test_size_is_the_ink_box(train):
    m, size = measure(train.images), train.attrs["size"]
    longer = torch.maximum(m["bottom"] - m["top"], m["right"] - m["left"]) + 1
    assert (longer[size == 0] == 12).all() and (longer[size == 1] == 20).all()
    height = m["bottom"] - m["top"] + 1
    assert (height[size == 0] <= 12).all()  # height alone separates all but the wide (flat) digits
    assert (height[size == 1] > 12).float().mean() > 0.95


def test_thickness_is_ink_mass(train, test_cycled):
    # the same digit drawn twice at the same size, once thin and once thick: about the pens' ratio
    d = test_cycled
    mass = measure(d.images)["mass"].tolist()
    size, thickness = d.attrs["size"].tolist(), d.attrs["thickness"].tolist()
    ratios = []
    for i in range(1000):
        rows = [i, i + 1000, i + 2000]  # the three drawings of test digit i
        for a in rows:
            for b in rows:
                if size[a] == size[b] and thickness[a] < thickness[b]:
                    ratios.append(mass[b] / mass[a])
    assert len(ratios) > 300 and min(ratios) > 1.6
    # over the train split, whoever wrote the digit: for each digit and size, thick carries about twice thin's ink
    mass, a = measure(train.images)["mass"], train.attrs
    for digit in range(10):
        for size in range(2):
            group = (a["digit"] == digit) & (a["size"] == size)
            thin, thick = mass[group & (a["thickness"] == 0)], mass[group & (a["thickness"] == 1)]
            if len(thick):  # a thick five is held out
                assert thick.median() > 1.7 * thin.median(), (digit, size)  # 1.8-2.1 (a thick 8's loops overlap)
                assert (thick > thin.median()).float().mean() > 0.99


def test_colour_is_the_ink_channel(train):
    sums = train.images.sum((2, 3))  # (N, 3)
    colour = train.attrs["colour"]
    for c in range(3):  # red, green, blue: ink only in that channel
        rows = sums[colour == c]
        assert (rows[:, c] > 0).all() and (rows.argmax(1) == c).all()
        assert (rows.sum(1) == rows[:, c]).all()
    white = train.images[colour == C.COLOURS.index("white")]
    assert torch.equal(white[:, 0], white[:, 1]) and torch.equal(white[:, 0], white[:, 2])


def test_the_ink_is_the_mnist_digit_of_that_label(train):
    """Each drawing, cut to its ink box, correlates with its own source digit better than with another
    writer's digit of the same label."""
    n = 300
    source = data.mnist5k("train").images[train.source[:n], 0]

    def boxed(images, threshold):
        out = []
        for im in images:
            on = im > threshold
            rows, cols = on.any(1).nonzero(), on.any(0).nonzero()
            patch = im[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1][None, None]
            out.append(F.interpolate(patch, size=(20, 20), mode="bilinear", antialias=True).flatten())
        x = torch.stack(out)
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True)

    drawn, real = boxed(train.images[:n].amax(1), INK), boxed(source, 0.5)
    own = (drawn * real).sum(1)
    labels = train.attrs["digit"][:n]
    gen = torch.Generator().manual_seed(0)
    other = torch.tensor(
        [
            next(j for j in torch.randperm(n, generator=gen).tolist() if labels[j] == labels[i] and j != i)
            for i in range(n)
        ]
    )
    assert own.median() > 0.6
    assert (own > (drawn * real[other]).sum(1)).float().mean() > 0.85


# --------------------------------------------------------------------------- held-out combinations


def test_train_never_draws_a_held_out_combination_and_keeps_every_value(train):
    more = C.captioned_digits("train", n=6000, seed=7)
    for d in (train, more):
        assert not held_out(d.attrs).any()
        assert not C.matches_holdout(d).any()
    for attr, names in C.VALUES.items():
        assert torch.equal(torch.unique(train.attrs[attr]), torch.arange(len(names))), attr
    # the test split draws them as often as any other combination: at the rate of its digits' combinations
    grid = torch.cartesian_prod(*(torch.arange(len(C.VALUES[a])) for a in C.ATTRIBUTES))  # all 800
    held = held_out(dict(zip(C.ATTRIBUTES, grid.T, strict=True))).view(10, -1)
    assert held.sum() == 158 and held[5].sum() == 42  # as the module docstring says
    per_digit = held.float().mean(1)
    both = C.captioned_digits("test", n=3000, seed=2)
    expected = per_digit[both.attrs["digit"]].mean()
    assert abs(held_out(both.attrs).float().mean() - expected) < 0.03
    assert not held_out(C.captioned_digits("test", include_holdout="none").attrs).any()


def test_include_holdout_only_gives_only_held_out_combinations():
    only = C.captioned_digits("test", n=1000, include_holdout="only")
    assert held_out(only.attrs).all() and C.matches_holdout(only).all()
    for entry in C.HOLDOUT:  # every entry occurs
        every = torch.ones(len(only), dtype=torch.bool)
        for attr, value in entry:
            every &= only.attrs[attr] == (value if isinstance(value, int) else C.VALUES[attr].index(value))
        assert every.any(), entry
    # a custom list: only the digits it can reach are drawn
    sevens = C.captioned_digits("test", include_holdout="only", holdout=[[("digit", "seven"), ("size", "large")]])
    assert (sevens.attrs["digit"] == 7).all() and (sevens.attrs["size"] == 1).all()
    assert len(sevens) == int((data.mnist5k("test").labels == 7).sum())


def test_holdout_list_is_checked():
    with pytest.raises(ValueError, match=r"holdout\[0\]: expected two or more \(attribute, value\) pairs"):
        C.captioned_digits("test", n=5, holdout=[[("digit", 7)]])
    with pytest.raises(ValueError, match=r"holdout\[1\]: expected distinct attributes"):
        C.captioned_digits("test", n=5, holdout=[[("digit", 7), ("size", 0)], [("color", "red"), ("size", 0)]])
    with pytest.raises(ValueError, match=r"holdout\[0\]: expected a colour index in 0..3 or one of red, green"):
        C.captioned_digits("test", n=5, holdout=[[("digit", 7), ("colour", "purple")]])
    with pytest.raises(
        ValueError, match=r"holdout: removes colour 'red' altogether: every combination with it is held out"
    ):
        C.captioned_digits("train", n=5, holdout=[[("size", 0), ("colour", "red")], [("size", 1), ("colour", "red")]])
    with pytest.raises(ValueError, match=r"holdout: include_holdout='only' needs at least one combination"):
        C.captioned_digits("test", n=5, holdout=(), include_holdout="only")
    with pytest.raises(ValueError, match=r"include_holdout: the train split draws held-out combinations only beside"):
        C.captioned_digits("train", include_holdout="only")
    every = C.captioned_digits("train", n=2000, include_holdout="both")  # for an evaluator: all combinations
    assert C.matches_holdout(every).float().mean() > 0.1


# --------------------------------------------------------------------------- captions

EN_TEMPLATES = ("", "a picture of ", "an image of ")


def parse_en(text: str) -> dict:
    """English caption -> {attribute: index or None, "numeral": bool, "template": int}; fails loudly."""
    words = C.WORDS["en"]
    template = max(k for k, prefix in enumerate(EN_TEMPLATES) if text.startswith(prefix))
    rest = text[len(EN_TEMPLATES[template]) :]
    out: dict = {"template": template, "position": None}
    for k, phrase in enumerate(words["position"]):
        if rest.endswith(" " + phrase):
            out["position"], rest = k, rest[: -len(phrase) - 1]
    article, *tokens = rest.split(" ")
    for attr in ("size", "thickness", "colour"):  # in this order, each at most once
        out[attr] = words[attr].index(tokens.pop(0)) if tokens and tokens[0] in words[attr] else None
    assert len(tokens) == 1, f"{text!r}: expected the digit last, got {tokens}"
    digit = tokens[0]
    out["numeral"] = digit.isdigit()
    out["digit"] = int(digit) if digit.isdigit() else words["digit"].index(digit)
    first = rest.split(" ")[1]
    assert article == ("an" if first in ("eight", "8") else "a"), text
    return out


def parse_zh(text: str) -> dict:
    """Chinese caption -> the same dict as parse_en."""
    words = C.WORDS["zh"]
    if text.startswith("一张"):
        assert text.endswith("的图片"), text
        template, where, noun = 2, *text[2:-3].split("有")
    elif text.startswith("图片"):
        template, where, noun = 1, *text[2:].split("有")
        assert where != "", text
        where = "" if where == "里" else where
    else:
        template, cut = 0, text.index("一个")
        where, noun = text[:cut], text[cut:]
    out: dict = {"template": template, "position": words["position"].index(where) if where else None}
    assert noun.startswith("一个"), text
    noun = noun[2:]
    for attr in ("size", "thickness", "colour"):
        out[attr] = None
        for k, word in enumerate(words[attr]):
            if noun.startswith(word):
                out[attr], noun = k, noun[len(word) :]
    assert len(noun) == 1, f"{text!r}: expected one digit last, got {noun!r}"
    out["numeral"] = noun.isdigit()
    out["digit"] = int(noun) if noun.isdigit() else words["digit"].index(noun)
    return out


PARSE = {"en": parse_en, "zh": parse_zh}
ZH_CHARS = set("零一二三四五六七八九0123456789左右上下中边方间个小大的粗细红绿蓝白色图片里有张")


def test_describe_and_the_word_lists():
    row = {"digit": 7, "size": "small", "position": "left", "thickness": "thick", "colour": "red"}
    assert C.describe(row) == "a small thick red seven on the left"
    assert C.describe(row, "zh") == "左边一个小的粗的红色的七"
    eight = {"digit": 8, "size": 1, "position": 4, "thickness": 0, "colour": 3}
    assert C.describe(eight) == "a large thin white eight in the centre"
    assert C.describe(eight, "zh") == "中间一个大的细的白色的八"
    assert C.WORDS["zh"]["position"] == ("左边", "右边", "上方", "下方", "中间")
    for lang in C.LANGS:  # describe names everything, as words, in the first template
        parsed = PARSE[lang](C.describe(row, lang))
        assert parsed == {
            "digit": 7,
            "size": 0,
            "position": 0,
            "thickness": 1,
            "colour": 0,
            "numeral": False,
            "template": 0,
        }


@pytest.mark.parametrize("lang", C.LANGS)
@pytest.mark.parametrize("drop, numerals", [(0.3, 0.3), (0.6, 0.1), (0.0, 1.0), (1.0, 0.0)])
def test_captions_name_the_digit_and_exactly_the_kept_attributes(train, lang, drop, numerals):
    texts = C.captions_for(train, lang, seed=3, drop=drop, numerals=numerals)
    assert len(texts) == len(train)
    parsed = [PARSE[lang](t) for t in texts]
    kept = {attr: 0 for attr in C.ATTRIBUTES[1:]}
    for i, p in enumerate(parsed):
        assert p["digit"] == train.attrs["digit"][i]  # always named, and right
        for attr in kept:
            if p[attr] is not None:
                assert p[attr] == train.attrs[attr][i], (texts[i], attr)
                kept[attr] += 1
    n = len(texts)
    for attr, count in kept.items():  # each left out with probability `drop`
        assert abs(1 - count / n - drop) < 0.035, (attr, count / n)
    assert abs(sum(p["numeral"] for p in parsed) / n - numerals) < 0.035
    for k in range(3):  # the templates chosen uniformly
        assert abs(sum(p["template"] == k for p in parsed) / n - 1 / 3) < 0.035
    if lang == "zh":
        assert set("".join(texts)) <= ZH_CHARS
    else:
        assert re.fullmatch(r"[a-z0-9 ]+", "".join(texts))


def test_captions_are_deterministic_given_a_generator(train):
    row = train.row(0)
    one = [C.caption(row, "en", torch.Generator().manual_seed(s)) for s in range(20)]
    assert one == [C.caption(row, "en", torch.Generator().manual_seed(s)) for s in range(20)]
    assert len(set(one)) > 5  # and the seed matters
    # captions_for draws the same numbers as caption() called row after row on one generator
    gen = torch.Generator().manual_seed(11)
    for lang in C.LANGS:
        sequential = [C.caption(train.row(i), lang, gen, drop=0.4, numerals=0.2) for i in range(50)]
        gen.manual_seed(11)
        batch = C.captions_for({a: t[:50] for a, t in train.attrs.items()}, lang, seed=11, drop=0.4, numerals=0.2)
        assert batch == sequential
    assert C.captions_for(train, seed=1)[:100] != C.captions_for(train, seed=2)[:100]


def test_prompts():
    assert C.prompt_for("digit", 7) == "a seven" and C.prompt_for("digit", "eight") == "an eight"
    assert C.prompt_for("digit", 7, "zh") == "一个七"
    assert C.prompt_for("colour", "red") == "a red digit"
    assert C.prompt_for("colour", "red", "zh") == "一个红色的数字"
    assert C.prompt_for("position", "left") == "a digit on the left"
    assert C.prompt_for("position", "left", "zh") == "左边一个数字"
    assert C.prompt_for("size", "large", digit=8) == "a large eight"
    for lang in C.LANGS:  # with a digit, a prompt is a caption that names that attribute alone
        for attr in C.ATTRIBUTES[1:]:
            for value in range(len(C.VALUES[attr])):
                parsed = PARSE[lang](C.prompt_for(attr, value, lang, digit=3))
                assert parsed["digit"] == 3 and parsed[attr] == value
                assert all(parsed[a] is None for a in C.ATTRIBUTES[1:] if a != attr)
        for digit in range(10):
            parsed = PARSE[lang](C.prompt_for("digit", digit, lang))
            assert parsed["digit"] == digit and all(parsed[a] is None for a in C.ATTRIBUTES[1:])


# --------------------------------------------------------------------------- tokens


def test_tokenizer_round_trips_every_caption(train):
    tok = C.caption_tokenizer()
    assert C.PAD_ID == 0 and tok.chars[C.PAD_ID] == C.PAD_CHAR and tok.vocab_size == 71
    assert C.MAX_CAPTION_LEN == {"en": 52, "zh": 18}
    texts = [C.describe(train.row(i), lang) for i in range(200) for lang in C.LANGS]
    for lang in C.LANGS:
        texts += C.captions_for(train, lang, seed=5)
        texts += [C.prompt_for(attr, v, lang) for attr in C.ATTRIBUTES for v in range(len(C.VALUES[attr]))]
    longest = max(C.MAX_CAPTION_LEN.values())
    ids, lengths = C.encode_captions(texts, tok, longest)
    assert ids.shape == (len(texts), longest) and ids.dtype == torch.int64 and lengths.dtype == torch.int64
    assert lengths.tolist() == [len(t) for t in texts]  # one token per character
    assert ((ids == C.PAD_ID) == (torch.arange(longest) >= lengths[:, None])).all()  # padding, and only there
    assert C.decode_captions(ids, lengths, tok) == texts
    assert max(map(len, C.captions_for(train, "zh", seed=0, drop=0.0))) <= C.MAX_CAPTION_LEN["zh"]
    # the default tokenizer and length; any tokenizer with encode, e.g. UTF-8 bytes
    ids, lengths = C.encode_captions(texts[:10])
    assert ids.shape[1] == max(lengths) and C.decode_captions(ids, lengths) == texts[:10]
    byte = data.BPETokenizer()
    ids, lengths = C.encode_captions(texts, byte)
    assert C.decode_captions(ids, lengths, byte) == texts


def test_encode_captions_errors():
    with pytest.raises(ValueError, match=r"texts\[1\]: 11 tokens, longer than max_len=10: 'a red seven'"):
        C.encode_captions(["a seven", "a red seven"], max_len=10)
    with pytest.raises(ValueError, match="texts: expected a non-empty list of str"):
        C.encode_captions("a seven")
    with pytest.raises(ValueError, match=r"texts\[0\]: expected a str, got int"):
        C.encode_captions([7])
    with pytest.raises(ValueError, match="max_len: expected an int >= 1, got 0"):
        C.encode_captions(["a seven"], max_len=0)
    with pytest.raises(ValueError, match=r"texts\[0\]: 'a seven!' cannot be encoded: .*not in the vocabulary: '!'"):
        C.encode_captions(["a seven!"])
    with pytest.raises(ValueError, match="tokenizer: expected an object with encode and decode"):
        C.encode_captions(["a seven"], tokenizer="chars")


# --------------------------------------------------------------------------- argument errors

ROW = {"digit": 7, "size": 0, "position": 0, "thickness": 1, "colour": 0}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: C.captioned_digits("val"), r"split: expected 'train' or 'test', got 'val'"),
        (lambda: C.captioned_digits("test", n=0), r"n: expected an int >= 1, got 0"),
        (lambda: C.captioned_digits("test", n=2.5), r"n: expected an int >= 1, got 2.5"),
        (lambda: C.captioned_digits("test", n=True), r"n: expected an int >= 1, got True"),
        (lambda: C.captioned_digits("test", seed=-1), r"seed: expected an int >= 0, got -1"),
        (lambda: C.captioned_digits("test", include_holdout="all"), r"include_holdout: expected None, 'none'"),
        (lambda: C.caption(ROW, "fr"), r"lang: expected 'en' or 'zh', got 'fr'"),
        (lambda: C.caption(ROW, drop=1.5), r"drop: expected a finite number in \[0, 1\], got 1.5"),
        (lambda: C.caption(ROW, drop=-0.1), r"drop: expected a finite number in \[0, 1\], got -0.1"),
        (lambda: C.caption(ROW, numerals=float("nan")), r"numerals: expected a finite number in \[0, 1\]"),
        (lambda: C.caption(ROW, rng=3), r"rng: expected a torch.Generator or None, got int"),
        (lambda: C.caption({"digit": 7}), r"attrs_row: expected a dict with the keys \['digit', 'size'"),
        (lambda: C.caption(ROW | {"colour": "purple"}), r"attrs_row\['colour'\]: expected a colour index in 0..3"),
        (lambda: C.caption(ROW | {"digit": 10}), r"attrs_row\['digit'\]: expected a digit index in 0..9"),
        (lambda: C.describe(ROW, "de"), r"lang: expected 'en' or 'zh', got 'de'"),
        (
            lambda: C.captions_for({"digit": torch.zeros(3)}),
            r"data: expected CaptionedDigits or a dict of the attributes",
        ),
        (lambda: C.captions_for({a: torch.zeros(2, dtype=torch.int64) for a in C.ATTRIBUTES}, "jp"), r"lang: expected"),
        (
            lambda: C.captions_for({a: torch.full((2,), 9) for a in C.ATTRIBUTES}),
            r"data\['size'\]: expected indices in 0..1, got 9..9",
        ),
        (
            lambda: C.prompt_for("color", "red"),
            r"attr: expected one of digit, size, position, thickness, colour, got 'color'",
        ),
        (
            lambda: C.prompt_for("size", "huge"),
            r"value: expected a size index in 0..1 or one of small, large, got 'huge'",
        ),
        (lambda: C.prompt_for("digit", 7, digit=7), r"digit: expected None when attr is 'digit'"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_subset_keeps_rows_together(test_cycled):
    mask = test_cycled.attrs["colour"] == 0
    red = test_cycled.subset(mask)
    assert len(red) == int(mask.sum()) and bool((red.attrs["colour"] == 0).all())
    first = torch.nonzero(mask)[0, 0].item()
    assert red.row(0) == test_cycled.row(first) and torch.equal(red.images[0], test_cycled.images[first])
    picked = test_cycled.subset(torch.tensor([3, 1]))
    assert picked.row(0) == test_cycled.row(3) and int(picked.source[1]) == int(test_cycled.source[1])
    for bad in (mask[:-1], torch.tensor([len(test_cycled)]), [0, 1]):
        with pytest.raises(ValueError, match="which"):
            test_cycled.subset(bad)


def test_measure_attributes_reads_the_renderer_exactly(train, test_cycled):
    for d in (train, test_cycled):
        got = C.measure_attributes(d.images)
        for attr in ("size", "position", "thickness", "colour"):
            acc = (got[attr] == d.attrs[attr]).float().mean().item()
            assert acc > 0.995, (attr, acc)  # measured: 99.6-100% on every attribute of both splits
    blank = torch.zeros(2, 3, 32, 32)
    blank[1, 1, 10:12, 20:22] = 1.0  # a green 2 x 2 blob right of centre
    got = C.measure_attributes(blank)
    assert [got[a][0].item() for a in ("size", "position", "thickness", "colour")] == [-1, -1, -1, -1]
    assert got["colour"][1] == C.COLOURS.index("green") and got["position"][1] == C.POSITIONS.index("right")
    assert got["size"][1] == C.SIZES.index("small") and torch.isnan(got["stroke_width"][0])
    for bad in (torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 32, 32, dtype=torch.int64), [0.0]):
        with pytest.raises(ValueError, match="images"):
            C.measure_attributes(bad)


def test_measure_attributes_survives_what_generated_images_look_like(test_cycled):
    d = test_cycled
    g = torch.Generator().manual_seed(0)
    noisy = (d.images + 0.1 * torch.randn(d.images.shape, generator=g)).clamp(0, 1)
    got = C.measure_attributes(noisy)
    for attr, floor in (("size", 0.98), ("position", 0.98), ("colour", 0.98), ("thickness", 0.95)):
        acc = (got[attr] == d.attrs[attr]).float().mean().item()
        assert acc > floor, (attr, acc)  # measured: 99.5 / 99.7 / 100 / 98.5%
    stray = d.images.clone()
    stray[:, :, 0, 0] = 1.0  # one hot pixel in a corner: a bounding box of raw pixels would span the canvas
    clean, moved = C.measure_attributes(d.images), C.measure_attributes(stray)
    for attr in ("size", "position", "thickness", "colour"):
        assert (clean[attr] == moved[attr]).float().mean() > 0.995
    hazy = C.measure_attributes((d.images + 0.1).clamp(0, 1))  # a grey background: removed as the median
    assert (hazy["colour"] == d.attrs["colour"]).float().mean() > 0.99
    with pytest.raises(ValueError, match="finite"):
        C.measure_attributes(torch.full((1, 3, 32, 32), float("nan")))
