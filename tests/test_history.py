"""Chapter 00 library: each formula against an independent reference."""

import math
import random
from collections import Counter

import pytest
import torch

from aigc_lib import history


def test_count_bigrams_matches_counter():
    ids = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    counts = history.count_bigrams(ids, 7)
    ref = Counter(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    assert counts.dtype == torch.int64 and counts.shape == (7, 7)
    assert all(counts[a, b].item() == ref.get((a, b), 0) for a in range(7) for b in range(7))


def test_count_bigrams_rejects_bad_ids():
    with pytest.raises(ValueError, match=r"ids: values must lie in \[0, 3\)"):
        history.count_bigrams(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="1-D int64"):
        history.count_bigrams(torch.tensor([0.0, 1.0]), 3)


def test_next_char_probs_laplace():
    p = history.next_char_probs(torch.tensor([3, 1, 0]), alpha=1.0)
    assert torch.allclose(p, torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    assert p.dtype == torch.float32
    with pytest.raises(ValueError, match="alpha > 0"):
        history.next_char_probs(torch.zeros(3, dtype=torch.int64), alpha=0.0)


def test_apply_temperature_closed_form_and_limits():
    z = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    for T in [0.5, 1.0, 3.0]:
        e = [math.exp(v / T) for v in z.tolist()]
        assert torch.allclose(
            history.apply_temperature(z, T), torch.tensor([v / sum(e) for v in e], dtype=torch.float64)
        )
    assert history.apply_temperature(z, 1e-3)[0] == pytest.approx(1.0)
    assert torch.allclose(history.apply_temperature(z, 1e4), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-4)
    with pytest.raises(ValueError, match="temperature: expected > 0, got 0"):
        history.apply_temperature(z, 0)


def test_fit_pixel_model_is_smoothed_mean():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert torch.allclose(history.fit_pixel_model(x, alpha=0.0), x.mean(0))
    assert torch.allclose(history.fit_pixel_model(x, alpha=1.0), torch.tensor([3 / 5, 2 / 5]))


def _brute_force_nll(text_ids, order, V, alpha, train_ids):
    """Dictionary n-gram with the same backoff rule, one character at a time."""
    tables = [Counter() for _ in range(order)]
    train = train_ids.tolist()
    for k in range(order):
        for t in range(k, len(train)):
            tables[k][(tuple(train[t - k : t]), train[t])] += 1
    contexts = [set(c for c, _ in tables[k]) for k in range(order)]
    ids, n, total = text_ids.tolist(), order - 1, 0.0
    for t in range(n, len(ids)):
        k = max(k for k in range(order) if tuple(ids[t - k : t]) in contexts[k])
        ctx = tuple(ids[t - k : t])
        row = [tables[k][(ctx, c)] for c in range(V)]
        total -= math.log((row[ids[t]] + alpha) / (sum(row) + alpha * V))
    return total / (len(ids) - n)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_matches_brute_force(order):
    g = torch.Generator().manual_seed(order)
    train = torch.randint(0, 4, (300,), generator=g)
    val = torch.randint(0, 4, (60,), generator=g)
    model = history.NGramModel(order, 4, alpha=0.5).fit(train)
    assert model.nats_per_char(val) == pytest.approx(_brute_force_nll(val, order, 4, 0.5, train), rel=1e-5)


def test_ngram_learns_a_deterministic_sequence():
    ids = torch.arange(5).repeat(40)  # 0 1 2 3 4 0 1 ...
    model = history.NGramModel(2, 5, alpha=0.01).fit(ids)
    assert model.nats_per_char(ids) < 0.1
    out = model.generate(torch.tensor([0]), 9, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


def test_expand_template():
    grammar = {"start": ["<a> <b>"], "a": ["x"], "b": ["y", "z"]}
    assert history.expand_template(grammar, rng=random.Random(0)) in {"x y", "x z"}
    with pytest.raises(ValueError, match="'c' has no rules"):
        history.expand_template({"start": ["<c>"]})


def test_pixel_bayes_separates_two_patterns():
    a, b = torch.zeros(20, 1, 2, 2), torch.ones(20, 1, 2, 2)
    model = history.PixelBayes(num_classes=2).fit(torch.cat([a, b]), torch.tensor([0] * 20 + [1] * 20))
    assert model.predict(torch.cat([a[:3], b[:3]])).tolist() == [0, 0, 0, 1, 1, 1]
    samples = model.sample(torch.tensor([1] * 50), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 1, 2, 2) and samples.mean() > 0.9


def test_timeline_facts_are_complete_and_corrected():
    by_name = {m.name: m for m in history.MILESTONES}
    assert by_name["GAN"].year == 2014 and "Montreal" in by_name["GAN"].authors
    assert by_name["Deep belief nets"].authors.startswith("G. E. Hinton, S. Osindero, Y.-W. Teh")
    assert by_name["DDPM"].year == 2020 and by_name["Transformer"].year == 2017 and by_name["LSTM"].year == 1997
    assert all(m.citation and m.venue and m.authors for m in history.MILESTONES)
    assert [m.year for m in history.MILESTONES] == sorted(m.year for m in history.MILESTONES)
    assert len(history.CORRECTIONS) >= 6 and all(c.source for c in history.CORRECTIONS)


def test_plot_timeline_saves_png(tmp_path):
    fig = history.plot_timeline(save=tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_logistic_regression_trains_with_the_shared_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 4, generator=g) + 2, torch.randn(50, 4, generator=g) - 2])
    y = torch.tensor([0] * 50 + [1] * 50)
    model, hist = history.train_logistic_regression(x, y, steps=40, num_classes=2, progress=False)
    assert hist.losses[-1] < hist.losses[0] and len(hist.losses) == 40
    assert (model(x).argmax(1) == y).float().mean() > 0.95
