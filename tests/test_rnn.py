"""Chapter 01 library: RNN/LSTM equations vs autograd and torch's modules, the char-LSTM fast path,
truncated BPTT through fit, evaluation, and sampling (temperature on logits, top-k, streaming)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import rnn
from aigc_lib.data import CharTokenizer
from aigc_lib.generation import sliding_window_nll
from aigc_lib.history import apply_temperature
from aigc_lib.rnn import (
    CharLSTM,
    CharLSTMConfig,
    char_lstm_trace,
    evaluate_nats_per_char,
    generate,
    generate_text,
    init_lstm_params,
    init_rnn_params,
    lstm_cell,
    lstm_cell_with_gates,
    lstm_forward,
    lstm_params_from_torch,
    lstm_params_to_torch,
    lstm_unroll,
    rnn_bptt,
    rnn_cell,
    rnn_cell_backward,
    rnn_forward,
    rnn_output,
    rnn_params_from_torch,
    rnn_params_to_torch,
    rnn_unroll,
    sample_probs,
    tbptt_batches,
    train_char_lstm,
    warmup_cosine,
)

B, D, H, T = 3, 4, 5, 6


def tiny_lm(vocab: int = 7, seed: int = 0, dtype=F64, **kw) -> CharLSTM:
    torch.manual_seed(seed)
    cfg = dict(embed_dim=5, hidden_size=6, num_layers=2) | kw
    return CharLSTM(CharLSTMConfig(vocab, **cfg)).to(dtype)


# --------------------------------------------------------------------------- RNN: equations and BPTT


def test_rnn_cell_is_the_equation_and_passes_gradcheck():
    p = init_rnn_params(D, H, generator=gen(1), dtype=F64)
    x, h = randn(B, D, seed=2), randn(B, H, seed=3)
    want = torch.tanh(x @ p["W_xh"].T + h @ p["W_hh"].T + p["b_h"])
    assert close(rnn_cell(x, h, p["W_xh"], p["W_hh"], p["b_h"]), want)
    # unbatched vectors give the rows of the batched result
    assert close(rnn_cell(x[1], h[1], p["W_xh"], p["W_hh"], p["b_h"]), want[1])
    args = [t.clone().requires_grad_() for t in (x, h, p["W_xh"], p["W_hh"], p["b_h"])]
    assert torch.autograd.gradcheck(rnn_cell, args)


def test_rnn_output_is_logits():
    p = init_rnn_params(D, H, output_size=7, generator=gen(1), dtype=F64)
    h = randn(T, B, H)
    assert close(rnn_output(h, p["W_hy"], p["b_y"]), h @ p["W_hy"].T + p["b_y"])
    assert set(init_rnn_params(D, H)) == {"W_xh", "W_hh", "b_h"}


@pytest.mark.parametrize("batched", [True, False])
def test_rnn_cell_backward_equals_autograd(batched):
    p = init_rnn_params(D, H, generator=gen(1), dtype=F64)
    shape = (B,) if batched else ()
    x = randn(*shape, D, seed=2, requires_grad=True)
    h_prev = randn(*shape, H, seed=3, requires_grad=True)
    W_xh, W_hh, b_h = (p[k].clone().requires_grad_() for k in ("W_xh", "W_hh", "b_h"))
    h = rnn_cell(x, h_prev, W_xh, W_hh, b_h)
    dh = randn(*h.shape, seed=4)
    (h * dh).sum().backward()  # L = <h, dh>, so ∂L/∂h = dh
    mine = rnn_cell_backward(dh, x.detach(), h_prev.detach(), h.detach(), W_xh.detach(), W_hh.detach())
    for got, ref in zip(mine, (x.grad, h_prev.grad, W_xh.grad, W_hh.grad, b_h.grad), strict=True):
        assert close(got, ref, 1e-13)


def test_rnn_bptt_equals_autograd():
    p = init_rnn_params(D, H, generator=gen(1), dtype=F64)
    xs, h0 = randn(T, B, D, seed=2), randn(B, H, seed=3)
    dhs = randn(T, B, H, seed=4)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    xs_, h0_ = xs.clone().requires_grad_(), h0.clone().requires_grad_()
    hs = rnn_unroll(xs_, leaves, h0_)
    (hs * dhs).sum().backward()
    g = rnn_bptt(xs, h0, p, dhs)
    assert close(g.dxs, xs_.grad) and close(g.dh0, h0_.grad)
    assert close(g.dW_xh, leaves["W_xh"].grad) and close(g.dW_hh, leaves["W_hh"].grad)
    assert close(g.db_h, leaves["b_h"].grad)
    # the total gradient reaching h_1 includes everything after it; at h_T only the direct term
    assert close(g.dhs[-1], dhs[-1])


def test_rnn_gradient_vanishes_with_small_recurrent_weights():
    """The teaching point: ‖∂L/∂h_t‖ shrinks geometrically going back in time when ‖W_hh‖ < 1."""
    p = init_rnn_params(D, H, generator=gen(1), dtype=F64)
    p["W_hh"] = 0.3 * torch.linalg.qr(randn(H, H, seed=5))[0]  # spectral norm 0.3
    xs, h0 = randn(20, 1, D, seed=2), torch.zeros(1, H, dtype=F64)
    dhs = torch.zeros(20, 1, H, dtype=F64)
    dhs[-1] = 1.0  # loss only at the last step
    norms = rnn_bptt(xs, h0, p, dhs).dhs.norm(dim=(1, 2))
    assert norms[0] < 1e-8 * norms[-1]


def test_scratch_rnn_equals_torch_rnn_both_ways():
    torch.manual_seed(0)
    net = nn.RNN(D, H, num_layers=2).to(F64)
    xs, h0 = randn(T, B, D, seed=2), randn(2, B, H, seed=3)
    layers = [rnn_params_from_torch(net, k) for k in range(2)]
    out, h_n = rnn_forward(xs, layers, h0)
    ref_out, ref_h = net(xs, h0)
    assert close(out, ref_out) and close(h_n, ref_h)
    # ... and the other way: our random weights written into a fresh nn.RNN
    mine = [init_rnn_params(D, H, generator=gen(7), dtype=F64), init_rnn_params(H, H, generator=gen(8), dtype=F64)]
    fresh = nn.RNN(D, H, num_layers=2).to(F64)
    for k, params in enumerate(mine):
        rnn_params_to_torch(params, fresh, k)
    ref_out, ref_h = fresh(xs, h0)
    out, h_n = rnn_forward(xs, mine, h0)
    assert close(out, ref_out) and close(h_n, ref_h)
    for k in range(2):  # round trip
        back = rnn_params_from_torch(fresh, k)
        assert all(close(back[key], mine[k][key]) for key in rnn.RNN_KEYS)
    assert close(rnn_unroll(xs, mine[0], h0[0])[-1], rnn_forward(xs, mine[:1], h0[:1])[1][0])


# --------------------------------------------------------------------------- LSTM


def test_lstm_cell_gradcheck_and_gates():
    p = init_lstm_params(D, H, generator=gen(1), dtype=F64)
    x, h, c = randn(B, D, seed=2), randn(B, H, seed=3), randn(B, H, seed=4)
    keys = list(p)

    def cell(x, h, c, *values):
        return lstm_cell(x, h, c, dict(zip(keys, values, strict=True)))

    args = [t.clone().requires_grad_() for t in (x, h, c, *p.values())]
    assert torch.autograd.gradcheck(cell, args)

    h1, c1, g = lstm_cell_with_gates(x, h, c, p)
    assert close(h1, lstm_cell(x, h, c, p)[0]) and close(c1, lstm_cell(x, h, c, p)[1])
    for name in ("i", "f", "o"):
        assert ((g[name] > 0) & (g[name] < 1)).all()
    assert close(g["f"], torch.sigmoid(x @ p["W_xf"].T + h @ p["W_hf"].T + p["b_f"]))
    assert close(c1, g["f"] * c + g["i"] * g["c_tilde"])  # c_t = f ⊙ c_{t-1} + i ⊙ c̃
    assert close(h1, g["o"] * torch.tanh(c1))  # h_t = o ⊙ tanh(c_t)
    # a single vector works like a batch of one
    assert close(lstm_cell(x[0], h[0], c[0], p)[0], h1[0])


def test_lstm_cell_equals_torch_lstm_cell():
    torch.manual_seed(0)
    cell = nn.LSTMCell(D, H).to(F64)
    x, h, c = randn(B, D, seed=2), randn(B, H, seed=3), randn(B, H, seed=4)
    # an LSTMCell holds the same four tensors as layer 0 of an nn.LSTM
    lstm = nn.LSTM(D, H).to(F64)
    lstm.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    p = lstm_params_from_torch(lstm)
    ref_h, ref_c = cell(x, (h, c))
    got_h, got_c = lstm_cell(x, h, c, p)
    assert close(got_h, ref_h) and close(got_c, ref_c)


def test_scratch_lstm_equals_torch_lstm_from_torch():
    torch.manual_seed(0)
    net = nn.LSTM(D, H, num_layers=2).to(F64)
    xs, h0, c0 = randn(T, B, D, seed=2), randn(2, B, H, seed=3), randn(2, B, H, seed=4)
    layers = [lstm_params_from_torch(net, k) for k in range(2)]
    out, (h_n, c_n) = lstm_forward(xs, layers, (h0, c0))
    ref_out, (ref_h, ref_c) = net(xs, (h0, c0))
    assert close(out, ref_out, 1e-10) and close(h_n, ref_h, 1e-10) and close(c_n, ref_c, 1e-10)
    # the gate mapping: torch's rows [i, f, g, o]; b = bias_ih + bias_hh
    assert close(layers[0]["W_xc"], net.weight_ih_l0[2 * H : 3 * H])
    assert close(layers[1]["b_o"], (net.bias_ih_l1 + net.bias_hh_l1)[3 * H :])
    # zero initial state is the default on both sides
    assert close(lstm_forward(xs, layers)[0], net(xs)[0], 1e-10)


def test_scratch_lstm_equals_torch_lstm_to_torch_and_round_trip():
    mine = [init_lstm_params(D, H, generator=gen(1), dtype=F64), init_lstm_params(H, H, generator=gen(2), dtype=F64)]
    net = nn.LSTM(D, H, num_layers=2).to(F64)
    for k, params in enumerate(mine):
        assert lstm_params_to_torch(params, net, k) is net
    xs = randn(T, B, D, seed=3)
    state = (randn(2, B, H, seed=4), randn(2, B, H, seed=5))
    out, (h_n, c_n) = lstm_forward(xs, mine, state)
    ref_out, (ref_h, ref_c) = net(xs, state)
    assert close(out, ref_out, 1e-10) and close(h_n, ref_h, 1e-10) and close(c_n, ref_c, 1e-10)
    for k in range(2):
        back = lstm_params_from_torch(net, k)
        assert list(back) == list(rnn.LSTM_KEYS)
        assert all(close(back[key], mine[k][key]) for key in rnn.LSTM_KEYS)
    assert net.bias_hh_l0.abs().max() == 0  # the whole bias went into bias_ih


def test_lstm_unroll_returns_states_and_gates_over_time():
    p = init_lstm_params(D, H, generator=gen(1), dtype=F64)
    xs = randn(T, B, D, seed=2)
    hs, cs, gates = lstm_unroll(xs, p)
    assert hs.shape == cs.shape == (T, B, H) and set(gates) == {"i", "f", "o", "c_tilde"}
    h, c = torch.zeros(B, H, dtype=F64), torch.zeros(B, H, dtype=F64)
    for t in range(T):  # the unroll is the cell applied step by step
        h, c, g = lstm_cell_with_gates(xs[t], h, c, p)
        assert close(hs[t], h) and close(cs[t], c) and close(gates["f"][t], g["f"])


def test_char_lstm_equals_the_scratch_path():
    """Fast path (Embedding -> nn.LSTM -> Linear) = the from-scratch equations with mapped weights."""
    model = tiny_lm(vocab=9)
    idx = torch.randint(0, 9, (2, 7), generator=gen(3))
    logits, (h_n, c_n) = model(idx)
    layers = [lstm_params_from_torch(model.lstm, k) for k in range(2)]
    xs = model.embed(idx).transpose(0, 1)  # (T, B, E)
    out, (h2, c2) = lstm_forward(xs, layers)
    ref = rnn_output(out, model.head.weight, model.head.bias).transpose(0, 1)  # (B, T, V)
    assert close(logits, ref, 1e-10) and close(h_n, h2, 1e-10) and close(c_n, c2, 1e-10)
    # forget-gate bias 1 at init, zero output bias: the initial loss is about ln V
    assert close(layers[0]["b_f"], torch.ones(6, dtype=F64))
    assert model.head.bias.abs().max() == 0


def test_char_lstm_trace_shows_the_gates_of_the_fast_model():
    model = tiny_lm(vocab=9)
    idx = torch.randint(0, 9, (2, 7), generator=gen(3))
    trace = char_lstm_trace(model, idx)
    out, _ = model.lstm(model.embed(idx))
    assert len(trace) == 2 and set(trace[1]) == {"h", "c", "i", "f", "o", "c_tilde"}
    assert close(trace[1]["h"], out, 1e-10) and trace[0]["f"].shape == (2, 7, 6)
    with pytest.raises(ValueError, match="model: expected a CharLSTM"):
        char_lstm_trace(nn.LSTM(3, 4), idx)


def test_flops_per_token_hand_count_and_flop_counter():
    cfg = CharLSTMConfig(vocab_size=10, embed_dim=4, hidden_size=8, num_layers=2)
    model = CharLSTM(cfg).to(F64)
    # 2 · (4H(E + H) + 4H(H + H) + HV) = 2 · (384 + 512 + 80)
    assert model.flops_per_token() == 1952
    # the same as torch's FLOP counter on the from-scratch forward (matmuls only)
    n_tokens = 5
    xs = randn(n_tokens, 1, 4)
    layers = [lstm_params_from_torch(model.lstm, k) for k in range(2)]
    with FlopCounterMode(display=False) as counter:
        out, _ = lstm_forward(xs, layers)
        rnn_output(out, model.head.weight, model.head.bias)
    assert counter.get_total_flops() == n_tokens * model.flops_per_token()
    assert model.num_params() == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- sampling


def test_sample_probs_temperature_closed_form():
    z = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, -2.0, 1.0]], dtype=F64)
    for temp in (0.25, 0.7, 1.0, 3.0):
        want = torch.exp(z / temp) / torch.exp(z / temp).sum(-1, keepdim=True)
        got = sample_probs(z, temp)
        assert close(got, want)
        # p_T ∝ p_1^(1/T): dividing the logits, not the probabilities
        p1 = sample_probs(z)
        assert close(got, p1 ** (1 / temp) / (p1 ** (1 / temp)).sum(-1, keepdim=True))
        assert close(got, apply_temperature(z, temp))  # same as chapter 00's helper
    wrong = torch.softmax(torch.softmax(z, -1) / 0.25, -1)  # the source article's bug
    assert not close(sample_probs(z, 0.25), wrong, 1e-3)


def test_sample_probs_top_k_and_argmax_limit():
    z = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9, -0.2], dtype=F64)
    p = sample_probs(z, 0.8, top_k=3)
    kept = torch.tensor([False, True, False, True, True, False])
    assert (p[~kept] == 0).all() and (p[kept] > 0).all()
    assert close(p[kept], torch.softmax(z[kept] / 0.8, -1))
    assert close(sample_probs(z, 1.0, top_k=6), sample_probs(z))
    onehot = F.one_hot(z.argmax(), 6).to(F64)
    assert torch.equal(sample_probs(z, 1e-8), onehot)  # T -> 0 is the argmax
    assert torch.equal(sample_probs(z, 5.0, top_k=1), onehot)  # so is top_k = 1
    batch = torch.stack([z, -z])
    assert close(sample_probs(batch, 0.5, top_k=2)[1], sample_probs(-z, 0.5, top_k=2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=0), "temperature: expected a finite number > 0, got 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(top_k=0), r"top_k: expected an int in \[1, 4\], got 0"),
        (dict(top_k=5), r"top_k: expected an int in \[1, 4\], got 5"),
        (dict(top_k=2.0), "top_k"),
    ],
)
def test_sample_probs_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_probs(torch.zeros(4), **kwargs)


@pytest.mark.parametrize("logits", [torch.zeros(4, dtype=torch.int64), torch.tensor(1.0), [0.1, 0.2]])
def test_sample_probs_bad_logits(logits):
    with pytest.raises(ValueError, match="logits: expected a floating-point tensor of shape"):
        sample_probs(logits)


class Counting(nn.Module):
    """Wraps a model and records how many tokens each forward call reads."""

    def __init__(self, inner: CharLSTM):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, idx, state=None):
        self.calls.append(idx.shape[1])
        return self.inner(idx, state)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, 3)])
def test_generate_streaming_equals_recomputing_the_context(temperature, top_k):
    model = tiny_lm()
    prompt, n = [1, 2, 3, 4], 25
    streamed = list(generate(model, torch.tensor(prompt), n, temperature, top_k, generator=gen(5)))
    g, ctx = gen(5), list(prompt)
    with torch.no_grad():
        for _ in range(n):  # the slow way: re-read everything from a zero state every step
            logits, _ = model(torch.tensor([ctx]), None)
            ctx.append(int(torch.multinomial(sample_probs(logits[0, -1], temperature, top_k), 1, generator=g)))
    assert streamed == ctx[len(prompt) :]
    assert all(0 <= t < 7 for t in streamed)


def test_generate_reads_the_prompt_once_and_leaks_nothing():
    model = Counting(tiny_lm())
    model.train()
    stream = generate(model, [0, 3, 2, 5, 1], 6, generator=gen(0))
    assert model.calls == []  # lazy
    next(stream)
    assert model.calls == [5]  # the whole prompt in one forward
    assert torch.is_grad_enabled() and model.training  # no grad mode / eval mode leaked past the yield
    rest = list(stream)
    assert len(rest) == 5 and model.calls == [5, 1, 1, 1, 1, 1]  # then one token per step, no extra call
    assert model.training


def test_generate_bad_arguments():
    model = tiny_lm()
    with pytest.raises(ValueError, match="prompt_ids: expected at least one id"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match=r"prompt_ids: expected ids in \[0, 7\)"):
        generate(model, [1, 7], 3)
    with pytest.raises(ValueError, match="prompt_ids: expected a 1-D integer tensor"):
        generate(model, torch.tensor([[1, 2]]), 3)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 0, got -1"):
        generate(model, [1], -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 3, temperature=0.0)
    with pytest.raises(ValueError, match=r"top_k: expected an int in \[1, 7\], got 8"):
        generate(model, [1], 3, top_k=8)
    with pytest.raises(ValueError, match="model: expected an nn.Module"):
        generate(lambda x, s: x, [1], 3)
    assert list(generate(model, [1], 0)) == []


def test_generate_text():
    text = "to be or not to be\n"
    tok = CharTokenizer.from_text(text)
    model = tiny_lm(vocab=tok.vocab_size)
    out = generate_text(model, tok, "to ", 30, temperature=0.8, generator=gen(1))
    assert out.startswith("to ") and len(out) == 33 and set(out) <= set(text)
    new = generate_text(model, tok, "to ", 30, temperature=0.8, generator=gen(1), include_prompt=False)
    assert new == out[3:]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        generate_text(model, tok, "xyz", 3)
    with pytest.raises(ValueError, match="prompt: expected a non-empty str"):
        generate_text(model, tok, "", 3)


# --------------------------------------------------------------------------- TBPTT, training, evaluation


def test_tbptt_streams_are_contiguous_across_steps():
    ids = torch.arange(1000)
    batches = tbptt_batches(ids, batch_size=4, seq_len=10)
    L = 999 // 4  # 249 characters per stream
    assert len(batches) == L // 10 == 24
    xs, ys, resets = zip(*(batches(s) for s in range(2 * len(batches))), strict=True)
    assert [s for s, r in enumerate(resets) if r] == [0, 24]  # reset at the start of each pass
    for k in range(len(batches) - 1):
        assert torch.equal(xs[k + 1][:, 0], ys[k][:, -1])  # the next chunk continues each stream
    stream = torch.cat(xs[:24], dim=1)  # (4, 240)
    for b in range(4):
        assert torch.equal(stream[b], ids[b * L : b * L + 240])
        assert torch.equal(torch.cat(ys[:24], dim=1)[b], ids[b * L + 1 : b * L + 241])
    assert torch.equal(xs[24], xs[0])  # the second pass walks the same way
    assert xs[0].shape == (4, 10) and xs[0].is_contiguous()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.arange(40), 4, 10), r"ids: expected at least batch_size \* seq_len \+ 1 = 41 ids, got 40"),
        ((torch.arange(100.0), 4, 10), "ids: expected a 1-D int64 tensor"),
        ((torch.arange(100).view(10, 10), 2, 3), "ids: expected a 1-D int64 tensor"),
        ((torch.arange(100), 0, 10), "batch_size: expected an int >= 1, got 0"),
        ((torch.arange(100), 2, 2.5), "seq_len: expected an int >= 1, got 2.5"),
    ],
)
def test_tbptt_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        tbptt_batches(*args)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.55)  # halfway down the cosine
    assert warmup_cosine(100, 100, 10, min_ratio=0.2) == pytest.approx(0.2)
    assert warmup_cosine(0, 100, 0) == pytest.approx(1.0)


def test_evaluate_is_the_exact_sequential_nll():
    model = tiny_lm(vocab=7)
    ids = torch.randint(0, 7, (61,), generator=gen(2))
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
        want = F.cross_entropy(logits[0], ids[1:]).item()
    # one stream read in chunks of 7 with a carried state = one pass over the whole text
    assert evaluate_nats_per_char(model, ids, batch_size=1, seq_len=7) == pytest.approx(want, abs=1e-12)
    # three streams of 20: each one scored from a zero state
    with torch.no_grad():
        x, y = ids[:60].view(3, 20), ids[1:61].view(3, 20)
        want3 = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert evaluate_nats_per_char(model, ids, batch_size=3, seq_len=6) == pytest.approx(want3, abs=1e-12)
    with pytest.raises(ValueError, match=r"ids: expected at least batch_size \+ 1 = 9 ids, got 8"):
        evaluate_nats_per_char(model, ids[:8], batch_size=8)


TEXT = "hello world. " * 60  # a repetitive text a small LSTM learns quickly


def small_model(tok: CharTokenizer, cls=CharLSTM, **kw) -> CharLSTM:
    torch.manual_seed(0)
    return cls(CharLSTMConfig(tok.vocab_size, embed_dim=16, hidden_size=48, num_layers=1), **kw)


def test_char_lstm_learns_a_repetitive_text():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    model = small_model(tok)
    hist = train_char_lstm(model, ids, 100, batch_size=8, seq_len=16, lr=1e-2, log_every=25, progress=False)
    assert hist.steps == list(range(100)) and "grad_norm" in hist.metrics
    ln_v = math.log(tok.vocab_size)
    assert hist.losses[0] == pytest.approx(ln_v, abs=0.3)  # starts at about ln V
    assert sum(hist.losses[-10:]) / 10 < 0.1 * ln_v
    assert evaluate_nats_per_char(model, ids, batch_size=4, seq_len=32) < 0.1 * ln_v
    assert model.training  # fit restores the mode
    out = generate_text(model, tok, "hello", 20, top_k=1)
    assert out == "hello world. hello world."


class Interrupting(CharLSTM):
    """A CharLSTM whose forward raises KeyboardInterrupt at call number `at` (as Ctrl-C would)."""

    def __init__(self, config, at: int | None = None):
        super().__init__(config)
        self.at, self.calls = at, 0

    def forward(self, idx, state=None):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(idx, state)


def test_train_char_lstm_resumes_from_a_checkpoint(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    kw = dict(batch_size=8, seq_len=16, lr=1e-2, log_every=7, progress=False)
    assert len(tbptt_batches(ids, 8, 16)) == 6  # a pass is 6 steps
    straight = small_model(tok)
    hist = train_char_lstm(straight, ids, 40, **kw)

    path = tmp_path / "lstm.pt"
    first = small_model(tok, Interrupting, at=31)  # interrupted while running step 30 = a reset step
    with pytest.raises(KeyboardInterrupt):
        train_char_lstm(first, ids, 40, checkpoint=path, **kw)
    assert path.exists()
    resumed = small_model(tok)
    hist2 = train_char_lstm(resumed, ids, 40, checkpoint=path, **kw)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert hist2.losses == hist.losses
    # the finished run just loads
    again = small_model(tok)
    assert train_char_lstm(again, ids, 40, checkpoint=path, **kw).losses == hist.losses
    assert torch.equal(again.head.weight, straight.head.weight)


def test_train_char_lstm_bad_arguments():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    model = small_model(tok)
    with pytest.raises(ValueError, match="lr: expected a positive finite number, got 0"):
        train_char_lstm(model, ids, 10, lr=0)
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        train_char_lstm(model, ids, 0)
    with pytest.raises(ValueError, match="ids: expected at least"):
        train_char_lstm(model, ids[:100], 10, batch_size=8, seq_len=16)
    with pytest.raises(ValueError, match="model: expected an nn.Module"):
        train_char_lstm("model", ids, 10)


# --------------------------------------------------------------------------- bad inputs of the teaching path


def test_teaching_path_bad_inputs():
    p = init_rnn_params(D, H, dtype=F64)
    x, h = randn(B, D), randn(B, H)
    with pytest.raises(ValueError, match=r"x: expected last dimension 4, got shape \(3, 7\)"):
        rnn_cell(randn(B, 7), h, p["W_xh"], p["W_hh"], p["b_h"])
    with pytest.raises(ValueError, match=r"h_prev: expected shape \(2, 5\) \(batch as x\), got \(3, 5\)"):
        rnn_cell(x[:2], h, p["W_xh"], p["W_hh"], p["b_h"])
    with pytest.raises(ValueError, match=r"W_hh: expected a floating-point tensor of shape \(5, 5\)"):
        rnn_cell(x, h, p["W_xh"], p["W_hh"][:4], p["b_h"])
    with pytest.raises(ValueError, match=r"xs: expected a floating-point tensor of shape \(\*, \*, 4\)"):
        rnn_unroll(x, p)
    with pytest.raises(ValueError, match=r"xs: expected at least one time step, got shape \(0, 3, 4\)"):
        rnn_unroll(randn(0, B, D), p)
    with pytest.raises(ValueError, match=r"layers\[1\]: expected hidden size 5 \(every layer has the same"):
        rnn_forward(randn(T, B, D), [p, init_rnn_params(H, 3, dtype=F64)])
    with pytest.raises(ValueError, match=r"params: expected a dict with keys \['W_xh', 'W_hh', 'b_h'\]"):
        rnn_unroll(randn(T, B, D), {"W_xh": p["W_xh"]})
    with pytest.raises(ValueError, match=r"dhs: expected a floating-point tensor of shape \(6, 3, 5\)"):
        rnn_bptt(randn(T, B, D), h, p, randn(T, B, 4))
    with pytest.raises(ValueError, match=r"dh: expected last dimension 5"):
        rnn_cell_backward(randn(B, 4), x, h, h, p["W_xh"], p["W_hh"])
    q = init_lstm_params(D, H, dtype=F64)
    with pytest.raises(ValueError, match=r"params\['b_f'\]: expected a floating-point tensor of shape \(5,\)"):
        lstm_cell(x, h, h, q | {"b_f": torch.zeros(4, dtype=F64)})
    with pytest.raises(ValueError, match=r"c_prev: expected shape \(3, 5\)"):
        lstm_cell(x, h, h[:1], q)
    with pytest.raises(ValueError, match=r"layers\[1\]: expected input size 5 \(the hidden size of layer 0\), got 4"):
        lstm_forward(randn(T, B, D), [q, q])
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\): expected a floating-point tensor of shape \(1, 3, 5\)"):
        lstm_forward(randn(T, B, D), [q], (randn(2, B, H), randn(1, B, H)))
    with pytest.raises(ValueError, match="hidden_size: expected an int >= 1, got 0"):
        init_lstm_params(D, 0)
    with pytest.raises(ValueError, match="layer: expected an int in \\[0, 1\\], got 2"):
        lstm_params_from_torch(nn.LSTM(D, H, 2), layer=2)
    with pytest.raises(ValueError, match="lstm: expected a torch.nn.LSTM, got GRU"):
        lstm_params_from_torch(nn.GRU(D, H))
    with pytest.raises(ValueError, match="rnn: expected nonlinearity='tanh'"):
        rnn_params_from_torch(nn.RNN(D, H, nonlinearity="relu"))
    with pytest.raises(
        ValueError, match="layer 0 of the module has input size 3 and hidden size 5, but params have input size 4"
    ):
        lstm_params_to_torch(q, nn.LSTM(3, H).to(F64))


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, -0.5])
def test_char_lstm_forget_bias_init(forget_bias):
    """b_f (rows H:2H of torch's [i, f, g, o] biases, summed) is config.forget_bias in every layer; other gates 0-mean."""
    cfg = CharLSTMConfig(vocab_size=7, embed_dim=4, hidden_size=8, num_layers=2, forget_bias=forget_bias)
    model = CharLSTM(cfg)
    H = cfg.hidden_size
    for k in range(cfg.num_layers):
        b = getattr(model.lstm, f"bias_ih_l{k}") + getattr(model.lstm, f"bias_hh_l{k}")
        assert torch.equal(b[H : 2 * H], torch.full((H,), forget_bias))
        assert not torch.allclose(b[:H], torch.full((H,), forget_bias))  # only the forget gate is set
    assert CharLSTMConfig(vocab_size=7).forget_bias == 1.0


def test_char_lstm_bad_inputs():
    with pytest.raises(ValueError, match="vocab_size: expected an int >= 1, got 0"):
        CharLSTMConfig(vocab_size=0)
    with pytest.raises(ValueError, match=r"dropout: expected a number in \[0, 1\), got 1.0"):
        CharLSTMConfig(vocab_size=5, dropout=1.0)
    with pytest.raises(ValueError, match="forget_bias: expected a finite number, got nan"):
        CharLSTMConfig(vocab_size=5, forget_bias=float("nan"))
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"idx: expected an int64 tensor of shape \(B, T\), got torch.int64 \(5,\)"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"state\[0\] \(h\): expected shape \(2, 1, 6\)"):
        model(torch.zeros(1, 3, dtype=torch.int64), (torch.zeros(2, 2, 6), torch.zeros(2, 2, 6)))


def test_char_lstm_under_cpu_autocast_keeps_the_lstm_in_fp32():
    """bf16 autocast must not crash on kernels without bf16 LSTMs: the LSTM falls back to fp32."""
    model = tiny_lm(vocab=9, dtype=torch.float32)
    idx = torch.randint(0, 9, (2, 7), generator=gen(3))
    ref, _ = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, (h, c) = model(idx)
        again, _ = model(idx[:, :1], (h.bfloat16(), c.bfloat16()))  # a carried low-precision state is fine
    assert h.dtype == torch.float32 and torch.allclose(low.float(), ref, atol=0.02)
    assert again.shape == (2, 1, 9)


# --------------------------------------------------------------------------- GPU fast path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_char_lstm_on_cuda_with_bf16_autocast():
    from aigc_lib.runtime import autocast

    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    device = torch.device("cuda")
    model = small_model(tok).to(device)
    idx = ids[:64].view(2, 32).to(device)
    with torch.no_grad():
        ref, _ = model(idx)
        with autocast(device):
            low, state = model(idx)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.05)
    hist = train_char_lstm(model, ids, 100, batch_size=8, seq_len=16, lr=1e-2, log_every=25, progress=False)
    assert sum(hist.losses[-10:]) / 10 < 0.1 * math.log(tok.vocab_size)
    assert evaluate_nats_per_char(model, ids, batch_size=4, seq_len=32) < 0.3
    assert generate_text(model, tok, "hello", 20, top_k=1, generator=gen(0)) == "hello world. hello world."


# --------------------------------------------------------------------------- the sliding window, for an LSTM


@pytest.mark.parametrize(("block", "stride", "n"), [(8, 2, 40), (8, 8, 33), (5, 1, 23), (6, 4, 7)])
def test_sliding_window_nll_gives_an_lstm_a_fresh_state_per_window(block, stride, n):
    """generation.sliding_window_nll on an LSTM: each target scored once, from the first window that
    reaches it, the LSTM starting from zeros at the window's start (the context a GPT would have)."""
    model = tiny_lm(seed=3)
    ids = torch.randint(7, (n,), generator=torch.Generator().manual_seed(2))
    last = n - 1
    ends = list(range(block, last, stride)) + [last]
    total, done = 0.0, 0
    with torch.no_grad():
        for end in ends:
            logp = torch.log_softmax(model(ids[end - block : end][None])[0][0], dim=-1)  # zero state
            for t in range(done, end):
                total -= logp[t - (end - block), ids[t + 1]].item()
            done = end
    got = sliding_window_nll(model, ids, block, stride, batch_size=3)
    assert got == pytest.approx(total / last, rel=1e-9)
    if n == block + 1:  # one window: the sequential NLL from a zero state
        assert got == pytest.approx(evaluate_nats_per_char(model, ids, batch_size=1), rel=1e-9)


def test_sliding_window_nll_of_one_window_is_the_stream_and_checks_its_arguments():
    """One window covering the text is the sequential NLL; and the messages name the argument."""
    model = tiny_lm(seed=4)
    ids = torch.randint(7, (30,), generator=torch.Generator().manual_seed(5))
    assert sliding_window_nll(model, ids, 29, 29) == pytest.approx(evaluate_nats_per_char(model, ids, batch_size=1))
    with pytest.raises(ValueError, match=r"stride: expected an int in \[1, 8\], got 9"):
        sliding_window_nll(model, ids, 8, 9)
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor of at least block \\+ 1 = 31"):
        sliding_window_nll(model, ids, 30, 1)


# --------------------------------------------------------------------------- top-p (nucleus) sampling


def nucleus_by_hand(probs: list[float], p: float) -> list[float]:
    """Keep the most probable tokens, in order, until their mass reaches p; renormalise (a loop)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = [], 0.0
    for i in order:
        if mass >= p:
            break
        kept.append(i)
        mass += probs[i]
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


@pytest.mark.parametrize("p", [0.05, 0.5, 0.7, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_nucleus_and_renormalises(p):
    logits = torch.tensor([[1.0, 3.0, 0.5, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
    got = sample_probs(logits, 0.8, top_p=p)
    for row, out in zip(torch.softmax(logits / 0.8, -1), got, strict=True):
        assert out.tolist() == pytest.approx(nucleus_by_hand(row.tolist(), p), abs=1e-12)
    assert torch.equal(sample_probs(logits, top_p=1.0), sample_probs(logits))  # p = 1: nothing cut
    assert sample_probs(logits, top_p=1e-9)[0].argmax() == 1 and sample_probs(logits, top_p=1e-9)[0].max() == 1.0


def test_top_p_with_top_k_and_bad_values():
    logits = torch.tensor([1.0, 3.0, 0.5, 2.0, -1.0])
    both = sample_probs(logits, top_k=2, top_p=0.99)  # top-k first: only 2 candidates are left to cut
    assert (both > 0).sum() == 2
    for bad in (0, 1.5, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match=r"top_p: expected a number in \(0, 1\]"):
            sample_probs(logits, top_p=bad)
