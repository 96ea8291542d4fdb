"""Chapter 06 — CLIP in miniature: an image tower and a text tower trained to agree, then used zero-shot.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(CLIP). Two encoders map a batch of B images and their B captions into one space; the B × B cosine
similarities, sharpened by a learned temperature, are trained so that each image picks its own caption
among the batch's and each caption its own image (the paper's figure 3 gives it as numpy-like pseudocode):

    I_f = f_img(x)  (B, d_i)          image tower: a small CNN, global max pool         ImageEncoder
    T_f = f_txt(t)  (B, d_t)          text tower: Transformer encoder, mean over real   TextEncoder
                                      tokens (PAD keys masked)
    I_e = I_f W_i / ‖I_f W_i‖,  T_e = T_f W_t / ‖T_f W_t‖     the joint space, unit    CLIP.encode_image,
                                                              vectors (B, D)         CLIP.encode_text
    logits = s · I_e T_eᵀ  (B, B),   s = exp(min(t, ln 100)),  t = ln(1/τ) learned,    CLIP.forward,
                                     τ₀ = 0.07, so s ≤ 100 (the paper's clip)         CLIP.scale
    L = ½ [CE(logits, arange B) + CE(logitsᵀ, arange B)]       symmetric InfoNCE     clip_loss
        (rows: image → text; columns: text → image; L = ln B when all logits are equal)
    zero-shot (CLIP §3.1.2; prompt ensembling §3.1.4): w_k = normalize(mean_p T_e(prompt_{k,p})),
        p(k | x) = softmax_k(s · I_e(x) · w_k)          ensemble_prompts, zero_shot_probs (tensors);
                                                        zero_shot_classifier, zero_shot_predict (model)
    recall@k: the fraction of queries whose match ranks among the top k candidates   recall_at_k
    linear probe: L2-regularised logistic regression on frozen features             linear_probe

Measures on captioned digits (the chapter's and benchmarks/clip.py's protocol): `zero_shot_accuracy`
(an attribute or a combination, prompts from `captions.class_prompts`), `composition_accuracy` (a
held-out combination against seen ones), `retrieval_recall` (recall@k among `pool` test images and
their full captions, averaged over random draws); `class_labels` gives the classes they score.

The towers. `ImageEncoder`: three stride-2 stages of 3 × 3 convolutions with GroupNorm and ReLU
(32 → 16 → 8 → 4 pixels, channels w, 2w, 4w; stages 2 and 3 add a stride-1 convolution), then a global
max pool. Not CLIP's attention pooling (§2.4) nor an average pool: in short supervised runs on captioned
digits (200 steps) the max pool learned the digit fastest (about 70% against 50–55% for the mean and
30–55% for attention pooling with learned positions) — a digit is the same digit wherever it is drawn
— and it still reads position and size (99.8% in the same runs): zero padding tells a CNN where the
border is (Islam et al., "How much position information do convolutional neural networks encode?",
ICLR 2020). `TextEncoder`: token and learned position embeddings, `transformer.Block`s with full (not
causal) self-attention and a key padding mask, a final LayerNorm, then the mean over the real (non-PAD)
positions. CLIP's text tower is causal and reads the activation at the [EOS] token, the only position
that has seen the whole caption; here attention is bidirectional, so every position sees the whole
caption, the character tokenizer of `captions` has no [EOS], and the mean gives every position a direct
gradient. PAD positions
never change the result: they are masked as keys and left out of the mean (a test appends PAD columns).

The clip on the temperature. `CLIP.scale` computes exp(min(t, ln 100)) in the graph: whatever the
parameter holds, the logits are never scaled by more than 100. Above ln 100 the gradient of t is 0
(min's), so a parameter that got there would stay stuck; `train_clip` therefore also clamps the
parameter itself to ≤ ln 100 after every optimizer step, as OpenCLIP does, and at ln 100 exactly the
gradient still flows (torch's clamp passes gradients at the bound), so the temperature can rise again.

Training (`train_clip`): each step's images are an epoch-permutation batch (`training.epoch_indices`,
seeded by (seed, epoch)), its captions either rows of a fixed id tensor or drawn afresh by a callable
`(step, indices) -> ids` — `caption_sampler` gives one that captions each image anew at every step
(attributes left out at random, numerals, templates), seeded by (seed, step). Both are functions of the
step alone, so a run resumed from a checkpoint ends with the weights of an uninterrupted one. Captions
with attributes left out fit several images of a batch ("a seven"), so the loss cannot reach 0: its floor
is the entropy of which matching caption was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib import distributed
from aigc_lib.captions import (
    HOLDOUT,
    LANGS,
    MAX_CAPTION_LEN,
    PAD_ID,
    VALUES,
    CaptionedDigits,
    caption_tokenizer,
    captions_for,
    class_prompts,
    describe,
    encode_captions,
    matches_holdout,
)
from aigc_lib.checks import check_float_tensor, check_int, check_number, shape_of
from aigc_lib.runtime import eval_mode
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit
from aigc_lib.transformer import Block, init_normal_

__all__ = [
    "CLIP",
    "MAX_LOGIT_SCALE",
    "CLIPConfig",
    "ImageEncoder",
    "TextEncoder",
    "caption_sampler",
    "class_labels",
    "clip_loss",
    "composition_accuracy",
    "ensemble_prompts",
    "linear_probe",
    "recall_at_k",
    "retrieval_recall",
    "train_clip",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_predict",
    "zero_shot_probs",
]

MAX_LOGIT_SCALE = 100.0  # CLIP: "clipped to prevent scaling the logits by more than 100"
_LOG_MAX_SCALE = math.log(MAX_LOGIT_SCALE)
_VOCAB = caption_tokenizer().vocab_size  # 71: PAD, then every character of the captions and prompts


# --------------------------------------------------------------------------- the loss


def clip_loss(logits_per_image: Tensor) -> Tensor:
    """Symmetric InfoNCE of a (B, B) logit matrix, row i = image i against every caption:
    ½ [CE(logits, arange B) + CE(logitsᵀ, arange B)] (image → text over rows, text → image over columns)."""
    logits = check_float_tensor("logits_per_image", logits_per_image, ndim=2)
    if logits.shape[0] != logits.shape[1] or logits.shape[0] == 0:
        raise ValueError(f"logits_per_image: expected a square (B, B) matrix with B >= 1, got {shape_of(logits)}")
    return _clip_loss(logits)


def _clip_loss(logits: Tensor) -> Tensor:
    return _grouped_clip_loss(logits[None])  # one group: the whole batch


def _grouped_clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE averaged over G groups' logits (G, g, g): ½ [CE(rows) + CE(columns)] against each
    group's diagonal, in two cross-entropy calls."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    g = logits.shape[-1]
    targets = torch.arange(g, device=logits.device).repeat(len(logits))
    rows = F.cross_entropy(logits.flatten(0, 1), targets)
    cols = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), targets)
    return 0.5 * (rows + cols)


# --------------------------------------------------------------------------- the towers


@dataclass
class CLIPConfig:
    """The two towers' sizes. The defaults make 0.40 M parameters (image tower 0.28 M, text tower
    0.11 M), for 32 × 32 captioned digits and `captions.caption_tokenizer()`'s characters."""

    image_channels: int = 3
    image_size: int = 32  # a multiple of 8: three stride-2 stages
    image_width: int = 32  # channels of the first stage; then 2w, 4w (the image features: 4w)
    vocab_size: int = _VOCAB  # captions.caption_tokenizer()'s, PAD_ID = 0 included
    max_len: int = MAX_CAPTION_LEN["en"]  # 52 characters; Chinese captions are shorter
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 64  # the joint space
    init_temperature: float = 0.07  # τ₀ (CLIP's, from Wu et al. 2018): logit scale 1/τ₀ ≈ 14.3

    def __post_init__(self) -> None:
        for name in (
            "image_channels",
            "image_size",
            "image_width",
            "vocab_size",
            "max_len",
            "text_width",
            "text_layers",
            "text_heads",
            "embed_dim",
        ):
            check_int(name, getattr(self, name))
        if self.image_size % 8:
            raise ValueError(f"image_size: expected a multiple of 8 (three stride-2 stages), got {self.image_size}")
        if self.text_width % self.text_heads:
            raise ValueError(
                f"text_heads: text_width={self.text_width} is not divisible by text_heads={self.text_heads}"
            )
        if self.vocab_size <= PAD_ID:
            raise ValueError(f"vocab_size: expected more than PAD_ID={PAD_ID}, got {self.vocab_size}")
        check_number("init_temperature", self.init_temperature, 1 / MAX_LOGIT_SCALE, math.inf)


@dataclass
class _BlockSizes:
    """What transformer.Block reads from a config."""

    n_embd: int
    n_head: int
    dropout: float = 0.0


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.GroupNorm(math.gcd(8, c_out), c_out),
        nn.ReLU(inplace=True),
    ]


class ImageEncoder(nn.Module):
    """images (B, C, S, S) in [0, 1] -> features (B, 4w): three stride-2 stages of 3 × 3 convolutions with
    GroupNorm and ReLU (channels w, 2w, 4w; stages 2 and 3 add a stride-1 convolution), global max pool."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = _check_config(config)
        w = c.image_width
        self.out_dim = 4 * w
        self.convs = nn.Sequential(
            *_conv(c.image_channels, w, 2),  # S/2
            *_conv(w, 2 * w, 2),  # S/4
            *_conv(2 * w, 2 * w, 1),
            *_conv(2 * w, 4 * w, 2),  # S/8
            *_conv(4 * w, 4 * w, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.convs(images).amax((2, 3))  # each feature's strongest response, wherever it is


class TextEncoder(nn.Module):
    """ids (B, L) padded with PAD_ID -> features (B, text_width): token + learned position embeddings,
    Transformer blocks with full self-attention (PAD keys masked), LayerNorm, mean over real tokens."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        c = _check_config(config)
        self.out_dim = c.text_width
        self.tok = nn.Embedding(c.vocab_size, c.text_width)
        self.pos = nn.Parameter(torch.randn(c.max_len, c.text_width) * 0.01)
        sizes = _BlockSizes(c.text_width, c.text_heads)
        self.blocks = nn.ModuleList(Block(sizes, causal=False) for _ in range(c.text_layers))
        self.ln = nn.LayerNorm(c.text_width)
        self.tok.apply(init_normal_)
        self.blocks.apply(init_normal_)

    def states(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """ids (B, L) -> (token states (B, L, text_width) after the final LayerNorm, zero at padding;
        real (B, L) bool, True for tokens): what chapter 07's U-Net attends to."""
        real = ids != PAD_ID  # (B, L) True for tokens, False for padding
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding=real)[0]
        return self.ln(x) * real[..., None], real

    def forward(self, ids: Tensor) -> Tensor:
        x, real = self.states(ids)
        return x.sum(1) / real.sum(1, keepdim=True)  # mean over the real tokens


class CLIP(nn.Module):
    """Both towers, linear projections to the joint space (no bias), unit-length embeddings and the
    learned log inverse temperature `logit_scale` (t = ln 1/τ; the scale used is exp(min(t, ln 100)))."""

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = c = CLIPConfig() if config is None else _check_config(config)
        self.image_encoder, self.text_encoder = ImageEncoder(c), TextEncoder(c)
        self.image_proj = nn.Linear(self.image_encoder.out_dim, c.embed_dim, bias=False)  # W_i
        self.text_proj = nn.Linear(self.text_encoder.out_dim, c.embed_dim, bias=False)  # W_t
        for proj in (self.image_proj, self.text_proj):
            nn.init.normal_(proj.weight, 0.0, proj.in_features**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))

    def scale(self) -> Tensor:
        """exp(min(logit_scale, ln 100)): the factor of the logits, 1/τ, at most 100 (0-D tensor)."""
        return self.logit_scale.clamp(max=_LOG_MAX_SCALE).exp()

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, C, S, S) in [0, 1] -> I_e (B, embed_dim), unit rows."""
        return self._encode_image(_check_images("images", images, self.config))

    def _encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """ids (B, L) int64 padded with PAD_ID (captions.encode_captions) -> T_e (B, embed_dim), unit rows."""
        return self._encode_text(_check_ids("ids", ids, self.config))

    def _encode_text(self, ids: Tensor) -> Tensor:
        return F.normalize(self.text_proj(self.text_encoder(ids)), dim=-1)

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        """(images (B, C, S, S), caption ids (B, L)) -> logits_per_image (B, B) = scale · I_e T_eᵀ; row i:
        image i against every caption (logits_per_text is its transpose)."""
        images = _check_images("images", images, self.config)
        ids = _check_ids("ids", ids, self.config)
        if len(images) != len(ids):
            raise ValueError(f"ids: expected one caption per image, {len(images)} rows, got {shape_of(ids)}")
        return self._logits(images, ids)

    def _logits(self, images: Tensor, ids: Tensor) -> Tensor:
        return self.scale() * self._encode_image(images) @ self._encode_text(ids).T


# --------------------------------------------------------------------------- training


def caption_sampler(
    data: CaptionedDigits,
    lang: str = "en",
    drop: float = 0.3,
    numerals: float = 0.3,
    seed: int = 0,
    tokenizer: object = None,
) -> Callable[[int, Tensor], Tensor]:
    """A captions callable for `train_clip`: (step, indices (B,)) -> ids (B, L) of fresh random captions of
    images `indices` of `data` (`captions.captions_for(rows, lang, seed·1_000_003 + step, drop, numerals)`:
    each attribute but the digit left out with probability `drop`, numerals, templates), padded to the
    longest (`encode_captions`; tokenizer: caption_tokenizer() when None). lang="both": each caption is
    English or Chinese with probability ½ (drawn from the same seed), so one model learns both.

    A function of (step, indices) alone, so a resumed run draws the captions an uninterrupted one drew."""
    if not isinstance(data, CaptionedDigits):
        raise ValueError(f"data: expected CaptionedDigits (captions.captioned_digits), got {type(data).__name__}")
    check_int("seed", seed, low=0)
    if lang not in (*LANGS, "both"):
        raise ValueError(f"lang: expected 'en', 'zh' or 'both', got {lang!r}")
    check_number("drop", drop, 0.0, 1.0)
    check_number("numerals", numerals, 0.0, 1.0)
    tokenizer = caption_tokenizer() if tokenizer is None else tokenizer
    encode_captions(["a"], tokenizer)  # checks the tokenizer once
    attrs = data.attrs

    def sample(step: int, indices: Tensor) -> Tensor:
        rows = {a: t[indices] for a, t in attrs.items()}
        step_seed = seed * 1_000_003 + step
        if lang != "both":
            return encode_captions(captions_for(rows, lang, step_seed, drop, numerals), tokenizer)[0]
        en, zh = (captions_for(rows, language, step_seed, drop, numerals) for language in LANGS)
        chinese = torch.rand(len(en), generator=torch.Generator().manual_seed(step_seed)) < 0.5
        return encode_captions([z if c else e for e, z, c in zip(en, zh, chinese.tolist(), strict=True)], tokenizer)[0]

    return sample


def _check_ranks(batch_size: int, group: int) -> None:
    """Under N ranks each contrasts its own B/N pairs: exactly one process with group B/N, not batch B's negatives."""
    ranks = distributed.world_size()
    if ranks == 1 or batch_size % ranks:  # fit reports a batch that does not split
        return
    per_rank = batch_size // ranks
    if group == batch_size:
        distributed.warn_not_equivalent(
            "train_clip",
            f"each rank contrasts its own {per_rank} pairs, so every image has {per_rank - 1} negatives instead "
            f"of {batch_size - 1}: the run equals one process with group={per_rank}, not the whole batch's "
            "contrast (gather the features across ranks for that)",
        )
    elif per_rank % group:
        raise ValueError(
            f"group: {group} does not divide the {per_rank} pairs of each of {ranks} ranks; pick a divisor of {per_rank}"
        )


def train_clip(
    model: CLIP,
    data: CaptionedDigits | Tensor,
    captions: Tensor | Callable[[int, Tensor], Tensor],
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    group: int | None = None,
    **run: Unpack[RunOptions],
) -> History:
    """Train `model` on `clip_loss` with AdamW(lr) (weight decay on matrices only), a linear warm-up of
    `warmup` steps (default min(100, steps // 10)) and a cosine decay to lr/10.

    data     -- CaptionedDigits, or images (N, C, S, S) in [0, 1].
    captions -- int64 ids (N, L) padded with PAD_ID, row i a caption of image i (fixed captions); or a
                callable (step, indices (B,)) -> ids (B, L) giving step `step`'s captions of those images
                (`caption_sampler(data)`: fresh captions at every step). It must be a function of its
                arguments alone for a resumed run to be exact.
    group    -- contrast within groups of this many consecutive pairs of the batch (a divisor of
                batch_size; None: the whole batch): each image then has group - 1 negatives, while the
                steps, the samples and the gradient's batch stay the same (a control for batch size).
    Each step's images are batch `step` of epoch permutations seeded by (seed, epoch) (`epoch_indices`);
    trailing all-PAD columns are cut. After every optimizer step logit_scale is clamped to ≤ ln 100.
    `run`: fit's run options (checkpoint, ckpt_every, log_every, desc (here "clip"), progress, on_log).
    Returns the History: "loss", "temperature" (τ = 1/scale) and, with grad_clip, "grad_norm"."""
    if not isinstance(model, CLIP):
        raise ValueError(f"model: expected a CLIP, got {type(model).__name__}")
    check_int("steps", steps), check_int("batch_size", batch_size), check_int("seed", seed, low=0)
    lr = check_number("lr", lr, inclusive=False)
    weight_decay = check_number("weight_decay", weight_decay)
    warmup = min(100, steps // 10) if warmup is None else check_int("warmup", warmup, low=0)
    group = batch_size if group is None else check_int("group", group, high=batch_size)
    if batch_size % group:
        raise ValueError(f"group: expected a divisor of batch_size={batch_size}, got {group}")
    _check_ranks(batch_size, group)
    if grad_clip is not None:
        check_number("grad_clip", grad_clip, 0.0, math.inf, inclusive=False)
    images = _check_images("data", data.images if isinstance(data, CaptionedDigits) else data, model.config)
    if batch_size > len(images):
        raise ValueError(f"batch_size: expected at most the number of images {len(images)}, got {batch_size}")
    if callable(captions):
        fixed = None
    else:
        fixed = _check_ids("captions", captions, model.config)
        if len(fixed) != len(images):
            raise ValueError(f"captions: expected one caption per image ({len(images)} rows), got {shape_of(fixed)}")
        fixed = fixed.cpu()
    images = images.detach().cpu()
    order = epoch_indices(len(images), batch_size, seed)

    def batches(step: int) -> tuple[Tensor, Tensor]:
        idx = order(step)
        if fixed is not None:
            ids = fixed[idx]
        else:
            ids = captions(step, idx)
            if not isinstance(ids, Tensor) or ids.ndim != 2 or len(ids) != len(idx):
                raise ValueError(
                    f"captions: expected the callable to return ids ({len(idx)}, L) at step {step}, got {shape_of(ids)}"
                )
            ids = ids.cpu()
        ids = ids[:, : max(1, _used_width(ids))]  # trailing PAD columns change nothing: skip them
        if fixed is None:
            _check_ids(f"captions (step {step})", ids, model.config)
        return images[idx], ids

    def loss_fn(m: CLIP, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        if group == batch_size:
            loss = _clip_loss(m._logits(*batch))
        else:
            img, txt = (e.view(-1, group, e.shape[-1]) for e in (m._encode_image(batch[0]), m._encode_text(batch[1])))
            loss = _grouped_clip_loss(m.scale() * img @ txt.transpose(1, 2))
        return {"loss": loss, "temperature": 1 / m.scale().detach()}

    @torch.no_grad()
    def on_step(step: int) -> None:  # keep t ≤ ln 100, where its gradient still flows
        model.logit_scale.clamp_(max=_LOG_MAX_SCALE)

    optimizer, scheduler = adamw_warmup_cosine(model, lr, steps, warmup, weight_decay=weight_decay)
    run.setdefault("desc", "clip")
    return fit(
        model,
        optimizer,
        batches,
        loss_fn,
        steps,
        grad_clip=grad_clip,
        scheduler=scheduler,
        on_step=on_step,
        **run,
    )


# --------------------------------------------------------------------------- using the joint space


def zero_shot_classifier(
    model: CLIP,
    prompts: Sequence[str] | Sequence[Sequence[str]],
    tokenizer: object = None,
    max_len: int | None = None,
) -> Tensor:
    """One unit embedding per class (K, embed_dim) from its prompt(s).

    prompts: one str per class, or a list of strs per class (prompt ensembling, CLIP §3.1.4: the mean
    of the prompts' unit embeddings, renormalised). tokenizer: caption_tokenizer() when None. max_len:
    the longest prompt allowed in tokens (the model's max_len when None)."""
    if not isinstance(model, CLIP):
        raise ValueError(f"model: expected a CLIP, got {type(model).__name__}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(
            f"prompts: expected a non-empty list of str (one per class) or of lists of str, got {prompts!r:.80}"
        )
    groups = []
    for k, p in enumerate(prompts):
        group = [p] if isinstance(p, str) else p
        if isinstance(group, str) or not isinstance(group, Sequence) or not group:
            raise ValueError(f"prompts[{k}]: expected a str or a non-empty list of str, got {p!r:.80}")
        if not all(isinstance(s, str) for s in group):
            raise ValueError(f"prompts[{k}]: expected only str, got {group!r:.80}")
        groups.append(list(group))
    limit = model.config.max_len if max_len is None else check_int("max_len", max_len, high=model.config.max_len)
    flat = [s for g in groups for s in g]
    ids, _ = encode_captions(flat, caption_tokenizer() if tokenizer is None else tokenizer)
    if ids.shape[1] > limit:
        raise ValueError(f"prompts: the longest prompt has {ids.shape[1]} tokens, more than max_len={limit}")
    _check_ids("prompts", ids, model.config)  # ids within the model's vocabulary, no empty prompt
    device = next(model.parameters()).device
    with eval_mode(model):
        emb = model._encode_text(ids.to(device))
    if len({len(g) for g in groups}) == 1:
        return _ensemble_prompts(emb.view(len(groups), len(groups[0]), -1))
    owner = torch.tensor([k for k, g in enumerate(groups) for _ in g], device=device)
    summed = torch.zeros(len(groups), emb.shape[1], device=device, dtype=emb.dtype).index_add_(0, owner, emb)
    return F.normalize(summed, dim=-1)  # as _ensemble_prompts, for classes with different numbers of prompts


def ensemble_prompts(prompt_embeddings: Tensor) -> Tensor:
    """(K, P, D) embeddings of P prompts per class -> (K, D) unit class embeddings: each prompt's
    embedding normalised, the mean over the P prompts, renormalised (CLIP §3.1.4; the released
    notebook's "prompt engineering and ensembling"). normalize(mean) = normalize(sum)."""
    return _ensemble_prompts(check_float_tensor("prompt_embeddings", prompt_embeddings, ndim=3))


def _ensemble_prompts(emb: Tensor) -> Tensor:
    return F.normalize(F.normalize(emb, dim=-1).mean(1), dim=-1)


def zero_shot_probs(image_embeddings: Tensor, class_embeddings: Tensor, scale: float | Tensor) -> Tensor:
    """p(k | x) = softmax_k(scale · cos(image x, class k)), (N, K), from image embeddings (N, D) and class
    embeddings (K, D) of any length (both are normalised here)."""
    img = check_float_tensor("image_embeddings", image_embeddings, ndim=2)
    w = check_float_tensor("class_embeddings", class_embeddings, (None, img.shape[1]))
    if len(w) == 0:
        raise ValueError("class_embeddings: expected at least one class, got (0, D)")
    return _zero_shot_probs(img, w, scale)


def _zero_shot_probs(img: Tensor, w: Tensor, scale: float | Tensor) -> Tensor:
    return torch.softmax(scale * F.normalize(img, dim=-1) @ F.normalize(w.to(img.dtype), dim=-1).T, dim=-1)


def zero_shot_predict(
    model: CLIP, images: Tensor, class_embeddings: Tensor, batch_size: int = 500
) -> tuple[Tensor, Tensor]:
    """(pred (N,) int64, probs (N, K)): p(k | x) = softmax_k(scale · I_e(x) · w_k), pred its argmax.
    images (N, C, S, S) in [0, 1]; class_embeddings (K, embed_dim) from `zero_shot_classifier`."""
    if not isinstance(model, CLIP):
        raise ValueError(f"model: expected a CLIP, got {type(model).__name__}")
    images = _check_images("images", images, model.config)
    w = check_float_tensor("class_embeddings", class_embeddings, (None, model.config.embed_dim))
    check_int("batch_size", batch_size)
    if len(w) == 0:
        raise ValueError("class_embeddings: expected at least one class, got (0, D)")
    device = next(model.parameters()).device
    w = w.to(device)
    probs = []
    with eval_mode(model):
        scale = model.scale()
        for lo in range(0, len(images), batch_size):
            emb = model._encode_image(images[lo : lo + batch_size].to(device))
            probs.append(_zero_shot_probs(emb, w, scale))
    p = torch.cat(probs)
    return p.argmax(-1), p


def recall_at_k(sim: Tensor, k: int, targets: Tensor | None = None) -> float:
    """The fraction of queries (rows of sim (Nq, Nc)) whose match ranks in the top k candidates.

    targets (Nq,) int64: each query's matching column (default the diagonal: query i matches column i,
    which needs Nq <= Nc). A tie counts against the match: its rank is the number of other columns
    with a similarity >= its own, so a constant `sim` scores 0 for k < Nc, never a perfect recall."""
    sim = check_float_tensor("sim", sim, ndim=2)
    nq, nc = sim.shape
    check_int("k", k, high=max(nc, 1))
    if targets is None:
        if nq > nc:
            raise ValueError(f"sim: the default targets are the diagonal, which needs Nq <= Nc, got {shape_of(sim)}")
        targets = torch.arange(nq, device=sim.device)
    elif not isinstance(targets, Tensor) or targets.dtype != torch.int64 or tuple(targets.shape) != (nq,):
        raise ValueError(f"targets: expected an int64 tensor ({nq},), got {shape_of(targets)}")
    elif nq and (int(targets.min()) < 0 or int(targets.max()) >= nc):
        raise ValueError(f"targets: expected columns in [0, {nc - 1}], got {int(targets.min())}..{int(targets.max())}")
    if nq == 0:
        raise ValueError("sim: expected at least one query, got 0 rows")
    return _recall_at_k(sim, k, targets.to(sim.device))


def _recall_at_k(sim: Tensor, k: int, targets: Tensor) -> float:
    match = sim.gather(1, targets[:, None])  # (Nq, 1)
    rank = (sim >= match).sum(1) - 1  # the other columns at least as similar
    return float((rank < k).double().mean())


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    steps: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-3,
) -> float:
    """Test accuracy of a logistic regression on frozen features (CLIP §3.2's linear probe).

    Features are standardised with the train set's mean and std; the classifier (weights W, bias b,
    zeros at the start) minimises mean cross-entropy + weight_decay/2 · ‖W‖² over the whole train set
    with L-BFGS (`steps` iterations, initial step `lr`, strong Wolfe line search) in float64 on the CPU:
    deterministic. Classes: 0 .. the largest label of either set."""
    xtr = check_float_tensor("train_features", train_features, ndim=2)
    xte = check_float_tensor("test_features", test_features, (None, xtr.shape[1]))
    for name, y, x in (("train_labels", train_labels, xtr), ("test_labels", test_labels, xte)):
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (len(x),):
            raise ValueError(f"{name}: expected an int64 tensor ({len(x)},), got {shape_of(y)}")
        if len(y) == 0:
            raise ValueError(f"{name}: expected at least one example, got 0")
        if int(y.min()) < 0:
            raise ValueError(f"{name}: expected class indices >= 0, got {int(y.min())}")
    check_int("steps", steps)
    lr = check_number("lr", lr, inclusive=False)
    weight_decay = check_number("weight_decay", weight_decay)
    return _linear_probe(xtr, train_labels, xte, test_labels, steps, lr, weight_decay)


def _linear_probe(
    xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, steps: int, lr: float, weight_decay: float
) -> float:
    xtr, xte = xtr.detach().cpu().double(), xte.detach().cpu().double()
    ytr, yte = ytr.cpu(), yte.cpu()
    mean, std = xtr.mean(0), xtr.std(0, correction=0).clamp(min=1e-12)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    n_classes = int(max(ytr.max(), yte.max())) + 1
    W = torch.zeros(xtr.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=lr,
        max_iter=steps,
        history_size=20,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + 0.5 * weight_decay * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ W + b).argmax(1) == yte).double().mean())


# --------------------------------------------------------------------------- measuring on captioned digits


def class_labels(data: CaptionedDigits, attrs: str | Sequence[str]) -> Tensor:
    """Each image's class among `captions.class_prompts(attrs)`'s classes (int64 (N,)): its value of
    the attribute, or the index of its value combination in itertools.product order."""
    if not isinstance(data, CaptionedDigits):
        raise ValueError(f"data: expected CaptionedDigits (captions.captioned_digits), got {type(data).__name__}")
    names = (attrs,) if isinstance(attrs, str) else tuple(attrs)
    class_prompts(names)  # checks the names
    label = torch.zeros(len(data), dtype=torch.int64)
    for name in names:  # mixed radix, last attribute fastest: itertools.product's order
        label = label * len(VALUES[name]) + data.attrs[name]
    return label


def zero_shot_accuracy(
    model: CLIP, data: CaptionedDigits, attrs: str | Sequence[str], lang: str = "en", ensemble: bool = True
) -> float:
    """The fraction of `data`'s images whose value (combination) of `attrs` the zero-shot classifier
    built from `captions.class_prompts(attrs, lang, ensemble)` names correctly."""
    _, prompts = class_prompts(attrs, lang, ensemble)
    labels = class_labels(data, attrs)
    pred, _ = zero_shot_predict(model, data.images, zero_shot_classifier(model, prompts))
    return float((pred.cpu() == labels).double().mean())


def composition_accuracy(model: CLIP, data: CaptionedDigits, entry: Sequence, lang: str = "en") -> dict[str, float]:
    """Zero-shot accuracy over the value combinations of a held-out entry's attributes (e.g. every
    (digit, colour) pair for (("digit", 7), ("colour", "red"))), on two groups of `data`'s images:
    "held_out", those with the entry's combination (never in training), and "seen", those matching no
    entry of captions.HOLDOUT (every combination trained on). Also their counts "n_held_out", "n_seen"."""
    entry = tuple(entry)
    matches_holdout(data, (entry,))  # checks the entry
    names = [name for name, _ in entry]
    _, prompts = class_prompts(names, lang)
    pred, _ = zero_shot_predict(model, data.images, zero_shot_classifier(model, prompts))
    right = pred.cpu() == class_labels(data, names)
    groups = {"held_out": matches_holdout(data, (entry,)), "seen": ~matches_holdout(data, HOLDOUT)}
    out: dict[str, float] = {}
    for group, mask in groups.items():
        out[group] = float(right[mask].double().mean()) if mask.any() else math.nan
        out["n_" + group] = int(mask.sum())
    return out


def retrieval_recall(
    model: CLIP, data: CaptionedDigits, k: int = 1, pool: int = 100, trials: int = 20, lang: str = "en", seed: int = 0
) -> dict[str, float]:
    """Recall@k of text -> image and image -> text retrieval among `pool` images of `data` with their
    full captions (`captions.describe`), averaged over `trials` random pools (seeded): {"text_to_image":
    …, "image_to_text": …}. Each pool holds images with *distinct* full captions (the first `pool` of a
    random order, skipping an image whose caption the pool already has): two images with one caption
    would each be a right answer for the other, and a tie counts against the match."""
    if not isinstance(data, CaptionedDigits):
        raise ValueError(f"data: expected CaptionedDigits (captions.captioned_digits), got {type(data).__name__}")
    texts = [describe(data.row(i), lang) for i in range(len(data))]
    check_int("pool", pool, high=len(set(texts))), check_int("k", k, high=pool), check_int("trials", trials)
    check_int("seed", seed, low=0)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    found = {"text_to_image": 0.0, "image_to_text": 0.0}
    with eval_mode(model):
        for _ in range(trials):
            chosen: dict[str, int] = {}
            for i in torch.randperm(len(data), generator=g).tolist():
                chosen.setdefault(texts[i], i)
                if len(chosen) == pool:
                    break
            idx = torch.tensor(list(chosen.values()))
            ids, _ = encode_captions(list(chosen))
            sim = model._encode_text(ids.to(device)) @ model._encode_image(data.images[idx].to(device)).T
            sim = sim.cpu()
            found["text_to_image"] += _recall_at_k(sim, k, torch.arange(pool)) / trials
            found["image_to_text"] += _recall_at_k(sim.T.contiguous(), k, torch.arange(pool)) / trials
    return found


# --------------------------------------------------------------------------- argument checks


def _check_config(config: object) -> CLIPConfig:
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"config: expected a CLIPConfig, got {type(config).__name__}")
    return config


def _check_images(name: str, images: object, c: CLIPConfig) -> Tensor:
    want = (c.image_channels, c.image_size, c.image_size)
    if (
        not isinstance(images, Tensor)
        or not images.is_floating_point()
        or images.ndim != 4
        or tuple(images.shape[1:]) != want
        or len(images) == 0
    ):
        raise ValueError(
            f"{name}: expected a non-empty float batch (N, {', '.join(map(str, want))}), got {shape_of(images)}"
        )
    return images


def _check_ids(name: str, ids: object, c: CLIPConfig) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 2 or not 0 < ids.shape[1] <= c.max_len:
        got = f"{shape_of(ids)} {ids.dtype}" if isinstance(ids, Tensor) else shape_of(ids)
        raise ValueError(
            f"{name}: expected int64 caption ids (B, L) with 1 <= L <= max_len={c.max_len} "
            f"(captions.encode_captions), got {got}"
        )
    if len(ids) == 0:
        raise ValueError(f"{name}: expected at least one caption, got {shape_of(ids)}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= c.vocab_size:
        raise ValueError(f"{name}: expected token ids in [0, {c.vocab_size - 1}], got {lo}..{hi}")
    empty = ~(ids != PAD_ID).any(1)
    if bool(empty.any()):
        raise ValueError(
            f"{name}: caption {int(empty.nonzero()[0])} is only padding (PAD_ID={PAD_ID}); every caption needs a token"
        )
    return ids


def _used_width(ids: Tensor) -> int:
    """1 + the last column holding a token (0 when every entry is PAD): the columns worth computing."""
    used = (ids != PAD_ID).any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 0
