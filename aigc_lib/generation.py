"""Autoregressive generation: sampling one token at a time, for any model that predicts the next token.

    p = softmax(top_k_mask(z) / T)                  the next token's distribution   sample_probs
    top-p: keep the fewest most probable tokens whose probabilities sum to >= p, renormalise
                                                    (nucleus sampling, Holtzman et al. 2020)
    x_{t+1} ~ p(· | x_{≤t}), t = T_prompt, ...      read the prompt once, then one
                                                    token at a time with a state    generate, generate_text

The protocol (`TokenModel`), which chapter 01's CharLSTM and chapter 04's GPT both follow:

    model(idx (1, T) int64, state) -> (logits (1, T, V), state)

`state` is None at the start and whatever the model carries from one call to the next (an LSTM's
(h, c), a GPT's KV cache). Two optional attributes: `vocab_size` (V; prompt ids and top_k are checked
against it) and `context_length` (the longest input the model reads, a GPT's block_size: a longer
prompt keeps its last `context_length` tokens; None or absent: any length). Nothing here knows which
model family it samples from.

Scoring any such model the same way (`sliding_window_nll`): windows of `block` tokens ending
`stride` apart, each read from a fresh state, scoring only the targets the previous window did not,
so every target after the first window is predicted from at least block − stride + 1 earlier tokens.
An LSTM scored this way and a GPT scored this way see exactly the same context.

Corrected from the source article (docs/errata.md, E3): the temperature divides the LOGITS, not the
probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from aigc_lib.checks import check_int, shape_of
from aigc_lib.runtime import eval_mode

__all__ = [
    "TokenModel",
    "check_generate_args",
    "check_token_batch",
    "generate",
    "generate_batch",
    "generate_text",
    "greedy_until_eos",
    "sample_probs",
    "sliding_window_nll",
]


class TokenModel(Protocol):
    """What `generate` samples from: an nn.Module called as `model(idx, state) -> (logits, state)`."""

    def __call__(self, idx: Tensor, state: Any = None) -> tuple[Tensor, Any]: ...

    # optional: vocab_size: int; context_length: int | None


# ---------------------------------------------------------------------------------------------
# The equation: temperature on the logits, top-k
# ---------------------------------------------------------------------------------------------


def sample_probs(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, *, top_p: float | None = None
) -> Tensor:
    """p = softmax(top_k_mask(z) / T) over the last dim, then (with top_p) the nucleus.

    T divides the LOGITS z (T < 1 sharpens, T > 1 flattens; equivalently p ∝ softmax(z)^(1/T)). The
    source article divided the probabilities instead, which is not a temperature at all. top_k keeps
    the k largest logits (ties with the k-th are kept too) and sets the rest to -inf, i.e.
    probability 0. T -> 0 (or top_k=1) gives the argmax. top_p in (0, 1] (Holtzman et al., ICLR 2020,
    "nucleus sampling"): keep the most probable tokens, in order, until their probabilities sum to at
    least top_p (always at least one), zero the rest and renormalise — a cut that adapts to how sure
    the model is, where top_k keeps a fixed number."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim < 1 or logits.shape[-1] < 1:
        kind = f"{logits.dtype} " if isinstance(logits, Tensor) else ""
        raise ValueError(f"logits: expected a floating-point tensor of shape (..., V), got {kind}{shape_of(logits)}")
    _check_sampling(temperature, top_k, logits.shape[-1], top_p)
    return _sample_probs(logits, temperature, top_k, top_p)


def _sample_probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None = None) -> Tensor:
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # the k-th largest logit  (..., 1)
        logits = logits.masked_fill(logits < kth, -math.inf)  # keep z_i ≥ z_(k)
    probs = torch.softmax(logits / temperature, dim=-1)  # p_i = exp(z_i/T) / Σ_j exp(z_j/T)
    if top_p is None or top_p >= 1:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # the mass of the more probable tokens
    keep_sorted = before < top_p  # the first token always (before = 0), then until the mass reaches top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(-1, keepdim=True)


def _check_sampling(temperature: object, top_k: object, vocab_size: int | None, top_p: object = None) -> None:
    """T: a finite number > 0; top_k: None or an int in [1, V] (any int >= 1 when V is unknown);
    top_p: None or a number in (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(
            f"temperature: expected a finite number > 0, got {temperature!r} (for greedy decoding use top_k=1)"
        )
    if top_k is not None and vocab_size is not None:
        check_int("top_k", top_k, 1, vocab_size)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p: expected a number in (0, 1] (1 keeps every token), got {top_p!r}")


# ---------------------------------------------------------------------------------------------
# Streaming generation with a carried state
# ---------------------------------------------------------------------------------------------


def _prompt_ids(prompt_ids: object, vocab_size: int | None) -> list[int]:
    if isinstance(prompt_ids, Tensor):
        if prompt_ids.dtype not in (torch.int64, torch.int32) or prompt_ids.ndim != 1:
            raise ValueError(
                f"prompt_ids: expected a 1-D integer tensor or list of ints, got {prompt_ids.dtype} {shape_of(prompt_ids)}"
            )
        ids = prompt_ids.tolist()
    elif isinstance(prompt_ids, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt_ids):
        ids = list(prompt_ids)
    else:
        raise ValueError(f"prompt_ids: expected a 1-D integer tensor or list of ints, got {type(prompt_ids).__name__}")
    if not ids:
        raise ValueError("prompt_ids: expected at least one id (the model needs a token to start from, e.g. a newline)")
    if vocab_size is not None and not all(0 <= i < vocab_size for i in ids):
        raise ValueError(f"prompt_ids: expected ids in [0, {vocab_size}), got min {min(ids)} max {max(ids)}")
    return ids


def check_generate_args(
    model: object,
    prompt_ids: object,
    max_new_tokens: object,
    temperature: object = 1.0,
    top_k: object = None,
    generator: object = None,
    top_p: object = None,
) -> list[int]:
    """The checks of `generate`, for a model family's own sampler: returns the prompt as a list of ids."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module (e.g. CharLSTM), got {type(model).__name__}")
    vocab_size = getattr(model, "vocab_size", None)
    ids = _prompt_ids(prompt_ids, vocab_size)
    check_int("max_new_tokens", max_new_tokens, 0)
    _check_sampling(temperature, top_k, vocab_size, top_p)  # V unknown: top_k is checked at the first token
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return ids


def generate(
    model: nn.Module,
    prompt_ids: Tensor | Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    *,
    top_p: float | None = None,
    cache: bool = True,
) -> Iterator[int]:
    """Stream `max_new_tokens` sampled ids, one at a time (the arguments are checked at the call).

    The prompt is read ONCE (one forward over it gives the state and the logits of its last
    position); after that each new token is fed alone with the carried state, O(1) work per token —
    never re-reading the whole context. `model(idx (1, T), state) -> (logits (1, T, V), state)` (see
    the module docstring); `generator` makes sampling reproducible (it is used on its own device).
    cache=False: the slow way, for comparison — every new token re-reads the whole context (its last
    `context_length` tokens) from a fresh state; same sampling, so the same tokens up to rounding.
    top_p: nucleus sampling (`sample_probs`)."""
    ids = check_generate_args(model, prompt_ids, max_new_tokens, temperature, top_k, generator, top_p)
    return _generate(model, ids, max_new_tokens, temperature, top_k, generator, cache, top_p)


def _f32(t: Tensor) -> Tensor:
    """bf16/fp16 logits (autocast) -> float32 for the softmax; float32/float64 stay as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _eval_step(model: nn.Module, idx: Tensor, state):
    """One forward in eval mode, restoring every setting right after (nothing leaks past a yield).

    On CPU, oneDNN's LSTM kernel spends ~20 ms setting up each call, ten times the work of one token
    at H = 256, so single-token steps use torch's native kernel (same results)."""
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn and idx.device.type != "cpu"
    try:
        with eval_mode(model):
            return model(idx, state)
    finally:
        torch.backends.mkldnn.enabled = onednn


@torch.no_grad()  # torch re-enters no_grad on every resumption of a generator: grad mode never leaks
def _generate(model, ids, max_new_tokens, temperature, top_k, generator, cache=True, top_p=None) -> Iterator[int]:
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    context = getattr(model, "context_length", None)  # a GPT reads at most its block
    tokens = ids[-context:] if context else list(ids)
    logits, state = _eval_step(model, torch.tensor([tokens], device=device), None)  # read the prompt once
    if top_k is not None and getattr(model, "vocab_size", None) is None:  # V is known now
        check_int("top_k", top_k, 1, logits.shape[-1])
    for i in range(max_new_tokens):
        probs = _sample_probs(_f32(logits[0, -1]), temperature, top_k, top_p)  # (V,)
        if generator is not None:
            probs = probs.to(generator.device)
        token = torch.multinomial(probs, 1, generator=generator).to(device)  # (1,)
        yield int(token)
        if i + 1 == max_new_tokens:
            break
        if cache:  # feed only the new token, with the carried state
            logits, state = _eval_step(model, token.view(1, 1), state)  # (1, 1, V)
        else:  # re-read the whole (cropped) context from scratch
            tokens.append(int(token))
            window = tokens[-context:] if context else tokens
            logits, _ = _eval_step(model, torch.tensor([window], device=device), None)


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    prompt_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    *,
    top_p: float | None = None,
) -> Tensor:
    """`generate` for B prompts at once: prompt_ids (B, T0) int64 -> (B, max_new_tokens) sampled ids.

    One forward reads all prompts, then every step feeds the B new tokens with the carried state, so B
    texts cost about as many forward calls as one (the model must take a batch with its state, as the
    GPT's KV cache and the LSTM's (h, c) do). Each row samples as `generate` would, from one generator."""
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dtype != torch.int64 or prompt_ids.ndim != 2:
        raise ValueError(f"prompt_ids: expected an int64 tensor (B, T0), got {shape_of(prompt_ids)}")
    check_generate_args(model, prompt_ids[0], max_new_tokens, temperature, top_k, generator, top_p)
    _prompt_ids(prompt_ids.flatten(), getattr(model, "vocab_size", None))  # every row's ids in range
    device = next(model.parameters()).device
    context = getattr(model, "context_length", None)
    tokens = prompt_ids[:, -context:] if context else prompt_ids
    out = torch.empty(len(prompt_ids), max_new_tokens, dtype=torch.int64, device=device)
    if max_new_tokens == 0:
        return out
    logits, state = _eval_step(model, tokens.to(device), None)
    for i in range(max_new_tokens):
        probs = _sample_probs(_f32(logits[:, -1]), temperature, top_k, top_p)  # (B, V)
        if generator is not None:
            probs = probs.to(generator.device)
        out[:, i] = torch.multinomial(probs, 1, generator=generator).to(device)[:, 0]
        if i + 1 < max_new_tokens:
            logits, state = _eval_step(model, out[:, i : i + 1], state)
    return out


def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    n: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    include_prompt: bool = True,
    *,
    top_p: float | None = None,
) -> str:
    """`prompt` followed by `n` sampled characters (only the new ones with include_prompt=False).
    `tokenizer`: a CharTokenizer (encode/decode); characters are joined as they are, spaces included."""
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "decode"):
        raise ValueError(
            f"tokenizer: expected an object with encode/decode (CharTokenizer), got {type(tokenizer).__name__}"
        )
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt: expected a non-empty str, got {prompt!r}")
    new = list(generate(model, tokenizer.encode(prompt), n, temperature, top_k, generator, top_p=top_p))
    text = tokenizer.decode(new)
    return prompt + text if include_prompt else text


# ---------------------------------------------------------------------------------------------
# Evaluation under a fixed context: the same ruler for every TokenModel
# ---------------------------------------------------------------------------------------------


def sliding_window_nll(model: nn.Module, ids: Tensor, block: int, stride: int, batch_size: int = 32) -> float:
    """Mean NLL (nats per token) of every target ids[1:], each predicted from a window of at most
    `block` tokens: windows end `stride` tokens apart and each scores only its last `stride` targets
    (the first window scores all of its own), so every target after the first window has at least
    block − stride + 1 tokens of context and every target is scored exactly once.

    The standard fixed-length evaluation of GPT-style models (Hugging Face's "perplexity of
    fixed-length models"); for a recurrent model it means a zero state at the start of every window,
    i.e. the same context as a GPT with context `block`. model: a TokenModel called as model(x, None)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module following TokenModel, got {type(model).__name__}")
    check_int("block", block)
    check_int("stride", stride, high=block)
    check_int("batch_size", batch_size)
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 1 or len(ids) < block + 1:
        raise ValueError(
            f"ids: expected a 1-D int64 tensor of at least block + 1 = {block + 1} ids, got {shape_of(ids)}"
        )
    # targets ids[1..last]; a window ending at e reads ids[e-block:e] and predicts ids[e-block+1:e+1]
    last = len(ids) - 1
    ends = list(range(block, last, stride)) + [last]
    first_new = [0] + [block - (e - p) for p, e in zip(ends, ends[1:], strict=False)]  # first offset not yet scored
    device = next(model.parameters()).device
    offsets = torch.arange(block)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(ends), batch_size):
            e = torch.tensor(ends[i : i + batch_size])  # (W,)
            window = (e[:, None] - block + offsets).to(ids.device)  # (W, block) input positions
            x, y = ids[window].to(device), ids[window + 1].to(device)
            logits, _ = model(x, None)  # (W, block, V)
            nll = torch.nn.functional.cross_entropy(_f32(logits).flatten(0, 1), y.flatten(), reduction="none")
            keep = offsets[None, :] >= torch.tensor(first_new[i : i + batch_size])[:, None]  # (W, block)
            total += nll.view(len(e), block)[keep.to(device)].double().sum()
    return float(total) / last


# ---------------------------------------------------------------------------------------------
# Encoder–decoder models (chapter 01's recurrent one with attention, chapter 04's Transformer)
# ---------------------------------------------------------------------------------------------


def check_token_batch(name: str, ids: object, max_len: int) -> Tensor:
    """An int64 batch of token ids (B, L) with 1 <= L <= max_len, or a ValueError naming `name`."""
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 2 or not 0 < ids.shape[1] <= max_len:
        raise ValueError(
            f"{name}: expected an int64 tensor (B, L) with 1 <= L <= max_len={max_len}, got {shape_of(ids)}"
        )
    return ids


def greedy_until_eos(
    next_ids: Callable[[Tensor], Tensor], batch: int, steps: int, device: torch.device, bos: int, eos: int, pad: int
) -> Tensor:
    """Greedy decoding loop of an encoder–decoder: start from `bos`, append next_ids(out) (B,) — the
    argmax given the tokens so far (B, t) — at most `steps` times, stop when every row has written
    `eos`. Returns (B, ≤ steps) ids without the BOS, `pad` after a row's EOS."""
    out = torch.full((batch, 1), bos, dtype=torch.int64, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(steps):
        nxt = next_ids(out)  # y_t = argmax p(y | y_<t, src)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return out[:, 1:]
