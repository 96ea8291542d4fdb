"""A small μ-law WaveNet (van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016).

An autoregressive model of the waveform itself, one sample at a time: p(x_t | x_<t) is a 256-way
softmax over μ-law codes. Causal dilated convolutions (dilations 1, 2, 4, ... doubling per layer)
reach far into the past with few layers; each layer is a gated unit tanh(W_f * x) ⊙ σ(W_g * x) with a
residual path to the next layer and a skip path to the output.

Generation needs one forward pass per sample. Run naively, each pass recomputes every layer over the
whole receptive field. `generate(..., cached=True)` keeps, for each layer, the inputs it saw over the
last `dilation` steps (a queue: "Fast WaveNet", Paine et al., 2016), so each new sample costs one
column of each layer — chapter 04's KV cache for audio. Both paths draw the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, fit


@dataclass(frozen=True)
class WaveNetConfig:
    classes: int = 256  # μ-law codes
    residual: int = 32
    skip: int = 64
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128) * 2
    kernel: int = 2


def receptive_field(dilations: tuple[int, ...] | list[int], kernel: int = 2) -> int:
    """Samples one output sees: itself plus (kernel - 1) · dilation more per layer."""
    return 1 + (kernel - 1) * sum(dilations)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int = 1) -> Tensor:
    """A causal dilated convolution: x (B, C_in, T), weight (C_out, C_in, k) -> (B, C_out, T), where output t
    reads x[t - (k - 1)·d], ..., x[t - d], x[t] (weight[..., -1] on x[t]); the missing past is zeros."""
    if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"x: expected a float tensor (B, C_in, T), got {shape_of(x)}")
    if not isinstance(weight, Tensor) or weight.ndim != 3 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected (C_out, {x.shape[1]}, k), got {shape_of(weight)}")
    check_int("dilation", dilation)
    return F.conv1d(F.pad(x, ((weight.shape[2] - 1) * dilation, 0)), weight, bias, dilation=dilation)


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig = WaveNetConfig()):
        super().__init__()
        c = self.config = config
        if c.kernel != 2:
            raise ValueError(f"kernel: the cached generator supports kernel 2, got {c.kernel}")
        self.embed = nn.Embedding(c.classes, c.residual)  # = a one-hot input through a 1x1 convolution
        self.dilated = nn.ModuleList(
            [nn.Conv1d(c.residual, 2 * c.residual, c.kernel, dilation=d) for d in c.dilations]
        )  # filter and gate halves in one convolution
        self.res = nn.ModuleList([nn.Conv1d(c.residual, c.residual, 1) for _ in c.dilations])
        self.skip = nn.ModuleList([nn.Conv1d(c.residual, c.skip, 1) for _ in c.dilations])
        self.out1, self.out2 = nn.Conv1d(c.skip, c.skip, 1), nn.Conv1d(c.skip, c.classes, 1)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.config.dilations, self.config.kernel)

    def forward(self, codes: Tensor) -> Tensor:
        """codes (B, T) ints -> logits (B, classes, T); column t predicts codes[:, t + 1] and sees codes[:, :t + 1]."""
        return self._forward(codes)[0]

    def _forward(self, codes: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The logits and each layer's input (B, R, T): what the cached generator's queues hold."""
        x = self.embed(codes).transpose(1, 2)  # (B, R, T)
        skips, inputs = 0, []
        for conv, res, skip, d in zip(self.dilated, self.res, self.skip, self.config.dilations, strict=True):
            inputs.append(x)
            f, g = causal_conv1d(x, conv.weight, conv.bias, d).chunk(2, dim=1)
            h = torch.tanh(f) * torch.sigmoid(g)
            x, skips = x + res(h), skips + skip(h)
        return self.out2(F.relu(self.out1(F.relu(skips)))), inputs

    def _fused(self) -> tuple[list[tuple[Tensor, ...]], Tensor, Tensor]:
        """The weights as matrices for one column: per layer [x[t - d], x[t]] (B, 2R) -> filter|gate (B, 2R)
        and h (B, R) -> residual (B, R); every layer's skip map stacked into one (L·R, S) matrix, applied once
        to all the gated outputs. Fewer, larger products make a step cheaper."""
        layers = []
        for conv, res in zip(self.dilated, self.res, strict=True):
            w = conv.weight  # (2R, R, 2): tap 0 reads x[t - d], tap 1 reads x[t]
            layers.append((torch.cat([w[:, :, 0].T, w[:, :, 1].T]), conv.bias, res.weight[:, :, 0].T, res.bias))
        skip_w = torch.cat([s.weight[:, :, 0].T for s in self.skip])  # (L·R, S)
        skip_b = sum(s.bias for s in self.skip)
        return layers, skip_w, skip_b

    def _step(self, code: Tensor, queues: list[Tensor], t: int, fused) -> Tensor:
        """One sample through every layer: queues[i] (B, R, d_i) holds layer i's inputs of the last d_i steps."""
        layers, skip_w, skip_b = fused
        x = self.embed(code)  # (B, R)
        gated = []
        for queue, d, (w_fg, b_fg, w_res, b_res) in zip(queues, self.config.dilations, layers, strict=True):
            fg = torch.addmm(b_fg, torch.cat([queue[:, :, t % d], x], dim=1), w_fg)  # reads the input d steps ago,
            queue[:, :, t % d] = x  # then stores this one in its slot
            f, g = fg.chunk(2, dim=1)
            h = torch.tanh(f) * torch.sigmoid(g)
            gated.append(h)
            x = torch.addmm(b_res, h, w_res).add_(x)
        skips = torch.addmm(skip_b, torch.cat(gated, dim=1), skip_w)
        h = F.relu(F.linear(F.relu(skips), self.out1.weight[:, :, 0], self.out1.bias))
        return F.linear(h, self.out2.weight[:, :, 0], self.out2.bias)  # (B, classes)


@torch.no_grad()
def generate(
    model: WaveNet,
    n: int,
    prompt: Tensor,
    *,
    cached: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue `prompt` (B, P) codes by `n` samples -> (B, n). Sampling inverts the CDF at uniforms drawn
    from `generator` before the loop, so both paths draw the same samples wherever their probabilities
    agree. Naive: each step runs the network on the last receptive-field inputs; cached: one column per
    layer, from queues filled by one parallel pass over the prompt."""
    if not isinstance(model, WaveNet):
        raise ValueError(f"model: expected a WaveNet, got {type(model).__name__}")
    check_int("n", n)
    if not isinstance(prompt, Tensor) or prompt.ndim != 2 or prompt.is_floating_point() or prompt.shape[1] < 1:
        raise ValueError(f"prompt: expected integer codes (B, P >= 1), got {shape_of(prompt)}")
    temperature = check_number("temperature", temperature, inclusive=False)
    device = model.embed.weight.device
    prompt = prompt.to(device)
    B = len(prompt)
    uniforms = torch.rand(n, B, 1, generator=generator, dtype=torch.float64).to(device)
    was_training = model.training
    model.eval()
    try:
        codes = prompt
        if cached:  # one parallel pass over the prompt fills every layer's queue with its last d inputs
            P = prompt.shape[1]
            logits, inputs = model._forward(prompt)
            logits = logits[:, :, -1]
            queues = []
            for x, d in zip(inputs, model.config.dilations, strict=True):
                queue = torch.zeros(B, x.shape[1], d, device=device, dtype=x.dtype)  # zeros: the padding before t = 0
                for t in range(max(0, P - d), P):
                    queue[:, :, t % d] = x[:, :, t]
                queues.append(queue)
            fused = model._fused()
        out = []
        for i in range(n):
            if not cached:
                logits = model(codes[:, -model.receptive_field :])[:, :, -1]
            probs = torch.softmax(logits.double() / temperature, dim=-1)
            nxt = torch.searchsorted(probs.cumsum(-1), uniforms[i]).clamp(max=probs.shape[-1] - 1).squeeze(-1)
            out.append(nxt)
            if cached:
                logits = model._step(nxt, queues, prompt.shape[1] + i, fused)
            else:
                codes = torch.cat([codes, nxt[:, None]], dim=1)
        return torch.stack(out, dim=1)
    finally:
        model.train(was_training)


def nll_per_sample(model: WaveNet, codes: Tensor) -> Tensor:
    """Mean negative log-likelihood (nats per sample) of codes[:, 1:] given what precedes them."""
    logits = model(codes[:, :-1])
    return F.cross_entropy(logits, codes[:, 1:])


def train_wavenet(
    model: WaveNet,
    codes: Tensor,
    steps: int,
    *,
    batch_size: int = 8,
    crop: int = 2048,
    lr: float = 2e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Random crops of `crop` + 1 samples from `codes` (a 1-D tensor of μ-law codes, the corpus joined),
    drawn from a generator seeded by (seed, step) so a resumed run is exact; the loss counts only
    predictions whose receptive field lies inside the crop. History: "loss" (nats per sample)."""
    if not isinstance(model, WaveNet):
        raise ValueError(f"model: expected a WaveNet, got {type(model).__name__}")
    if not isinstance(codes, Tensor) or codes.ndim != 1 or codes.is_floating_point():
        raise ValueError(f"codes: expected a 1-D integer tensor of μ-law codes, got {shape_of(codes)}")
    check_int("steps", steps), check_int("batch_size", batch_size), check_int("seed", seed, low=0)
    rf = model.receptive_field
    check_int("crop", crop, low=rf + 1, high=len(codes) - 1)
    codes = codes.cpu()

    def batches(step: int) -> Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(codes) - crop - 1, (batch_size,), generator=g)
        return torch.stack([codes[s : s + crop + 1] for s in starts.tolist()])

    def loss_fn(m: WaveNet, batch: Tensor) -> Tensor:
        logits = m(batch[:, :-1])[:, :, rf - 1 :]  # columns that see a full receptive field of real samples
        return F.cross_entropy(logits, batch[:, rf:])

    optimizer, scheduler = adamw_warmup_cosine(
        model, check_number("lr", lr, inclusive=False), steps, min(100, steps // 10)
    )
    run.setdefault("desc", "WaveNet")
    return fit(model, optimizer, batches, loss_fn, steps, scheduler=scheduler, grad_clip=1.0, **run)
