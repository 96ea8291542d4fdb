"""Chapter 08's models: the text-to-speech model, the WaveNet and the spoken-number judge.

All three learn from the espeak teacher (`speech.teacher`): the FastSpeech-style model and the WaveNet
from the default English and Mandarin voices reading 0-999 (100 numbers per language held out,
`speech.tts.number_corpus`), the judge from other voice variants (`speech.tts.judge_corpus`), so it hears
the model's voice as a stranger's.
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib.recipes import Recipe
from aigc_lib.speech import fastspeech as fs
from aigc_lib.speech import judge as jd
from aigc_lib.speech import tts
from aigc_lib.speech import wavenet as wn
from aigc_lib.speech.tts import NumberCorpus
from aigc_lib.training import History

BUDGETS = ("smoke", "standard", "full")
TTS_STEPS = {"smoke": 10, "standard": 700, "full": 4_000}
# kernel 9 as FastSpeech 2's FFT blocks: at about equal training time (one seed, the chapter's evaluation) it beat
# kernel 3 clearly: 700 steps, 166 s -> held-out MCD 5.2 / 4.8 dB (en / zh); kernel 3, 1,500 steps, 182 s -> 8.4 / 7.6
TTS_SIZES = {"d_model": 128, "conv_hidden": 256, "kernel": 9, "batch": 32}
WAVENET_STEPS = {"smoke": 10, "standard": 600, "full": 5_000}
WAVENET_SIZES = {"residual": 32, "skip": 64, "batch": 8, "crop": 2048}
JUDGE_VARIANTS = ("f2", "m3", "f4", "m6")  # espeak voice variants: never the TTS model's default voice
JUDGE_PER_VOICE = {"smoke": 40, "standard": 1000, "full": 1000}
JUDGE_STEPS = {"smoke": 10, "standard": 400, "full": 2_000}


def train_tts(sizes: dict[str, Any], data: NumberCorpus, device: Any, **run: Any) -> tuple[fs.FastSpeech, History]:
    """`data`: `speech.tts.number_corpus()`; the FastSpeech-style model and its history."""
    if not isinstance(data, NumberCorpus):
        raise ValueError(f"data: expected speech.tts.number_corpus(), got {type(data).__name__}")
    torch.manual_seed(0)
    config = fs.FastSpeechConfig(len(data.vocab), d_model=sizes["d_model"], conv_hidden=sizes["conv_hidden"],
                                 kernel=sizes["kernel"], dropout=0.0)  # fmt: skip
    model = fs.FastSpeech(config)
    model.set_mel_stats(data.data)
    model = model.to(device)
    history = fs.train_fastspeech(model, data.data, sizes["steps"], batch_size=sizes["batch"], **run)
    return model, history


def train_wavenet_model(sizes: dict[str, Any], codes: Any, device: Any, **run: Any) -> tuple[wn.WaveNet, History]:
    """`codes`: `speech.tts.wavenet_codes(corpus.train)` (8 kHz μ-law); the WaveNet and its history."""
    torch.manual_seed(0)
    model = wn.WaveNet(wn.WaveNetConfig(residual=sizes["residual"], skip=sizes["skip"])).to(device)
    history = wn.train_wavenet(model, codes, sizes["steps"], batch_size=sizes["batch"], crop=sizes["crop"], **run)
    return model, history


def train_judge(sizes: dict[str, Any], data: Any, device: Any, **run: Any) -> tuple[jd.NumberJudge, History]:
    """`data`: `speech.tts.judge_corpus(JUDGE_VARIANTS, sizes["per_voice"])` = (mels, frames, numbers)."""
    mels, frames, numbers = data
    expected = 2 * len(JUDGE_VARIANTS) * sizes["per_voice"]
    if len(numbers) != expected:
        raise ValueError(
            f"data: expected judge_corpus(JUDGE_VARIANTS, {sizes['per_voice']}) ({expected} utterances), got {len(numbers)}"
        )
    torch.manual_seed(0)
    judge = jd.NumberJudge(n_mels=mels.shape[1], width=sizes["width"]).to(device)
    history = jd.train_number_judge(judge, mels, frames, numbers, sizes["steps"], batch_size=sizes["batch"], **run)
    return judge, history


def corpus(sizes: Any = None) -> NumberCorpus:
    """The notebook's teacher corpus: `speech.tts.number_corpus()` (needs the espeak extra)."""
    return tts.number_corpus()


def training_codes(sizes: Any = None) -> Any:
    """The WaveNet's training audio, as the notebook codes it: `tts.wavenet_codes(corpus.train)`."""
    return tts.wavenet_codes(tts.number_corpus().train)


def judge_data(sizes: dict[str, Any]) -> Any:
    """The judge's voices: `tts.judge_corpus(JUDGE_VARIANTS, sizes["per_voice"])`."""
    return tts.judge_corpus(JUDGE_VARIANTS, sizes["per_voice"])


RECIPES = (
    Recipe(
        name="08.fastspeech",
        summary="FastSpeech-style text-to-mel: 2 + 2 FFT blocks of width 128 (2 heads, convolutional MLP 256 wide, "
        "kernel 9), duration predictor, length regulator, trained on the teacher's durations; batch 32, AdamW 2e-3",
        sizes={b: {"steps": TTS_STEPS[b], **TTS_SIZES} for b in BUDGETS},
        checkpoint="08_fastspeech_{budget}_{d_model}_k{kernel}_{steps}.pt",
        train=train_tts,
        data=corpus,
    ),
    Recipe(
        name="08.wavenet",
        summary="μ-law WaveNet at 8 kHz: 16 gated layers, dilations 1-128 twice (receptive field 511 samples, "
        "64 ms), residual 32, skip 64; random crops of 2,048 samples, batch 8, AdamW 2e-3",
        sizes={b: {"steps": WAVENET_STEPS[b], **WAVENET_SIZES} for b in BUDGETS},
        checkpoint="08_wavenet_{budget}_{residual}_{steps}.pt",
        train=train_wavenet_model,
        data=training_codes,
    ),
    Recipe(
        name="08.judge",
        summary="spoken-number judge: 2 convolutions, a bidirectional GRU (width 96) and an attention head per "
        "digit, trained on 4 espeak voice variants the TTS model never hears, both languages; batch 64, AdamW 3e-3",
        sizes={
            b: {"per_voice": JUDGE_PER_VOICE[b], "steps": JUDGE_STEPS[b], "batch": 64, "width": 96} for b in BUDGETS
        },
        checkpoint="08_judge_{budget}_{per_voice}_{steps}.pt",
        train=train_judge,
        data=judge_data,
    ),
)
