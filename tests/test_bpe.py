"""Tests for aigc_lib.data.BPETokenizer: byte-level BPE, checked against a naive reference implementation.

The reference (`naive_bpe`) is the trusted one: it keeps every pre-token occurrence of the text and
recounts all pairs from scratch after every merge, with the same tie rule (most frequent pair, then the
lexicographically smallest pair of ids). The library counts over distinct words and updates the
counts incrementally; both must learn the same merges.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

from aigc_lib.data import BPE_PATTERN, BPETokenizer, CharTokenizer, chars_per_token, shakespeare_text
from aigc_lib.paths import ROOT

SMALL = shakespeare_text("train")[:4000]  # a few KB: small enough for the naive reference


def naive_merge(word: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == list(pair):
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def naive_bpe(text: str, n_merges: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Merges and the final split of every pre-token occurrence, recounting all pairs after each merge."""
    words = [list(w.encode("utf-8")) for w in re.findall(BPE_PATTERN, text)]
    merges: list[tuple[int, int]] = []
    for k in range(n_merges):
        counts = Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not counts or max(counts.values()) < 2:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        merges.append(pair)
        words = [naive_merge(w, pair, 256 + k) for w in words]
    return merges, words


@pytest.fixture(scope="module")
def train_text() -> str:
    return shakespeare_text("train")


@pytest.fixture(scope="module")
def bpe1024(train_text) -> BPETokenizer:
    return BPETokenizer.train(train_text, 1024)


# --------------------------------------------------------------------------- the pre-tokenizer


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("Hello world, 2024!  ok", ["Hello", " world", ",", " 2024", "!", " ", " ok"]),
        ("KING:\nI'll go.\n\nQUEEN:", ["KING", ":", "\n", "I", "'", "ll", " go", ".", "\n", "\n", "QUEEN", ":"]),
        ("a_b 3.14 --  ", ["a", "_", "b", " 3", ".", "14", " --", "  "]),
        ("我爱北京。 天安门", ["我爱北京", "。", " 天安门"]),
        ("naïve café", ["naïve", " café"]),
        ("", []),
    ],
)
def test_pretokenize_examples(text, pieces):
    assert BPETokenizer.pretokenize(text) == pieces


def test_pretokenize_covers_every_character():
    rng = random.Random(0)
    alphabet = "ab Z9_-.'\n\t\r é中😀\u200d\u0301²½\x00"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert "".join(BPETokenizer.pretokenize(text)) == text


# --------------------------------------------------------------------------- against the reference


def test_merges_equal_the_naive_reference_on_shakespeare():
    tok = BPETokenizer.train(SMALL, 256 + 200)
    merges, words = naive_bpe(SMALL, 200)
    assert len(merges) == 200 and tok.merges == merges
    # encoding applies the merges exactly as training did: the reference's final split of the text
    assert tok.encode(SMALL).tolist() == [t for w in words for t in w]


@pytest.mark.parametrize("seed", range(12))
def test_merges_equal_the_naive_reference_on_random_text(seed):
    """Small alphabets give many ties and overlapping pairs ("aaa"); multi-byte characters, early stops."""
    rng = random.Random(seed)
    alphabet = rng.choice(["ab ", "aab  \n", "ab cd.", "a中 b", "x😀 y"])
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
    tok = BPETokenizer.train(text, 256 + 60)
    merges, words = naive_bpe(text, 60)
    assert tok.merges == merges and tok.vocab_size == 256 + len(merges)
    assert tok.encode(text).tolist() == [t for w in words for t in w]
    assert tok.decode(tok.encode(text)) == text


def test_first_merge_is_the_most_frequent_pair(train_text, bpe1024):
    counts = Counter()
    for piece in BPETokenizer.pretokenize(train_text):
        b = piece.encode("utf-8")
        counts.update(zip(b, b[1:], strict=False))
    best = max(counts.values())
    assert bpe1024.merges[0] == min(p for p, c in counts.items() if c == best)
    assert bpe1024.token_bytes(256) == bytes(bpe1024.merges[0])


def test_training_stops_early_when_no_pair_repeats():
    tok = BPETokenizer.train("abab abab cd", 1000)
    merges, _ = naive_bpe("abab abab cd", 1000)
    assert tok.merges == merges and tok.vocab_size == 256 + len(merges) < 1000
    assert BPETokenizer.train("abcdefg", 300).vocab_size == 256  # every pair occurs once
    assert BPETokenizer.train("x", 300).merges == []


def test_smaller_vocab_learns_a_prefix_of_the_merges():
    assert BPETokenizer.train(SMALL, 300).merges == BPETokenizer.train(SMALL, 400).merges[:44]


# --------------------------------------------------------------------------- round trips


ROUND_TRIPS = {
    "ascii": "The quick brown fox jumps over the lazy dog. 1234567890 !@#$%^&*()_+-=[]{};':\",./<>?\\|`~",
    "shakespeare": shakespeare_text("val")[:20000],
    "chinese": "床前明月光，疑是地上霜。举头望明月，低头思故乡。蕭晨騎馬出皇都",
    "emoji": "😀 👍🏽 👨‍👩‍👧‍👦 🇨🇳 ❤️ e\u0301",
    "empty": "",
    "whitespace": "   \n\n\t \r\n  \u3000\u00a0 \n",
    "mixed": "Hamlet 王子 says: 'To be, or not to be' 😀\x00\x7f\ufeff",
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip(name, bpe1024):
    text = ROUND_TRIPS[name]
    chinese = BPETokenizer.train(ROUND_TRIPS["chinese"] * 3 + "明月光", 300)  # merges inside 3-byte characters
    for tok in (BPETokenizer(), BPETokenizer(bpe1024.merges[:256]), bpe1024, chinese):
        ids = tok.encode(text)
        assert ids.dtype == torch.int64 and ids.shape == (ids.numel(),)
        assert len(ids) <= len(text.encode("utf-8"))
        assert tok.decode(ids) == tok.decode(ids.tolist()) == tok.decode(ids.numpy()) == text
        if len(ids):
            assert 0 <= int(ids.min()) and int(ids.max()) < tok.vocab_size
    assert BPETokenizer().encode(text).tolist() == list(text.encode("utf-8"))  # no merges: the bytes


def test_decode_of_a_cut_character_is_replaced_not_raised():
    tok = BPETokenizer()
    ids = tok.encode("中a")  # 3 bytes, then 'a'
    assert tok.decode(ids[:2]) == "\ufffd" and tok.decode(ids[1:]) == "\ufffd\ufffda"
    assert tok.decode(ids[0]) == "\ufffd"  # a 0-D tensor
    assert tok.decode(ids) == "中a"


def test_merged_tokens_never_cross_a_pretoken_boundary(bpe1024):
    text = shakespeare_text("val")[:50000]
    ids = bpe1024.encode(text).tolist()
    ends = np.cumsum([len(bpe1024.token_bytes(i)) for i in ids])
    piece_ends = np.cumsum([len(p.encode("utf-8")) for p in BPETokenizer.pretokenize(text)])
    assert set(piece_ends.tolist()) <= set(ends.tolist())
    pieces = BPETokenizer.pretokenize(text)
    assert ids == [t for p in pieces for t in bpe1024.encode(p).tolist()]
    for i in range(256, bpe1024.vocab_size):  # every learned token lies inside one pre-token
        assert len(BPETokenizer.pretokenize(bpe1024.token_bytes(i).decode("utf-8"))) == 1


# --------------------------------------------------------------------------- compression


def test_bpe_compresses_more_with_a_larger_vocabulary(bpe1024):
    text = shakespeare_text("val")
    ratios = {n: chars_per_token(BPETokenizer(bpe1024.merges[: n - 256]), text) for n in (256, 300, 512, 1024)}
    assert ratios[256] == 1.0  # Shakespeare here is ASCII: one byte per character
    assert ratios[256] < ratios[300] < ratios[512] < ratios[1024]
    assert ratios[512] > 1.5 and len(bpe1024.encode(text)) < len(text.encode("utf-8"))
    assert chars_per_token(CharTokenizer.from_text(text), text) == 1.0


# --------------------------------------------------------------------------- API, errors, saving


def test_api_and_repr(bpe1024):
    assert bpe1024.vocab_size == 1024 and len(bpe1024.merges) == 768
    assert all(isinstance(p, tuple) and len(p) == 2 for p in bpe1024.merges)
    bpe1024.merges.clear()  # a copy: the tokenizer keeps its merges
    assert bpe1024.vocab_size == 1024
    k = bpe1024.encode(" the")[0].item() - 256  # " the" is one learned token
    a, b = bpe1024.merges[k]
    assert bpe1024.token_bytes(256 + k) == bpe1024.token_bytes(a) + bpe1024.token_bytes(b)
    assert bpe1024.token_bytes(65) == b"A" == bpe1024.token_bytes(torch.tensor(65)) == bpe1024.token_bytes(np.int64(65))
    assert bpe1024.token_bytes(bpe1024.encode(" the")[0]) == b" the"
    assert repr(bpe1024).startswith("BPETokenizer(vocab_size=1024, first merges=[")
    assert repr(BPETokenizer()) == "BPETokenizer(vocab_size=256, first merges=[])"


def test_errors():
    with pytest.raises(ValueError, match=r"vocab_size: expected an int >= 256 \(the 256 byte values"):
        BPETokenizer.train("hello", 255)
    for bad in (512.0, "512", True, None):
        with pytest.raises(ValueError, match="vocab_size: expected an int >= 256"):
            BPETokenizer.train("hello", bad)
    with pytest.raises(ValueError, match="text: expected a non-empty str"):
        BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="text: expected a non-empty str"):
        BPETokenizer.train(b"hello", 300)
    tok = BPETokenizer.train("hello hello", 260)
    with pytest.raises(ValueError, match="text: expected a str, got bytes"):
        tok.encode(b"hello")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("ok \ud800")
    with pytest.raises(ValueError, match="lone surrogate"):
        BPETokenizer.train("ok \ud800", 300)
    with pytest.raises(ValueError, match=rf"ids: expected ids in 0\.\.{tok.vocab_size - 1}, got \[-1, 999\]"):
        tok.decode([1, -1, 999])
    with pytest.raises(ValueError, match="ids: expected a 1-D sequence of integers"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ids: expected a 1-D sequence of integers"):
        tok.decode([0.5])
    with pytest.raises(ValueError, match=rf"i: expected an int in \[0, {tok.vocab_size - 1}\]"):
        tok.token_bytes(tok.vocab_size)
    with pytest.raises(ValueError, match=r"merges\[1\]: expected a pair of token ids in 0\.\.256"):
        BPETokenizer([(1, 2), (3, 300)])
    with pytest.raises(ValueError, match=r"merges\[1\]: the pair \(1, 2\) is already merges\[0\]"):
        BPETokenizer([(1, 2), [1, 2]])
    with pytest.raises(ValueError, match="merges: expected a list of"):
        BPETokenizer("ab")
    with pytest.raises(ValueError, match="text: expected a non-empty str"):
        chars_per_token(tok, "")


def test_state_dict_round_trip(bpe1024, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(bpe1024.state_dict()), encoding="utf-8")
    loaded = BPETokenizer.from_state_dict(json.loads(path.read_text(encoding="utf-8")))
    assert loaded.merges == bpe1024.merges and loaded.vocab_size == bpe1024.vocab_size
    text = ROUND_TRIPS["mixed"] + shakespeare_text("val")[:5000]
    assert torch.equal(loaded.encode(text), bpe1024.encode(text))
    state = bpe1024.state_dict()
    with pytest.raises(ValueError, match="state: saved with the pre-tokenizer"):
        BPETokenizer.from_state_dict({**state, "pattern": r"\S+|\s+"})
    with pytest.raises(ValueError, match="state: expected version 1"):
        BPETokenizer.from_state_dict({**state, "version": 2})
    with pytest.raises(ValueError, match=r"state: expected a BPETokenizer.state_dict\(\)"):
        BPETokenizer.from_state_dict({"merges": []})


def test_training_is_deterministic_across_processes():
    """Same merges twice in one process and in a fresh one with another string-hash seed."""
    here = BPETokenizer.train(SMALL, 400).merges
    assert BPETokenizer.train(SMALL, 400).merges == here
    code = (
        "import json; from aigc_lib.data import BPETokenizer, shakespeare_text; "
        "print(json.dumps(BPETokenizer.train(shakespeare_text('train')[:4000], 400).merges))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert [tuple(p) for p in json.loads(done.stdout)] == here


# --------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_speed_on_shakespeare(train_text, bpe1024):
    """256 merges on the ~4 MB training text in seconds (incremental counts), encoding it in seconds (cache)."""
    start = time.perf_counter()
    tok = BPETokenizer.train(train_text, 512)
    trained = time.perf_counter()
    ids = tok.encode(train_text)
    encoded = time.perf_counter()
    print(f"train 256 merges: {trained - start:.2f} s; encode {len(train_text):,} chars: {encoded - trained:.2f} s")
    assert tok.merges == bpe1024.merges[:256]
    assert trained - start < 20.0 and encoded - trained < 10.0
    assert tok.decode(ids) == train_text
