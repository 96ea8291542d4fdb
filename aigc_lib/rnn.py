"""Chapter 01 — recurrent networks: the RNN, LSTM and GRU equations by hand, a fast char-level LSTM,
and the encoder–decoder with additive attention that leads to chapter 04's Transformer.

Teaching path (the sources' symbols; weights stored as torch stores them, W_xh: (H, D), W_hh: (H, H),
so a batch of row vectors x: (B, D) is multiplied as `x @ W_xh.T`):

    RNN    h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)                  rnn_cell
           y_t = W_hy h_t + b_y          (logits; g = softmax is applied by the loss)  rnn_output
    LSTM   i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)        input gate
           f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)        forget gate
           o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)        output gate
           c̃_t = tanh(W_xc x_t + W_hc h_{t-1} + b_c)     candidate cell
           c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t
           h_t = o_t ⊙ tanh(c_t)                                        lstm_cell
    GRU    r_t = σ(W_xr x_t + W_hr h_{t-1} + b_r)        reset gate
           z_t = σ(W_xz x_t + W_hz h_{t-1} + b_z)        update gate
           n_t = tanh(W_xn x_t + b_xn + r_t ⊙ (W_hn h_{t-1} + b_hn))    candidate state
           h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}                        gru_cell
           (Cho et al., 2014, in the form nn.GRU and cuDNN compute: r_t multiplies W_hn h_{t-1} + b_hn,
           which is why the n gate keeps its two biases apart; the paper puts r_t before the product)

    rnn_cell_backward / rnn_bptt -- backpropagation through time written out by hand (autograd-checked)
    rnn_unroll / lstm_unroll / gru_unroll -- one layer over a sequence (T, B, D); lstm_unroll also
                                    returns the gates, for plotting what the LSTM does
    rnn_forward / lstm_forward   -- stacked layers, same inputs and outputs as nn.RNN / nn.LSTM
    *_params_from_torch / *_params_to_torch -- weight mapping to and from nn.RNN / nn.LSTM / nn.GRU

Encoder–decoder with additive attention (Bahdanau, Cho & Bengio, 2015), the bridge to chapter 04:

    annotations  h_s = [h→_s; h←_s]      bidirectional GRU over the source (PAD not read)
    s_0 = tanh(W_s h←_1)                  the decoder starts from the backward summary of the source
    e_ts = vᵀ tanh(W_q s_{t-1} + W_k h_s),  α_t = softmax over real source positions of e_t·
    c_t = Σ_s α_ts h_s                                                      AdditiveAttention
    s_t = GRU([E y_{t-1}; c_t], s_{t-1}),  logits_t = W_o [s_t; c_t; E y_{t-1}]   AttentionSeq2Seq
    Same interface as transformer.Seq2SeqTransformer (forward, greedy, config.max_len), so chapter
    04's `train_seq2seq` and digit-reversal task train it; `attention_maps` shows its alignments.

Fast path: `CharLSTM` = Embedding -> nn.LSTM (cuDNN on GPU) -> dropout -> Linear, trained with
truncated backpropagation through time by the shared `training.fit` loop (`train_char_lstm`), scored
in nats per character (`evaluate_nats_per_char`), sampled token by token by the shared
`generation.generate` / `generate_text` (re-exported here) with the temperature applied to the LOGITS
(`sample_probs`). Tests pin the fast path to the teaching path (tests/test_rnn.py).

Corrected from the source article's example (docs/errata.md, E3/E5): temperature divides the logits,
not the probabilities; the model returns logits at every step, not just the last; the training loss
stays a tensor (the loop never calls `.item()` per step, let alone `.backward()` on a float).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from aigc_lib.checks import check_int, shape_of
from aigc_lib.generation import check_token_batch, generate, generate_text, greedy_until_eos, sample_probs
from aigc_lib.runtime import autocast, eval_mode
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, fit, warmup_cosine

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "AdditiveAttention",
    "AttentionSeq2Seq",
    "AttentionSeq2SeqConfig",
    "CharLSTM",
    "CharLSTMConfig",
    "RNNGrads",
    "TBPTTBatches",
    "char_lstm_trace",
    "evaluate_nats_per_char",
    "generate",
    "generate_text",
    "gru_cell",
    "gru_cell_with_gates",
    "gru_params_from_torch",
    "gru_params_to_torch",
    "gru_unroll",
    "init_gru_params",
    "init_lstm_params",
    "init_rnn_params",
    "lstm_cell",
    "lstm_cell_with_gates",
    "lstm_forward",
    "lstm_params_from_torch",
    "lstm_params_to_torch",
    "lstm_unroll",
    "rnn_bptt",
    "rnn_cell",
    "rnn_cell_backward",
    "rnn_forward",
    "rnn_output",
    "rnn_params_from_torch",
    "rnn_params_to_torch",
    "rnn_unroll",
    "sample_probs",
    "tbptt_batches",
    "train_char_lstm",
    "warmup_cosine",
]

Params = dict[str, Tensor]
LSTMState = tuple[Tensor, Tensor]  # (h, c), each (num_layers, B, H)

RNN_KEYS = ("W_xh", "W_hh", "b_h")
TORCH_GATE_ORDER = ("i", "f", "c", "o")  # rows of weight_ih_l{k}: torch's [i, f, g, o]; its g is our c̃
LSTM_KEYS = tuple(k for g in ("i", "f", "o", "c") for k in (f"W_x{g}", f"W_h{g}", f"b_{g}"))
TORCH_GRU_GATE_ORDER = ("r", "z", "n")  # rows of nn.GRU's weight_ih_l{k} / weight_hh_l{k}
GRU_KEYS = ("W_xr", "W_hr", "b_r", "W_xz", "W_hz", "b_z", "W_xn", "W_hn", "b_xn", "b_hn")
PAD, BOS, EOS = 0, 1, 2  # special token ids of AttentionSeq2Seq (the same as chapter 04's seq2seq)


def _randu(shape: tuple[int, ...], bound: float, generator, dtype, device) -> Tensor:
    """U(-bound, bound): torch's default init for nn.RNN / nn.LSTM / nn.Linear with bound = 1/sqrt(H)."""
    return (torch.rand(shape, generator=generator, dtype=dtype, device=device) * 2 - 1) * bound


# ---------------------------------------------------------------------------------------------
# 1. Vanilla RNN: forward, hand-written backward, backpropagation through time
# ---------------------------------------------------------------------------------------------


def init_rnn_params(
    input_size: int,
    hidden_size: int,
    output_size: int | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Params:
    """{W_xh (H, D), W_hh (H, H), b_h (H,)} (+ W_hy (V, H), b_y (V,) with output_size=V), each
    drawn from U(-1/√H, 1/√H) as torch initialises nn.RNN and nn.Linear. Plain tensors without
    grad: call `.requires_grad_()` on them to train or gradcheck."""
    D, H = check_int("input_size", input_size), check_int("hidden_size", hidden_size)
    if output_size is not None:
        check_int("output_size", output_size)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    k = 1 / math.sqrt(H)
    shapes = {"W_xh": (H, D), "W_hh": (H, H), "b_h": (H,)}
    if output_size is not None:
        shapes |= {"W_hy": (output_size, H), "b_y": (output_size,)}
    return {name: _randu(s, k, generator, dtype, device) for name, s in shapes.items()}


def rnn_cell(x: Tensor, h_prev: Tensor, W_xh: Tensor, W_hh: Tensor, b_h: Tensor) -> Tensor:
    """One RNN step: h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h).

    x: (B, D) or (D,); h_prev: (B, H) or (H,); W_xh: (H, D); W_hh: (H, H); b_h: (H,). Returns h_t like h_prev.
    """
    W_xh = _check_float("W_xh", W_xh, (None, None))
    H, D = W_xh.shape
    x = _check_vec_or_batch("x", x, D, None)
    _check_vec_or_batch("h_prev", h_prev, H, tuple(x.shape[:-1]))
    _check_float("W_hh", W_hh, (H, H))
    _check_float("b_h", b_h, (H,))
    return _rnn_step(x, h_prev, W_xh, W_hh, b_h)


def _rnn_step(x: Tensor, h_prev: Tensor, W_xh: Tensor, W_hh: Tensor, b_h: Tensor) -> Tensor:
    a = x @ W_xh.T + h_prev @ W_hh.T + b_h  # a_t = W_xh x_t + W_hh h_{t-1} + b_h   (B, H)
    return torch.tanh(a)  # h_t = tanh(a_t)


def rnn_output(h: Tensor, W_hy: Tensor, b_y: Tensor) -> Tensor:
    """Logits y_t = W_hy h_t + b_y; h: (..., H), W_hy: (V, H), b_y: (V,) -> (..., V).

    The sources write y_t = g(W_hy h_t + b_y) with g = softmax; we return the logits and let the loss
    (`F.cross_entropy`) apply log-softmax, which is the numerically safe way to do it."""
    W_hy = _check_float("W_hy", W_hy, (None, None))
    V, H = W_hy.shape
    _check_float("b_y", b_y, (V,))
    if not isinstance(h, Tensor) or not h.is_floating_point() or h.ndim < 1 or h.shape[-1] != H:
        raise ValueError(f"h: expected a floating-point tensor of shape (..., {H}), got {shape_of(h)}")
    return h @ W_hy.T + b_y  # (..., V)


def rnn_cell_backward(
    dh: Tensor, x: Tensor, h_prev: Tensor, h: Tensor, W_xh: Tensor, W_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of one RNN step, given dh = ∂L/∂h_t (B, H) and the forward's x, h_{t-1}, h_t.

    With a = W_xh x + W_hh h_{t-1} + b_h and h_t = tanh(a):
        da        = dh ⊙ (1 - h_t²)            (tanh'(a) = 1 - tanh(a)²)
        dx        = da W_xh                    (B, D)
        dh_prev   = da W_hh                    (B, H)  -- the term that vanishes or explodes over time
        dW_xh     = Σ_batch da ⊗ x             (H, D)
        dW_hh     = Σ_batch da ⊗ h_{t-1}       (H, H)
        db_h      = Σ_batch da                 (H,)
    Returns (dx, dh_prev, dW_xh, dW_hh, db_h). Unbatched (H,)/(D,) inputs work too.
    """
    W_xh = _check_float("W_xh", W_xh, (None, None))
    H, D = W_xh.shape
    _check_float("W_hh", W_hh, (H, H))
    x = _check_vec_or_batch("x", x, D, None)
    lead = tuple(x.shape[:-1])
    for name, t in (("h_prev", h_prev), ("h", h), ("dh", dh)):
        _check_vec_or_batch(name, t, H, lead)
    return _rnn_step_backward(dh, x, h_prev, h, W_xh, W_hh)


def _rnn_step_backward(dh, x, h_prev, h, W_xh, W_hh):
    da = dh * (1 - h * h)  # ∂L/∂a = ∂L/∂h ⊙ (1 - h²)            (B, H)
    dx = da @ W_xh  # ∂L/∂x = W_xhᵀ da (row form: da W_xh)     (B, D)
    dh_prev = da @ W_hh  # ∂L/∂h_{t-1} = W_hhᵀ da                 (B, H)
    da2 = da.reshape(-1, da.shape[-1])  # (B, H), also for unbatched input
    dW_xh = da2.T @ x.reshape(-1, x.shape[-1])  # Σ_b da_b x_bᵀ               (H, D)
    dW_hh = da2.T @ h_prev.reshape(-1, h_prev.shape[-1])  # Σ_b da_b h_{t-1,b}ᵀ    (H, H)
    db_h = da2.sum(0)  # Σ_b da_b                                  (H,)
    return dx, dh_prev, dW_xh, dW_hh, db_h


def rnn_unroll(xs: Tensor, params: Mapping[str, Tensor], h0: Tensor | None = None) -> Tensor:
    """Run one RNN layer over a sequence: xs (T, B, D), h0 (B, H) (default zeros) -> hs (T, B, H),
    hs[t] = tanh(W_xh xs[t] + W_hh hs[t-1] + b_h) with hs[-1] read as h0 at t = 0; the last
    hidden state is hs[-1]."""
    D, H = _check_rnn_params(params)
    T, B = _check_seq(xs, D)
    if h0 is not None:
        _check_float("h0", h0, (B, H))
    return _rnn_unroll(xs, params, h0)


def _rnn_unroll(xs: Tensor, params: Mapping[str, Tensor], h: Tensor | None) -> Tensor:
    h = xs.new_zeros(xs.shape[1], params["W_hh"].shape[0]) if h is None else h  # h_0 = 0 by default  (B, H)
    hs = []
    for t in range(xs.shape[0]):
        h = _rnn_step(xs[t], h, params["W_xh"], params["W_hh"], params["b_h"])  # (B, H)
        hs.append(h)
    return torch.stack(hs)


class RNNGrads(NamedTuple):
    """What `rnn_bptt` returns: ∂L/∂(everything) for L with the given ∂L/∂h_t."""

    dxs: Tensor  # (T, B, D)  ∂L/∂x_t
    dh0: Tensor  # (B, H)     ∂L/∂h_0
    dW_xh: Tensor  # (H, D)
    dW_hh: Tensor  # (H, H)
    db_h: Tensor  # (H,)
    dhs: Tensor  # (T, B, H)  total ∂L/∂h_t (direct + through h_{t+1}): plot its norm to see it vanish


def rnn_bptt(xs: Tensor, h0: Tensor, params: Mapping[str, Tensor], dhs: Tensor) -> RNNGrads:
    """Backpropagation through time for one RNN layer, by hand.

    xs (T, B, D), h0 (B, H); dhs (T, B, H) = the loss's DIRECT gradient on each state hs[t] (e.g.
    from the output layer at step t). Runs the forward (caching the states), then walks back in time:
        δ_t  = dhs[t] + ∂L/∂hs[t] through step t+1     (total gradient reaching hs[t])
        dx_t, ∂L/∂h_{t-1}, dW_xh, dW_hh, db_h  from rnn_cell_backward(δ_t, ...)
    The weight gradients are summed over time: the same W is used at every step.
    """
    D, H = _check_rnn_params(params)
    T, B = _check_seq(xs, D)
    _check_float("h0", h0, (B, H))
    _check_float("dhs", dhs, (T, B, H))
    W_xh, W_hh = params["W_xh"], params["W_hh"]
    hs = _rnn_unroll(xs, params, h0)  # forward pass, cached: hs[t] = state after xs[t]   (T, B, H)
    dW_xh, dW_hh, db_h = torch.zeros_like(W_xh), torch.zeros_like(W_hh), torch.zeros_like(params["b_h"])
    dxs, total = torch.empty_like(xs), torch.empty_like(hs)
    dh_next = torch.zeros_like(h0)  # gradient from after the last step: none
    for t in reversed(range(T)):
        total[t] = dhs[t] + dh_next  # δ_t = direct + recurrent
        h_prev = hs[t - 1] if t > 0 else h0
        dxs[t], dh_next, dWx, dWh, db = _rnn_step_backward(total[t], xs[t], h_prev, hs[t], W_xh, W_hh)
        dW_xh += dWx  # shared weights: gradients add up over time
        dW_hh += dWh
        db_h += db
    return RNNGrads(dxs, dh_next, dW_xh, dW_hh, db_h, total)


def rnn_forward(xs: Tensor, layers: Sequence[Mapping[str, Tensor]], h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Stacked RNN, the same computation as `nn.RNN(nonlinearity='tanh')` (batch_first=False).

    xs (T, B, D); layers: one param dict per layer (layer l+1 reads layer l's hidden states);
    h0 (L, B, H) or None. Returns (out (T, B, H) = the last layer's h_t, h_n (L, B, H))."""
    sizes = _check_layers(layers, _check_rnn_params, "RNN")
    _, B = _check_seq(xs, sizes[0][0])
    L, H = len(layers), sizes[-1][1]
    if h0 is not None:
        _check_float("h0", h0, (L, B, H))
    out, h_n = xs, []
    for layer, params in enumerate(layers):
        out = _rnn_unroll(out, params, None if h0 is None else h0[layer])  # (T, B, H)
        h_n.append(out[-1])  # (B, H)
    return out, torch.stack(h_n)


# ---------------------------------------------------------------------------------------------
# 2. LSTM
# ---------------------------------------------------------------------------------------------


def _init_gated_params(keys, input_size, hidden_size, generator, dtype, device) -> Params:
    """U(-1/√H, 1/√H) tensors named `keys`, in that order: W_x* (H, D), W_h* (H, H), b_* (H,)."""
    D, H = check_int("input_size", input_size), check_int("hidden_size", hidden_size)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    k = 1 / math.sqrt(H)
    shapes = {"W_x": (H, D), "W_h": (H, H), "b_": (H,)}
    return {key: _randu(shapes[key[:3] if key.startswith("W_") else "b_"], k, generator, dtype, device) for key in keys}


def init_lstm_params(
    input_size: int,
    hidden_size: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Params:
    """The 12 LSTM tensors W_x{i,f,o,c} (H, D), W_h{i,f,o,c} (H, H), b_{i,f,o,c} (H,), drawn from
    U(-1/√H, 1/√H) as torch initialises nn.LSTM (plain tensors, no grad)."""
    return _init_gated_params(LSTM_KEYS, input_size, hidden_size, generator, dtype, device)


def lstm_cell_with_gates(
    x: Tensor, h_prev: Tensor, c_prev: Tensor, params: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One LSTM step, also returning the gates {"i", "f", "o", "c_tilde"} (each like h) for plots.

    x: (B, D) or (D,); h_prev, c_prev: (B, H) or (H,); params: see `init_lstm_params`. Returns (h_t, c_t, gates).
    """
    D, H = _check_lstm_params(params)
    x = _check_vec_or_batch("x", x, D, None)
    _check_vec_or_batch("h_prev", h_prev, H, tuple(x.shape[:-1]))
    _check_vec_or_batch("c_prev", c_prev, H, tuple(x.shape[:-1]))
    return _lstm_step(x, h_prev, c_prev, params)


def lstm_cell(x: Tensor, h_prev: Tensor, c_prev: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """One LSTM step -> (h_t, c_t); the equations are in `_lstm_step` (and the module docstring)."""
    h, c, _ = lstm_cell_with_gates(x, h_prev, c_prev, params)
    return h, c


def _lstm_step(x: Tensor, h: Tensor, c: Tensor, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    # i_t = σ(W_xi x_t + W_hi h_{t-1} + b_i)     input gate: how much of the candidate to write  (B, H)
    i = torch.sigmoid(x @ p["W_xi"].T + h @ p["W_hi"].T + p["b_i"])
    # f_t = σ(W_xf x_t + W_hf h_{t-1} + b_f)     forget gate: how much of the old cell to keep
    f = torch.sigmoid(x @ p["W_xf"].T + h @ p["W_hf"].T + p["b_f"])
    # o_t = σ(W_xo x_t + W_ho h_{t-1} + b_o)     output gate: how much of the cell to show
    o = torch.sigmoid(x @ p["W_xo"].T + h @ p["W_ho"].T + p["b_o"])
    # c̃_t = tanh(W_xc x_t + W_hc h_{t-1} + b_c)  candidate cell content
    c_tilde = torch.tanh(x @ p["W_xc"].T + h @ p["W_hc"].T + p["b_c"])
    # c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t            additive update: the gradient path that does not vanish
    c = f * c + i * c_tilde
    # h_t = o_t ⊙ tanh(c_t)                      what the next step and the next layer see
    h = o * torch.tanh(c)
    return h, c, {"i": i, "f": f, "o": o, "c_tilde": c_tilde}


def lstm_unroll(
    xs: Tensor, params: Mapping[str, Tensor], h0: Tensor | None = None, c0: Tensor | None = None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Run one LSTM layer over xs (T, B, D) from h0, c0 (B, H) (default zeros).

    Returns (hs (T, B, H), cs (T, B, H), gates {"i", "f", "o", "c_tilde"} each (T, B, H)); the final
    state is (hs[-1], cs[-1])."""
    D, H = _check_lstm_params(params)
    T, B = _check_seq(xs, D)
    for name, t in (("h0", h0), ("c0", c0)):
        if t is not None:
            _check_float(name, t, (B, H))
    return _lstm_unroll(xs, params, h0, c0)


def _lstm_unroll(
    xs: Tensor,
    params: Mapping[str, Tensor],
    h: Tensor | None,
    c: Tensor | None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    zeros = xs.new_zeros(xs.shape[1], params["W_hi"].shape[0])  # (B, H): the default initial state
    h, c = zeros if h is None else h, zeros if c is None else c
    hs, cs, gates = [], [], {k: [] for k in ("i", "f", "o", "c_tilde")}
    for t in range(xs.shape[0]):
        h, c, g = _lstm_step(xs[t], h, c, params)  # (B, H) each
        hs.append(h)
        cs.append(c)
        for k, v in g.items():
            gates[k].append(v)
    return torch.stack(hs), torch.stack(cs), {k: torch.stack(v) for k, v in gates.items()}


def lstm_forward(
    xs: Tensor, layers: Sequence[Mapping[str, Tensor]], state: LSTMState | None = None
) -> tuple[Tensor, LSTMState]:
    """Stacked LSTM, the same computation as `nn.LSTM` (batch_first=False, no dropout).

    xs (T, B, D); layers: one param dict per layer; state (h0, c0) each (L, B, H) or None.
    Returns (out (T, B, H) = last layer's h_t, (h_n, c_n) each (L, B, H))."""
    sizes = _check_layers(layers, _check_lstm_params, "LSTM")
    _, B = _check_seq(xs, sizes[0][0])
    L, H = len(layers), sizes[-1][1]
    if state is not None:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(
                f"state: expected a pair (h0, c0) of tensors (L, B, H) or None, got {type(state).__name__}"
            )
        _check_float("state[0] (h0)", state[0], (L, B, H))
        _check_float("state[1] (c0)", state[1], (L, B, H))
    out, h_n, c_n = xs, [], []
    for layer, params in enumerate(layers):
        h0, c0 = (None, None) if state is None else (state[0][layer], state[1][layer])
        out, cs, _ = _lstm_unroll(out, params, h0, c0)  # (T, B, H)
        h_n.append(out[-1])  # (B, H)
        c_n.append(cs[-1])
    return out, (torch.stack(h_n), torch.stack(c_n))


# ---------------------------------------------------------------------------------------------
# 3. GRU (Cho et al., 2014)
# ---------------------------------------------------------------------------------------------


def init_gru_params(
    input_size: int,
    hidden_size: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Params:
    """The 10 GRU tensors W_x{r,z,n} (H, D), W_h{r,z,n} (H, H), b_r, b_z, b_xn, b_hn (H,), drawn from
    U(-1/√H, 1/√H) as torch initialises nn.GRU (plain tensors, no grad)."""
    return _init_gated_params(GRU_KEYS, input_size, hidden_size, generator, dtype, device)


def gru_cell_with_gates(x: Tensor, h_prev: Tensor, params: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """One GRU step, also returning the gates {"r", "z", "n"} (each like h) for plots.

    x: (B, D) or (D,); h_prev: (B, H) or (H,); params: see `init_gru_params`. Returns (h_t, gates)."""
    D, H = _check_gru_params(params)
    x = _check_vec_or_batch("x", x, D, None)
    _check_vec_or_batch("h_prev", h_prev, H, tuple(x.shape[:-1]))
    return _gru_step(x, h_prev, params)


def gru_cell(x: Tensor, h_prev: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """One GRU step -> h_t; the equations are in `_gru_step` (and the module docstring)."""
    return gru_cell_with_gates(x, h_prev, params)[0]


def _gru_step(x: Tensor, h: Tensor, p: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    # r_t = σ(W_xr x_t + W_hr h_{t-1} + b_r)     reset gate: how much of h_{t-1} the candidate reads  (B, H)
    r = torch.sigmoid(x @ p["W_xr"].T + h @ p["W_hr"].T + p["b_r"])
    # z_t = σ(W_xz x_t + W_hz h_{t-1} + b_z)     update gate: how much of h_{t-1} to keep
    z = torch.sigmoid(x @ p["W_xz"].T + h @ p["W_hz"].T + p["b_z"])
    # n_t = tanh(W_xn x_t + b_xn + r_t ⊙ (W_hn h_{t-1} + b_hn))     candidate state. This is torch's and
    # cuDNN's form: r_t gates the PRODUCT W_hn h_{t-1} + b_hn, so one (3H, H) matrix multiply gives all
    # three gates' W_h· h_{t-1} at once. Cho et al. (2014) gate the state before the product,
    # tanh(W_xn x_t + W_hn (r_t ⊙ h_{t-1})): a slightly different function, not the same numbers.
    n = torch.tanh(x @ p["W_xn"].T + p["b_xn"] + r * (h @ p["W_hn"].T + p["b_hn"]))
    # h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}     interpolation: z_t ≈ 1 copies the old state (no vanishing)
    h = (1 - z) * n + z * h
    return h, {"r": r, "z": z, "n": n}


def gru_unroll(xs: Tensor, params: Mapping[str, Tensor], h0: Tensor | None = None) -> Tensor:
    """Run one GRU layer over xs (T, B, D) from h0 (B, H) (default zeros) -> hs (T, B, H); the last
    hidden state is hs[-1] (nn.GRU's output and h_n for one layer)."""
    D, H = _check_gru_params(params)
    T, B = _check_seq(xs, D)
    if h0 is not None:
        _check_float("h0", h0, (B, H))
    return _gru_unroll(xs, params, h0)


def _gru_unroll(xs: Tensor, params: Mapping[str, Tensor], h: Tensor | None) -> Tensor:
    h = xs.new_zeros(xs.shape[1], params["W_hr"].shape[0]) if h is None else h  # h_0 = 0 by default  (B, H)
    hs = []
    for t in range(xs.shape[0]):
        h, _ = _gru_step(xs[t], h, params)  # (B, H)
        hs.append(h)
    return torch.stack(hs)


# ---------------------------------------------------------------------------------------------
# 4. Weight mapping to and from torch's nn.RNN / nn.LSTM / nn.GRU
#
# torch stores layer k as weight_ih_l{k} (G·H, D), weight_hh_l{k} (G·H, H) and TWO biases
# bias_ih_l{k}, bias_hh_l{k} (G·H,), both added: our b = b_ih + b_hh. For the LSTM (G = 4) the rows
# are stacked in the gate order [i, f, g, o], where torch's g is our candidate c̃:
#     rows 0:H -> i,  H:2H -> f,  2H:3H -> c̃ (g),  3H:4H -> o.
# Writing back puts the whole bias into bias_ih and zeros into bias_hh (same sum, same outputs).
# The GRU (G = 3) stacks its rows as [r, z, n]. Its candidate n_t adds b_ih's n block outside and
# b_hh's n block inside r_t ⊙ (W_hn h + b_hn): those two cannot be summed, so b_xn = bias_ih[2H:3H]
# and b_hn = bias_hh[2H:3H] stay apart (b_r and b_z are sums as above); writing back keeps b_hn in
# bias_hh and zeros the rest of bias_hh.
# ---------------------------------------------------------------------------------------------


def _check_torch_rnn(module: object, cls: type[nn.RNNBase], layer: object, name: str) -> int:
    """`module` is a one-directional `cls` (nn.RNN with tanh, nn.LSTM without projections, or nn.GRU);
    returns `layer` checked against its number of layers."""
    if not isinstance(module, cls):
        raise ValueError(f"{name}: expected a torch.nn.{cls.__name__}, got {type(module).__name__}")
    if module.bidirectional:
        raise ValueError(f"{name}: bidirectional {cls.__name__}s are not supported (expected bidirectional=False)")
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"{name}: LSTMs with projections are not supported (expected proj_size=0, got {module.proj_size})"
        )
    if cls is nn.RNN and module.nonlinearity != "tanh":
        raise ValueError(f"{name}: expected nonlinearity='tanh' (the equations here), got {module.nonlinearity!r}")
    return check_int("layer", layer, 0, module.num_layers - 1)


def _torch_weights(module: nn.RNNBase, k: int) -> tuple[Tensor, Tensor, Tensor]:
    w_ih, w_hh = getattr(module, f"weight_ih_l{k}"), getattr(module, f"weight_hh_l{k}")
    b_ih, b_hh = _torch_biases(module, k)
    return w_ih.detach().clone(), w_hh.detach().clone(), b_ih + b_hh  # b = b_ih + b_hh


def _torch_biases(module: nn.RNNBase, k: int) -> tuple[Tensor, Tensor]:
    """Copies of (bias_ih_l{k}, bias_hh_l{k}); zeros for a module with bias=False."""
    if module.bias:
        return tuple(getattr(module, f"bias_{s}_l{k}").detach().clone() for s in ("ih", "hh"))
    w_ih = getattr(module, f"weight_ih_l{k}")
    zeros = torch.zeros(w_ih.shape[0], dtype=w_ih.dtype, device=w_ih.device)
    return zeros, zeros.clone()


@torch.no_grad()
def _set_torch_weights(
    module: nn.RNNBase, k: int, w_ih: Tensor, w_hh: Tensor, b: Tensor, b_hh: Tensor | None = None
) -> None:
    """Write layer k: bias_ih = b, bias_hh = b_hh (default zeros)."""
    getattr(module, f"weight_ih_l{k}").copy_(w_ih)
    getattr(module, f"weight_hh_l{k}").copy_(w_hh)
    if module.bias:
        getattr(module, f"bias_ih_l{k}").copy_(b)
        bias_hh = getattr(module, f"bias_hh_l{k}")
        if b_hh is None:
            bias_hh.zero_()
        else:
            bias_hh.copy_(b_hh)
    elif bool((b != 0).any()) or (b_hh is not None and bool((b_hh != 0).any())):
        raise ValueError("params: the module has bias=False but the biases are not all zero")


def _check_sizes_match(name: str, D: int, H: int, module: nn.RNNBase, k: int) -> None:
    want_D = module.input_size if k == 0 else module.hidden_size
    if (D, H) != (want_D, module.hidden_size):
        raise ValueError(
            f"{name}: layer {k} of the module has input size {want_D} and hidden size {module.hidden_size}, "
            f"but params have input size {D} and hidden size {H}"
        )


def rnn_params_from_torch(rnn: nn.RNN, layer: int = 0) -> Params:
    """{W_xh, W_hh, b_h} of layer `layer` of a tanh nn.RNN (copies; b_h = bias_ih + bias_hh)."""
    k = _check_torch_rnn(rnn, nn.RNN, layer, "rnn")
    w_ih, w_hh, b = _torch_weights(rnn, k)
    return {"W_xh": w_ih, "W_hh": w_hh, "b_h": b}


def rnn_params_to_torch(params: Mapping[str, Tensor], rnn: nn.RNN, layer: int = 0) -> nn.RNN:
    """Copy {W_xh, W_hh, b_h} into layer `layer` of `rnn` (bias_ih = b_h, bias_hh = 0); returns rnn."""
    k = _check_torch_rnn(rnn, nn.RNN, layer, "rnn")
    D, H = _check_rnn_params(params)
    _check_sizes_match("params", D, H, rnn, k)
    _set_torch_weights(rnn, k, params["W_xh"], params["W_hh"], params["b_h"])
    return rnn


def lstm_params_from_torch(lstm: nn.LSTM, layer: int = 0) -> Params:
    """The 12 tensors of layer `layer` of an nn.LSTM (copies): row blocks [i, f, g, o] -> i, f, c, o;
    b_* = bias_ih + bias_hh."""
    return _lstm_params(lstm, _check_torch_rnn(lstm, nn.LSTM, layer, "lstm"))


def _lstm_params(lstm: nn.LSTM, k: int) -> Params:
    w_ih, w_hh, b = _torch_weights(lstm, k)
    params = {}
    for gate, wx, wh, bb in zip(TORCH_GATE_ORDER, w_ih.chunk(4), w_hh.chunk(4), b.chunk(4), strict=True):
        params |= {f"W_x{gate}": wx.clone(), f"W_h{gate}": wh.clone(), f"b_{gate}": bb.clone()}
    return {key: params[key] for key in LSTM_KEYS}


def lstm_params_to_torch(params: Mapping[str, Tensor], lstm: nn.LSTM, layer: int = 0) -> nn.LSTM:
    """Copy the 12 tensors into layer `layer` of `lstm`, stacking the gates as torch's [i, f, g, o]
    (bias_ih = b, bias_hh = 0); returns lstm."""
    k = _check_torch_rnn(lstm, nn.LSTM, layer, "lstm")
    D, H = _check_lstm_params(params)
    _check_sizes_match("params", D, H, lstm, k)
    w_ih = torch.cat([params[f"W_x{g}"] for g in TORCH_GATE_ORDER])  # (4H, D)
    w_hh = torch.cat([params[f"W_h{g}"] for g in TORCH_GATE_ORDER])  # (4H, H)
    b = torch.cat([params[f"b_{g}"] for g in TORCH_GATE_ORDER])  # (4H,)
    _set_torch_weights(lstm, k, w_ih, w_hh, b)
    return lstm


def gru_params_from_torch(gru: nn.GRU, layer: int = 0) -> Params:
    """The 10 tensors of layer `layer` of an nn.GRU (copies): row blocks [r, z, n];
    b_r, b_z = bias_ih + bias_hh; b_xn = bias_ih's n block, b_hn = bias_hh's n block."""
    return _gru_params(gru, _check_torch_rnn(gru, nn.GRU, layer, "gru"))


def _gru_params(gru: nn.GRU, k: int) -> Params:
    w_ih, w_hh = (getattr(gru, f"weight_{s}_l{k}").detach() for s in ("ih", "hh"))
    b_ih, b_hh = _torch_biases(gru, k)
    params = {}
    for gate, wx, wh, bi, bh in zip(
        TORCH_GRU_GATE_ORDER, w_ih.chunk(3), w_hh.chunk(3), b_ih.chunk(3), b_hh.chunk(3), strict=True
    ):
        params |= {f"W_x{gate}": wx.clone(), f"W_h{gate}": wh.clone()}
        if gate == "n":  # b_xn outside r_t ⊙ (...), b_hn inside: kept apart
            params |= {"b_xn": bi.clone(), "b_hn": bh.clone()}
        else:
            params[f"b_{gate}"] = bi + bh  # b = b_ih + b_hh
    return {key: params[key] for key in GRU_KEYS}


def gru_params_to_torch(params: Mapping[str, Tensor], gru: nn.GRU, layer: int = 0) -> nn.GRU:
    """Copy the 10 tensors into layer `layer` of `gru`, stacking the gates as torch's [r, z, n]
    (bias_ih = [b_r, b_z, b_xn], bias_hh = [0, 0, b_hn]); returns gru."""
    k = _check_torch_rnn(gru, nn.GRU, layer, "gru")
    D, H = _check_gru_params(params)
    _check_sizes_match("params", D, H, gru, k)
    w_ih = torch.cat([params[f"W_x{g}"] for g in TORCH_GRU_GATE_ORDER])  # (3H, D)
    w_hh = torch.cat([params[f"W_h{g}"] for g in TORCH_GRU_GATE_ORDER])  # (3H, H)
    b_ih = torch.cat([params["b_r"], params["b_z"], params["b_xn"]])  # (3H,)
    b_hh = torch.cat([torch.zeros_like(params["b_r"]), torch.zeros_like(params["b_z"]), params["b_hn"]])  # (3H,)
    _set_torch_weights(gru, k, w_ih, w_hh, b_ih, b_hh)
    return gru


# ---------------------------------------------------------------------------------------------
# 5. Fast path: a character-level LSTM language model
# ---------------------------------------------------------------------------------------------


def _lstm_needs_fp32(device: torch.device) -> bool:
    """True under an autocast whose dtype the device's LSTM kernel cannot run: cuDNN runs bf16 RNNs
    only from cuDNN 9.13 (pytorch/pytorch#164411; torch's own CUDA LSTM cell has no bf16 either) and
    oneDNN has no bf16 LSTM on CPU. There the LSTM runs in fp32 (TF32 on GPUs) and the rest in bf16."""
    if not torch.is_autocast_enabled(device.type):
        return False
    dtype = torch.get_autocast_dtype(device.type)
    if device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
        return dtype == torch.bfloat16 and (torch.backends.cudnn.version() or 0) < 91300
    if device.type == "cuda":  # torch's own CUDA LSTM kernel: fp16 yes, bf16 no
        return dtype == torch.bfloat16
    return True  # CPU (oneDNN) and others: keep the LSTM in its weights' dtype


@dataclass
class CharLSTMConfig:
    vocab_size: int
    embed_dim: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.0  # between LSTM layers (nn.LSTM's own) and before the output layer
    forget_bias: float = 1.0  # initial b_f (1: Jozefowicz et al. 2015; 0 trains faster on short budgets)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            check_int(name, getattr(self, name))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {d!r}")
        b = self.forget_bias
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ValueError(f"forget_bias: expected a finite number, got {b!r}")


class CharLSTM(nn.Module):
    """Embedding -> nn.LSTM (cuDNN on GPU) -> dropout -> Linear: next-character logits at every step.

    p(x_{t+1} | x_{≤t}) = softmax(W_hy h_t + b_y), h_t from the stacked LSTM over the embeddings.
    Init: torch's defaults (U(-1/√H, 1/√H) for the LSTM and the head, N(0, 1) embeddings), plus a
    forget-gate bias of `config.forget_bias` (default 1, Jozefowicz et al., 2015: the cell starts
    out remembering) and a zero output bias (the first loss is ≈ ln V)."""

    def __init__(self, config: CharLSTMConfig):
        super().__init__()
        if not isinstance(config, CharLSTMConfig):
            raise ValueError(f"config: expected a CharLSTMConfig, got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.lstm = nn.LSTM(
            c.embed_dim,
            c.hidden_size,
            c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        with torch.no_grad():
            H = c.hidden_size
            for k in range(c.num_layers):
                getattr(self.lstm, f"bias_ih_l{k}")[H : 2 * H].fill_(c.forget_bias)  # b_f (+ bias_hh's 0)
                getattr(self.lstm, f"bias_hh_l{k}")[H : 2 * H].zero_()
            self.head.bias.zero_()

    context_length = None  # `generation.generate`'s protocol: the LSTM reads a prompt of any length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def forward(self, idx: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """idx (B, T) int64, state (h, c) each (L, B, H) or None (zeros) -> (logits (B, T, V), state)."""
        c = self.config
        if not isinstance(idx, Tensor) or idx.dtype != torch.int64 or idx.ndim != 2:
            kind = f"{idx.dtype} " if isinstance(idx, Tensor) else ""
            raise ValueError(f"idx: expected an int64 tensor of shape (B, T), got {kind}{shape_of(idx)}")
        if state is not None:
            want = (c.num_layers, idx.shape[0], c.hidden_size)
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"state: expected a pair (h, c) of tensors {want} or None, got {type(state).__name__}")
            for name, s in zip(("state[0] (h)", "state[1] (c)"), state, strict=True):
                if not isinstance(s, Tensor) or tuple(s.shape) != want:
                    raise ValueError(f"{name}: expected shape {want} (num_layers, B, hidden_size), got {shape_of(s)}")
            state = tuple(state)
        x = self.embed(idx)  # (B, T, E)
        if _lstm_needs_fp32(x.device):  # autocast to a dtype this device's LSTM kernel lacks
            dtype = self.lstm.weight_ih_l0.dtype
            with torch.autocast(x.device.type, enabled=False):
                state = None if state is None else tuple(s.to(dtype) for s in state)
                out, state = self.lstm(x.to(dtype), state)
        else:
            out, state = self.lstm(x, state)  # (B, T, H); state: (L, B, H) x 2
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, state

    def flops_per_token(self) -> int:
        """Forward FLOPs per token, counting only the matrix multiplies (2 FLOPs per multiply-add):

            2 · ( Σ_l 4H (D_l + H)  +  H V ),   D_0 = embed_dim, D_l = H for l ≥ 1

        4H(D_l + H): the four gates' W_x· x_t and W_h· h_{t-1} in layer l; HV: the output layer. The
        embedding is a lookup (0 FLOPs); biases, σ/tanh and the ⊙ updates are O(H) per layer and left
        out. Training (forward + backward) costs ≈ 3x this."""
        c = self.config
        H = c.hidden_size
        macs = sum(4 * H * ((c.embed_dim if k == 0 else H) + H) for k in range(c.num_layers))
        return 2 * (macs + H * c.vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def char_lstm_trace(model: CharLSTM, idx: Tensor) -> list[dict[str, Tensor]]:
    """Look inside a CharLSTM: its weights run through the from-scratch `lstm_unroll`, layer by layer.

    idx (B, T) int64 -> one dict per layer with "h", "c", "i", "f", "o", "c_tilde", each (B, T, H),
    from a zero state without dropout (the last layer's "h" is what nn.LSTM outputs). E.g. plot
    `trace[0]["f"][0].T` as an (H, T) heat map of the first layer's forget gates over a text."""
    if not isinstance(model, CharLSTM):
        raise ValueError(f"model: expected a CharLSTM, got {type(model).__name__}")
    if not isinstance(idx, Tensor) or idx.dtype != torch.int64 or idx.ndim != 2:
        raise ValueError(f"idx: expected an int64 tensor of shape (B, T), got {shape_of(idx)}")
    xs = model.embed(idx.to(model.embed.weight.device)).transpose(0, 1)  # (T, B, E)
    trace = []
    for k in range(model.config.num_layers):
        hs, cs, gates = _lstm_unroll(xs, _lstm_params(model.lstm, k), None, None)  # (T, B, H) each
        trace.append({name: t.transpose(0, 1) for name, t in {"h": hs, "c": cs, **gates}.items()})
        xs = hs  # layer k+1 reads layer k's hidden states
    return trace


# ---------------------------------------------------------------------------------------------
# 6. Encoder–decoder with additive attention (Bahdanau, Cho & Bengio, 2015)
#
# The bridge to chapter 04. The encoder–decoders of 2014 (Cho et al.; Sutskever et al.) squeeze the
# whole source into one vector; here the decoder scores every source position against its own state
# at every output step and reads their weighted average. Chapter 04 keeps the weighted average,
# scores with a scaled dot product qᵀk/√d instead of a small network, and replaces the recurrences
# with self-attention.
# ---------------------------------------------------------------------------------------------


@dataclass
class AttentionSeq2SeqConfig:
    src_vocab: int
    tgt_vocab: int
    max_len: int = 32  # longest source and target, special tokens included (as transformer.Seq2SeqConfig)
    embed_dim: int = 32  # E: the source and target token embeddings
    hidden_size: int = 64  # H: each encoder direction and the decoder state
    attn_dim: int = 64  # A: the additive attention's hidden layer (the paper's n')

    def __post_init__(self) -> None:
        for name in ("src_vocab", "tgt_vocab", "max_len", "embed_dim", "hidden_size", "attn_dim"):
            check_int(name, getattr(self, name))


class AdditiveAttention(nn.Module):
    """Bahdanau et al.'s attention: one query against S keys, each scored by a one-hidden-layer network.

        e_s = vᵀ tanh(W_q q + W_k k_s)      score of key s     W_q: (A, Dq), W_k: (A, Dk), v: (A,)
        α = softmax(e) over the real keys    exactly 0 on PAD (key_padding False)
        context = Σ_s α_s k_s                (B, Dk): the keys are also the values (the paper's annotations)

    No biases, as in the paper's appendix. W_k k_s does not depend on the query, so a decoder
    computes it once per source and passes it to `_attend`."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        for name, size in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            check_int(name, size)
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, query: Tensor, keys: Tensor, key_padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """query (B, Dq), keys (B, S, Dk), key_padding (B, S) bool, True for a real key (None: all real)
        -> (context (B, Dk), weights α (B, S)). A row without a real key gets zero weights and context."""
        query = _check_float("query", query, (None, self.W_q.in_features))
        B = query.shape[0]
        S = _check_float("keys", keys, (B, None, self.W_k.in_features), query.dtype).shape[1]
        if key_padding is None:
            key_padding = torch.ones(B, S, dtype=torch.bool, device=keys.device)
        elif not isinstance(key_padding, Tensor) or key_padding.dtype != torch.bool or key_padding.shape != (B, S):
            kind = f"{key_padding.dtype} " if isinstance(key_padding, Tensor) else ""
            raise ValueError(
                f"key_padding: expected a bool tensor of shape ({B}, {S}) (True = real key) or None, "
                f"got {kind}{shape_of(key_padding)}"
            )
        return self._attend(query, keys, self.W_k(keys), key_padding)

    def _attend(self, query: Tensor, keys: Tensor, keys_proj: Tensor, key_padding: Tensor) -> tuple[Tensor, Tensor]:
        e = self.v(torch.tanh(self.W_q(query)[:, None] + keys_proj))[..., 0]  # e_s = vᵀ tanh(W_q q + W_k k_s)  (B, S)
        # PAD gets the lowest finite score (−inf would make an all-PAD row NaN), then exactly weight 0
        e = e.masked_fill(~key_padding, torch.finfo(e.dtype).min)
        alpha = torch.softmax(e, dim=-1).masked_fill(~key_padding, 0.0)  # α  (B, S)
        return (alpha[:, None] @ keys)[:, 0], alpha  # context = Σ_s α_s k_s  (B, Dk)


def _no_autocast(device: torch.device):
    """Run in the weights' dtype: recurrent kernels lack bf16 on some devices and cuDNN versions (see
    `_lstm_needs_fp32`), and a model this small gains nothing from bf16."""
    return torch.autocast(device.type, enabled=False)


class AttentionSeq2Seq(nn.Module):
    """Bahdanau et al.'s RNNsearch, small: src (B, S) -> bidirectional GRU annotations (B, S, 2H);
    tgt_in (B, T) -> a GRU-cell decoder attending to them at every step -> logits (B, T, V).

        h_s = [h→_s; h←_s]                  nn.GRU(bidirectional=True) over E_src[src], packed: PAD not read
        s_0 = tanh(W_s h←_1)                 the backward summary of the source (the paper's appendix A.2.2)
        c_t, α_t = attention(s_{t-1}; h_1..h_S, real positions only)      query: the PREVIOUS state
        s_t = GRUCell([E_tgt y_{t-1}; c_t], s_{t-1})
        logits_t = W_o [s_t; c_t; E_tgt y_{t-1}] + b_o

    The paper's output layer is a maxout over U_o s_{t-1} + V_o E y_{t-1} + C_o c_t; a linear layer
    over [s_t; c_t; E y_{t-1}] is the common simplification. Sources are right-padded with PAD (0), as
    `reversal_batch` makes them: the encoder reads each row up to its last real token and attention
    never looks at PAD, so extra PAD columns change nothing. The model runs in its weights' dtype
    even under autocast. Same interface as transformer.Seq2SeqTransformer (forward, greedy,
    config.max_len): chapter 04's `train_seq2seq` trains it on the same task."""

    def __init__(self, config: AttentionSeq2SeqConfig):
        super().__init__()
        if not isinstance(config, AttentionSeq2SeqConfig):
            raise ValueError(f"config: expected an AttentionSeq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        E, H = c.embed_dim, c.hidden_size
        self.src_tok, self.tgt_tok = nn.Embedding(c.src_vocab, E), nn.Embedding(c.tgt_vocab, E)
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(H, H)  # W_s
        self.attn = AdditiveAttention(H, 2 * H, c.attn_dim)
        self.decoder = nn.GRUCell(E + 2 * H, H)
        self.head = nn.Linear(H + 2 * H + E, c.tgt_vocab)  # W_o, b_o

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src (B, S) -> (annotations h (B, S, 2H), zero at PAD; padding mask (B, S), True for real
        tokens; the decoder's initial state s_0 (B, H))."""
        src = self._check("src", src)
        with _no_autocast(src.device):
            return self._encode(src)

    def _encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        padding = src != PAD  # (B, S)
        S = src.shape[1]
        # each row up to its last real token (at least one: an all-PAD row reads a PAD, attends to nothing)
        lengths = (padding * torch.arange(1, S + 1, device=src.device)).amax(1).clamp(min=1)
        packed = pack_padded_sequence(self.src_tok(src), lengths.cpu(), batch_first=True, enforce_sorted=False)
        h = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=S)[0]  # (B, S, 2H)
        s0 = torch.tanh(self.init_state(h[:, 0, self.config.hidden_size :]))  # s_0 = tanh(W_s h←_1)  (B, H)
        return h, padding, s0

    def _step(
        self, emb: Tensor, s: Tensor, annotations: Tensor, keys: Tensor, padding: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step from emb = E y_{t-1} (B, E) and s = s_{t-1} (B, H) -> (s_t, c_t, α_t)."""
        context, alpha = self.attn._attend(s, annotations, keys, padding)  # c_t: queried with s_{t-1}
        s = self.decoder(torch.cat([emb, context], dim=-1), s)  # s_t = GRU([E y_{t-1}; c_t], s_{t-1})
        return s, context, alpha

    def _decode(self, tgt_in: Tensor, annotations: Tensor, padding: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing over tgt_in (B, T) = (BOS, y_1, ..., y_{T−1}) -> (logits (B, T, V), α (B, T, S))."""
        keys = self.attn.W_k(annotations)  # W_k h_s: once per source  (B, S, A)
        emb = self.tgt_tok(tgt_in)  # E y_{t-1}  (B, T, E)
        states, contexts, alphas = [], [], []
        for t in range(tgt_in.shape[1]):
            s, context, alpha = self._step(emb[:, t], s, annotations, keys, padding)
            states.append(s)
            contexts.append(context)
            alphas.append(alpha)
        out = torch.cat([torch.stack(states, 1), torch.stack(contexts, 1), emb], dim=-1)  # [s_t; c_t; E y_{t-1}]
        return self.head(out), torch.stack(alphas, 1)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) int64 -> logits (B, T, V) of y_1 .. y_T."""
        src, tgt_in = self._check_pair(src, tgt_in)
        with _no_autocast(src.device):
            return self._decode(tgt_in, *self._encode(src))[0]

    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """α (B, T, S): row t is the attention the decoder used while predicting target token t + 1
        (each row sums to 1 over the real source positions and is 0 on PAD)."""
        src, tgt_in = self._check_pair(src, tgt_in)
        with _no_autocast(src.device):
            return self._decode(tgt_in, *self._encode(src))[1]

    @torch.no_grad()
    def greedy(self, src: Tensor, max_new: int | None = None) -> Tensor:
        """Greedy decoding from BOS until EOS (or max_new tokens): (B, ≤ max_new) ids, EOS included,
        PAD after a sequence's EOS (as Seq2SeqTransformer.greedy); one decoder step per token."""
        max_new = self.config.max_len - 1 if max_new is None else check_int("max_new", max_new)
        src = self._check("src", src)
        with eval_mode(self), _no_autocast(src.device):
            annotations, padding, s = self._encode(src)
            keys = self.attn.W_k(annotations)
            state = {"s": s}

            def next_ids(out: Tensor) -> Tensor:  # one decoder step per token: the state is carried
                emb = self.tgt_tok(out[:, -1])  # E y_{t-1}
                state["s"], context, _ = self._step(emb, state["s"], annotations, keys, padding)
                return self.head(torch.cat([state["s"], context, emb], dim=-1)).argmax(-1)

            steps = min(max_new, self.config.max_len - 1)
            return greedy_until_eos(next_ids, src.shape[0], steps, src.device, BOS, EOS, PAD)

    def _check(self, name: str, ids: object) -> Tensor:
        return check_token_batch(name, ids, self.config.max_len)

    def _check_pair(self, src: object, tgt_in: object) -> tuple[Tensor, Tensor]:
        src, tgt_in = self._check("src", src), self._check("tgt_in", tgt_in)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in: expected the batch size of src, {src.shape[0]}, got shape {shape_of(tgt_in)}")
        return src, tgt_in


# ---------------------------------------------------------------------------------------------
# 7. Truncated backpropagation through time with the shared `fit`
# ---------------------------------------------------------------------------------------------


def _f32(t: Tensor) -> Tensor:
    """bf16/fp16 logits (autocast) -> float32 for the softmax; float32/float64 stay as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_ids(name: str, ids: object) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.ndim != 1:
        kind = f"{ids.dtype} " if isinstance(ids, Tensor) else ""
        raise ValueError(
            f"{name}: expected a 1-D int64 tensor of token ids (CharTokenizer.encode), got {kind}{shape_of(ids)}"
        )
    return ids


class TBPTTBatches:
    """`batches(step) -> (x, y, reset)` for `fit`: the text cut into `batch_size` parallel streams.

    Row b of every batch is the next `seq_len` characters of stream b, so the LSTM state left by
    step s is the right starting state for step s+1 (truncated BPTT: gradients stop at the chunk
    edge, the state does not). With L = (len(ids) - 1) // batch_size characters per stream,
    stream b is ids[b·L : (b+1)·L] (targets: shifted by one); a pass is `len(self)` =
    L // seq_len steps (the leftover tail of each stream is skipped); `reset` is True at the first
    step of every pass, where the state must start again from zeros."""

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, device: torch.device | str | None = None):
        ids = _check_ids("ids", ids)
        self.batch_size, self.seq_len = check_int("batch_size", batch_size), check_int("seq_len", seq_len)
        need = batch_size * seq_len + 1
        if len(ids) < need:
            raise ValueError(
                f"ids: expected at least batch_size * seq_len + 1 = {need} ids, got {len(ids)}; "
                "use a smaller batch_size or seq_len"
            )
        L = (len(ids) - 1) // batch_size  # characters per stream
        self.n_chunks = L // seq_len  # steps per pass
        ids = ids.to(device) if device is not None else ids  # the whole text lives on the device
        self.x = ids[: batch_size * L].view(batch_size, L)  # (B, L) streams
        self.y = ids[1 : batch_size * L + 1].view(batch_size, L)  # (B, L) next characters
        self.stream_len = L

    def __len__(self) -> int:
        return self.n_chunks

    def __call__(self, step: int) -> tuple[Tensor, Tensor, bool]:
        k = step % self.n_chunks  # chunk within the pass
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return self.x[:, cols].contiguous(), self.y[:, cols].contiguous(), k == 0  # (B, S), (B, S), reset


def tbptt_batches(ids: Tensor, batch_size: int, seq_len: int, device: torch.device | str | None = None) -> TBPTTBatches:
    """A callable `step -> (x (B, S), y (B, S), reset)` walking `batch_size` streams of the text in
    order (see TBPTTBatches). `device`: keep the whole id tensor there (no copies per step)."""
    return TBPTTBatches(ids, batch_size, seq_len, device)


def _lm_loss(carry: dict) -> Callable[[nn.Module, tuple], Tensor]:
    """The loss closure for fit: carries the detached LSTM state from one chunk to the next."""

    def loss_fn(model: nn.Module, batch: tuple) -> Tensor:
        x, y, reset = batch  # (B, S), (B, S), bool
        logits, state = model(x, None if reset else carry["state"])  # (B, S, V)
        carry["state"] = tuple(s.detach() for s in state)  # keep the values, cut the graph (truncation)
        return F.cross_entropy(_f32(logits.flatten(0, 1)), y.flatten())  # mean nats per character

    return loss_fn


def train_char_lstm(
    model: nn.Module,
    train_ids: Tensor,
    steps: int,
    *,
    batch_size: int = 32,
    seq_len: int = 64,
    lr: float = 2e-3,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    **run: Unpack[RunOptions],
) -> History:
    """Train a character model `model(idx, state) -> (logits, state)` by truncated BPTT with `fit`.

    AdamW(lr, betas=(0.9, 0.99); weight decay on matrices only), linear warmup for `warmup_steps`
    (default min(100, steps // 10)) then a cosine down to lr·min_lr_ratio. The LSTM state is carried
    across steps (detached) and reset at the start of every pass over the text; it is not in the
    checkpoint, so `ckpt_every` defaults to the multiple of one pass nearest 500 steps: periodic
    checkpoints fall on reset steps, where a resume is exact. `run`: fit's run options (checkpoint,
    ckpt_every, log_every, desc, progress, on_log). Returns fit's History ("loss" in nats per
    character, "grad_norm" when clipping)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module (e.g. CharLSTM), got {type(model).__name__}")
    check_int("steps", steps)
    for name, v in (("lr", lr), ("min_lr_ratio", min_lr_ratio), ("weight_decay", weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf or (name == "lr" and v == 0):
            raise ValueError(
                f"{name}: expected a {'positive' if name == 'lr' else 'non-negative'} finite number, got {v!r}"
            )
    if min_lr_ratio > 1:
        raise ValueError(f"min_lr_ratio: expected a number in [0, 1], got {min_lr_ratio!r}")
    device = next(model.parameters()).device
    batches = tbptt_batches(train_ids, batch_size, seq_len, device=device)
    warmup = min(100, steps // 10) if warmup_steps is None else check_int("warmup_steps", warmup_steps, 0)
    if run.get("ckpt_every") is None:  # a multiple of the pass: periodic checkpoints fall on reset steps
        run["ckpt_every"] = max(1, round(500 / len(batches))) * len(batches)
    run.setdefault("desc", "char-lstm")

    opt, sched = adamw_warmup_cosine(model, lr, steps, warmup, min_lr_ratio, weight_decay, betas=(0.9, 0.99))
    return fit(model, opt, batches, _lm_loss({"state": None}), steps, grad_clip=grad_clip, scheduler=sched, **run)


@torch.no_grad()
def evaluate_nats_per_char(model: nn.Module, ids: Tensor, batch_size: int = 32, seq_len: int = 256) -> float:
    """Mean negative log-likelihood of ids[1:] given what precedes it, in nats per character.

    The text is cut into `batch_size` streams of L = (len(ids) - 1) // batch_size characters, read in
    chunks of `seq_len` (the last chunk may be shorter) with the LSTM state carried across chunks:
    with batch_size=1 this is exactly the sequential NLL of the whole text; with more streams each
    stream starts from a zero state and the last (len(ids) - 1) mod batch_size characters are not
    scored. Eval mode (no dropout), no grad, one host sync at the end; bits/char = nats / ln 2."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module (e.g. CharLSTM), got {type(model).__name__}")
    ids = _check_ids("ids", ids)
    check_int("batch_size", batch_size)
    check_int("seq_len", seq_len)
    if len(ids) < batch_size + 1:
        raise ValueError(f"ids: expected at least batch_size + 1 = {batch_size + 1} ids, got {len(ids)}")
    device = next(model.parameters()).device
    L = (len(ids) - 1) // batch_size
    x = ids[: batch_size * L].view(batch_size, L).to(device)  # (B, L)
    y = ids[1 : batch_size * L + 1].view(batch_size, L).to(device)  # (B, L)
    total, state = torch.zeros((), dtype=torch.float64, device=device), None
    with eval_mode(model):
        for start in range(0, L, seq_len):
            with autocast(device):
                logits, state = model(x[:, start : start + seq_len], state)  # (B, S, V)
            nll = F.cross_entropy(_f32(logits.flatten(0, 1)), y[:, start : start + seq_len].flatten(), reduction="sum")
            total += nll
    return float(total) / (batch_size * L)


# ---------------------------------------------------------------------------------------------
# Argument checks of this chapter (the shared ones are in aigc_lib.checks): each message names the
# argument, what was expected and what came
# ---------------------------------------------------------------------------------------------


def _check_float(name: str, t: object, shape: tuple[int | None, ...], dtype=None) -> Tensor:
    """`t` must be a floating tensor of `shape` (None = any size) and, if given, of `dtype`."""
    ok = (
        isinstance(t, Tensor)
        and t.is_floating_point()
        and t.ndim == len(shape)
        and all(s is None or s == n for s, n in zip(shape, t.shape, strict=True))
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        kind = f" {t.dtype}" if isinstance(t, Tensor) else ""
        raise ValueError(f"{name}: expected a floating-point tensor of shape {want}, got{kind} {shape_of(t)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (as the other inputs), got {t.dtype}")
    return t


def _check_vec_or_batch(name: str, x: object, size: int | None, lead: tuple[int, ...] | None) -> Tensor:
    """x: (size,) or (B, size); with `lead` given the leading shape must equal it."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim not in (1, 2):
        raise ValueError(
            f"{name}: expected a floating-point tensor of shape (B, {size or 'D'}) or ({size or 'D'},), got {shape_of(x)}"
        )
    if size is not None and x.shape[-1] != size:
        raise ValueError(f"{name}: expected last dimension {size}, got shape {shape_of(x)}")
    if lead is not None and tuple(x.shape[:-1]) != lead:
        want = (*lead, x.shape[-1])
        raise ValueError(f"{name}: expected shape {want} (batch as x), got {shape_of(x)}")
    return x


def _check_rnn_params(params: object, name: str = "params") -> tuple[int, int]:
    """A dict with W_xh (H, D), W_hh (H, H), b_h (H,) of one dtype; returns (D, H)."""
    if not isinstance(params, Mapping) or any(k not in params for k in RNN_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{name}: expected a dict with keys {list(RNN_KEYS)}, got {got}")
    W = _check_float(f"{name}['W_xh']", params["W_xh"], (None, None))
    H, D = W.shape
    _check_float(f"{name}['W_hh']", params["W_hh"], (H, H), W.dtype)
    _check_float(f"{name}['b_h']", params["b_h"], (H,), W.dtype)
    return D, H


def _check_lstm_params(params: object, name: str = "params") -> tuple[int, int]:
    """A dict with the 12 LSTM tensors W_x* (H, D), W_h* (H, H), b_* (H,) of one dtype; returns (D, H)."""
    if not isinstance(params, Mapping) or any(k not in params for k in LSTM_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{name}: expected a dict with keys {list(LSTM_KEYS)}, got {got}")
    W = _check_float(f"{name}['W_xi']", params["W_xi"], (None, None))
    H, D = W.shape
    for g in ("i", "f", "o", "c"):
        _check_float(f"{name}['W_x{g}']", params[f"W_x{g}"], (H, D), W.dtype)
        _check_float(f"{name}['W_h{g}']", params[f"W_h{g}"], (H, H), W.dtype)
        _check_float(f"{name}['b_{g}']", params[f"b_{g}"], (H,), W.dtype)
    return D, H


def _check_gru_params(params: object, name: str = "params") -> tuple[int, int]:
    """A dict with the 10 GRU tensors W_x* (H, D), W_h* (H, H), b_* (H,) of one dtype; returns (D, H)."""
    if not isinstance(params, Mapping) or any(k not in params for k in GRU_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{name}: expected a dict with keys {list(GRU_KEYS)}, got {got}")
    W = _check_float(f"{name}['W_xr']", params["W_xr"], (None, None))
    H, D = W.shape
    for key in GRU_KEYS:
        shape = (H, D) if key.startswith("W_x") else (H, H) if key.startswith("W_h") else (H,)
        _check_float(f"{name}[{key!r}]", params[key], shape, W.dtype)
    return D, H


def _check_layers(layers: object, check: Callable[[object, str], tuple[int, int]], what: str) -> list[tuple[int, int]]:
    """A non-empty list of parameter dicts whose sizes chain: layer l+1's input is layer l's H."""
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)) or not layers:
        raise ValueError(
            f"layers: expected a non-empty list of {what} parameter dicts (one per layer), got {type(layers).__name__}"
        )
    sizes = [check(p, f"layers[{i}]") for i, p in enumerate(layers)]
    for i in range(1, len(sizes)):
        if sizes[i][1] != sizes[0][1]:
            raise ValueError(
                f"layers[{i}]: expected hidden size {sizes[0][1]} (every layer has the same, as in torch), got {sizes[i][1]}"
            )
        if sizes[i][0] != sizes[i - 1][1]:
            raise ValueError(
                f"layers[{i}]: expected input size {sizes[i - 1][1]} (the hidden size of layer {i - 1}), got {sizes[i][0]}"
            )
    return sizes


def _check_seq(xs: object, D: int) -> tuple[int, int]:
    """xs: (T, B, D) with T >= 1; returns (T, B)."""
    x = _check_float("xs", xs, (None, None, D))
    if x.shape[0] == 0:
        raise ValueError(f"xs: expected at least one time step, got shape {shape_of(x)}")
    return x.shape[0], x.shape[1]
