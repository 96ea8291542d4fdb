"""Chapter 07's text-to-image parts: the U-Net reading text (cross-attention + pooled states), the
unconditional branch as the caption of padding only, the guided estimate inside `sample`, training on
captions with exact resume, the latent autoencoder and its scale, and the pipeline from captions to
images."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from aigc_lib import captions as cap
from aigc_lib import clip as cl
from aigc_lib import diffusion as dm
from aigc_lib.diffusion.sampling import _ddim_step, _guided_eps
from aigc_lib.text_to_image import autoencoder as aem
from aigc_lib.text_to_image import pipeline as pl

D = 6  # token-state width


def text_unet(seed=0, perturb=True, **kw) -> dm.UNet:
    torch.manual_seed(seed)
    cfg = dict(image_channels=4, image_size=8, base=8, mults=(1, 2), attn_res=(8, 4), groups=2, heads=2, context_dim=D)
    model = dm.UNet(dm.UNetConfig(**(cfg | kw)))
    if perturb:  # the zero-initialised output and projections would hide every path
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return model


def caption_batch(B=3, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # a short caption
    return ctx, mask


def test_cross_attention_at_the_attention_resolutions_only_and_class_unets_unchanged():
    m = text_unet(perturb=False)
    assert (
        sum(isinstance(x, dm.CrossAttention) for x in m.modules()) == 2 + 4 + 1
    )  # down: one per level; up: two per level; middle
    assert m.text_emb is not None
    plain = dm.UNet(dm.UNetConfig(base=12, mults=(1, 2, 2), groups=3, n_classes=10, upsample="transpose"))
    assert not any(isinstance(x, dm.CrossAttention) for x in plain.modules()) and plain.text_emb is None
    assert sum(p.numel() for p in plain.parameters()) == 162_277  # chapter 05's U-Net, checkpoints still load
    assert not any("cross" in k or "text_emb" in k for k in plain.state_dict())


def test_a_caption_of_padding_only_is_the_unconditional_branch():
    m = text_unet()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500])
    ctx, mask = caption_batch()
    none = torch.zeros_like(mask)
    with torch.no_grad():
        uncond = m(x, t)
        assert torch.equal(m(x, t, context=ctx, mask=none), uncond)
        assert torch.equal(m(x, t, context=ctx * 1e6, mask=none), uncond)  # padding states never count
        cond = m(x, t, context=ctx, mask=mask)
        assert (cond - uncond).abs().amax() > 1e-3  # the caption does something
        # per row: one padding-only row in a batch gets exactly its unconditional output
        mixed = mask.clone()
        mixed[1] = False
        out = m(x, t, context=ctx, mask=mixed)
        assert torch.allclose(out[1], uncond[1], atol=1e-6) and torch.allclose(out[0], cond[0], atol=1e-6)
        with pytest.raises(ValueError, match="mask"):
            m(x, t, context=ctx, mask=mask.long())  # ~ on integers would flip bits, not select padding
        with pytest.raises(ValueError, match="mask"):
            m(x, t, context=ctx)
        # padding positions of a real caption change nothing
        ctx2 = ctx.clone()
        ctx2[0, 3:] = 99.0
        assert torch.allclose(m(x, t, context=ctx2, mask=mask), cond, atol=1e-6)


def test_pooled_text_enters_through_the_embedding():
    m = text_unet()
    # with every cross-attention's output projection at zero, only the pooled path carries the caption
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, dm.CrossAttention):
                mod.proj.weight.zero_(), mod.proj.bias.zero_()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 500])
    ctx, mask = caption_batch()
    with torch.no_grad():
        assert (m(x, t, context=ctx, mask=mask) - m(x, t)).abs().amax() > 1e-3
        m.text_emb.weight.zero_(), m.text_emb.bias.zero_()
        assert torch.allclose(m(x, t, context=ctx, mask=mask), m(x, t), atol=1e-6)


def test_sample_guides_with_the_caption_against_padding_only():
    m = text_unet().eval()
    ctx, mask = caption_batch()
    s = dm.linear_schedule(100)
    w = 2.5
    got = dm.sample(m, 3, s, steps=1, context=ctx, mask=mask, guidance=w, generator=torch.Generator().manual_seed(3),
                    progress=False, clamp=False)  # fmt: skip
    x = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    t = torch.full((3,), 0, dtype=torch.int64)
    with torch.no_grad():
        eps = _guided_eps(m(x, t, context=ctx, mask=mask), m(x, t), w)
    want = _ddim_step(eps, x, 0, -1, s, 0.0, None, "eps", False)  # latents: not clamped to [-1, 1]
    assert torch.allclose(got, want, atol=1e-5)
    # on the CPU the network runs on slices of the batch: caption, mask and null caption sliced together
    with mock.patch.object(dm.sampling, "CPU_FORWARD_CHUNK", 2):  # the guided batch of 6 in three slices
        sliced = dm.sample(m, 3, s, steps=1, context=ctx, mask=mask, guidance=w,
                           generator=torch.Generator().manual_seed(3), progress=False, clamp=False)  # fmt: skip
    assert torch.allclose(sliced, got, atol=1e-6)
    # w = 1 is the conditional model alone; a model without text refuses a caption
    one = dm.sample(
        m, 3, s, steps=1, context=ctx, mask=mask, generator=torch.Generator().manual_seed(3), progress=False
    )
    with torch.no_grad():
        cond = _ddim_step(m(x, t, context=ctx, mask=mask), x, 0, -1, s, 0.0, None, "eps", False).clamp(-1, 1)
    assert torch.allclose(one, cond, atol=1e-5)
    with pytest.raises(ValueError, match="does not read text"):
        dm.sample(text_unet(context_dim=None), 3, s, steps=1, context=ctx, mask=mask, progress=False)
    with pytest.raises(ValueError, match="mask"):
        dm.sample(m, 3, s, steps=1, context=ctx, mask=mask.long(), progress=False)
    with pytest.raises(ValueError, match="context"):
        dm.sample(m, 2, s, steps=1, context=ctx, mask=mask, progress=False)


def recording_context(calls: list):
    def context(step, idx):
        g = torch.Generator().manual_seed(10_000 + step)
        calls.append(step)
        ctx = torch.randn(len(idx), 4, D, generator=g) + idx[:, None, None].float()
        return ctx, torch.ones(len(idx), 4, dtype=torch.bool)

    return context


def test_train_diffusion_on_captions_drops_them_and_resumes_exactly(tmp_path):
    latents = torch.randn(24, 4, 8, 8) * 3  # not in [0, 1]: latents, used as given
    s = dm.linear_schedule(100)
    kw = dict(schedule=s, batch_size=8, rescale=False, ema_decay=0.8, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dm.train_diffusion(text_unet(perturb=False), latents, 2, context=recording_context([]), schedule=s,
                           progress=False)  # fmt: skip
    seen = []
    m = text_unet(perturb=False)
    m.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["mask"].clone()), with_kwargs=True)
    dm.train_diffusion(m, latents, 20, context=recording_context([]), p_uncond=0.5, **kw)
    dropped = torch.cat([(~mk).all(1) for mk in seen])
    assert 0.3 < dropped.float().mean() < 0.7  # about half the captions became padding only
    straight = text_unet(perturb=False)
    dm.train_diffusion(straight, latents, 6, context=recording_context([]), **kw)
    path = tmp_path / "t2i.pt"
    first, calls = text_unet(perturb=False), []

    def interrupt(module, args, kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    hook = first.register_forward_pre_hook(interrupt, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        dm.train_diffusion(first, latents, 6, context=recording_context([]), checkpoint=path, **kw)
    hook.remove()
    resumed = text_unet(perturb=False)
    torch.manual_seed(99)
    _, ema = dm.train_diffusion(resumed, latents, 6, context=recording_context([]), checkpoint=path, **kw)
    sa, sb = resumed.state_dict(), straight.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="not both"):
        dm.train_diffusion(text_unet(n_classes=10), latents, 2, labels=torch.zeros(24, dtype=torch.int64),
                           context=recording_context([]), **kw)  # fmt: skip
    with pytest.raises(ValueError, match="does not read text"):
        dm.train_diffusion(text_unet(context_dim=None), latents, 2, context=recording_context([]), **kw)


def test_latent_autoencoder_shapes_scale_and_learning(tmp_path):
    torch.manual_seed(0)
    ae = aem.LatentAutoencoder(aem.LatentAEConfig(width=8))
    images = cap.captioned_digits("train", n=64).images
    with torch.no_grad():
        mu, logvar = ae.encode(images[:5])
        out = ae.decode(mu)
    assert mu.shape == logvar.shape == (5, 4, 8, 8)
    assert out.shape == (5, 3, 32, 32) and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert aem.LatentAEConfig(downsamples=1).latent_shape == (4, 16, 16)
    h = aem.train_autoencoder(ae, images, 60, batch_size=16, lr=3e-3, progress=False)
    assert h["recon"][-1] < 0.5 * h["recon"][0]
    z = aem.encode_latents(ae, images)
    scale = aem.latent_scale(z)
    assert abs(float((z * scale).std()) - 1) < 1e-6
    assert aem.decode_latents(ae, z).shape == images.shape

    # exact resume: interrupted during step 3 of 6, resumed, equal to the straight run
    def fresh():
        torch.manual_seed(0)
        return aem.LatentAutoencoder(aem.LatentAEConfig(width=8))

    straight = fresh()
    aem.train_autoencoder(straight, images, 6, batch_size=16, progress=False)
    first, calls = fresh(), []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    hook = first.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        aem.train_autoencoder(first, images, 6, batch_size=16, checkpoint=tmp_path / "ae.pt", progress=False)
    hook.remove()
    resumed = fresh()
    torch.manual_seed(5)  # the run does not depend on the global RNG state
    aem.train_autoencoder(resumed, images, 6, batch_size=16, checkpoint=tmp_path / "ae.pt", progress=False)
    pairs = zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)


def test_latent_autoencoder_checks_its_inputs():
    ae = aem.LatentAutoencoder(aem.LatentAEConfig(width=8))
    with pytest.raises(ValueError, match="images"):
        ae.encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="z"):
        ae.decode(torch.zeros(2, 4, 16, 16))
    with pytest.raises(ValueError, match="downsamples"):
        aem.LatentAEConfig(image_size=30, downsamples=2)
    with pytest.raises(ValueError, match="nonzero"):
        aem.latent_scale(torch.zeros(10))
    with pytest.raises(ValueError, match="model"):
        aem.train_autoencoder(nn.Linear(2, 2), torch.zeros(4, 3, 32, 32), 1)


def test_text_states_are_the_text_towers_and_the_pipeline_is_deterministic():
    torch.manual_seed(0)
    clip_model = cl.CLIP()
    ids, _ = cap.encode_captions(["a red seven", "左边一个小的粗的红色的七"])
    states, real = pl.text_states(clip_model, ids)
    assert torch.equal(real, ids != cap.PAD_ID)
    assert torch.all(states[~real] == 0)
    pooled = states.sum(1) / real.sum(1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(pooled, clip_model.text_encoder(ids), atol=1e-6)
    unet = text_unet(image_channels=3, image_size=32, mults=(1, 2, 2), attn_res=(8,), context_dim=64).eval()
    model = pl.TextToImage(clip_model, unet, dm.linear_schedule(50))
    a = pl.generate(model, ["a red seven", "一个绿色的3"], steps=2, seed=4)
    b = pl.generate(model, ["a red seven", "一个绿色的3"], steps=2, seed=4)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) <= float(a.max()) <= 1
    with pytest.raises(ValueError, match="texts"):
        pl.generate(model, "a red seven")
    # with an autoencoder the sampler's latents reach the decoder unclamped (a third of them lie beyond ±1)
    torch.manual_seed(1)
    latent = pl.TextToImage(
        clip_model, text_unet(context_dim=64), dm.linear_schedule(50), aem.LatentAutoencoder(), scale=1.0
    )
    seen = []
    latent.autoencoder.decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    pl.generate(latent, ["a red seven"] * 8, steps=2, seed=4)
    assert float(seen[0].abs().max()) > 1
    with pytest.raises(ValueError, match="cannot be encoded"):
        pl.generate(model, ["a red seven ☃"])


def test_masked_attention_is_cross_attentions_arithmetic():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    k, v = k[:, :3], v[:, :3]
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out, a = dm.masked_attention(q, k, v, mask)
    loop = torch.softmax(q[0] @ k[0, :2].T / 2.0, dim=-1)  # d = 4: √d = 2
    assert torch.allclose(a[0, :, :2], loop) and torch.all(a[0, :, 2] == 0)
    assert torch.allclose(out[0], loop @ v[0, :2])
    assert torch.all(a[1] == 0) and torch.all(out[1] == 0)  # padding only: nothing to read
    # the block's maps are these weights, and the block's output uses them
    torch.manual_seed(1)
    block = dm.CrossAttention(4, 6, groups=2, heads=2).double()
    torch.nn.init.normal_(block.proj.weight)
    x, ctx = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    w = block.weights(x, ctx, mask)
    assert w.shape == (2, 2, 9, 3)
    assert torch.allclose(w[0].sum(-1), torch.ones(2, 9, dtype=torch.float64)) and torch.all(w[1] == 0)
    C, nh = 4, 2
    kv = block.kv(ctx).reshape(2, 3, 2, nh, C // nh)
    vh = kv[:, :, 1].transpose(1, 2)  # (B, nh, L, d)
    h = w @ vh  # (B, nh, HW, d)
    want = x + block.proj(h.transpose(-1, -2).reshape(2, C, 3, 3))
    want[1] = x[1]
    assert torch.allclose(block(x, ctx, mask), want, atol=1e-10)
    with pytest.raises(ValueError, match="mask"):
        dm.masked_attention(q, k, v, mask.long())


def test_position_of_ink_is_the_measurers_and_reads_the_renders():
    test = cap.captioned_digits("test", n=300)
    measured = cap.measure_attributes(test.images)
    assert torch.equal(measured["position"], test.attrs["position"])
    ink = test.images.amax(1) > 0.5
    assert torch.equal(cap.position_of_ink(ink), test.attrs["position"])
    one = torch.zeros(1, 32, 32, dtype=torch.bool)
    one[0, 0, 31] = True  # top-right corner: |dx| = |dy|, the horizontal side wins
    assert cap.VALUES["position"][int(cap.position_of_ink(one))] == "right"
    one[0] = False
    one[0, 14:18, 13:20] = True  # box centre (16, 16.5): within 2.5 px of the centre
    assert cap.VALUES["position"][int(cap.position_of_ink(one))] == "centre"
    with pytest.raises(ValueError, match="at least one ink pixel"):
        cap.position_of_ink(torch.zeros(2, 32, 32, dtype=torch.bool))


def test_caption_guided_eps_is_what_sample_guides_with():
    m = text_unet().eval()
    ctx, mask = caption_batch()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([3, 30, 300])
    with torch.no_grad():
        got = pl.caption_guided_eps(m, x, t, ctx, mask, 4.0)
        want = m(x, t) + 4.0 * (m(x, t, context=ctx, mask=mask) - m(x, t))
    assert torch.allclose(got, want, atol=1e-6)


def test_attention_maps_record_every_block_at_every_step():
    torch.manual_seed(0)
    unet = text_unet(image_channels=3, image_size=32, mults=(1, 2, 2), attn_res=(16, 8), context_dim=64).eval()
    model = pl.TextToImage(cl.CLIP(), unet, dm.linear_schedule(50))
    out = pl.attention_maps(model, "a red 7", steps=3, seed=1)
    assert out["tokens"] == list("a red 7") and out["image"].shape == (3, 32, 32)
    assert torch.equal(out["image"], pl.generate(model, ["a red 7"], steps=3, seed=1)[0])  # the same image
    shapes = sorted({tuple(m.shape) for m in out["maps"].values()})
    assert shapes == [(3, 8, 8, 7), (3, 16, 16, 7)] and len(out["maps"]) == 7
    for m in out["maps"].values():
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5)  # a distribution over the tokens
