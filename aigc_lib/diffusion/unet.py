"""The U-Net ε_θ(x_t, t, y) of chapter 05: a small DDPM-style network for 28×28 digits.

Read top to bottom: the sinusoidal timestep embedding, the configuration, the two blocks (a residual
block that adds the time (+ class) embedding, self-attention), then the U-Net that stacks them.

    emb(t) = [sin(t ω_0), cos(t ω_0), sin(t ω_1), ...], ω_i = 10000^{−2i/d}
             (Vaswani et al. 2017, §3.5, read at position t; Ho et al. 2020, appendix B)       timestep_embedding
    e     = MLP(emb(t)) + E_class[y]           (y = n_classes is the null label ∅ of CFG)       UNet.forward
    h     = conv(SiLU(GN(x))) + W e;  out = skip(x) + conv(dropout(SiLU(GN(h))))                 ResBlock
    out   = x + proj(softmax(q kᵀ / √d) v) over the H·W positions, q, k, v = 1×1 convs of GN(x)   SelfAttention
    out   = x + proj(softmax(q kᵀ / √d) v), q from GN(x), k, v from context tokens (PAD masked)   CrossAttention

Down: conv_in, then per level `blocks` ResBlocks (+ attention) and a stride-2 conv (not after the last
level); middle: ResBlock, attention, ResBlock; up: per level `blocks + 1` ResBlocks on the
concatenated skip activations, then ×2 upsampling; out: GN, SiLU, conv. Attention runs through
F.scaled_dot_product_attention.

The network knows nothing of the noise schedule: it maps (images, timesteps, labels) to images, so a
later chapter can reuse it (with cross-attention added) inside a latent-diffusion model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, check_number, shape_of


def timestep_embedding(t: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer or real) timesteps t (B,) -> (B, dim), the Transformer's table
    read at position t: [sin(t ω_0), cos(t ω_0), sin(t ω_1), ...], ω_i = base^{−2i/dim}
    (equal to aigc_lib.transformer.sinusoidal_positions(T, dim)[t])."""
    if not isinstance(t, Tensor) or t.ndim != 1:
        raise ValueError(f"t: expected a 1-D tensor of timesteps (B,), got {shape_of(t)}")
    check_int("dim", dim, low=2)
    if dim % 2:
        raise ValueError(f"dim: expected an even embedding width for sin/cos pairs, got {dim}")
    return _timestep_embedding(t, dim, base)


def _timestep_embedding(t: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    freq = base ** (-torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim)  # (dim/2,)
    angle = t.float()[:, None] * freq  # (B, dim/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)  # (B, dim), interleaved


@dataclass
class UNetConfig:
    """A small DDPM-style U-Net for 28×28 digits: levels at 28, 14, 7 with base·mults channels."""

    image_channels: int = 1
    base: int = 32  # channels at the first level
    mults: tuple[int, ...] = (1, 2, 2)  # channel multiplier per level; each level but the last halves H, W
    blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    attn_res: tuple[int, ...] = (7,)  # resolutions (H of a square map) with self-attention
    time_dim: int | None = None  # width of the sinusoidal and the time (+ class) embedding; None: max(64, 4·base)
    n_classes: int | None = None  # class-conditional with this many classes; label n_classes is "no label"
    groups: int = 8  # GroupNorm groups (>= 2 channels each, better 4+)
    heads: int = 1  # attention heads (channels must divide)
    dropout: float = 0.0
    image_size: int = 28
    upsample: str = (
        "conv"  # "conv": nearest ×2 then a 3×3 conv (DDPM); "transpose": a 2×2 stride-2 transposed conv (cheaper)
    )
    context_dim: int | None = None  # text-conditional: token states of this width (cross-attention + pooled)

    def __post_init__(self) -> None:
        for name in ("image_channels", "base", "blocks", "groups", "heads", "image_size"):
            check_int(name, getattr(self, name))
        if self.time_dim is None:
            self.time_dim = max(64, 4 * self.base)  # enough sin/cos frequencies to tell t = 0..999 apart
        check_int("time_dim", self.time_dim, low=2)
        if self.time_dim % 2:
            raise ValueError(f"time_dim: expected an even width for sin/cos pairs, got {self.time_dim}")
        if self.n_classes is not None:
            check_int("n_classes", self.n_classes)
        if self.context_dim is not None:
            check_int("context_dim", self.context_dim)
        mults = tuple(self.mults)
        if not mults or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in mults):
            raise ValueError(f"mults: expected a non-empty tuple of positive ints, got {self.mults!r}")
        self.mults = mults
        if self.image_size % 2 ** (len(mults) - 1):
            raise ValueError(
                f"image_size: {self.image_size} cannot be halved {len(mults) - 1} times "
                f"(mults={mults}); use fewer levels"
            )
        self.attn_res = tuple(self.attn_res)
        for m in mults:
            ch = self.base * m
            if ch % self.groups or ch // self.groups < 2:
                # one channel per group would make GroupNorm remove every channel's mean: the network
                # could no longer predict the mean of ε, and samples drift to flat white or black
                raise ValueError(
                    f"groups: expected a divisor of every level's channels "
                    f"{[self.base * k for k in mults]} leaving >= 2 channels per group, got {self.groups}"
                )
            if ch % self.heads:
                raise ValueError(
                    f"heads: expected a divisor of every level's channels "
                    f"{[self.base * k for k in mults]}, got {self.heads}"
                )
        if self.upsample not in ("conv", "transpose"):
            raise ValueError(f"upsample: expected 'conv' or 'transpose', got {self.upsample!r}")
        self.dropout = check_number("dropout", self.dropout, 0.0, 1.0)
        if self.dropout == 1.0:
            raise ValueError("dropout: expected a probability < 1, got 1.0")

    @property
    def resolutions(self) -> list[int]:
        return [self.image_size // 2**i for i in range(len(self.mults))]


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W·emb;  out = skip(x) + conv(dropout(SiLU(GN(h)))) (Ho et al. appendix B)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight), nn.init.zeros_(self.conv2.bias)  # each block starts as identity

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]  # time (+ class) embedding, broadcast over H, W
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + proj(softmax(q kᵀ / √d) v) over the H·W positions, q, k, v = 1×1 convs of GN(x)."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)  # (B, 3, nh, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, nh, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, d)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-attention written out: queries q (B, N, d) over keys k (B, L, d) and values v (B, L, d), of
    which only the real ones (mask (B, L) True) count:

        a = softmax over real j of q_i · k_j / √d,   out_i = Σ_j a_ij v_j

    Returns (out (B, N, d), weights a (B, N, L), zero at padding). A row of padding only has nothing to
    attend to: its weights and its output are zero, so the block adds nothing (the unconditional branch).
    The arithmetic of CrossAttention (one head), which runs it through F.scaled_dot_product_attention."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 3:
            raise ValueError(f"{name}: expected a float tensor (B, ·, d), got {shape_of(x)}")
    if k.shape != v.shape or len(q) != len(k) or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k, v: expected (B, L, d) matching q {shape_of(q)}, got k {shape_of(k)}, v {shape_of(v)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(k.shape[:2]):
        raise ValueError(
            f"mask: expected a bool tensor {tuple(k.shape[:2])}, True for real tokens, got {shape_of(mask)}"
        )
    k, v = k.masked_fill(~mask[..., None], 0.0), v.masked_fill(~mask[..., None], 0.0)  # padding never in the sums
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (B, N, L)
    scores = scores.masked_fill(~mask[:, None, :], -torch.inf)
    some = mask.any(1)[:, None, None]
    weights = torch.where(some, torch.softmax(torch.where(some, scores, 0.0), dim=-1), 0.0)
    weights = weights.masked_fill(~mask[:, None, :], 0.0)
    return weights @ v, weights


class CrossAttention(nn.Module):
    """x + proj(softmax(q kᵀ / √d) v): queries from GN(x) at the H·W positions (a 1×1 conv), keys and
    values from context tokens (B, L, context_dim) such as a text tower's states (one linear map).
    `mask` (B, L) bool, True for real tokens, keeps padding out of every softmax. An image whose
    context has no real token (a caption of padding only) gets no update: the block is the identity,
    so the network computes its unconditional branch. proj starts at zero (the block starts as identity).
    Equal to nn.MultiheadAttention(channels, heads, kdim=vdim=context_dim) with key_padding_mask=~mask
    on the flattened positions, weights mapped as tests/test_diffusion_cross_attention.py shows."""

    def __init__(self, channels: int, context_dim: int, groups: int, heads: int):
        super().__init__()
        check_int("channels", channels), check_int("context_dim", context_dim), check_int("heads", heads)
        if channels % heads:
            raise ValueError(f"heads: expected a divisor of channels={channels}, got {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def weights(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """The attention maps (B, heads, H·W, L): how much each image position reads each caption token
        (`masked_attention`'s weights per head; zero at padding and for a caption of padding only)."""
        B, C, H, W = x.shape
        nh, L = self.heads, context.shape[1]
        q = self.q(self.norm(x)).reshape(B, nh, C // nh, H * W).transpose(-1, -2).flatten(0, 1)  # (B·nh, HW, d)
        k = self.kv(context).reshape(B, L, 2, nh, C // nh)[:, :, 0].transpose(1, 2).flatten(0, 1)  # (B·nh, L, d)
        _, a = masked_attention(q, k, k, mask.repeat_interleave(nh, 0))
        return a.reshape(B, nh, H * W, L)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        C = self.q.in_channels
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != C:
            raise ValueError(f"x: expected float features (B, {C}, H, W), got {shape_of(x)}")
        B, _, H, W = x.shape
        if (
            not isinstance(context, Tensor)
            or context.dtype != x.dtype
            or context.ndim != 3
            or len(context) != B
            or context.shape[1] == 0
            or context.shape[-1] != self.kv.in_features
        ):
            raise ValueError(
                f"context: expected {x.dtype} token states (B={B}, L >= 1, {self.kv.in_features}), got "
                f"{context.dtype if isinstance(context, Tensor) else ''} {shape_of(context)}"
            )
        L, nh = context.shape[1], self.heads
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, L):
                raise ValueError(
                    f"mask: expected a bool tensor ({B}, {L}), True for real tokens (ids != PAD_ID), got {shape_of(mask)}"
                )
            context = context.masked_fill(~mask[..., None], 0.0)  # padding states never reach the arithmetic
        q = self.q(self.norm(x)).reshape(B, nh, C // nh, H * W).transpose(-1, -2)  # (B, nh, HW, d)
        k, v = self.kv(context).reshape(B, L, 2, nh, C // nh).permute(2, 0, 3, 1, 4)  # each (B, nh, L, d)
        if mask is None:
            h = F.scaled_dot_product_attention(q, k, v)
            return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
        some = mask.any(1)  # an all-padding context would make every weight 0/0: attend to all, then drop it
        keep = mask | ~some[:, None]
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        update = self.proj(h.transpose(-1, -2).reshape(B, C, H, W))
        return torch.where(some[:, None, None, None], x + update, x)


class _Level(nn.Module):
    """Residual blocks (each followed by attention at attention resolutions) at one resolution."""

    def __init__(self, c_ins: list[int], c_out: int, emb_dim: int, cfg: UNetConfig, attn: bool):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, c_out, emb_dim, cfg.groups, cfg.dropout) for c in c_ins)
        self.attn = nn.ModuleList(SelfAttention(c_out, cfg.groups, cfg.heads) if attn else nn.Identity() for _ in c_ins)
        if attn and cfg.context_dim is not None:  # text: cross-attention after each self-attention
            self.cross = nn.ModuleList(CrossAttention(c_out, cfg.context_dim, cfg.groups, cfg.heads) for _ in c_ins)
        else:
            self.cross = nn.ModuleList(nn.Identity() for _ in c_ins)


class _Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest-neighbour ×2 and a 3×3 conv, or a 2×2 stride-2 transposed conv."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = nn.ConvTranspose2d(channels, channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "conv":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class UNet(nn.Module):
    """ε_θ(x_t, t, y): images (B, C, H, W), timesteps (B,), optional labels (B,) -> (B, C, H, W).

    Down: conv_in, then per level `blocks` ResBlocks (+ attention) and a stride-2 conv (not after the
    last level); middle: ResBlock, attention, ResBlock; up: per level `blocks + 1` ResBlocks on the
    concatenated skip activations, then nearest-neighbour upsampling and a conv; out: GN, SiLU, conv.
    Conditioning: emb = MLP(timestep_embedding(t, time_dim)) + class_embedding(y), added in every ResBlock.
    The class embedding has n_classes + 1 rows: the last (label n_classes) is the null label ∅ of
    classifier-free guidance; labels=None means ∅ for the whole batch.

    Text (config.context_dim): `context` (B, L, context_dim) token states and `mask` (B, L) True for real
    tokens. Every attention block is followed by a CrossAttention to them, and their pooled mean over real
    tokens enters emb through a linear map (Rombach et al. 2022 §3.3 use cross-attention; the pooled
    vector is Imagen's and SDXL's addition). context=None, or a caption of padding only (no True in its
    mask row), gives the unconditional branch ∅: no cross-attention update and nothing pooled."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        if config is None:
            config = UNetConfig()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"config: expected a UNetConfig, got {type(config).__name__}")
        self.config = c = config
        self.n_classes = c.n_classes
        E = c.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        self.class_emb = nn.Embedding(c.n_classes + 1, E) if c.n_classes else None
        self.text_emb = nn.Linear(c.context_dim, E) if c.context_dim is not None else None  # pooled text
        self.conv_in = nn.Conv2d(c.image_channels, c.base, 3, padding=1)
        chans = [c.base * m for m in c.mults]
        res = c.resolutions
        skips = [c.base]  # channels of each saved activation, in order
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = c.base
        for i, cout in enumerate(chans):
            ins = [ch] + [cout] * (c.blocks - 1)
            self.down.append(_Level(ins, cout, E, c, res[i] in c.attn_res))
            skips += [cout] * c.blocks
            ch = cout
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # (B, ch, H/2, W/2)
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, E, c.groups, c.dropout)
        self.mid_attn = SelfAttention(ch, c.groups, c.heads)
        self.mid_cross = CrossAttention(ch, c.context_dim, c.groups, c.heads) if c.context_dim else nn.Identity()
        self.mid2 = ResBlock(ch, ch, E, c.groups, c.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            cout = chans[i]
            ins = []
            for _ in range(c.blocks + 1):
                ins.append(ch + skips.pop())
                ch = cout
            self.up.append(_Level(ins, cout, E, c, res[i] in c.attn_res))
            if i > 0:
                self.upsample.append(_Upsample(ch, c.upsample))
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight), nn.init.zeros_(self.conv_out.bias)

    def _check_context(self, B: int, context: object, mask: object) -> None:
        width = self.config.context_dim
        if context is None:
            if mask is not None:
                raise ValueError("mask: given without context; pass both or neither")
            return
        if width is None:
            raise ValueError("context: this U-Net does not read text (context_dim=None); pass context=None")
        if not isinstance(context, Tensor) or context.ndim != 3 or len(context) != B or context.shape[-1] != width:
            raise ValueError(f"context: expected token states ({B}, L, {width}), got {shape_of(context)}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(context.shape[:2]):
            raise ValueError(
                f"mask: expected a bool tensor ({B}, {context.shape[1]}), True for real tokens, got {shape_of(mask)}"
            )

    def _check_inputs(self, x: object, t: object, labels: object) -> None:
        c = self.config
        if (
            not isinstance(x, Tensor)
            or not x.is_floating_point()
            or x.ndim != 4
            or tuple(x.shape[1:]) != (c.image_channels, c.image_size, c.image_size)
        ):
            raise ValueError(
                f"x: expected images of shape (B, {c.image_channels}, {c.image_size}, "
                f"{c.image_size}), got {shape_of(x)}"
            )
        B = x.shape[0]
        if not isinstance(t, Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (B,):
            kind = f"{t.dtype} " if isinstance(t, Tensor) else ""
            raise ValueError(f"t: expected an int64 tensor of timesteps of shape ({B},), got {kind}{shape_of(t)}")
        if labels is None:
            return
        if not self.n_classes:
            raise ValueError("labels: this U-Net is unconditional (n_classes=None); pass labels=None")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (B,):
            kind = f"{labels.dtype} " if isinstance(labels, Tensor) else ""
            raise ValueError(f"labels: expected an int64 tensor of shape ({B},), got {kind}{shape_of(labels)}")
        if labels.device.type == "cpu" and B and (int(labels.min()) < 0 or int(labels.max()) > self.n_classes):
            raise ValueError(
                f"labels: expected classes in [0, {self.n_classes - 1}] or {self.n_classes} "
                f"(the null label), got values in [{int(labels.min())}, {int(labels.max())}]"
            )

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        labels: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        self._check_inputs(x, t, labels)
        self._check_context(len(x), context, mask)
        emb = self.time_mlp(_timestep_embedding(t, self.config.time_dim).to(self.conv_in.weight.dtype))  # (B, E)
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.n_classes)  # all ∅
            emb = emb + self.class_emb(labels)
        if context is not None:
            context = context.to(emb.dtype).masked_fill(~mask[..., None], 0.0)  # padding never reaches the sums
            count = mask.sum(1, keepdim=True)  # (B, 1) real tokens
            pooled = context.sum(1) / count.clamp(min=1)  # (B, context_dim), the mean over real tokens
            emb = emb + self.text_emb(pooled) * (count > 0)  # padding only: nothing added (∅)

        def attend(attn: nn.Module, cross: nn.Module, h: Tensor) -> Tensor:
            h = attn(h)
            return cross(h, context, mask) if context is not None and isinstance(cross, CrossAttention) else h

        h = self.conv_in(x)  # (B, base, H, W)
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn, cross in zip(level.res, level.attn, level.cross, strict=True):
                h = attend(attn, cross, block(h, emb))  # (B, base·mult_i, H_i, W_i)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, ·, H_i / 2, W_i / 2)
                hs.append(h)
        h = self.mid2(attend(self.mid_attn, self.mid_cross, self.mid1(h, emb)), emb)  # (B, ch, H_last, W_last)
        for i, level in enumerate(self.up):
            for block, attn, cross in zip(level.res, level.attn, level.cross, strict=True):
                h = attend(attn, cross, block(torch.cat([h, hs.pop()], dim=1), emb))  # skip connection
            if i < len(self.upsample):
                h = self.upsample[i](h)  # (B, ch, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
