"""Chapter 08's speech library: the espeak teacher and its alignments, the length regulator and FastSpeech's
masking, the WaveNet's causality, receptive field and cached generation, the judge, exact resume.
(The audio front end is tested against librosa in test_audio.py.)"""

from __future__ import annotations

import sys

import pytest
import torch

from aigc_lib.speech import audio, tts
from aigc_lib.speech import fastspeech as fs
from aigc_lib.speech import judge as jd
from aigc_lib.speech import wavenet as wn
from tests.numerics import gen

teacher = pytest.importorskip("aigc_lib.speech.teacher")
needs_espeak = pytest.mark.skipif(
    __import__("importlib").util.find_spec("espeakng_loader") is None, reason="espeakng-loader not installed"
)


# --- the teacher --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "zh"),
    [(0, "零"), (7, "七"), (10, "十"), (11, "十一"), (20, "二十"), (21, "二十一"), (100, "一百"), (101, "一百零一"),
     (110, "一百一十"), (111, "一百一十一"), (250, "二百五十"), (909, "九百零九"), (999, "九百九十九")],
)  # fmt: skip
def test_mandarin_numerals(n, zh):
    assert teacher.number_text(n, "zh") == zh
    assert teacher.number_text(n, "en") == str(n)


def test_number_text_refuses_what_it_cannot_read():
    for bad in (-1, 1000, 3.0, True):
        with pytest.raises(ValueError, match="n:"):
            teacher.number_text(bad, "en")
    with pytest.raises(ValueError, match="lang"):
        teacher.number_text(3, "fr")


@needs_espeak
def test_utterances_carry_phonemes_tones_and_durations_that_fill_the_frames():
    u = teacher.synthesize("342", "en-us")
    assert u.wave.dtype == torch.float32 and u.wave.abs().max() <= 1 and len(u.wave) > 0.5 * 22050
    assert len(u.phonemes) == len(u.starts) and list(u.starts) == sorted(u.starts)
    assert all(p.startswith("en:") or p in teacher.PAUSES for p in u.phonemes)
    for hop in (256, 100):
        d = u.durations(hop)
        assert int(d.sum()) == 1 + len(u.wave) // hop and (d >= 0).all()
    zh = teacher.synthesize("三百四十二", "cmn")  # sān bǎi sì shí èr: one toned vowel per character
    assert [p[-1] for p in zh.phonemes if p[-1].isdigit()] == ["1", "3", "4", "2", "4"]
    with pytest.raises(ValueError, match="tones"):
        teacher.synthesize("你好", "cmn")
    with pytest.raises(ValueError, match="voice"):
        teacher.synthesize("3", "no-such-voice")


@needs_espeak
def test_corpus_is_the_same_from_the_cache_and_from_a_fresh_read(tmp_path):
    numbers = [0, 13, 101, 342]
    first = teacher.teacher_corpus(numbers, "zh", cache=tmp_path)
    cached = teacher.teacher_corpus(numbers, "zh", cache=tmp_path)
    fresh = teacher.teacher_corpus(numbers, "zh", cache=None)
    assert len(list((tmp_path / "speech").iterdir())) == 1
    for a, b, c in zip(first, cached, fresh, strict=True):
        assert torch.equal(a.wave, b.wave) and torch.equal(a.wave, c.wave)
        assert a.phonemes == b.phonemes == c.phonemes and a.starts == c.starts
    teacher.teacher_corpus(numbers, "zh", "f2", cache=tmp_path)  # another voice: another cache entry
    assert len(list((tmp_path / "speech").iterdir())) == 2


@needs_espeak
def test_corpora_read_side_by_side_equal_one_after_another(tmp_path):
    requests = [([7, 250], "en", ""), ([0, 13, 101], "zh", "m3"), ([99], "en", "f4")]
    together = teacher.teacher_corpora(requests, cache=tmp_path)
    assert len(list((tmp_path / "speech").glob("*.pt"))) == 3  # each cached, none left half-written
    for (numbers, lang, variant), corpus in zip(requests, together, strict=True):
        alone = teacher.teacher_corpus(numbers, lang, variant, cache=None)  # a fresh read
        assert [u.text for u in corpus] == [u.text for u in alone]
        for a, b in zip(corpus, alone, strict=True):
            assert torch.equal(a.wave, b.wave) and a.phonemes == b.phonemes and a.starts == b.starts


def test_missing_espeak_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(teacher, "_ENGINE", None)
    with pytest.raises(ImportError, match="pip install espeakng-loader"):
        teacher.synthesize("3")


# --- FastSpeech ---------------------------------------------------------------------------------------------


def test_length_regulator_repeats_each_state_for_its_frames():
    h = torch.randn(3, 4, 5, generator=gen(0))
    d = torch.tensor([[2, 0, 3, 1], [0, 0, 1, 0], [1, 1, 1, 1]])
    out, mask = fs.length_regulate(h, d)
    assert out.shape == (3, 6, 5) and mask.sum(1).tolist() == [6, 1, 4]
    for b in range(3):
        expected = torch.repeat_interleave(h[b], d[b], dim=0)
        assert torch.equal(out[b, : len(expected)], expected) and not out[b, len(expected) :].any()
    assert fs.length_regulate(h, d, max_frames=8)[0].shape == (3, 8, 5)
    for bad in (d.float(), -d, d[:, :3]):
        with pytest.raises(ValueError, match="durations"):
            fs.length_regulate(h, bad)


def _tiny_fastspeech(seed: int = 0) -> fs.FastSpeech:
    torch.manual_seed(seed)
    return fs.FastSpeech(fs.FastSpeechConfig(vocab_size=12, n_mels=8, d_model=16, conv_hidden=24, dropout=0.0)).eval()


def test_fastspeech_padding_changes_nothing_real():
    model = _tiny_fastspeech()
    a, b = torch.tensor([3, 4, 5, 6, 7]), torch.tensor([2, 9])
    da, db = torch.tensor([1, 2, 0, 3, 1]), torch.tensor([4, 2])
    batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    mel, mask, log_dur = model(batch, torch.nn.utils.rnn.pad_sequence([da, db], batch_first=True))
    mel_b, _, log_dur_b = model(b[None], db[None])
    assert mask.sum(1).tolist() == [7, 6]
    assert torch.allclose(mel[1, :6], mel_b[0], atol=1e-5) and torch.allclose(log_dur[1, :2], log_dur_b[0], atol=1e-5)
    assert not log_dur[1, 2:].any()


def test_speed_divides_the_predicted_durations():
    model = _tiny_fastspeech()
    with torch.no_grad():
        model.durations.out.bias.fill_(2.5)  # about 11 frames per phoneme
    ids = torch.tensor([[3, 4, 5, 6]])
    _, _, d1 = model.synthesize(ids)
    _, mask2, d2 = model.synthesize(ids, speed=2.0)
    assert int(mask2.sum()) == int(d2.sum()) and abs(d2.sum() / d1.sum() - 0.5) < 0.1
    with pytest.raises(ValueError, match="speed"):
        model.synthesize(ids, speed=0)


def test_vocab_refuses_unknown_phonemes():
    vocab = fs.PhonemeVocab(["en:a", "en:b", "_"])
    assert vocab.tokens[0] == fs.PAD and vocab.encode(["en:b", "_"]).tolist() == [vocab.index["en:b"], vocab.index["_"]]
    with pytest.raises(ValueError, match="never occur"):
        vocab.encode(["zh:a1"])


def _tiny_corpus(n: int = 12) -> fs.SpeechBatchData:
    g = gen(1)
    ids, durs, mels = [], [], []
    for _ in range(n):
        P = int(torch.randint(2, 6, (1,), generator=g))
        ids.append(torch.randint(1, 12, (P,), generator=g))
        durs.append(torch.randint(0, 4, (P,), generator=g))
        durs[-1][0] += 1
        mels.append(torch.randn(int(durs[-1].sum()), 8, generator=g))
    return fs.pad_corpus(ids, durs, mels)


def test_fastspeech_loss_takes_a_shard_of_a_batch_padded_for_all_ranks():
    # under N ranks a shard keeps the global batch's padding: its target outlasts its own longest utterance
    model, data = _tiny_fastspeech(), _tiny_corpus()
    phonemes, durations, mels = data.batch(torch.arange(4))
    longer = torch.cat([mels, torch.zeros(4, 5, mels.shape[2])], dim=1)
    own, padded = (
        fs.fastspeech_loss(model, (phonemes, durations, mels)),
        fs.fastspeech_loss(model, (phonemes, durations, longer)),
    )
    assert all(torch.equal(own[k], padded[k]) for k in own)


def test_pad_corpus_checks_that_durations_fill_the_mel():
    with pytest.raises(ValueError, match=r"durations\[0\]"):
        fs.pad_corpus([torch.tensor([1, 2])], [torch.tensor([1, 1])], [torch.randn(3, 8)])


def _interrupted_then_resumed(make, train, path, steps, interrupt_at):
    first, calls = make(), []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt

    hook = first.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(first, steps, checkpoint=path)
    hook.remove()
    resumed = make()
    train(resumed, steps, checkpoint=path)
    return resumed


def test_fastspeech_training_learns_and_resumes_exactly(tmp_path):
    data = _tiny_corpus()

    def make():
        m = _tiny_fastspeech(3).train()
        return m

    def train(m, steps, **kw):
        return fs.train_fastspeech(m, data, steps, batch_size=4, progress=False, log_every=1, ckpt_every=2, **kw)

    straight = make()
    history = train(straight, 8)
    assert history["loss"][-1] < history["loss"][0]
    resumed = _interrupted_then_resumed(make, train, tmp_path / "fs.pt", 8, 5)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


# --- WaveNet -------------------------------------------------------------------------------------------------


def _tiny_wavenet(seed: int = 0, dilations=(1, 2, 4, 8, 1, 2)) -> wn.WaveNet:
    torch.manual_seed(seed)
    return wn.WaveNet(wn.WaveNetConfig(residual=8, skip=12, dilations=dilations)).double()


def test_receptive_field_is_what_the_gradient_reaches():
    model = _tiny_wavenet()
    assert model.receptive_field == wn.receptive_field((1, 2, 4, 8, 1, 2)) == 19
    x = torch.randint(0, 256, (1, 60), generator=gen(2))
    seen = []

    def keep(module, args, out):
        out.retain_grad()
        seen.append(out)

    model.embed.register_forward_hook(keep)
    model(x)[0, :, 50].sum().backward()
    emb = seen[0]
    reached = (emb.grad[0].abs().sum(1) > 0).nonzero().flatten()
    assert reached.min() == 50 - 18 and reached.max() == 50  # the past 18 samples and itself, nothing later


def test_wavenet_is_causal():
    model = _tiny_wavenet()
    x = torch.randint(0, 256, (2, 80), generator=gen(3))
    y = x.clone()
    y[:, 40:] = torch.randint(0, 256, (2, 40), generator=gen(4))
    a, b = model(x), model(y)
    assert torch.equal(a[:, :, :40], b[:, :, :40]) and not torch.equal(a[:, :, 40], b[:, :, 40])


@pytest.mark.parametrize("prompt_len", [1, 7, 40])
def test_cached_generation_draws_the_same_samples_as_naive(prompt_len):
    model = _tiny_wavenet(5)
    prompt = torch.randint(0, 256, (3, prompt_len), generator=gen(6))
    cached = wn.generate(model, 60, prompt, cached=True, generator=gen(7))
    naive = wn.generate(model, 60, prompt, cached=False, generator=gen(7))
    assert cached.shape == (3, 60) and torch.equal(cached, naive)
    assert not torch.equal(cached, wn.generate(model, 60, prompt, generator=gen(8)))  # the generator matters


def test_cached_step_logits_equal_the_convolutions():
    model = _tiny_wavenet(9)
    x = torch.randint(0, 256, (2, 50), generator=gen(10))
    full = model(x)
    queues = [torch.zeros(2, 8, d, dtype=torch.float64) for d in model.config.dilations]
    fused = model._fused()
    steps = torch.stack([model._step(x[:, t], queues, t, fused) for t in range(50)], dim=2)
    assert torch.allclose(steps, full, atol=1e-10)


def test_wavenet_training_lowers_the_nll_and_resumes_exactly(tmp_path):
    t = torch.arange(6000, dtype=torch.float64)
    codes = ((torch.sin(2 * torch.pi * t / 37) + 1) * 100).long()  # a pure tone: very predictable

    def make():
        return _tiny_wavenet(11).float()

    def train(m, steps, **kw):
        return wn.train_wavenet(m, codes, steps, batch_size=2, crop=64, lr=1e-2, progress=False, log_every=1,
                                ckpt_every=3, **kw)  # fmt: skip

    straight = make()
    history = train(straight, 10)
    assert history["loss"][-1] < history["loss"][0] < 6
    resumed = _interrupted_then_resumed(make, train, tmp_path / "wn.pt", 10, 5)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="crop"):
        wn.train_wavenet(make(), codes, 1, crop=10)


# --- the judge ------------------------------------------------------------------------------------------------


def test_digits_of_numbers():
    assert jd.digits_of(torch.tensor([0, 7, 42, 305, 999])).tolist() == [
        [0, 0, 0], [0, 0, 7], [0, 4, 2], [3, 0, 5], [9, 9, 9]]  # fmt: skip


def test_judge_ignores_padding_frames():
    torch.manual_seed(0)
    judge = jd.NumberJudge(n_mels=8, width=16).eval()
    mel = torch.randn(1, 8, 30, generator=gen(12))
    padded = torch.cat([mel, torch.full((1, 8, 10), -11.5)], dim=2)
    a, b = judge(mel, torch.tensor([30])), judge(padded, torch.tensor([30]))
    assert a.shape == (1, 3, 10) and torch.allclose(a, b, atol=1e-5)
    heard = jd.judge_numbers(judge, torch.cat([padded, padded]), torch.tensor([30, 30]))
    assert heard.shape == (2,) and heard[0] == heard[1] and 0 <= heard[0] <= 999


# --- what a learner types -------------------------------------------------------------------------------------


def test_number_phrase_reads_what_a_learner_types():
    from aigc_lib.speech.tts import number_phrase

    assert number_phrase(" 342 ", "en") == "342" and number_phrase("３４２", "en") == "342"  # full-width digits
    assert number_phrase("708", "zh") == "七百零八"  # digits in Mandarin mode become numerals
    assert number_phrase("三百四十二。", "zh") == "三百四十二" and number_phrase("两百", "zh") == "二百"
    with pytest.raises(ValueError, match="out of range"):
        number_phrase("1000", "en")
    for bad, lang in (("hello", "en"), ("-5", "en"), ("3.5", "en"), ("", "zh"), ("你好", "zh"), ("三百", "en")):
        with pytest.raises(ValueError, match="expected a number from 0 to 999"):
            number_phrase(bad, lang)


def test_vocode_solves_all_frames_at_once_with_each_phrase_s_result():
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(n, tts.MEL.n_mels, generator=g) - 6 for n in (23, 40, 31)]  # (frames, n_mels) log-mels
    one_by_one = [audio.mel_to_audio(m.T, tts.MEL, iters=5) for m in mels]
    for a, b in zip(tts.vocode(mels, iters=5), one_by_one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert tts.vocode([]) == []
