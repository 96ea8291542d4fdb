"""The teacher: espeak-ng, a formant synthesiser, reads numbers aloud and says which phoneme sounds when.

espeak-ng (GPL-3) is not part of the course: the PyPI package `espeakng-loader` ships its library and
voices, and this module loads it at run time through ctypes (`pip install espeakng-loader`). Every
utterance comes with espeak's phoneme events, whose sample positions give each phoneme's duration
exactly — the alignment a FastSpeech-style model trains on, for free.

    utt = synthesize("342", "en-us")        # Utterance: wave in [-1, 1], phonemes, start samples
    corpus = teacher_corpus([3, 42], "zh")  # numbers read in Mandarin, cached on disk

Mandarin tones: espeak's phoneme names carry no tone (it sets the pitch from its dictionary), so the
tokens here add each character's citation tone to its syllable's vowel ('ai -> 'ai3 for 百 bǎi).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aigc_lib.checks import check_int
from aigc_lib.runtime import checkpoint_path
from aigc_lib.speech.audio import SAMPLE_RATE  # espeak-ng's output rate

LANGS = {"en": "en-us", "zh": "cmn"}  # the course's two languages -> espeak's default voice for each
PAUSES = ("_", "_:", "_|")  # espeak's pauses: short, long, syllable break; shared by both languages
INSTALL_HINT = (
    "the speech chapter needs espeak-ng, which the PyPI package espeakng-loader ships (GPL-3, loaded at run "
    "time, not part of the course): pip install espeakng-loader"
)

_DIGITS_ZH = "零一二三四五六七八九"
_TONES_ZH = {"零": 2, "一": 1, "二": 4, "三": 1, "四": 4, "五": 3, "六": 4, "七": 1, "八": 1, "九": 3, "十": 2, "百": 3}
_VOWELS = set("aeiouAEIOUV@3")


def number_text(n: int, lang: str) -> str:
    """What the teacher reads: digits in English (espeak says 342 as "three hundred forty-two"), Chinese
    numerals in Mandarin (三百四十二; 二百 rather than 两百; 十一 not 一十一; 一百零一 with its 零)."""
    check_int("n", n, low=0, high=999)
    if lang == "en":
        return str(n)
    if lang != "zh":
        raise ValueError(f"lang: expected 'en' or 'zh', got {lang!r}")
    if n < 10:
        return _DIGITS_ZH[n]
    if n < 100:
        tens, units = divmod(n, 10)
        return ("" if tens == 1 else _DIGITS_ZH[tens]) + "十" + (_DIGITS_ZH[units] if units else "")
    hundreds, rest = divmod(n, 100)
    text = _DIGITS_ZH[hundreds] + "百"
    if rest == 0:
        return text
    if rest < 10:
        return text + "零" + _DIGITS_ZH[rest]
    tens, units = divmod(rest, 10)
    return text + _DIGITS_ZH[tens] + "十" + (_DIGITS_ZH[units] if units else "")


@dataclass(frozen=True)
class Utterance:
    """One phrase read by the teacher: `wave` float32 (samples,) in [-1, 1] at SAMPLE_RATE; `phonemes`
    the course's tokens ('en:T', 'zh:'ai3', '_:'), `starts` the sample where each begins (ascending)."""

    text: str
    voice: str
    wave: Tensor
    phonemes: tuple[str, ...]
    starts: tuple[int, ...]

    def durations(self, hop: int) -> Tensor:
        """Frames per phoneme for a centred STFT with this hop (frame j is centred on sample j·hop): a
        phoneme owns the frames whose centre falls inside it; the first also owns the frames before it.
        They sum to the number of frames, 1 + samples // hop."""
        check_int("hop", hop)
        frames = 1 + len(self.wave) // hop
        bounds = [0] + [min(-(-s // hop), frames) for s in self.starts[1:]] + [frames]
        return torch.tensor(np.diff(bounds), dtype=torch.long)


class _Espeak:
    """The process's one espeak-ng engine (its C state is global): synchronous synthesis, phoneme events."""

    _EVENT_END, _EVENT_PHONEME = 0, 7

    class _Event(ctypes.Structure):
        _fields_ = [
            ("type", ctypes.c_int),
            ("unique_identifier", ctypes.c_uint),
            ("text_position", ctypes.c_int),
            ("length", ctypes.c_int),
            ("audio_position", ctypes.c_int),
            ("sample", ctypes.c_int),
            ("user_data", ctypes.c_void_p),
            ("id", ctypes.c_char * 8),
        ]  # fmt: skip  (espeak_EVENT in speak_lib.h; `id` is a union, phoneme names are its char[8])

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        # AUDIO_OUTPUT_SYNCHRONOUS = 2; options: phoneme events (1), don't exit on error (0x8000)
        rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x8001)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng failed to start (espeak_Initialize returned {rate})")
        self.lib, self.version = lib, lib.espeak_Info(None).decode()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(self._Event)
        )
        self._callback = callback_type(self._collect)  # kept alive: espeak holds a pointer to it
        lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != self._EVENT_END:
            if events[i].type == self._EVENT_PHONEME:
                self._events.append((events[i].sample, events[i].id.decode("utf-8", "replace")))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"voice: espeak-ng has no voice {voice!r} (e.g. 'en-us', 'cmn', 'en-us+f2')")
            self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE, words per minute
            self._chunks, self._events = [], []
            data = text.encode() + b"\0"
            self.lib.espeak_Synth(data, len(data), 0, 0, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
            self.lib.espeak_Synchronize()
            wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return wave, self._events


_ENGINE: _Espeak | None = None


def engine() -> _Espeak:
    """The loaded espeak-ng (loaded on first use; ImportError with the install command if it is missing)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def espeak_version() -> str:
    return engine().version


def _tokens(names: list[str], text: str, lang: str) -> list[str]:
    """espeak's phoneme names -> the course's tokens: language-prefixed, pauses shared, tones on Mandarin vowels."""
    out, tones = [], [_TONES_ZH.get(c) for c in text if not c.isspace()] if lang == "zh" else []
    if lang == "zh" and None in tones:
        raise ValueError(f"text: Mandarin tones are known only for the number characters {''.join(_TONES_ZH)}")
    nuclei = [i for i, name in enumerate(names) if name not in PAUSES and name.lstrip("',")[:1] in _VOWELS]
    if lang == "zh" and len(nuclei) != len(tones):
        raise RuntimeError(f"{text!r}: {len(tones)} syllables but {len(nuclei)} vowels in espeak's {names}")
    tone_of = dict(zip(nuclei, tones, strict=False))
    for i, name in enumerate(names):
        if name in PAUSES:
            out.append(name)
        else:
            out.append(f"{lang}:{name}{tone_of.get(i, '')}")
    return out


def synthesize(text: str, voice: str = "en-us", rate: int = 175) -> Utterance:
    """The teacher reads `text` with `voice` (an espeak voice, '+variant' allowed: 'en-us+f2', 'cmn+m3') at
    `rate` words per minute. The phoneme tokens need to know the language: voices starting 'cmn' are Mandarin.
    Repeated reads in one process differ by a few samples (espeak's running pitch flutter); `teacher_corpus`
    reads in a fresh process, so a corpus is the same every time."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    check_int("rate", rate, low=80, high=450)
    lang = "zh" if voice.startswith("cmn") else "en"
    wave, events = engine().synth(text, voice, rate)
    starts, names = [s for s, _ in events], [n for _, n in events]
    return Utterance(
        text=text,
        voice=voice,
        wave=torch.from_numpy(wave.astype(np.float32) / 32768.0),
        phonemes=tuple(_tokens(names, text, lang)),
        starts=tuple(starts),
    )


def _read_in_fresh_process(texts: list[str], voice: str, rate: int) -> list[Utterance]:
    """espeak carries running state from one utterance to the next (its pitch flutter's phase), which moves
    phoneme boundaries by a few samples; a fresh engine in a new process reads a corpus the same every time.
    (A subprocess, not multiprocessing: that would re-run a learner's script in the child.)"""
    with tempfile.TemporaryDirectory() as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.pt"
        request.write_text(json.dumps({"texts": texts, "voice": voice, "rate": rate}))
        done = subprocess.run(
            [sys.executable, "-m", "aigc_lib.speech.teacher", str(request), str(result)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"espeak-ng failed reading the corpus:\n{done.stderr[-2000:]}")
        saved = torch.load(result, weights_only=True)
    return _unpack(texts, voice, saved)


def _pack(utterances: list[Utterance]) -> dict:
    return {
        "waves": [(u.wave * 32768.0).round().to(torch.int16) for u in utterances],
        "phonemes": [" ".join(u.phonemes) for u in utterances],
        "starts": [torch.tensor(u.starts, dtype=torch.long) for u in utterances],
    }


def _unpack(texts: list[str], voice: str, saved: dict) -> list[Utterance]:
    return [
        Utterance(t, voice, w.float() / 32768.0, tuple(p.split(" ")), tuple(s.tolist()))
        for t, w, p, s in zip(texts, saved["waves"], saved["phonemes"], saved["starts"], strict=True)
    ]


def teacher_corpus(
    numbers: list[int], lang: str, variant: str = "", *, rate: int = 175, cache: str | Path | None = "checkpoints"
) -> list[Utterance]:
    """The numbers read by the teacher in `lang` ('en' or 'zh'), with espeak's voice `variant` ('' for the
    default, 'f2', 'm3', ...). Cached under `cache`/speech/ in one file keyed by the texts, voice, rate and
    espeak's version (None: no cache); the synthesiser is deterministic, so a cache hit equals a fresh run."""
    return teacher_corpora([(numbers, lang, variant)], rate=rate, cache=cache)[0]


def teacher_corpora(
    requests: list[tuple[list[int], str, str]], *, rate: int = 175, cache: str | Path | None = "checkpoints"
) -> list[list[Utterance]]:
    """Several `teacher_corpus` calls, (numbers, lang, variant) each: the corpora not in the cache are read by
    fresh espeak processes side by side, one per CPU core (espeak reads on one core; each corpus still gets
    its own fresh engine, so the result is the same as one call after another). Each is cached as it is done."""
    jobs = []
    for numbers, lang, variant in requests:
        if lang not in LANGS:
            raise ValueError(f"lang: expected one of {sorted(LANGS)}, got {lang!r}")
        numbers = [check_int("numbers[i]", n, low=0, high=999) for n in numbers]
        voice = LANGS[lang] + (f"+{variant}" if variant else "")
        texts = [number_text(n, lang) for n in numbers]
        path = None
        if cache is not None:
            key = hashlib.sha256(repr((texts, voice, rate, espeak_version(), SAMPLE_RATE)).encode()).hexdigest()[:16]
            path = checkpoint_path(Path(cache) / "speech" / f"teacher_{lang}_{variant or 'default'}_{key}.pt")
        jobs.append((texts, voice, path))
    results: list[list[Utterance] | None] = [
        _unpack(texts, voice, torch.load(path, weights_only=True)) if path is not None and path.exists() else None
        for texts, voice, path in jobs
    ]
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=min(len(missing), cores)) as pool:
            reading = {pool.submit(_read_in_fresh_process, jobs[i][0], jobs[i][1], rate): i for i in missing}
            for done in as_completed(reading):
                i = reading[done]
                results[i] = done.result()
                path = jobs[i][2]
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    torch.save(_pack(results[i]), tmp)
                    tmp.replace(path)  # never a half-written cache
    return results


if __name__ == "__main__":  # the fresh process of `_read_in_fresh_process`: request.json -> result.pt
    job = json.loads(Path(sys.argv[1]).read_text())
    torch.save(_pack([synthesize(t, job["voice"], job["rate"]) for t in job["texts"]]), sys.argv[2])
