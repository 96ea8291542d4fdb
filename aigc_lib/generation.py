"""Autoregressive generation: sampling one token at a time, for any model that predicts the next token.

    p = softmax(top_k_mask(z) / T)                  the next token's distribution   sample_probs
    x_{t+1} ~ p(· | x_{≤t}), t = T_prompt, ...      read the prompt once, then one
                                                    token at a time with a state    generate, generate_text

The protocol (`TokenModel`), which chapter 01's CharLSTM and chapter 04's GPT both follow:

    model(idx (1, T) int64, state) -> (logits (1, T, V), state)

`state` is None at the start and whatever the model carries from one call to the next (an LSTM's
(h, c), a GPT's KV cache). Two optional attributes: `vocab_size` (V; prompt ids and top_k are checked
against it) and `context_length` (the longest input the model reads, a GPT's block_size: a longer
prompt keeps its last `context_length` tokens; None or absent: any length). Nothing here knows which
model family it samples from.

Corrected from the source article (docs/errata.md, E3): the temperature divides the LOGITS, not the
probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from aigc_lib.checks import check_int, shape_of
from aigc_lib.runtime import eval_mode

__all__ = ["TokenModel", "check_generate_args", "generate", "generate_text", "sample_probs"]


class TokenModel(Protocol):
    """What `generate` samples from: an nn.Module called as `model(idx, state) -> (logits, state)`."""

    def __call__(self, idx: Tensor, state: Any = None) -> tuple[Tensor, Any]: ...

    # optional: vocab_size: int; context_length: int | None


# ---------------------------------------------------------------------------------------------
# The equation: temperature on the logits, top-k
# ---------------------------------------------------------------------------------------------


def sample_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """p = softmax(top_k_mask(z) / T) over the last dim.

    T divides the LOGITS z (T < 1 sharpens, T > 1 flattens; equivalently p ∝ softmax(z)^(1/T)). The
    source article divided the probabilities instead, which is not a temperature at all. top_k keeps
    the k largest logits (ties with the k-th are kept too) and sets the rest to -inf, i.e.
    probability 0. T -> 0 (or top_k=1) gives the argmax."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim < 1 or logits.shape[-1] < 1:
        kind = f"{logits.dtype} " if isinstance(logits, Tensor) else ""
        raise ValueError(f"logits: expected a floating-point tensor of shape (..., V), got {kind}{shape_of(logits)}")
    _check_sampling(temperature, top_k, logits.shape[-1])
    return _sample_probs(logits, temperature, top_k)


def _sample_probs(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # the k-th largest logit  (..., 1)
        logits = logits.masked_fill(logits < kth, -math.inf)  # keep z_i ≥ z_(k)
    return torch.softmax(logits / temperature, dim=-1)  # p_i = exp(z_i/T) / Σ_j exp(z_j/T)


def _check_sampling(temperature: object, top_k: object, vocab_size: int | None) -> None:
    """T: a finite number > 0; top_k: None or an int in [1, V] (any int >= 1 when V is unknown)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(
            f"temperature: expected a finite number > 0, got {temperature!r} (for greedy decoding use top_k=1)"
        )
    if top_k is not None and vocab_size is not None:
        check_int("top_k", top_k, 1, vocab_size)


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
) -> list[int]:
    """The checks of `generate`, for a model family's own sampler: returns the prompt as a list of ids."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module (e.g. CharLSTM), got {type(model).__name__}")
    vocab_size = getattr(model, "vocab_size", None)
    ids = _prompt_ids(prompt_ids, vocab_size)
    check_int("max_new_tokens", max_new_tokens, 0)
    _check_sampling(temperature, top_k, vocab_size)  # V unknown: top_k is checked at the first token
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
    cache: bool = True,
) -> Iterator[int]:
    """Stream `max_new_tokens` sampled ids, one at a time (the arguments are checked at the call).

    The prompt is read ONCE (one forward over it gives the state and the logits of its last
    position); after that each new token is fed alone with the carried state, O(1) work per token —
    never re-reading the whole context. `model(idx (1, T), state) -> (logits (1, T, V), state)` (see
    the module docstring); `generator` makes sampling reproducible (it is used on its own device).
    cache=False: the slow way, for comparison — every new token re-reads the whole context (its last
    `context_length` tokens) from a fresh state; same sampling, so the same tokens up to rounding."""
    ids = check_generate_args(model, prompt_ids, max_new_tokens, temperature, top_k, generator)
    return _generate(model, ids, max_new_tokens, temperature, top_k, generator, cache)


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
def _generate(model, ids, max_new_tokens, temperature, top_k, generator, cache=True) -> Iterator[int]:
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    context = getattr(model, "context_length", None)  # a GPT reads at most its block
    tokens = ids[-context:] if context else list(ids)
    logits, state = _eval_step(model, torch.tensor([tokens], device=device), None)  # read the prompt once
    if top_k is not None and getattr(model, "vocab_size", None) is None:  # V is known now
        check_int("top_k", top_k, 1, logits.shape[-1])
    for i in range(max_new_tokens):
        probs = _sample_probs(_f32(logits[0, -1]), temperature, top_k)  # (V,)
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


def generate_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    n: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    include_prompt: bool = True,
) -> str:
    """`prompt` followed by `n` sampled characters (only the new ones with include_prompt=False).
    `tokenizer`: a CharTokenizer (encode/decode); characters are joined as they are, spaces included."""
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "decode"):
        raise ValueError(
            f"tokenizer: expected an object with encode/decode (CharTokenizer), got {type(tokenizer).__name__}"
        )
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt: expected a non-empty str, got {prompt!r}")
    new = list(generate(model, tokenizer.encode(prompt), n, temperature, top_k, generator))
    text = tokenizer.decode(new)
    return prompt + text if include_prompt else text
