"""Tests for aigc_lib.clip: the symmetric InfoNCE loss against a loop, the temperature's clip and its
gradient, both towers (PAD-blind text tower, unit embeddings), zero-shot prompt ensembling, recall@k,
the linear probe, train_clip (exact resume, learning on captioned digits) and the input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn

from aigc_lib import captions as C
from aigc_lib.clip import (
    CLIP,
    MAX_LOGIT_SCALE,
    CLIPConfig,
    caption_sampler,
    class_labels,
    clip_loss,
    composition_accuracy,
    ensemble_prompts,
    linear_probe,
    recall_at_k,
    retrieval_recall,
    train_clip,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_predict,
    zero_shot_probs,
)

TINY = dict(image_width=8, text_width=16, text_layers=1, text_heads=2, embed_dim=16)
RUN = dict(progress=False)
CAPTIONS = ["a red seven", "an image of a 3 on the left", "a small thick blue two at the top", "a 8"]


def tiny_clip(seed: int = 0, **kw) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CLIPConfig(**(TINY | kw)))


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(n, 3, 32, 32, generator=gen(seed))
    ids, _ = C.encode_captions([CAPTIONS[i % len(CAPTIONS)] for i in range(n)])
    return images, ids


@pytest.fixture(scope="module")
def small_train() -> C.CaptionedDigits:
    return C.captioned_digits("train", n=64)


# --------------------------------------------------------------------------- clip_loss


def test_clip_loss_equals_a_loop_over_rows_and_columns():
    logits = randn(5, 5, seed=1) * 3
    rows = [-torch.log_softmax(logits[i], 0)[i] for i in range(5)]  # image i picks caption i
    cols = [-torch.log_softmax(logits[:, j], 0)[j] for j in range(5)]  # caption j picks image j
    want = 0.5 * (sum(rows) / 5 + sum(cols) / 5)
    assert close(clip_loss(logits), want)
    assert not close(clip_loss(logits), sum(rows) / 5)  # not symmetric by accident


@pytest.mark.parametrize("B", [1, 2, 7, 64])
def test_clip_loss_is_ln_B_for_equal_logits(B):
    assert math.isclose(float(clip_loss(torch.full((B, B), 3.7, dtype=F64))), math.log(B), rel_tol=1e-12, abs_tol=1e-15)


def test_clip_loss_is_invariant_to_permuting_the_batch():
    model = tiny_clip()
    images, ids = batch(8)
    perm = torch.randperm(8, generator=gen(3))
    loss = clip_loss(model(images, ids))
    assert torch.allclose(clip_loss(model(images[perm], ids[perm])), loss, atol=1e-6)
    logits = randn(6, 6, seed=2)
    p = torch.randperm(6, generator=gen(4))
    assert close(clip_loss(logits[p][:, p]), clip_loss(logits))
    assert not close(clip_loss(logits[p]), clip_loss(logits))  # images alone permuted: other pairs


def test_clip_loss_accepts_half_precision_and_computes_in_float32():
    logits = randn(4, 4, seed=5, dtype=torch.float32)
    assert clip_loss(logits.bfloat16()).dtype == torch.float32


# --------------------------------------------------------------------------- the temperature


def test_init_temperature_and_scale():
    model = tiny_clip()
    assert math.isclose(float(model.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    assert math.isclose(float(model.scale().detach()), 1 / 0.07, rel_tol=1e-6)
    model = tiny_clip(init_temperature=0.5)
    assert math.isclose(float(model.scale().detach()), 2.0, rel_tol=1e-6)


def test_logit_scale_is_clamped_at_100_in_the_forward_and_then_gets_no_gradient():
    model = tiny_clip().double()
    images, ids = batch(4)
    images = images.double()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # e^10 ≈ 22026
    logits = model(images, ids)
    assert math.isclose(float(model.scale().detach()), MAX_LOGIT_SCALE, rel_tol=1e-12)
    manual = MAX_LOGIT_SCALE * model.encode_image(images) @ model.encode_text(ids).T
    assert close(logits, manual, 1e-10)
    clip_loss(logits).backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad) == 0.0  # above the clip: stuck
    assert model.image_proj.weight.grad.abs().sum() > 0 and model.text_proj.weight.grad.abs().sum() > 0


def test_logit_scale_gradient_at_and_below_the_clip():
    # logits = e^t M, so dL/dt = Σ_ij dL/dlogits_ij · logits_ij; at t = ln 100 exactly it still flows
    model = tiny_clip().double()
    images, ids = batch(4)
    images = images.double()
    for t in (math.log(MAX_LOGIT_SCALE), 1.0):
        model.zero_grad()
        with torch.no_grad():
            model.logit_scale.fill_(t)
        logits = model(images, ids)
        logits.retain_grad()
        clip_loss(logits).backward()
        want = (logits.grad * logits).detach().sum()
        assert float(want) != 0.0 and close(model.logit_scale.grad, want, 1e-10)


def test_train_clip_clamps_the_parameter_after_each_step(small_train):
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    h = train_clip(model, small_train, caption_sampler(small_train), 1, batch_size=8, **RUN)
    assert float(model.logit_scale.detach()) == float(torch.tensor(math.log(MAX_LOGIT_SCALE)))  # no gradient moved it
    assert h["temperature"] == pytest.approx([1 / MAX_LOGIT_SCALE], rel=1e-6)
    model.logit_scale.grad = None
    clip_loss(model(*batch(4))).backward()
    assert float(model.logit_scale.grad) != 0.0  # at the clip the gradient flows again


# --------------------------------------------------------------------------- the towers


def test_gradient_reaches_both_towers_and_the_logit_scale():
    model = tiny_clip()
    images, ids = batch(4)
    clip_loss(model(images, ids)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.text_encoder.pos.grad[ids.shape[1] :].abs().sum() == 0  # positions never used: no gradient


def test_text_encoder_ignores_pad_positions():
    model = tiny_clip()
    ids, lengths = C.encode_captions(CAPTIONS)
    emb = model.encode_text(ids)
    padded = torch.cat([ids, torch.full((len(ids), 9), C.PAD_ID)], dim=1)
    assert torch.allclose(model.encode_text(padded), emb, atol=1e-6, rtol=0)
    alone = torch.cat([model.encode_text(ids[i : i + 1, : lengths[i]]) for i in range(len(ids))])
    assert torch.allclose(alone, emb, atol=1e-6, rtol=0)  # a caption's embedding: not its batch's padding
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_embeddings_have_unit_norm_and_the_logits_are_scaled_cosines():
    model = tiny_clip()
    images, ids = batch(6)
    ie, te = model.encode_image(images), model.encode_text(ids)
    assert ie.shape == te.shape == (6, 16)
    assert torch.allclose(ie.norm(dim=1), torch.ones(6), atol=1e-6)
    assert torch.allclose(te.norm(dim=1), torch.ones(6), atol=1e-6)
    assert torch.allclose(model(images, ids), model.scale() * ie @ te.T, atol=1e-5)


def test_image_tower_sees_position():
    # a global max pool, yet the same patch moved gives another embedding (zero padding marks the border)
    model = tiny_clip()
    left, right = torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    left[:, :, 10:20, 1:11] = 1.0
    right[:, :, 10:20, 21:31] = 1.0
    a, b = model.encode_image(left), model.encode_image(right)
    assert (a - b).abs().max() > 1e-3


def test_default_config_is_the_chapter_size():
    model = CLIP()
    c = model.config
    assert c.vocab_size == C.caption_tokenizer().vocab_size == 71 and c.max_len == C.MAX_CAPTION_LEN["en"] == 52
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 < n < 600_000


# --------------------------------------------------------------------------- zero-shot, recall, probe


def test_zero_shot_prompt_ensembling_is_the_renormalised_mean():
    model = tiny_clip()
    prompts = [["a seven", "a picture of a 7", "an image of a seven"], ["a three"], ["a red two on the left", "a 2"]]
    w = zero_shot_classifier(model, prompts)
    assert w.shape == (3, 16)
    manual = []
    for group in prompts:
        e = torch.cat([model.encode_text(C.encode_captions([p])[0]) for p in group])
        manual.append(F.normalize(e.mean(0), dim=0))
    assert torch.allclose(w, torch.stack(manual), atol=1e-6)
    single = zero_shot_classifier(model, ["a seven", "a three"])  # one str per class
    assert torch.allclose(single[1], w[1], atol=1e-6)
    assert torch.allclose(single[0], model.encode_text(C.encode_captions(["a seven"])[0])[0], atol=1e-6)

    images, _ = batch(5)
    pred, probs = zero_shot_predict(model, images, w, batch_size=2)
    want = torch.softmax(model.scale() * model.encode_image(images) @ w.T, dim=-1)
    assert torch.allclose(probs, want, atol=1e-6) and torch.equal(pred, want.argmax(1))
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)


def test_ensemble_prompts_and_zero_shot_probs_against_their_definitions():
    e = randn(3, 4, 5, dtype=F64) * torch.rand(3, 4, 1, generator=gen(1), dtype=F64) * 3
    want = torch.stack([F.normalize(sum(F.normalize(e[k, p], dim=0) for p in range(4)) / 4, dim=0) for k in range(3)])
    assert close(ensemble_prompts(e), want, 1e-12)
    model = tiny_clip()  # equal-size groups go through ensemble_prompts, others through index_add: the same result
    groups = [["a seven", "a 7"], ["a three", "an image of a 3"]]
    uneven = zero_shot_classifier(model, groups + [["a two"]])
    assert torch.allclose(zero_shot_classifier(model, groups), uneven[:2], atol=1e-6)

    img, w = randn(6, 5, dtype=F64) * 4, randn(3, 5, dtype=F64) * torch.tensor([[0.5], [2.0], [9.0]], dtype=F64)
    p = zero_shot_probs(img, w, 30.0)
    cos = torch.tensor(
        [[F.cosine_similarity(img[i], w[k], dim=0).item() for k in range(3)] for i in range(6)], dtype=F64
    )
    assert close(p, torch.softmax(30 * cos, dim=1), 1e-12) and close(p.sum(1), torch.ones(6, dtype=F64), 1e-12)
    assert close(zero_shot_probs(img * 7, w / 3, torch.tensor(30.0, dtype=F64)), p, 1e-12)  # lengths never matter


def test_class_prompts_labels_and_the_measures_on_captioned_digits():
    classes, prompts = C.class_prompts(("digit", "colour"))
    assert len(classes) == 40 and classes[29] == (7, 1) and prompts[29][0] == "a green seven"
    assert C.class_prompts("digit", ensemble=False) == (
        list(range(10)),
        [[C.prompt_for("digit", d)] for d in range(10)],
    )
    assert len(C.class_prompts("size", "zh")[1][1]) == 30  # ten digits x three templates
    test = C.captioned_digits("test", n=60, seed=3)
    labels = class_labels(test, ("digit", "colour"))
    assert [classes[i] for i in labels.tolist()] == list(
        zip(test.attrs["digit"].tolist(), test.attrs["colour"].tolist(), strict=True)
    )
    assert torch.equal(class_labels(test, "size"), test.attrs["size"])

    model = tiny_clip()
    pred, _ = zero_shot_predict(model, test.images, zero_shot_classifier(model, C.class_prompts("position", "zh")[1]))
    assert zero_shot_accuracy(model, test, "position", "zh") == float((pred == test.attrs["position"]).double().mean())

    entry = C.HOLDOUT[0]  # a red seven
    r = composition_accuracy(model, test, entry)
    held = (test.attrs["digit"] == 7) & (test.attrs["colour"] == 0)
    assert r["n_held_out"] == int(held.sum()) and r["n_seen"] == int((~C.matches_holdout(test)).sum())
    pred, _ = zero_shot_predict(
        model, test.images, zero_shot_classifier(model, C.class_prompts(("digit", "colour"))[1])
    )
    assert r["held_out"] == pytest.approx(float((pred == labels)[held].double().mean()))

    got = retrieval_recall(model, test, k=2, pool=10, trials=3, seed=4)
    g, want = torch.Generator().manual_seed(4), 0.0
    for _ in range(3):
        pooled = {}  # the first 10 distinct full captions of a random order
        for i in torch.randperm(len(test), generator=g).tolist():
            pooled.setdefault(C.describe(test.row(i)), i)
        idx = torch.tensor(list(pooled.values())[:10])
        ids = C.encode_captions([C.describe(test.row(i)) for i in idx.tolist()])[0]
        want += recall_at_k(model.encode_text(ids) @ model.encode_image(test.images[idx]).T, 2) / 3
    assert got["text_to_image"] == pytest.approx(want)
    twins = test.subset(torch.tensor([0, 0, 1, 1, 2]))  # three distinct captions among five images
    assert retrieval_recall(model, twins, pool=3, k=3, trials=2)["image_to_text"] == 1.0
    with pytest.raises(ValueError, match="attrs"):
        C.class_prompts(("digit", "digit"))
    with pytest.raises(ValueError, match="pool"):
        retrieval_recall(model, twins, pool=4)


def test_recall_at_k_on_a_hand_made_matrix():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0],  # match (col 0) ranks 1st
            [0.5, 0.4, 0.3, 0.6],  # match (col 1) ranks 3rd
            [0.2, 0.8, 0.1, 0.7],  # match (col 2) ranks 4th
        ]
    )
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 3) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 4) == 1.0
    assert recall_at_k(sim, 1, targets=torch.tensor([0, 3, 1])) == 1.0
    assert recall_at_k(sim, 1, targets=torch.tensor([1, 0, 3])) == 0.0
    # ties count against the match: a constant similarity is never a perfect recall
    assert recall_at_k(torch.zeros(4, 4), 1) == 0.0 and recall_at_k(torch.zeros(4, 4), 3) == 0.0
    assert recall_at_k(torch.zeros(4, 4), 4) == 1.0
    tie = torch.tensor([[0.5, 0.5, 0.1]])
    assert recall_at_k(tie, 1) == 0.0 and recall_at_k(tie, 2) == 1.0


def test_linear_probe_separates_separable_features_deterministically():
    g = gen(0)
    centres = torch.randn(4, 8, generator=g) * 4
    ytr, yte = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    xtr = centres[ytr] + 0.3 * torch.randn(200, 8, generator=g)
    xte = centres[yte] + 0.3 * torch.randn(100, 8, generator=g)
    acc = linear_probe(xtr, ytr, xte, yte)
    assert acc == 1.0
    assert linear_probe(xtr, ytr, xte, yte, steps=50) == linear_probe(xtr, ytr, xte, yte, steps=50)
    # shuffled train labels: nothing to learn, about chance
    shuffled = ytr[torch.randperm(200, generator=g)]
    assert linear_probe(xtr, shuffled, xte, yte) < 0.6


# --------------------------------------------------------------------------- train_clip


def test_caption_sampler_is_a_function_of_step_and_indices(small_train):
    sample = caption_sampler(small_train, drop=0.5, seed=2)
    idx = torch.tensor([3, 1, 4, 1, 5])
    a, b = sample(7, idx), sample(7, idx)
    assert torch.equal(a, b) and a.dtype == torch.int64 and len(a) == 5
    texts = C.decode_captions(a, (a != C.PAD_ID).sum(1))
    rows = {k: t[idx] for k, t in small_train.attrs.items()}
    assert texts == C.captions_for(rows, "en", 2 * 1_000_003 + 7, 0.5, 0.3)
    assert not torch.equal(sample(8, idx), a)  # fresh captions at another step
    zh = caption_sampler(small_train, lang="zh")(0, idx)
    assert zh.shape[1] <= C.MAX_CAPTION_LEN["zh"]


def test_caption_sampler_mixes_languages_per_caption(small_train):
    idx = torch.arange(len(small_train)).repeat(4)[:200]
    ids = caption_sampler(small_train, lang="both", seed=1)(5, idx)
    texts = C.decode_captions(ids, (ids != C.PAD_ID).sum(1))
    rows = {k: t[idx] for k, t in small_train.attrs.items()}
    en, zh = (C.captions_for(rows, lang, 1 * 1_000_003 + 5, 0.3, 0.3) for lang in ("en", "zh"))
    chinese = [t == z for t, z in zip(texts, zh, strict=True)]
    assert all(c or t == e for t, e, c in zip(texts, en, chinese, strict=True))  # each is one of the two
    assert 0.35 < sum(chinese) / len(chinese) < 0.65  # about half and half
    assert torch.equal(ids, caption_sampler(small_train, lang="both", seed=1)(5, idx))
    with pytest.raises(ValueError, match="lang"):
        caption_sampler(small_train, lang="fr")


def test_train_clip_history_and_fixed_captions(small_train):
    model = tiny_clip()
    ids, _ = C.encode_captions(C.captions_for(small_train), max_len=52)  # padded to 52: trimmed per batch
    h = train_clip(model, small_train.images, ids, 3, batch_size=16, **RUN)
    assert set(h.metrics) == {"loss", "temperature", "grad_norm"} and h.steps == [0, 1, 2]
    assert all(math.isfinite(v) for v in h["loss"]) and h["temperature"][0] == pytest.approx(0.07, rel=1e-3)
    assert model.training
    h = train_clip(tiny_clip(), small_train, ids, 2, batch_size=16, grad_clip=None, **RUN)
    assert set(h.metrics) == {"loss", "temperature"}


def test_train_clip_same_seed_same_run_whatever_torch_rng(small_train):
    runs = []
    for seed in (0, 0, 1):
        model = tiny_clip()
        torch.manual_seed(100 + len(runs))
        h = train_clip(model, small_train, caption_sampler(small_train), 3, batch_size=16, seed=seed, **RUN)
        runs.append((model, h))
    assert states_equal(runs[0][0], runs[1][0]) and runs[0][1]["loss"] == runs[1][1]["loss"]
    assert not states_equal(runs[0][0], runs[2][0])


def test_train_clip_groups_contrast_within_groups(small_train):
    from aigc_lib.clip import _grouped_clip_loss

    logits = randn(3, 4, 4, dtype=F64) * 5
    assert close(_grouped_clip_loss(logits), torch.stack([clip_loss(x) for x in logits]).mean(), 1e-6)
    a, b = tiny_clip(), tiny_clip()
    ha = train_clip(a, small_train, caption_sampler(small_train), 3, batch_size=16, **RUN)
    hb = train_clip(b, small_train, caption_sampler(small_train), 3, batch_size=16, group=16, **RUN)
    assert states_equal(a, b) and ha["loss"] == hb["loss"]  # one group of the whole batch: the plain loss
    c = tiny_clip()
    hc = train_clip(c, small_train, caption_sampler(small_train), 3, batch_size=16, group=4, **RUN)
    assert abs(hc["loss"][0] - math.log(4)) < abs(hc["loss"][0] - math.log(16))  # chance is now ln 4
    with pytest.raises(ValueError, match="group"):
        train_clip(tiny_clip(), small_train, caption_sampler(small_train), 1, batch_size=16, group=5, **RUN)


def test_train_clip_resumes_exactly_from_a_checkpoint(tmp_path, small_train):
    # Ctrl-C during step 3 of 6, resumed from the checkpoint: the weights of the uninterrupted run
    kw = dict(batch_size=16, lr=3e-3, warmup=2, **RUN)
    captions = caption_sampler(small_train, seed=5)
    straight_model = tiny_clip()
    straight = train_clip(straight_model, small_train, captions, 6, **kw)

    path = tmp_path / "clip.pt"
    first = tiny_clip()
    calls = []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 4:  # the image tower's forward of step 3
            raise KeyboardInterrupt

    hook = first.image_encoder.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_clip(first, small_train, captions, 6, checkpoint=path, **kw)
    hook.remove()
    assert path.exists() and not states_equal(first, straight_model)
    torch.manual_seed(1234)
    resumed_model = tiny_clip(seed=7)  # other initial weights: the checkpoint's replace them
    resumed = train_clip(resumed_model, small_train, captions, 6, checkpoint=path, **kw)
    assert states_equal(resumed_model, straight_model)
    assert resumed.steps == straight.steps == list(range(6))
    assert resumed["loss"] == straight["loss"] and resumed["temperature"] == straight["temperature"]


# --------------------------------------------------------------------------- bad inputs


def test_bad_config_and_model_inputs():
    with pytest.raises(ValueError, match="image_size: expected a multiple of 8"):
        CLIPConfig(image_size=20)
    with pytest.raises(ValueError, match="text_heads: text_width=16 is not divisible by text_heads=3"):
        CLIPConfig(text_width=16, text_heads=3)
    with pytest.raises(ValueError, match=r"init_temperature: expected a finite number >= 0.01, got 0.001"):
        CLIPConfig(init_temperature=0.001)
    with pytest.raises(ValueError, match="embed_dim: expected an int >= 1, got 0"):
        CLIPConfig(embed_dim=0)
    with pytest.raises(ValueError, match="config: expected a CLIPConfig, got dict"):
        CLIP({"embed_dim": 8})
    model = tiny_clip()
    images, ids = batch(4)
    with pytest.raises(
        ValueError, match=r"images: expected a non-empty float batch \(N, 3, 32, 32\), got \(4, 1, 32, 32\)"
    ):
        model.encode_image(images[:, :1])
    with pytest.raises(ValueError, match=r"ids: expected int64 caption ids \(B, L\) with 1 <= L <= max_len=52"):
        model.encode_text(ids.int())
    with pytest.raises(ValueError, match="max_len=52"):
        model.encode_text(torch.ones(2, 53, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 70\], got 0..71"):
        model.encode_text(torch.tensor([[5, 71, 0]]))
    with pytest.raises(ValueError, match="ids: caption 1 is only padding"):
        model.encode_text(torch.tensor([[5, 6], [0, 0]]))
    with pytest.raises(ValueError, match=r"ids: expected one caption per image, 4 rows, got \(3, "):
        model(images, ids[:3])
    with pytest.raises(ValueError, match=r"logits_per_image: expected a square \(B, B\) matrix"):
        clip_loss(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="logits_per_image: expected a floating-point tensor"):
        clip_loss(torch.zeros(3, 3, dtype=torch.int64))


def test_bad_zero_shot_recall_and_probe_inputs():
    model = tiny_clip()
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        zero_shot_classifier(model, "a seven")
    with pytest.raises(ValueError, match=r"prompts\[1\]: expected a str or a non-empty list of str"):
        zero_shot_classifier(model, ["a seven", []])
    with pytest.raises(ValueError, match=r"prompts\[0\]: expected only str"):
        zero_shot_classifier(model, [["a seven", 7]])
    with pytest.raises(ValueError, match="prompts: caption 1 is only padding"):
        zero_shot_classifier(model, ["a seven", ""])
    with pytest.raises(ValueError, match="prompts: the longest prompt has 7 tokens, more than max_len=5"):
        zero_shot_classifier(model, ["a seven"], max_len=5)
    with pytest.raises(ValueError, match="cannot be encoded"):
        zero_shot_classifier(model, ["a séven"])
    with pytest.raises(ValueError, match="model: expected a CLIP, got Linear"):
        zero_shot_classifier(nn.Linear(2, 2), ["a seven"])
    images, _ = batch(2)
    with pytest.raises(ValueError, match=r"class_embeddings: expected shape \(\*, 16\), got \(3, 8\)"):
        zero_shot_predict(model, images, torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 4\], got 5"):
        recall_at_k(torch.zeros(3, 4), 5)
    with pytest.raises(ValueError, match="sim: the default targets are the diagonal, which needs Nq <= Nc"):
        recall_at_k(torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match=r"targets: expected columns in \[0, 3\], got 0..4"):
        recall_at_k(torch.zeros(2, 4), 1, targets=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"targets: expected an int64 tensor \(2,\)"):
        recall_at_k(torch.zeros(2, 4), 1, targets=torch.tensor([0.0, 1.0]))
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"test_features: expected shape \(\*, 3\), got \(5, 4\)"):
        linear_probe(x, y, torch.zeros(5, 4), y)
    with pytest.raises(ValueError, match=r"train_labels: expected an int64 tensor \(5,\), got \(4,\)"):
        linear_probe(x, y[:4], x, y)
    with pytest.raises(ValueError, match="test_labels: expected class indices >= 0, got -1"):
        linear_probe(x, y, x, y - 1)
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        linear_probe(x, y, x, y, steps=0)


def test_bad_train_clip_inputs(small_train):
    model = tiny_clip()
    ids, _ = C.encode_captions(C.captions_for(small_train))
    with pytest.raises(ValueError, match="model: expected a CLIP, got Linear"):
        train_clip(nn.Linear(2, 2), small_train, ids, 1, **RUN)
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        train_clip(model, small_train, ids, 0, **RUN)
    with pytest.raises(ValueError, match="batch_size: expected at most the number of images 64, got 65"):
        train_clip(model, small_train, ids, 1, batch_size=65, **RUN)
    with pytest.raises(ValueError, match=r"captions: expected one caption per image \(64 rows\)"):
        train_clip(model, small_train, ids[:10], 1, **RUN)
    with pytest.raises(ValueError, match="data: expected a non-empty float batch"):
        train_clip(model, small_train.images[:, :1], ids, 1, **RUN)
    with pytest.raises(ValueError, match="lr: expected a finite number > 0, got 0"):
        train_clip(model, small_train, ids, 1, lr=0, **RUN)
    with pytest.raises(ValueError, match=r"captions: expected the callable to return ids \(16, L\) at step 0"):
        train_clip(model, small_train, lambda step, idx: ids[:3], 1, batch_size=16, **RUN)
    with pytest.raises(ValueError, match=r"captions \(step 0\): caption 0 is only padding"):
        train_clip(model, small_train, lambda step, idx: torch.zeros(len(idx), 4, dtype=torch.int64), 1, **RUN)
    with pytest.raises(ValueError, match="data: expected CaptionedDigits"):
        caption_sampler(small_train.images)
    with pytest.raises(ValueError, match="lang: expected 'en', 'zh' or 'both', got 'fr'"):
        caption_sampler(small_train, lang="fr")
    with pytest.raises(ValueError, match=r"drop: expected a finite number in \[0, 1\], got 2"):
        caption_sampler(small_train, drop=2)


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_train_clip_learns_captioned_digits_zero_shot():
    # Captions that name the digit alone ("a seven", "a picture of a 7"): with every attribute named, the
    # digit is the one a batch rarely needs to tell its images apart, and it is learned last (thousands
    # of steps); alone, a few hundred steps teach it.
    train, test = C.captioned_digits("train", n=2000), C.captioned_digits("test", n=500, seed=1)
    model = tiny_clip(image_width=16, text_width=32, text_heads=4, embed_dim=32)
    B = 32
    h = train_clip(model, train, caption_sampler(train, drop=1.0), 300, batch_size=B, lr=3e-3, **RUN)
    late = sum(h["loss"][-30:]) / 30
    assert h["loss"][0] > 0.95 * math.log(B) and late < 0.75 * math.log(B)  # about 1.0 and 0.6 × ln B
    w = zero_shot_classifier(model, [C.prompt_for("digit", d) for d in range(10)])
    pred, _ = zero_shot_predict(model, test.images, w)
    acc = float((pred == test.attrs["digit"]).float().mean())
    assert acc > 0.35, acc  # about 0.64; chance: 0.1
