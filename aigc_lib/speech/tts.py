"""Text-to-speech end to end: the teacher's corpus as training data, speaking a number, and the measures.

    utts = teacher.teacher_corpus(numbers, "en")
    vocab = PhonemeVocab([p for u in utts for p in u.phonemes])
    data = tts_data(utts, vocab)                      # log-mels, phoneme ids, frame durations
    wave, mel, durations = speak(model, vocab, "342", "en", speed=1.2)

espeak is also the front end here (grapheme to phoneme): a text becomes the phonemes espeak would say,
as in several open TTS systems; the model turns them into sound.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch
from torch import Tensor

from aigc_lib.speech import audio, teacher
from aigc_lib.speech.fastspeech import FastSpeech, PhonemeVocab, SpeechBatchData, pad_corpus
from aigc_lib.speech.judge import NumberJudge, judge_numbers

MEL = audio.MelConfig()  # 22.05 kHz, 1024-point STFT, hop 256 (11.6 ms), 80 mels up to 8 kHz
GRIFFIN_LIM_ITERS = 60


def wave_mels(waves: list[Tensor], cfg: audio.MelConfig = MEL) -> list[Tensor]:
    """Each waveform's log-mel, (frames, n_mels)."""
    return [audio.log_mel(w, cfg).T.contiguous() for w in waves]


def utterance_mels(utterances: list[teacher.Utterance], cfg: audio.MelConfig = MEL) -> list[Tensor]:
    """Each utterance's log-mel, (frames, n_mels)."""
    return wave_mels([u.wave for u in utterances], cfg)


def tts_data(utterances: list[teacher.Utterance], vocab: PhonemeVocab, cfg: audio.MelConfig = MEL) -> SpeechBatchData:
    """Phoneme ids, the teacher's frame durations and log-mels, padded."""
    return pad_corpus(
        [vocab.encode(u.phonemes) for u in utterances],
        [u.durations(cfg.hop) for u in utterances],
        utterance_mels(utterances, cfg),
    )


def padded_mels(mels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(frames_i, n_mels) log-mels -> ((N, n_mels, T) padded with the quietest value, (N,) lengths)."""
    floor = min(float(m.min()) for m in mels)
    batch = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True, padding_value=floor)
    return batch.transpose(1, 2).contiguous(), torch.tensor([len(m) for m in mels])


@dataclass(frozen=True)
class NumberCorpus:
    """The numbers 0-999 read by the teacher's default voice in English and in Mandarin. `held_out[lang]`:
    numbers the model never trains on (their utterances in `test[lang]`); `train`: all the others, both
    languages; `vocab`: the phoneme tokens of `train`; `data`: `train` as tensors."""

    train: list[teacher.Utterance]
    test: dict[str, list[teacher.Utterance]]
    held_out: dict[str, list[int]]
    vocab: PhonemeVocab
    data: SpeechBatchData


def number_corpus(held_out: int = 100, seed: int = 0, cache: str | None = "checkpoints") -> NumberCorpus:
    """Split 0-999 per language: `held_out` numbers drawn at random (seeded) for testing, the rest for training.
    A held-out number's phonemes all occur in training (its words do, in other numbers)."""
    g = torch.Generator().manual_seed(seed)
    train, test, held = [], {}, {}
    corpora = teacher.teacher_corpora([(list(range(1000)), lang, "") for lang in teacher.LANGS], cache=cache)
    for lang, utterances in zip(teacher.LANGS, corpora, strict=True):
        held[lang] = sorted(torch.randperm(1000, generator=g)[:held_out].tolist())
        chosen = set(held[lang])
        train += [u for n, u in enumerate(utterances) if n not in chosen]
        test[lang] = [utterances[n] for n in held[lang]]
    vocab = PhonemeVocab([p for u in train for p in u.phonemes])
    return NumberCorpus(train, test, held, vocab, tts_data(train, vocab))


def judge_corpus(
    variants: tuple[str, ...], per_voice: int, seed: int = 0, cache: str | None = "checkpoints"
) -> tuple[Tensor, Tensor, Tensor]:
    """The judge's training speech: `per_voice` numbers (seeded draw; all 1000 when per_voice=1000) read by
    each espeak voice variant in both languages -> (log-mels (N, n_mels, T) padded, frames (N,), numbers (N,))."""
    requests = []
    for i, variant in enumerate(variants):
        for j, lang in enumerate(teacher.LANGS):
            g = torch.Generator().manual_seed(seed * 1000 + 2 * i + j)
            requests.append((sorted(torch.randperm(1000, generator=g)[:per_voice].tolist()), lang, variant))
    corpora = teacher.teacher_corpora(requests, cache=cache)  # the voices read side by side
    mels = [m for corpus in corpora for m in utterance_mels(corpus)]
    return *padded_mels(mels), torch.tensor([n for chosen, _, _ in requests for n in chosen])


def wavenet_codes(utterances: list[teacher.Utterance], sample_rate: int = 8000, channels: int = 256) -> Tensor:
    """The utterances resampled to `sample_rate`, joined end to end (each begins and ends in silence), μ-law coded."""
    waves = [audio.resample(u.wave, audio.SAMPLE_RATE, sample_rate) for u in utterances]
    return audio.mu_law_encode(torch.cat(waves), channels)


_ZH_NUMERALS = set("零一二三四五六七八九十百")


def number_phrase(text: str, lang: str) -> str:
    """What a learner typed -> the text the teacher reads: a number 0-999 as digits (any width: '３４２' too) or,
    in Mandarin, as Chinese numerals (两 read as 二); spaces and punctuation dropped. Digits typed in Mandarin
    mode become numerals (342 -> 三百四十二). ValueError, in plain words, for anything else."""
    if lang not in teacher.LANGS:
        raise ValueError(f"lang: expected one of {sorted(teacher.LANGS)}, got {lang!r}")
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    # keep signs and decimal points, so that -5 and 3.5 are refused rather than read as 5 and 35
    kept = "".join(c for c in unicodedata.normalize("NFKC", text) if c.isalnum() or c in "-−.").replace("两", "二")
    if kept.isdigit():
        n = int(kept)
        if n > 999:
            raise ValueError(f"text: {n} is out of range: this model has learned the numbers 0-999 only")
        return teacher.number_text(n, lang)
    if lang == "zh" and kept and set(kept) <= _ZH_NUMERALS:
        return kept
    raise ValueError(
        f"text: expected a number from 0 to 999 (digits{', or Chinese numerals such as 七百零八' if lang == 'zh' else ''}), "
        f"got {text!r}"
    )


def phonemes_for(text: str, lang: str, vocab: PhonemeVocab) -> Tensor:
    """The text's phonemes as espeak says them with the language's default voice, as ids (1, P)."""
    if lang not in teacher.LANGS:
        raise ValueError(f"lang: expected one of {sorted(teacher.LANGS)}, got {lang!r}")
    return vocab.encode(teacher.synthesize(text, teacher.LANGS[lang]).phonemes)[None]


@torch.no_grad()
def synthesize_mels(model: FastSpeech, phonemes: list[Tensor], speed: float = 1.0, batch_size: int = 64):
    """Predicted log-mels (frames_i, n_mels) and durations (P_i,) for each (P_i,) phoneme-id string."""
    device = next(model.parameters()).device
    model.eval()
    mels, durs = [], []
    for i in range(0, len(phonemes), batch_size):
        ids = torch.nn.utils.rnn.pad_sequence(phonemes[i : i + batch_size], batch_first=True).to(device)
        mel, mask, dur = model.synthesize(ids, speed)
        for j in range(len(ids)):
            mels.append(mel[j, : int(mask[j].sum())].cpu())
            durs.append(dur[j, : int((ids[j] != 0).sum())].cpu())
    return mels, durs


def vocode(mels: list[Tensor], cfg: audio.MelConfig = MEL, iters: int = GRIFFIN_LIM_ITERS) -> list[Tensor]:
    """Log-mels (frames, n_mels) -> waveforms by Griffin-Lim (the course's vocoder; seeded, deterministic):
    `audio.mel_to_audio` of each, with the mel inversion solved for all frames at once (frame by frame
    independent, so the same result from one large product instead of many small ones).
    The phrases' Griffin-Lim loops run one after another: two at a time on a thread pool saved little
    in chapter 08 (§5's evaluation took 76.7 s with the pool, 77.8 s without, in the same hour)."""
    if not mels:
        return []
    power = audio.mel_to_linear(torch.cat([m.T for m in mels], dim=-1).exp(), cfg)  # (n_fft // 2 + 1, all frames)
    return [audio.griffin_lim(p.sqrt(), cfg.n_fft, cfg.hop, iters) for p in power.split([len(m) for m in mels], dim=-1)]


def speak(model: FastSpeech, vocab: PhonemeVocab, text: str, lang: str, speed: float = 1.0):
    """Say `text`, a number 0-999 (`number_phrase`: '342', or 三百四十二 in Mandarin) -> (wave, log-mel
    (frames, n_mels), durations)."""
    mels, durs = synthesize_mels(model, [phonemes_for(number_phrase(text, lang), lang, vocab)[0]], speed)
    return vocode(mels)[0], mels[0], durs[0]


def evaluate_tts(
    model: FastSpeech,
    vocab: PhonemeVocab,
    utterances: list[teacher.Utterance],
    numbers: list[int],
    judge: NumberJudge | None = None,
) -> dict[str, float]:
    """The chapter's measures on teacher utterances of `numbers` (phrases the model never trained on):
    mcd_teacher_durations -- MCD (dB, 13 mel-cepstra, frame by frame) of the mel decoded with the
                             teacher's durations against the teacher's mel;
    mcd_teacher_durations_dtw -- the same aligned by DTW (which can only lower it), to compare with:
    mcd_predicted         -- the mel decoded with predicted durations, aligned to the teacher's by DTW;
    duration_error        -- |predicted total frames - teacher's| / teacher's, frames summed over the set;
    duration_error_phrase -- the same per phrase, averaged (errors of opposite sign do not cancel);
    duration_error_max    -- the largest per phrase; duration_bias: the mean signed per-phrase error;
    and, with a judge: heard_teacher (accuracy on the teacher's audio), heard_vocoded (the teacher's
    mel through Griffin-Lim: the vocoder's ceiling), heard_tts (the model's audio), relative (tts / teacher)."""
    data = tts_data(utterances, vocab)
    device = next(model.parameters()).device
    model.eval()
    mcd_tf, mcd_tf_dtw = [], []
    with torch.no_grad():
        for i in range(0, len(data), 64):
            ids, dur, target = (t.to(device) for t in data.batch(torch.arange(i, min(i + 64, len(data)))))
            mel, mask, _ = model(ids, dur)
            for j in range(len(ids)):
                n = int(mask[j].sum())
                mcd_tf.append(float(audio.mel_cepstral_distortion(mel[j, :n].T.cpu(), target[j, :n].T.cpu())))
                mcd_tf_dtw.append(audio.mcd_dtw(mel[j, :n].T.cpu(), target[j, :n].T.cpu()))
    mels, durs = synthesize_mels(model, [vocab.encode(u.phonemes) for u in utterances])
    reference = utterance_mels(utterances)
    out = {
        "mcd_teacher_durations": sum(mcd_tf) / len(mcd_tf),
        "mcd_teacher_durations_dtw": sum(mcd_tf_dtw) / len(mcd_tf_dtw),
        "mcd_predicted": sum(audio.mcd_dtw(a.T, b.T) for a, b in zip(mels, reference, strict=True)) / len(mels),
        "duration_error": abs(sum(len(m) for m in mels) - sum(len(m) for m in reference))
        / sum(len(m) for m in reference),
    }
    errors = [(len(m) - len(r)) / len(r) for m, r in zip(mels, reference, strict=True)]
    out["duration_error_phrase"] = sum(abs(e) for e in errors) / len(errors)
    out["duration_error_max"] = max(abs(e) for e in errors)
    out["duration_bias"] = sum(errors) / len(errors)
    if judge is not None:
        truth = torch.tensor(numbers)

        def heard(waves: list[Tensor]) -> float:
            return float((judge_numbers(judge, *padded_mels(wave_mels(waves))) == truth).float().mean())

        out["heard_teacher"] = heard([u.wave for u in utterances])
        out["heard_vocoded"] = heard(vocode(reference))
        out["heard_tts"] = heard(vocode(mels))
        out["relative"] = out["heard_tts"] / max(out["heard_teacher"], 1e-9)
    return out
