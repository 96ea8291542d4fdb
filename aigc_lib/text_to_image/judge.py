"""An attribute judge for captioned digits: does a generated image show what its caption asked for?

GenEval (Ghosh et al., NeurIPS 2023) scores a text-to-image model by running a detector on its images
and checking each attribute the prompt names. Here the attributes are the renderer's (digit, size,
position, thickness, colour) and the "detector" is one CNN with a head per attribute:

    features = ImageEncoder(x)               chapter 06's image tower (three stride-2 stages, max pool)
    logits_a = W_a features + b_a            one linear head per attribute a
    L = Σ_a CE(logits_a, label_a)            the renderer's exact labels

It must judge held-out combinations too, so it trains on renders of the train split's digits in every
combination (`captioned_digits("train", include_holdout="both")`), never on the test digits. It is
trained with a little Gaussian pixel noise (σ drawn in [0, noise] per image, seeded
by the step), because it will judge generated images, which are never as clean as renders. Size,
position, thickness and colour can also be read without learning (`captions.measure_attributes`);
the digit cannot, which is what the judge is for.
"""

from __future__ import annotations

from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.captions import ATTRIBUTES, VALUES, CaptionedDigits
from aigc_lib.checks import check_float_tensor, check_int, check_number
from aigc_lib.clip import CLIPConfig, ImageEncoder
from aigc_lib.runtime import eval_mode, step_generator
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit


class AttributeJudge(nn.Module):
    """images (B, 3, 32, 32) in [0, 1] -> {attribute: logits (B, number of values)}."""

    def __init__(self, width: int = 32):
        super().__init__()
        check_int("width", width)
        self.encoder = ImageEncoder(CLIPConfig(image_width=width))
        self.heads = nn.ModuleDict({a: nn.Linear(self.encoder.out_dim, len(VALUES[a])) for a in ATTRIBUTES})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self._logits(_check_images(images))

    def _logits(self, images: Tensor) -> dict[str, Tensor]:
        features = self.encoder(images)
        return {a: head(features) for a, head in self.heads.items()}


def train_judge(
    judge: AttributeJudge,
    data: CaptionedDigits,
    steps: int,
    *,
    batch_size: int = 128,
    lr: float = 2e-3,
    noise: float = 0.1,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Train on `data`'s images and labels: epoch-permutation batches (seeded), Gaussian pixel noise of
    σ ~ U[0, noise] per image (drawn from `step_generator(seed, step)`, so a resumed run is exact), the
    sum of the attributes' cross-entropies, AdamW with warm-up and cosine decay. History: "loss"."""
    if not isinstance(judge, AttributeJudge):
        raise ValueError(f"judge: expected an AttributeJudge, got {type(judge).__name__}")
    if not isinstance(data, CaptionedDigits):
        raise ValueError(f"data: expected CaptionedDigits (captions.captioned_digits), got {type(data).__name__}")
    check_int("steps", steps), check_int("batch_size", batch_size, high=len(data)), check_int("seed", seed, low=0)
    lr = check_number("lr", lr, inclusive=False)
    noise = check_number("noise", noise, 0.0, 1.0)
    images, labels = data.images.detach().cpu(), {a: t.cpu() for a, t in data.attrs.items()}
    order = epoch_indices(len(images), batch_size, seed)

    def batches(step: int) -> tuple[Tensor, dict[str, Tensor]]:
        idx = order(step)
        x = images[idx]
        if noise:
            g = step_generator(seed, step)
            sigma = torch.rand(len(x), 1, 1, 1, generator=g) * noise
            x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return x, {a: t[idx] for a, t in labels.items()}

    def loss_fn(m: AttributeJudge, batch: tuple[Tensor, dict[str, Tensor]]) -> Tensor:
        logits = m._logits(batch[0])
        return sum(F.cross_entropy(logits[a], batch[1][a]) for a in ATTRIBUTES)

    optimizer, scheduler = adamw_warmup_cosine(judge, lr, steps, min(100, steps // 10), weight_decay=0.05)
    run.setdefault("desc", "judge")
    return fit(judge, optimizer, batches, loss_fn, steps, scheduler=scheduler, **run)


def judge_predict(judge: AttributeJudge, images: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """{attribute: predicted value index (N,) int64} for images (N, 3, 32, 32) in [0, 1]."""
    if not isinstance(judge, AttributeJudge):
        raise ValueError(f"judge: expected an AttributeJudge, got {type(judge).__name__}")
    images = _check_images(images)
    check_int("batch_size", batch_size)
    device = next(judge.parameters()).device
    out: dict[str, list[Tensor]] = {a: [] for a in ATTRIBUTES}
    with eval_mode(judge), torch.no_grad():
        for lo in range(0, len(images), batch_size):
            for a, logits in judge._logits(images[lo : lo + batch_size].to(device)).items():
                out[a].append(logits.argmax(1).cpu())
    return {a: torch.cat(p) for a, p in out.items()}


def judge_accuracy(judge: AttributeJudge, data: CaptionedDigits) -> dict[str, float]:
    """Per-attribute accuracy on `data`'s labels, and "all": the fraction with every attribute right."""
    if not isinstance(data, CaptionedDigits):
        raise ValueError(f"data: expected CaptionedDigits (captions.captioned_digits), got {type(data).__name__}")
    pred = judge_predict(judge, data.images)
    right = {a: pred[a] == data.attrs[a].cpu() for a in ATTRIBUTES}
    out = {a: float(r.double().mean()) for a, r in right.items()}
    out["all"] = float(torch.stack(list(right.values())).all(0).double().mean())
    return out


def _check_images(images: object) -> Tensor:
    return check_float_tensor("images", images, (None, 3, 32, 32))  # captioned digits, in [0, 1]
