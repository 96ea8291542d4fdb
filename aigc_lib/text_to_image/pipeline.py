"""Text to image: a frozen text tower, a text-conditional U-Net on latents, the decoder, and the judge.

    states, real = CLIP_text(caption)                   chapter 06's text tower, frozen: token states
    z_T ~ N(0, I);  z_{t'} = DDIM step of ε̃_θ(z_t, t, states)                      chapter 05's sampler
    ε̃ = ε_θ(z_t, ∅) + w (ε_θ(z_t, caption) − ε_θ(z_t, ∅))   ∅ = the caption of padding only (CFG)
    image = decoder(z_0 / scale)                          the first stage (autoencoder.py)

`TextToImage` holds the parts; `generate` turns captions into images; `prompt_following` asks for every
attribute of given images' rows and checks the generated images with the judge (digit) and the
analytic measurers (size, position, thickness, colour), the miniature of GenEval (Ghosh et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aigc_lib import captions as cap
from aigc_lib.checks import check_int, check_number
from aigc_lib.clip import CLIP, caption_sampler
from aigc_lib.diffusion import CrossAttention, NoiseSchedule, UNet, sample
from aigc_lib.runtime import eval_mode
from aigc_lib.text_to_image.autoencoder import LatentAutoencoder, decode_latents
from aigc_lib.text_to_image.judge import AttributeJudge, judge_predict


@torch.no_grad()
def text_states(clip_model: CLIP, ids: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Caption ids (N, L) -> (token states (N, L, text_width) float32 on the CPU, real (N, L) bool), from the
    frozen text tower (eval mode, no gradients)."""
    encoder = clip_model.text_encoder
    device = next(encoder.parameters()).device
    with eval_mode(encoder):
        parts = [encoder.states(ids[i : i + batch_size].to(device)) for i in range(0, len(ids), batch_size)]
    return torch.cat([p[0].float().cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts])


def caption_context(
    clip_model: CLIP, data: cap.CaptionedDigits, seed: int = 0, **caption_rules: object
) -> Callable[[int, Tensor], tuple[Tensor, Tensor]]:
    """train_diffusion's `context`: (step, indices) -> the frozen text tower's states of fresh random
    captions of those images (`clip.caption_sampler(data, seed=seed, **caption_rules)`: lang, drop,
    numerals), a function of (step, indices) alone."""
    captions = caption_sampler(data, seed=seed, **caption_rules)

    def context(step: int, indices: Tensor) -> tuple[Tensor, Tensor]:
        return text_states(clip_model, captions(step, indices))

    return context


@dataclass
class TextToImage:
    """The parts of a latent text-to-image model. `autoencoder=None`: the U-Net works on pixels
    (images in [−1, 1], the chapter 05 convention), and `scale` is unused."""

    clip: CLIP
    unet: UNet  # sample from an EMA copy
    schedule: NoiseSchedule
    autoencoder: LatentAutoencoder | None = None
    scale: float = 1.0

    def decode(self, x: Tensor) -> Tensor:
        """The sampler's output -> images in [0, 1]."""
        if self.autoencoder is None:
            return ((x + 1) / 2).clamp(0, 1)
        return decode_latents(self.autoencoder, x / self.scale)


def generate(
    model: TextToImage,
    texts: Sequence[str],
    *,
    guidance: float = 3.0,
    steps: int = 50,
    eta: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 250,
) -> Tensor:
    """One image (N, 3, 32, 32) in [0, 1] per caption (English or Chinese), DDIM with `steps` and `eta`
    (chapter 05's sampler), classifier-free guidance `guidance` (1: the conditional model alone).
    The same seed gives the same images."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"texts: expected a non-empty list of captions, got {texts!r:.80}")
    check_int("steps", steps), check_int("seed", seed, low=0)
    check_number("guidance", guidance, low=-1e9)
    ids, _ = cap.encode_captions(list(texts))
    states, real = text_states(model.clip, ids)
    z = sample(
        model.unet, len(texts), model.schedule, steps=steps, eta=eta, context=states, mask=real, guidance=guidance,
        generator=torch.Generator().manual_seed(seed), progress=progress, batch_size=batch_size,
        clamp=model.autoencoder is None,  # pixels live in [−1, 1]; latents are not bounded
    )  # fmt: skip
    return model.decode(z)


def judge_images(judge: AttributeJudge, images: Tensor) -> dict[str, Tensor]:
    """What each image shows: the digit from the judge, the rest from the analytic measurers."""
    measured = cap.measure_attributes(images)
    return {"digit": judge_predict(judge, images)["digit"], **{a: measured[a] for a in cap.ATTRIBUTES if a != "digit"}}


def prompt_following(
    model: TextToImage,
    judge: AttributeJudge,
    rows: cap.CaptionedDigits,
    *,
    lang: str = "en",
    guidance: float = 3.0,
    steps: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Ask for every attribute of each of `rows`' images (`captions.describe(row, lang)`), generate one
    image per caption and check it: {"images", attribute -> (N,) bool "shows what was asked", "all"}."""
    texts = [cap.describe(rows.row(i), lang) for i in range(len(rows))]
    images = generate(model, texts, guidance=guidance, steps=steps, seed=seed, progress=progress)
    shown = judge_images(judge, images)
    out: dict[str, Tensor] = {"images": images}
    for a in cap.ATTRIBUTES:
        out[a] = shown[a] == rows.attrs[a]
    out["all"] = torch.stack([out[a] for a in cap.ATTRIBUTES]).all(0)
    return out


def frozen(module: nn.Module) -> nn.Module:
    """`module` in eval mode with gradients off (the text tower while the U-Net trains)."""
    return module.eval().requires_grad_(False)


def caption_guided_eps(unet: UNet, x: Tensor, t: Tensor, context: Tensor, mask: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance with a caption: ε̃ = ε(x, ∅) + w (ε(x, caption) − ε(x, ∅)), ∅ being the
    same caption with every token masked (padding only: the unconditional branch). `sample` computes the
    same two estimates in one batched call."""
    cond = unet(x, t, context=context, mask=mask)
    uncond = unet(x, t, context=context, mask=torch.zeros_like(mask))
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def attention_maps(model: TextToImage, text: str, *, seed: int = 0, steps: int = 50, guidance: float = 3.0) -> dict:
    """Where the U-Net reads each token of `text` while it draws one image: every cross-attention block's
    weights (heads averaged) over the sampling steps, {"image": (3, 32, 32), "tokens": the caption's
    characters, "maps": {block name: (steps, H, W, L) weights}}; at each step the weights are the
    conditional half of the guided batch (the ∅ half attends to nothing)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty caption, got {text!r:.60}")
    ids, _ = cap.encode_captions([text])
    states, real = text_states(model.clip, ids)
    blocks = {name: m for name, m in model.unet.named_modules() if isinstance(m, CrossAttention)}
    maps: dict[str, list[Tensor]] = {name: [] for name in blocks}

    def hook(name: str):
        def record(module: CrossAttention, args: tuple) -> None:
            x, context, mask = args
            w = module.weights(x[:1], context[:1], mask[:1]).mean(1)  # (1, HW, L): the caption's half
            side = int(round(w.shape[1] ** 0.5))
            maps[name].append(w[0].reshape(side, side, -1).float().cpu())

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in blocks.items()]
    try:
        image = generate(model, [text], guidance=guidance, steps=steps, seed=seed)[0]
    finally:
        for h in handles:
            h.remove()
    tokens = list(text)  # caption_tokenizer: one token per character
    return {"image": image, "tokens": tokens, "maps": {k: torch.stack(v) for k, v in maps.items()}}
