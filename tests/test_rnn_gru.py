"""Chapter 01 library, the GRU and the attention encoder–decoder: the GRU equations vs nn.GRU (values
and weight gradients), Bahdanau's additive attention vs a loop over positions, and AttentionSeq2Seq
vs the same equations by hand, its PAD handling, greedy decoding and chapter 04's trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn

from aigc_lib import rnn
from aigc_lib.rnn import (
    BOS,
    EOS,
    PAD,
    AdditiveAttention,
    AttentionSeq2Seq,
    AttentionSeq2SeqConfig,
    gru_cell,
    gru_cell_with_gates,
    gru_params_from_torch,
    gru_params_to_torch,
    gru_unroll,
    init_gru_params,
)
from aigc_lib.transformer import reversal_batch, train_seq2seq

B, D, H, T = 3, 4, 5, 6


def by_hand(x, h, p):
    """The GRU step in torch's form, written out again: r, z, n, then the interpolation."""
    r = torch.sigmoid(x @ p["W_xr"].T + h @ p["W_hr"].T + p["b_r"])
    z = torch.sigmoid(x @ p["W_xz"].T + h @ p["W_hz"].T + p["b_z"])
    n = torch.tanh(x @ p["W_xn"].T + p["b_xn"] + r * (h @ p["W_hn"].T + p["b_hn"]))
    return (1 - z) * n + z * h, r, z, n


def stacked(xs, layers, h0=None):
    """A stacked GRU from gru_unroll, layer l+1 reading layer l's states: (out, h_n) as nn.GRU."""
    out, h_n = xs, []
    for k, params in enumerate(layers):
        out = gru_unroll(out, params, None if h0 is None else h0[k])
        h_n.append(out[-1])
    return out, torch.stack(h_n)


# --------------------------------------------------------------------------- GRU: equations


def test_gru_cell_is_the_equation_with_gates_and_passes_gradcheck():
    p = init_gru_params(D, H, generator=gen(1), dtype=F64)
    assert list(p) == list(rnn.GRU_KEYS)
    assert all(v.abs().max() <= H**-0.5 and not v.requires_grad for v in p.values())  # U(-1/√H, 1/√H)
    x, h = randn(B, D, seed=2), randn(B, H, seed=3)
    want, r, z, n = by_hand(x, h, p)
    h1, gates = gru_cell_with_gates(x, h, p)
    assert close(h1, want) and close(gru_cell(x, h, p), want)
    assert close(gates["r"], r) and close(gates["z"], z) and close(gates["n"], n)
    assert ((gates["r"] > 0) & (gates["r"] < 1)).all() and ((gates["z"] > 0) & (gates["z"] < 1)).all()
    assert close(gru_cell(x[1], h[1], p), want[1])  # a single vector works like a batch of one
    keys = list(p)

    def cell(x, h, *values):
        return gru_cell(x, h, dict(zip(keys, values, strict=True)))

    args = [t.clone().requires_grad_() for t in (x[:2], h[:2], *p.values())]
    assert torch.autograd.gradcheck(cell, args)


def test_gru_update_gate_one_copies_the_state():
    """z_t = 1 keeps h_{t-1} whatever the input: the GRU's path for gradients that do not vanish."""
    p = init_gru_params(D, H, generator=gen(1), dtype=F64)
    p["b_z"] = torch.full((H,), 60.0, dtype=F64)  # σ(60) = 1 in float64
    p["W_xz"], p["W_hz"] = torch.zeros(H, D, dtype=F64), torch.zeros(H, H, dtype=F64)
    h = randn(B, H, seed=3)
    assert close(gru_cell(randn(B, D, seed=2), h, p), h)


def test_gru_cell_equals_torch_gru_cell():
    torch.manual_seed(0)
    cell = nn.GRUCell(D, H).to(F64)
    gru = nn.GRU(D, H).to(F64)  # a GRUCell holds the same four tensors as layer 0 of an nn.GRU
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    p = gru_params_from_torch(gru)
    x, h = randn(B, D, seed=2), randn(B, H, seed=3)
    assert close(gru_cell(x, h, p), cell(x, h))
    assert close(gru_cell(x[0], h[0], p), cell(x[0], h[0]))


def test_scratch_gru_equals_torch_gru_from_torch():
    torch.manual_seed(0)
    net = nn.GRU(D, H, num_layers=3).to(F64)
    xs, h0 = randn(T, B, D, seed=2), randn(3, B, H, seed=3)
    layers = [gru_params_from_torch(net, k) for k in range(3)]
    out, h_n = stacked(xs, layers, h0)
    ref_out, ref_h = net(xs, h0)
    assert close(out, ref_out) and close(h_n, ref_h)
    assert close(stacked(xs, layers)[0], net(xs)[0])  # zero initial state is the default on both sides
    # the mapping: rows [r, z, n]; b_r, b_z sums; the n block's two biases apart
    assert close(layers[0]["W_xz"], net.weight_ih_l0[H : 2 * H]) and close(layers[1]["W_hn"], net.weight_hh_l1[2 * H :])
    assert close(layers[2]["b_r"], (net.bias_ih_l2 + net.bias_hh_l2)[:H])
    assert close(layers[0]["b_xn"], net.bias_ih_l0[2 * H :]) and close(layers[0]["b_hn"], net.bias_hh_l0[2 * H :])
    # merging the n biases (as for the LSTM) would be wrong: r_t multiplies b_hn
    merged = dict(layers[0], b_xn=layers[0]["b_xn"] + layers[0]["b_hn"], b_hn=torch.zeros(H, dtype=F64))
    assert not close(gru_unroll(xs, merged, h0[0]), gru_unroll(xs, layers[0], h0[0]), 1e-6)


def test_scratch_gru_equals_torch_gru_to_torch_and_round_trip():
    mine = [init_gru_params(D if k == 0 else H, H, generator=gen(10 + k), dtype=F64) for k in range(3)]
    net = nn.GRU(D, H, num_layers=3).to(F64)
    for k, params in enumerate(mine):
        assert gru_params_to_torch(params, net, k) is net
    xs, h0 = randn(T, B, D, seed=3), randn(3, B, H, seed=4)
    out, h_n = stacked(xs, mine, h0)
    ref_out, ref_h = net(xs, h0)
    assert close(out, ref_out) and close(h_n, ref_h)
    for k in range(3):
        back = gru_params_from_torch(net, k)
        assert list(back) == list(rnn.GRU_KEYS)
        assert all(close(back[key], mine[k][key]) for key in rnn.GRU_KEYS)
    # bias_ih = [b_r, b_z, b_xn], bias_hh = [0, 0, b_hn]
    assert net.bias_hh_l1[: 2 * H].abs().max() == 0 and close(net.bias_hh_l1[2 * H :], mine[1]["b_hn"])
    assert close(net.bias_ih_l2[2 * H :], mine[2]["b_xn"])


def test_gru_without_bias_maps_zero_biases_and_refuses_others():
    torch.manual_seed(0)
    net = nn.GRU(D, H, bias=False).to(F64)
    p = gru_params_from_torch(net)
    assert all(p[k].abs().max() == 0 for k in ("b_r", "b_z", "b_xn", "b_hn"))
    xs = randn(T, B, D, seed=2)
    assert close(gru_unroll(xs, p), net(xs)[0])
    gru_params_to_torch(p, net)  # zero biases: fine
    with pytest.raises(ValueError, match="params: the module has bias=False but the biases are not all zero"):
        gru_params_to_torch(dict(p, b_hn=torch.ones(H, dtype=F64)), net)


def test_gru_weight_gradients_equal_nn_gru_autograd():
    torch.manual_seed(0)
    net = nn.GRU(D, H).to(F64)
    xs, h0, w = randn(T, B, D, seed=2), randn(1, B, H, seed=3), randn(T, B, H, seed=4)
    leaves = {k: v.clone().requires_grad_() for k, v in gru_params_from_torch(net).items()}
    xs_, h0_ = xs.clone().requires_grad_(), h0.clone().requires_grad_()
    (gru_unroll(xs_, leaves, h0_[0]) * w).sum().backward()  # L = Σ_t <hs[t], w[t]>
    xs_ref, h0_ref = xs.clone().requires_grad_(), h0.clone().requires_grad_()
    (net(xs_ref, h0_ref)[0] * w).sum().backward()
    for i, g in enumerate(rnn.TORCH_GRU_GATE_ORDER):
        rows = slice(i * H, (i + 1) * H)
        assert close(leaves[f"W_x{g}"].grad, net.weight_ih_l0.grad[rows])
        assert close(leaves[f"W_h{g}"].grad, net.weight_hh_l0.grad[rows])
    for g, i in (("r", 0), ("z", 1)):  # b = b_ih + b_hh: both torch biases get b's gradient
        rows = slice(i * H, (i + 1) * H)
        assert close(leaves[f"b_{g}"].grad, net.bias_ih_l0.grad[rows])
        assert close(leaves[f"b_{g}"].grad, net.bias_hh_l0.grad[rows])
    assert close(leaves["b_xn"].grad, net.bias_ih_l0.grad[2 * H :])
    assert close(leaves["b_hn"].grad, net.bias_hh_l0.grad[2 * H :])
    assert close(xs_.grad, xs_ref.grad) and close(h0_.grad, h0_ref.grad)


def test_gru_unroll_is_the_cell_step_by_step():
    p = init_gru_params(D, H, generator=gen(1), dtype=F64)
    xs, h0 = randn(T, B, D, seed=2), randn(B, H, seed=3)
    hs = gru_unroll(xs, p, h0)
    h = h0
    for t in range(T):
        h = gru_cell(xs[t], h, p)
        assert close(hs[t], h)


P = init_gru_params(D, H, generator=gen(1), dtype=F64)
X, HP = randn(B, D, seed=2), randn(B, H, seed=3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gru_cell(X, HP, {k: v for k, v in P.items() if k != "b_hn"}), r"params: expected a dict with keys"),
        (lambda: gru_cell(X, HP, [1, 2]), r"params: expected a dict with keys .* got list"),
        (
            lambda: gru_cell(X, HP, dict(P, W_hn=torch.zeros(H, H + 1, dtype=F64))),
            r"params\['W_hn'\]: expected .*\(5, 5\)",
        ),
        (lambda: gru_cell(X, HP, dict(P, b_z=torch.zeros(H))), r"params\['b_z'\]: expected dtype torch.float64"),
        (lambda: gru_cell(X[:, :3], HP, P), r"x: expected last dimension 4, got shape \(3, 3\)"),
        (lambda: gru_cell(X, HP[:2], P), r"h_prev: expected shape \(3, 5\) \(batch as x\), got \(2, 5\)"),
        (lambda: gru_cell(X.long(), HP, P), r"x: expected a floating-point tensor"),
        (lambda: gru_unroll(X, P), r"xs: expected a floating-point tensor of shape \(\*, \*, 4\)"),
        (lambda: gru_unroll(torch.zeros(0, B, D, dtype=F64), P), r"xs: expected at least one time step"),
        (lambda: gru_unroll(randn(T, B, D), P, randn(2, H)), r"h0: expected a floating-point tensor of shape \(3, 5\)"),
        (lambda: init_gru_params(0, H), r"input_size: expected an int >= 1, got 0"),
        (lambda: init_gru_params(D, H, dtype=torch.int64), r"dtype: expected a floating torch dtype"),
        (lambda: gru_params_from_torch(nn.LSTM(D, H)), r"gru: expected a torch.nn.GRU, got LSTM"),
        (lambda: gru_params_from_torch(nn.GRU(D, H, bidirectional=True)), r"gru: bidirectional GRUs are not supported"),
        (lambda: gru_params_from_torch(nn.GRU(D, H, num_layers=2), 2), r"layer: expected an int in \[0, 1\], got 2"),
        (lambda: gru_params_to_torch(P, nn.GRU(D + 1, H)), r"params: layer 0 of the module has input size 5"),
        (lambda: gru_params_to_torch(P, nn.GRU(D, H, num_layers=2), 1), r"layer 1 of the module has input size 5"),
    ],
)
def test_gru_bad_inputs_say_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- additive attention


def attention_by_loop(attn: AdditiveAttention, q, keys, padding):
    """e_s = vᵀ tanh(W_q q + W_k k_s) one position at a time, softmax over the real ones."""
    contexts, weights = [], []
    for b in range(keys.shape[0]):
        real = [s for s in range(keys.shape[1]) if padding[b, s]]
        e = torch.stack(
            [attn.v.weight[0] @ torch.tanh(attn.W_q.weight @ q[b] + attn.W_k.weight @ keys[b, s]) for s in real]
        )
        a = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
        w = torch.zeros(keys.shape[1], dtype=F64)
        w[real] = a
        weights.append(w)
        contexts.append(sum(a_s * keys[b, s] for a_s, s in zip(a, real, strict=True)))
    return torch.stack(contexts), torch.stack(weights)


def test_additive_attention_equals_a_loop_and_ignores_pad():
    torch.manual_seed(0)
    attn = AdditiveAttention(4, 6, 5).to(F64)
    q, keys = randn(3, 4, seed=1), randn(3, 7, 6, seed=2)
    padding = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
    context, w = attn(q, keys, padding)
    assert context.shape == (3, 6) and w.shape == (3, 7)
    want_c, want_w = attention_by_loop(attn, q, keys, padding)
    assert close(context, want_c) and close(w, want_w)
    assert close(w.sum(-1), torch.ones(3, dtype=F64)) and (w[~padding] == 0).all() and (w[padding] > 0).all()
    # what sits at a PAD key changes nothing
    noisy = keys.masked_fill(~padding[..., None], 1e3)
    assert close(attn(q, noisy, padding)[0], context) and close(attn(q, noisy, padding)[1], w)
    # no mask = every key is real
    assert close(attn(q, keys)[0], attn(q, keys, torch.ones(3, 7, dtype=torch.bool))[0])


def test_additive_attention_row_without_real_keys_is_zero_not_nan():
    attn = AdditiveAttention(4, 6, 5).to(F64)
    q, keys = randn(2, 4, seed=1, requires_grad=True), randn(2, 3, 6, seed=2)
    padding = torch.tensor([[True, True, False], [False, False, False]])
    context, w = attn(q, keys, padding)
    assert (w[1] == 0).all() and (context[1] == 0).all() and torch.isfinite(context).all()
    context.sum().backward()
    assert torch.isfinite(q.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((randn(2, 3), randn(2, 5, 6), None), r"query: expected a floating-point tensor of shape \(\*, 4\)"),
        ((randn(2, 4), randn(3, 5, 6), None), r"keys: expected a floating-point tensor of shape \(2, \*, 6\)"),
        ((randn(2, 4), randn(2, 5, 6, dtype=torch.float32), None), r"keys: expected dtype torch.float64"),
        ((randn(2, 4), randn(2, 5, 6), torch.ones(2, 5)), r"key_padding: expected a bool tensor of shape \(2, 5\)"),
        ((randn(2, 4), randn(2, 5, 6), torch.ones(2, 4, dtype=torch.bool)), r"key_padding: .* got torch.bool \(2, 4\)"),
    ],
)
def test_additive_attention_bad_inputs(args, message):
    attn = AdditiveAttention(4, 6, 5).to(F64)
    with pytest.raises(ValueError, match=message):
        attn(*args)


# --------------------------------------------------------------------------- the encoder–decoder

CFG = dict(src_vocab=13, tgt_vocab=13, max_len=12, embed_dim=8, hidden_size=12, attn_dim=10)


def tiny_rnnsearch(seed: int = 0) -> AttentionSeq2Seq:
    torch.manual_seed(seed)
    model = AttentionSeq2Seq(AttentionSeq2SeqConfig(**CFG)).to(F64).eval()
    with torch.no_grad():  # O(1) random weights: attention far from uniform, so masking mistakes show
        for p in model.parameters():
            p.normal_(0, 0.5, generator=gen(seed + 1))
    return model


def _direction(model: AttentionSeq2Seq, reverse: bool) -> dict[str, torch.Tensor]:
    """One direction of the bidirectional encoder as GRU parameters for gru_unroll."""
    uni = nn.GRU(model.config.embed_dim, model.config.hidden_size).to(F64)
    suffix = "_reverse"
    uni.load_state_dict(
        {k.removesuffix(suffix): v for k, v in model.encoder.state_dict().items() if k.endswith(suffix) == reverse}
    )
    return gru_params_from_torch(uni)


def rnnsearch_by_hand(model: AttentionSeq2Seq, src, tgt_in):
    """Bahdanau's equations with this file's parts: gru_unroll both ways over each row's real tokens,
    s_0 = tanh(W_s h←_1), then per step c_t from s_{t-1}, s_t = gru_cell, logits from [s_t; c_t; e]."""
    fwd, bwd = _direction(model, False), _direction(model, True)
    cell = nn.GRU(model.decoder.input_size, model.decoder.hidden_size).to(F64)
    cell.load_state_dict({f"{k}_l0": v for k, v in model.decoder.state_dict().items()})
    dec = gru_params_from_torch(cell)
    S, Hh = src.shape[1], model.config.hidden_size
    annotations = torch.zeros(src.shape[0], S, 2 * Hh, dtype=F64)
    for b in range(src.shape[0]):
        n = int((src[b] != PAD).sum())
        xs = model.src_tok(src[b, :n])[:, None]  # (n, 1, E)
        annotations[b, :n, :Hh] = gru_unroll(xs, fwd)[:, 0]
        annotations[b, :n, Hh:] = gru_unroll(xs.flip(0), bwd).flip(0)[:, 0]
    s = torch.tanh(model.init_state(annotations[:, 0, Hh:]))
    logits, alphas = [], []
    for t in range(tgt_in.shape[1]):
        e = model.tgt_tok(tgt_in[:, t])
        c, a = model.attn(s, annotations, src != PAD)
        s = gru_cell(torch.cat([e, c], -1), s, dec)
        logits.append(model.head(torch.cat([s, c, e], -1)))
        alphas.append(a)
    return torch.stack(logits, 1), torch.stack(alphas, 1), annotations


@torch.no_grad()
def test_attention_seq2seq_is_the_equations_by_hand():
    model = tiny_rnnsearch()
    src, tgt_in, _ = reversal_batch(5, 6, gen(7))
    assert (src == PAD).any()
    want_logits, want_alpha, want_h = rnnsearch_by_hand(model, src, tgt_in)
    h, padding, s0 = model.encode(src)
    assert close(h, want_h, 1e-10) and torch.equal(padding, src != PAD) and s0.shape == (5, 12)
    assert close(model(src, tgt_in), want_logits, 1e-10)
    assert close(model.attention_maps(src, tgt_in), want_alpha, 1e-10)


def test_attention_seq2seq_shapes_padding_and_causality():
    model = tiny_rnnsearch()
    src, tgt_in, _ = reversal_batch(4, 6, gen(7))
    logits = model(src, tgt_in)
    assert logits.shape == (4, 7, 13) and logits.dtype == F64
    longer = F.pad(src, (0, 3), value=PAD)  # more padding on the source changes nothing
    assert close(model(longer, tgt_in), logits, 1e-10)
    maps = model.attention_maps(src, tgt_in)
    assert maps.shape == (4, 7, 6) and close(maps.sum(-1), torch.ones(4, 7, dtype=F64))
    assert (maps * (src == PAD)[:, None]).abs().max() == 0
    assert close(model.attention_maps(longer, tgt_in)[..., :6], maps, 1e-10)
    changed = tgt_in.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 13  # a later decoder input never changes earlier outputs
    out = model(src, changed)
    assert close(out[:, :4], logits[:, :4]) and not close(out[:, 4:], logits[:, 4:])
    other = src.clone()
    other[0, 0] = 3 if other[0, 0] != 3 else 4  # a real source token matters
    assert not close(model(other, tgt_in)[0], logits[0])
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_seq2seq_bad_inputs():
    model = tiny_rnnsearch()
    src, tgt_in, _ = reversal_batch(2, 6, gen(7))
    with pytest.raises(ValueError, match=r"src: expected an int64 tensor \(B, L\) with 1 <= L <= max_len=12"):
        model(torch.zeros(2, 13, dtype=torch.int64), tgt_in)
    with pytest.raises(ValueError, match=r"tgt_in: expected an int64 tensor"):
        model(src, tgt_in.float())
    with pytest.raises(ValueError, match=r"tgt_in: expected the batch size of src, 2, got shape \(1, 7\)"):
        model(src, tgt_in[:1])
    with pytest.raises(ValueError, match="max_new: expected an int >= 1, got 0"):
        model.greedy(src, max_new=0)
    with pytest.raises(ValueError, match="config: expected an AttentionSeq2SeqConfig, got dict"):
        AttentionSeq2Seq(CFG)
    with pytest.raises(ValueError, match="hidden_size: expected an int >= 1, got 0"):
        AttentionSeq2SeqConfig(13, 13, hidden_size=0)


def test_greedy_returns_valid_ids_stops_at_eos_and_matches_the_decoder():
    model = tiny_rnnsearch(seed=2)
    src, _, _ = reversal_batch(6, 6, gen(8))
    out = model.greedy(src, max_new=8)
    assert out.dtype == torch.int64 and out.shape[0] == 6 and 1 <= out.shape[1] <= 8 and not model.training
    assert ((out >= 0) & (out < 13)).all()
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])
    # greedy = re-running the teacher-forced decoder on its own prefix and taking the argmax each step
    prefix = torch.full((6, 1), BOS)
    for i in range(out.shape[1]):
        nxt = model(src, prefix)[:, -1].argmax(-1)
        finished = (out[:, :i] == EOS).any(1)
        assert torch.equal(out[~finished, i], nxt[~finished])
        prefix = torch.cat([prefix, out[:, i : i + 1]], dim=1)
    assert model.greedy(src).shape[1] <= CFG["max_len"] - 1  # default: up to max_len - 1 tokens


def test_train_seq2seq_trains_the_rnn_encoder_decoder():
    torch.manual_seed(0)
    model = AttentionSeq2Seq(AttentionSeq2SeqConfig(**CFG))
    history = train_seq2seq(model, 30, batch_size=32, max_digits=6, lr=1e-2, progress=False, log_every=10)
    assert len(history.losses) == 30
    assert sum(history.losses[-5:]) / 5 < sum(history.losses[:5]) / 5 - 0.2
    with pytest.raises(ValueError, match="max_digits: expected at most max_len - 1 = 11, got 12"):
        train_seq2seq(model, 1, max_digits=12, progress=False)
    with pytest.raises(ValueError, match=r"model: expected a Seq2SeqTransformer or another nn.Module .*config.max_len"):
        train_seq2seq(nn.GRU(2, 2), 1, progress=False)


@pytest.mark.slow
def test_attention_seq2seq_learns_to_reverse_digits():
    """Bahdanau's model solves chapter 04's task: greedy exact match on fresh strings of ≤ 5 digits
    (1.0 for seeds 0, 1, 2; about 5-8 s on one busy CPU core)."""
    torch.manual_seed(0)
    model = AttentionSeq2Seq(AttentionSeq2SeqConfig(13, 13, max_len=8, embed_dim=16, hidden_size=32, attn_dim=32))
    train_seq2seq(model, 300, batch_size=64, max_digits=5, lr=1e-2, progress=False, log_every=50)
    src, _, tgt_out = reversal_batch(500, 5, gen(12345))  # fresh strings, not the training stream
    out = model.greedy(src, max_new=6)
    out = F.pad(out, (0, 6 - out.shape[1]), value=PAD)
    exact = (out == tgt_out).all(1).float().mean().item()
    assert exact > 0.9, exact
