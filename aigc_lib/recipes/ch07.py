"""Chapter 07's models: the attribute judge, the latent autoencoder and the text-conditional latent U-Net.

The judge is the chapter's measuring instrument. It trains on renders of the train split's digits in
every attribute combination, held-out ones included (`captioned_digits("train", n=..., include_holdout=
"both")`): a judge must recognise what the generator was never shown. At the standard budget (1,000
steps of 128, about 40 s on 2 threads) it reads the digit of 94.8% of the 1,000 test renders and the
other attributes of 99.9-100% (chapter 07 prints it).

The autoencoder and the U-Net train on the same 20,000 renders as chapter 06's CLIP (held-out
combinations never shown); the U-Net reads CLIP's frozen text tower (recipe "06.clip"), so
`recipes.get("07.latent_unet").run(renders, clip_model=..., autoencoder=...)` takes both.
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_lib import diffusion
from aigc_lib.captions import CaptionedDigits, captioned_digits
from aigc_lib.clip import CLIP
from aigc_lib.recipes import Recipe
from aigc_lib.recipes.ch06 import renders
from aigc_lib.text_to_image import AttributeJudge, train_judge
from aigc_lib.text_to_image import autoencoder as ae
from aigc_lib.text_to_image.pipeline import caption_context, frozen
from aigc_lib.training import History

IMAGES = {"smoke": 500, "standard": 20_000, "full": 20_000}
JUDGE_STEPS = {"smoke": 20, "standard": 1_000, "full": 4_000}
JUDGE_BATCH = 128
AE_STEPS = {"smoke": 20, "standard": 800, "full": 4_000}
AE_BATCH = 64
UNET_BASE = {"smoke": 16, "standard": 32, "full": 64}
UNET_STEPS = {"smoke": 20, "standard": 2_000, "full": 20_000}  # standard: the chapter in 10 minutes
UNET_BATCH = 64
T = 1000  # linear_schedule(T), chapter 05's
CAPTIONS = {"lang": "both", "drop": 0.3, "numerals": 0.3}  # fresh captions per step, English or Chinese
TRAINING = {"p_uncond": 0.1, "lr": 1e-3, "ema_decay": 0.999}


def _check_renders(data: object, n: int, how: str) -> None:
    if not isinstance(data, CaptionedDigits) or data.split != "train" or len(data) != n:
        raise ValueError(
            f"data: expected captions.captioned_digits('train', n={n}{how}), "
            f"got {type(data).__name__} of {len(data) if isinstance(data, CaptionedDigits) else '?'} images"
        )


def train_attribute_judge(
    sizes: dict[str, Any], data: CaptionedDigits, device: Any, **run: Any
) -> tuple[AttributeJudge, History]:
    """`data`: captions.captioned_digits("train", n=sizes["images"], include_holdout="both")."""
    _check_renders(data, sizes["images"], ", include_holdout='both'")
    torch.manual_seed(0)
    judge = AttributeJudge(width=32).to(device)
    history = train_judge(judge, data, sizes["steps"], batch_size=sizes["batch"], **run)
    return judge, history


def train_latent_autoencoder(
    sizes: dict[str, Any], data: CaptionedDigits, device: Any, **run: Any
) -> tuple[ae.LatentAutoencoder, History]:
    """`data`: captions.captioned_digits("train", n=sizes["images"]); the autoencoder (32×32×3 <-> 4×8×8)."""
    _check_renders(data, sizes["images"], "")
    torch.manual_seed(0)
    model = ae.LatentAutoencoder(ae.LatentAEConfig()).to(device)
    history = ae.train_autoencoder(model, data.images, sizes["steps"], batch_size=sizes["batch"], **run)
    return model, history


def unet_config(base: int) -> diffusion.UNetConfig:
    """The latent U-Net: 4×8×8 latents, levels 8 and 4 (channels base, 2·base), self- and cross-attention
    at both, reading token states of CLIP's text tower (width 64)."""
    return diffusion.UNetConfig(
        image_channels=4, image_size=8, base=base, mults=(1, 2), attn_res=(8, 4), context_dim=64,
        groups=8, heads=4, upsample="transpose",
    )  # fmt: skip


def train_latent_unet(
    sizes: dict[str, Any],
    data: CaptionedDigits,
    device: Any,
    *,
    clip_model: CLIP,
    autoencoder: ae.LatentAutoencoder,
    seed: int = 0,
    **run: Any,
) -> tuple[diffusion.UNet, History, diffusion.EMA, float]:
    """`data`: captions.captioned_digits("train", n=sizes["images"]); `clip_model` (recipe "06.clip") is used
    frozen, `autoencoder` (recipe "07.autoencoder") gives the latents. Returns the U-Net, its history, the EMA
    (sample from `ema.model`) and the latent scale."""
    _check_renders(data, sizes["images"], "")
    latents = ae.encode_latents(autoencoder, data.images)
    scale = ae.latent_scale(latents)
    torch.manual_seed(seed)
    model = diffusion.UNet(unet_config(sizes["base"])).to(device)
    context = caption_context(frozen(clip_model), data, seed=seed, **CAPTIONS)
    run.setdefault("desc", "latent U-Net")
    history, ema = diffusion.train_diffusion(
        model, latents * scale, sizes["steps"], schedule=diffusion.linear_schedule(T), context=context,
        batch_size=sizes["batch"], seed=seed, rescale=False, **TRAINING, **run,
    )  # fmt: skip
    return model, history, ema, scale


def judge_renders(sizes: dict[str, Any]) -> CaptionedDigits:
    """The judge's renders: every attribute combination, held-out ones included."""
    return captioned_digits("train", n=sizes["images"], include_holdout="both")


RECIPES = (
    Recipe(
        name="07.judge",
        summary="attribute judge: chapter 06's CNN image tower with one linear head per attribute, trained on "
        "renders in every combination with pixel noise σ ≤ 0.1, batch 128, AdamW 2e-3",
        sizes={b: {"images": IMAGES[b], "steps": JUDGE_STEPS[b], "batch": JUDGE_BATCH} for b in IMAGES},
        checkpoint="07_judge_{budget}_{images}_{steps}_b{batch}.pt",
        train=train_attribute_judge,
        data=judge_renders,
    ),
    Recipe(
        name="07.autoencoder",
        summary="latent autoencoder 32×32×3 <-> 4×8×8 (width 16, KL weight 1e-3, squared error), batch 64, AdamW 2e-3",
        sizes={b: {"images": IMAGES[b], "steps": AE_STEPS[b], "batch": AE_BATCH} for b in IMAGES},
        checkpoint="07_autoencoder_{budget}_{images}_{steps}.pt",
        train=train_latent_autoencoder,
        data=renders,
    ),
    Recipe(
        name="07.latent_unet",
        summary="text-conditional U-Net on 4×8×8 latents (levels 8-4, self- and cross-attention at both, pooled "
        "text in the embedding) reading CLIP's frozen text tower; captions in English or Chinese, dropped "
        "to padding only 10% of the time; batch 64, AdamW 1e-3, EMA 0.999",
        sizes={
            b: {"images": IMAGES[b], "base": UNET_BASE[b], "steps": UNET_STEPS[b], "batch": UNET_BATCH} for b in IMAGES
        },
        checkpoint="07_latent_unet_{budget}_{base}_{steps}.pt",
        train=train_latent_unet,
    ),
)
