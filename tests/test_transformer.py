"""Chapter 04 library: attention from the formula vs PyTorch's fused kernel and a hand computation,
the √d_k scaling, masks, heads, sinusoidal positions, MultiHeadAttention vs nn.MultiheadAttention,
the char GPT (tying, init, causality, the KV cache and its sliding window), streaming generation
through rnn.generate, random windows, train_gpt (exact checkpoint resume) and evaluate_loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from numerics import F64, close, gen, randn
from torch import nn

from aigc_lib import rnn, transformer
from aigc_lib.transformer import (
    BOS,
    EOS,
    GPT,
    PAD,
    GPTConfig,
    KVCache,
    MultiHeadAttention,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    attention,
    causal_mask,
    evaluate_loss,
    merge_heads,
    random_windows,
    reversal_batch,
    sinusoidal_positions,
    split_heads,
    train_gpt,
    train_seq2seq,
)
from aigc_lib.transformer import gpt as gpt_module

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed: int = 0, dtype=F64, scramble: bool = True, **kw) -> GPT:
    """A tiny GPT; `scramble` replaces the (near-uniform, std 0.02) init by O(1) random weights so that
    attention is far from uniform and every mistake in masks, positions or caching shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**(TINY | kw))).to(dtype)
    if scramble:
        g = gen(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tokens(B: int, T: int, seed: int = 0, V: int = TINY["vocab_size"]) -> torch.Tensor:
    return torch.randint(V, (B, T), generator=gen(seed))


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# --------------------------------------------------------------------------- attention: the formula


def qkv(B=2, H=3, T=4, S=4, dk=5, dv=6, seed=0, requires_grad=False):
    return (
        randn(B, H, T, dk, seed=seed, requires_grad=requires_grad),
        randn(B, H, S, dk, seed=seed + 1, requires_grad=requires_grad),
        randn(B, H, S, dv, seed=seed + 2, requires_grad=requires_grad),
    )


def padding_mask(B: int, S: int) -> torch.Tensor:
    """(B, 1, 1, S): batch b keeps its first S − b keys (never a fully masked row)."""
    keep = torch.arange(S)[None, :] < (S - torch.arange(B))[:, None]
    return keep[:, None, None, :]


def test_attention_equals_sdpa_without_a_mask():
    q, k, v = qkv(T=4, S=7)
    out = attention(q, k, v)
    assert out.shape == (2, 3, 4, 6) and out.dtype == F64
    assert close(out, F.scaled_dot_product_attention(q, k, v))


def test_attention_equals_sdpa_with_a_causal_mask():
    q, k, v = qkv(T=5, S=5)
    out = attention(q, k, v, causal_mask(5))
    assert close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(5)))
    assert not close(out, attention(q, k, v), 1e-3)  # the mask matters


def test_attention_equals_sdpa_with_a_padding_mask():
    q, k, v = qkv(T=4, S=6)
    m = padding_mask(2, 6)
    assert not m.all()
    out = attention(q, k, v, m)
    assert close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    assert not close(out, attention(q, k, v), 1e-3)


def test_attention_with_an_offset_causal_mask_for_queries_at_the_end():
    T, S = 3, 7  # 4 cached keys, then the 3 new queries
    q, k, v = qkv(T=T, S=S)
    m = causal_mask(T, S)
    out = attention(q, k, v, m)
    assert close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    # = the last T rows of causal attention over all S positions (with those queries there)
    q_full = torch.cat([randn(2, 3, S - T, 5, seed=9), q], dim=2)
    assert close(out, attention(q_full, k, v, causal_mask(S))[:, :, -T:])
    # sdpa's is_causal aligns the mask top-left when T < S: NOT what a cache needs
    assert not close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), 1e-3)


def test_attention_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)
    # scores q kᵀ / √2 = [[a, 0, a], [0, a, a]] with a = 1/√2; E = e^a
    E = math.exp(1 / math.sqrt(2))
    assert E == pytest.approx(2.0281149816474726, abs=1e-15)
    # row 0: weights [E, 1, E] / (2E + 1) -> (E·[1,2] + [3,4] + E·[5,6]) / (2E + 1) = [3, 4]
    # row 1: weights [1, E, E] / (2E + 1) -> ([1,2] + E·[3,4] + E·[5,6]) / (2E + 1)
    r1 = (1 + 8 * E) / (2 * E + 1)
    want = torch.tensor([[3.0, 4.0], [r1, r1 + 1]], dtype=F64)
    assert r1 == pytest.approx(3.4066726, abs=1e-7)
    assert close(attention(q, k, v), want)
    # mask key 2 away from query 0: weights [E, 1] / (E + 1)
    m = torch.tensor([[True, True, False], [True, True, True]])
    w0 = torch.tensor([E, 1.0], dtype=F64) / (E + 1)
    assert close(attention(q, k, v, m)[0], w0 @ v[:2])
    assert close(attention(q, k, v, m)[1], want[1])


def test_attention_divides_by_sqrt_of_the_last_dim_of_q():
    # per-head size d = 4, model width h·d = 12: the scale is √4, not √12
    q, k, v = randn(2, 3, 5, 4, seed=1), randn(2, 3, 6, 4, seed=2), randn(2, 3, 6, 7, seed=3)
    unscaled = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
    assert close(attention(q * math.sqrt(4), k, v), unscaled)
    assert close(attention(q, k, v), torch.softmax(q @ k.transpose(-2, -1) / 2, dim=-1) @ v)
    assert not close(attention(q, k, v), torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(12), dim=-1) @ v, 1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_the_scaling_the_softmax_saturates(seed):
    """q, k with unit-variance entries: q·k has variance d_k. Unscaled, the largest weight -> 1 as d_k
    grows (one-hot attention, vanishing gradients); scaled by 1/√d_k, the scores keep unit variance."""
    S, T = 16, 64
    max_unscaled, max_scaled = [], []
    for dk in (4, 64, 1024):
        q, k = randn(T, dk, seed=seed), randn(S, dk, seed=seed + 10)
        scores = q @ k.T
        max_unscaled.append(torch.softmax(scores, -1).max(-1).values.mean().item())
        max_scaled.append(attention(q, k, torch.eye(S, dtype=F64)).max(-1).values.mean().item())
        assert (scores / math.sqrt(dk)).std().item() == pytest.approx(1.0, rel=0.25)
    assert max_unscaled[0] < max_unscaled[1] < max_unscaled[2]
    assert max_unscaled[0] < 0.6 and max_unscaled[2] > 0.93  # d_k = 1024: nearly one-hot
    assert all(0.15 < m < 0.4 for m in max_scaled)  # about the same for every d_k
    assert max(max_scaled) - min(max_scaled) < 0.1


def test_masked_positions_get_exactly_zero_weight():
    T, S = 4, 6
    q, k = randn(2, T, 3, seed=4), randn(2, S, 3, seed=5)
    m = causal_mask(T, S) & padding_mask(2, S)[:, 0]  # (2, T, S)
    w = attention(q, k, torch.eye(S, dtype=F64).expand(2, S, S), m)  # v = I: the output IS the weights
    assert w.shape == (2, T, S)
    assert torch.equal(w[~m], torch.zeros_like(w[~m]))
    assert (w[m] > 0).all()
    assert close(w.sum(-1), torch.ones(2, T, dtype=F64))


def test_a_fully_masked_query_gives_nan_as_documented():
    q, k, v = qkv(T=2, S=3)
    m = torch.tensor([[False, False, False], [True, True, False]])
    out = attention(q, k, v, m)
    assert out[:, :, 0].isnan().all() and out[:, :, 1].isfinite().all()


@pytest.mark.parametrize("masked", [False, True])
def test_attention_gradcheck(masked):
    q, k, v = qkv(B=1, H=2, T=3, S=4, dk=3, dv=2, requires_grad=True)
    m = causal_mask(3, 4) if masked else None
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, m), (q, k, v))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3), torch.zeros(2, 3)),
            r"q: expected a floating-point tensor",
        ),
        ((torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 3)), r"k: expected a floating-point tensor .*got \(3,\)"),
        ((torch.zeros(2, 3), torch.zeros(2, 3), [[0.0]]), r"v: expected a floating-point tensor .*got list"),
        ((torch.zeros(2, 3), torch.zeros(4, 5), torch.zeros(4, 2)), r"q, k, v: expected q \(\.\.\., T, d_k\)"),
        ((torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(5, 2)), r"q, k, v: .*got \(2, 3\), \(4, 3\), \(5, 2\)"),
    ],
)
def test_attention_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        attention(*args)


@pytest.mark.parametrize("mask", [torch.ones(2, 4), torch.ones(2, 4, dtype=torch.int64), [[True] * 4] * 2])
def test_attention_rejects_a_non_boolean_mask(mask):
    q, k, v = torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="mask: expected a boolean tensor"):
        attention(q, k, v, mask)


# --------------------------------------------------------------------------- causal_mask


def test_causal_mask_values():
    assert causal_mask(3).dtype == torch.bool
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(1, 5).tolist() == [[True] * 5]  # one new token sees the whole cache
    for T, S in ((1, 1), (4, 4), (3, 8), (5, 6)):
        m = causal_mask(T, S)
        assert m.shape == (T, S)
        want = [[s <= t + S - T for s in range(S)] for t in range(T)]
        assert m.tolist() == want
        assert torch.equal(m, torch.ones(T, S, dtype=torch.bool).tril(S - T))


def test_causal_mask_bad_arguments():
    with pytest.raises(ValueError, match=r"S: expected S >= T .*T=4, S=3"):
        causal_mask(4, 3)
    with pytest.raises(ValueError, match="T: expected an int >= 1, got 0"):
        causal_mask(0)
    with pytest.raises(ValueError, match="S: expected an int >= 1, got 2.0"):
        causal_mask(2, 2.0)


# --------------------------------------------------------------------------- heads


def test_split_and_merge_heads_are_inverses():
    x = torch.arange(2 * 5 * 12, dtype=F64).view(2, 5, 12)
    s = split_heads(x, 3)
    assert s.shape == (2, 3, 5, 4)
    for h in range(3):
        assert torch.equal(s[:, h], x[..., h * 4 : (h + 1) * 4])  # head h: channels 4h .. 4h+3
    assert torch.equal(merge_heads(s), x)
    y = randn(2, 3, 5, 4)
    assert torch.equal(split_heads(merge_heads(y), 3), y)
    assert torch.equal(split_heads(x, 1)[:, 0], x) and torch.equal(split_heads(x, 12)[..., 0].transpose(1, 2), x)


def test_heads_bad_inputs():
    with pytest.raises(ValueError, match="n_heads: C=10 is not divisible by n_heads=3"):
        split_heads(torch.zeros(2, 5, 10), 3)
    with pytest.raises(ValueError, match=r"x: expected a tensor \(B, T, C\), got \(5, 10\)"):
        split_heads(torch.zeros(5, 10), 2)
    with pytest.raises(ValueError, match="n_heads: expected an int >= 1, got 0"):
        split_heads(torch.zeros(2, 5, 10), 0)
    with pytest.raises(ValueError, match=r"x: expected a tensor \(B, n_heads, T, d\), got \(2, 5, 10\)"):
        merge_heads(torch.zeros(2, 5, 10))
    with pytest.raises(ValueError, match="n_heads: d_model=10 is not divisible by n_heads=4"):
        MultiHeadAttention(10, 4)


# --------------------------------------------------------------------------- sinusoidal positions


def test_sinusoidal_positions_formula():
    T, d = 7, 6
    pe = sinusoidal_positions(T, d, dtype=F64)
    assert pe.shape == (T, d) and pe.dtype == F64
    assert sinusoidal_positions(T, d).dtype == torch.float32
    for pos in range(T):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-15)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-15)
    assert pe[0].tolist() == [0.0, 1.0] * 3
    assert sinusoidal_positions(3, 2, base=1.0, dtype=F64)[:, 0].tolist() == pytest.approx(
        [0, math.sin(1), math.sin(2)]
    )


def test_sinusoidal_rows_have_norm_sqrt_d_over_2():
    pe = sinusoidal_positions(50, 16, dtype=F64)
    assert close(pe.norm(dim=1), torch.full((50,), math.sqrt(8), dtype=F64))


def test_sinusoidal_dot_product_depends_only_on_the_offset():
    d = 32
    pe = sinusoidal_positions(64, d, dtype=F64)
    freq = 10000 ** (-torch.arange(0, d, 2, dtype=F64) / d)
    for k in range(6):
        dots = (pe[k:] * pe[: len(pe) - k]).sum(1)  # PE[pos+k]·PE[pos] for every pos
        assert close(dots, torch.full_like(dots, torch.cos(k * freq).sum().item()), 1e-12), k
    # and it is not constant in k: the model can tell offsets apart
    assert (pe[3] @ pe[0]).item() < (pe[1] @ pe[0]).item() < (pe[0] @ pe[0]).item()


def test_sinusoidal_bad_arguments():
    with pytest.raises(ValueError, match="d: expected an even model width for sin/cos pairs, got 5"):
        sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="T: expected an int >= 1, got 0"):
        sinusoidal_positions(0, 4)


# --------------------------------------------------------------------------- MultiHeadAttention


def mha_pair(C: int = 12, H: int = 3, seed: int = 0) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    torch.manual_seed(seed)
    ours = MultiHeadAttention(C, H).to(F64)
    ref = nn.MultiheadAttention(C, H, batch_first=True, dtype=F64)
    with torch.no_grad():
        nn.init.normal_(ours.qkv.bias), nn.init.normal_(ours.proj.bias)  # non-zero biases are checked too
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("case", ["none", "causal", "padding", "causal+padding"])
def test_mha_equals_nn_multihead_attention(case):
    B, T, C = 2, 5, 12
    ours, ref = mha_pair()
    x = randn(B, T, C, seed=3)
    causal = "causal" in case
    kp = torch.tensor([[True] * 5, [True, True, True, False, False]]) if "padding" in case else None
    y, (k, v) = ours(x, causal=causal, key_padding=kp)
    want, _ = ref(
        x,
        x,
        x,
        need_weights=False,
        attn_mask=~causal_mask(T) if causal else None,
        key_padding_mask=None if kp is None else ~kp,
    )
    assert y.shape == (B, T, C) and close(y, want)
    q_, k_, v_ = (split_heads(t, 3) for t in ours.qkv(x).chunk(3, -1))
    assert close(k, k_) and close(v, v_) and k.shape == (B, 3, T, 4)
    m = causal_mask(T) if causal else torch.ones(T, T, dtype=torch.bool)
    if kp is not None:
        m = m & kp[:, None, None, :]
    assert close(ours.proj(merge_heads(attention(q_, k_, v_, m))), want)  # the formula, head by head


@pytest.mark.parametrize("causal", [True, False])
def test_mha_past_equals_the_full_sequence(causal):
    B, T, C, P = 2, 7, 12, 4
    ours, _ = mha_pair(seed=1)
    x = randn(B, T, C, seed=4)
    full, (k_full, v_full) = ours(x, causal=causal)
    _, past = ours(x[:, :P], causal=causal)
    assert past[0].shape == (B, 3, P, 4)
    if causal:  # the prefix's outputs do not depend on what follows
        assert close(ours(x[:, :P], causal=True)[0], full[:, :P])
    y, (k, v) = ours(x[:, P:], causal=causal, past=past)
    assert close(y, full[:, P:]) and close(k, k_full) and close(v, v_full)
    assert k.shape == (B, 3, T, 4)  # the returned keys include the past
    # one token at a time
    kv, outs = None, []
    for t in range(T):
        y1, kv = ours(x[:, t : t + 1], causal=causal, past=kv)
        outs.append(y1)
    if causal:
        assert close(torch.cat(outs, 1), full)
    # without the offset mask the new queries would see only the first keys (is_causal is top-left)
    if causal:
        q_new = split_heads(ours.qkv(x[:, P:]).chunk(3, -1)[0], 3)
        wrong = F.scaled_dot_product_attention(q_new, k, v, is_causal=True)
        assert not close(ours.proj(merge_heads(wrong)), full[:, P:], 1e-3)


def test_mha_key_padding_with_past():
    ours, ref = mha_pair(seed=2)
    x = randn(2, 6, 12, seed=5)
    kp = torch.tensor([[True] * 6, [False, True, True, True, True, True]])
    full, _ = ours(x, causal=True, key_padding=kp)
    _, past = ours(x[:, :4], causal=True, key_padding=kp[:, :4])
    y, _ = ours(x[:, 4:], causal=True, key_padding=kp, past=past)  # (B, S) with S = past + new
    assert close(y, full[:, 4:])
    want, _ = ref(x, x, x, need_weights=False, attn_mask=~causal_mask(6), key_padding_mask=~kp)
    assert close(full, want)


def test_mha_key_padding_wrong_shape_or_dtype_raises():
    ours, _ = mha_pair()
    x = randn(2, 5, 12)
    with pytest.raises(ValueError, match=r"key_padding: expected a boolean tensor \(2, 5\), got \(2, 4\)"):
        ours(x, key_padding=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding: expected a boolean tensor \(2, 5\), got \(2, 5\)"):
        ours(x, key_padding=torch.ones(2, 5, dtype=F64))
    _, past = ours(x)
    with pytest.raises(ValueError, match=r"key_padding: expected a boolean tensor \(2, 6\), got \(2, 1\)"):
        ours(x[:, :1], past=past, key_padding=torch.ones(2, 1, dtype=torch.bool))


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    drop = MultiHeadAttention(12, 3, dropout=0.5).to(F64)
    plain = copy.deepcopy(drop)
    plain.dropout = 0.0
    x = randn(2, 5, 12)
    assert close(drop.eval()(x, causal=True)[0], plain(x, causal=True)[0])
    assert not close(drop.train()(x, causal=True)[0], plain(x, causal=True)[0], 1e-3)


# --------------------------------------------------------------------------- GPT


def test_gpt_shapes_and_cache():
    model = tiny_gpt()
    idx = tokens(3, 6)
    logits, cache = model(idx)
    assert logits.shape == (3, 6, 11) and logits.dtype == F64
    assert isinstance(cache, KVCache) and cache.length == 6 and torch.equal(cache.tokens, idx)
    assert len(cache.keys) == len(cache.values) == 2
    assert all(t.shape == (3, 2, 6, 8) for t in cache.keys + cache.values)
    logits2, cache2 = model(tokens(3, 2, seed=1), cache)
    assert logits2.shape == (3, 2, 11) and cache2.length == 8 and cache.length == 6  # the old cache is untouched
    assert all(t.shape == (3, 2, 8, 8) for t in cache2.keys)


def expected_num_params(c: GPTConfig) -> int:
    C = c.n_embd
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    pos = c.block_size * C if c.positions == "learned" else 0
    return c.vocab_size * C + pos + c.n_layer * block + 2 * C  # head: tied, not counted again


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_weight_tying_and_num_params(positions):
    model = tiny_gpt(positions=positions, scramble=False)
    assert model.head.weight is model.tok.weight
    assert model.num_params() == expected_num_params(model.config)
    every_tensor = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))
    assert every_tensor == model.num_params() + 11 * 16  # the tied matrix appears in two modules
    with torch.no_grad():  # one tensor: changing the embedding changes the output layer
        model.tok.weight[3].zero_()
    assert (model.head.weight[3] == 0).all()
    assert ("pos_table" in dict(model.named_buffers())) == (positions == "sinusoidal")
    assert "pos_table" not in model.state_dict()


def test_gpt_init_statistics():
    cfg = GPTConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=64)
    torch.manual_seed(0)
    model = GPT(cfg)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.2.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.1), name
        elif name.endswith("weight") and p.ndim == 2:  # tok, pos, qkv, mlp.0
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
            assert abs(p.mean().item()) < 0.002, name
        elif "ln" in name and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert name.endswith("bias") and torch.equal(p, torch.zeros_like(p)), name
    assert residual == pytest.approx(0.00707, abs=1e-5)


def manual_gpt_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """GPT from its parts and the formula: token + position embeddings, pre-LN blocks
    x = x + W^O·Concat(heads)(LN1(x)); x = x + W2·GELU(W1·LN2(x)), final LN, tied output layer."""
    c, T = model.config, idx.shape[1]
    pos = model.pos.weight[:T] if c.positions == "learned" else model.pos_table[:T]
    x = model.tok.weight[idx] + pos
    for blk in model.blocks:
        h = F.layer_norm(x, (c.n_embd,), blk.ln1.weight, blk.ln1.bias)
        q, k, v = (
            split_heads(h @ w.T + b, c.n_head)
            for w, b in zip(blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3), strict=True)
        )
        x = x + merge_heads(attention(q, k, v, causal_mask(T))) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        h = F.layer_norm(x, (c.n_embd,), blk.ln2.weight, blk.ln2.bias)
        m1, m2 = blk.mlp[0], blk.mlp[2]
        x = x + F.gelu(h @ m1.weight.T + m1.bias) @ m2.weight.T + m2.bias
    x = F.layer_norm(x, (c.n_embd,), model.ln_f.weight, model.ln_f.bias)
    return x @ model.tok.weight.T


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_forward_equals_the_formula(positions):
    model = tiny_gpt(positions=positions)
    idx = tokens(3, 7, seed=2)
    with torch.no_grad():
        assert close(model(idx)[0], manual_gpt_forward(model, idx), 1e-10)
    if positions == "sinusoidal":  # the table is built in float32 and only cast by .to(float64)
        assert close(model.pos_table, sinusoidal_positions(8, 16, dtype=F64), 1e-7)


def test_gpt_dropout_only_in_training():
    model = tiny_gpt(dropout=0.2)
    idx = tokens(2, 8)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, MultiHeadAttention):
            m.dropout = 0.0
    assert close(model.eval()(idx)[0], plain(idx)[0])
    assert not close(model.train()(idx)[0], plain(idx)[0], 1e-3)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_is_causal(positions):
    model = tiny_gpt(positions=positions)
    idx = tokens(2, 8, seed=3)
    logits, _ = model(idx)
    for t in range(8):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        other, _ = model(changed)
        assert close(other[:, :t], logits[:, :t]), t  # the past never sees the future
        assert (other[:, t:] - logits[:, t:]).abs().amax(-1).min() > 1e-4, t  # and the change is seen


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("chunks", [[8], [5, 1, 1, 1], [3, 2, 3], [1] * 8])
def test_gpt_cached_forward_equals_the_full_forward(positions, chunks):
    model = tiny_gpt(positions=positions)
    idx = tokens(2, 8, seed=4)
    full, full_cache = model(idx)
    cache, outs, t = None, [], 0
    for n in chunks:
        out, cache = model(idx[:, t : t + n], cache)
        outs.append(out)
        t += n
    assert close(torch.cat(outs, 1), full)
    assert torch.equal(cache.tokens, idx)
    assert all(close(a, b) for a, b in zip(cache.keys + cache.values, full_cache.keys + full_cache.values, strict=True))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_positions_matter(positions):
    """The same token at different positions gets different logits (the cache must pass the offset)."""
    model = tiny_gpt(positions=positions)
    _, cache = model(tokens(1, 3, seed=5))
    a, _ = model(torch.tensor([[4]]), cache)
    b, _ = model(
        torch.tensor([[4]]), KVCache(keys=cache.keys, values=cache.values, tokens=torch.zeros(1, 3, dtype=torch.long))
    )
    assert close(a, b)  # only the cached keys/values and the length are used for new tokens
    c, _ = model(torch.tensor([[4]]))
    assert not close(a, c, 1e-3)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_gpt_cache_slides_beyond_block_size(positions):
    model = tiny_gpt(positions=positions)  # block_size 8
    seq = tokens(2, 14, seed=6)
    _, cache = model(seq[:, :8])
    for p in range(8, 14):
        logits, cache = model(seq[:, p : p + 1], cache)
        want, _ = model(seq[:, p - 7 : p + 1])  # a full forward over the last block_size tokens
        assert close(logits, want[:, -1:]), p
        assert cache.length == 8 and torch.equal(cache.tokens, seq[:, p - 7 : p + 1])
    # a chunk that overflows: cache of 6 + 4 new tokens -> the last 8 tokens, their last 4 positions
    _, cache = model(seq[:, :6])
    logits, cache = model(seq[:, 6:10], cache)
    want, _ = model(seq[:, 2:10])
    assert logits.shape == (2, 4, 11) and close(logits, want[:, -4:])
    assert torch.equal(cache.tokens, seq[:, 2:10])


def test_gpt_bad_inputs():
    model = tiny_gpt(scramble=False)
    with pytest.raises(
        ValueError, match=r"idx: expected an int64 tensor of shape \(B, T\), got torch.float32 \(2, 3\)"
    ):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"idx: expected an int64 tensor of shape \(B, T\), got torch.int32 \(2, 3\)"):
        model(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"idx: expected an int64 tensor of shape \(B, T\), got torch.int64 \(3,\)"):
        model(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"idx: expected an int64 tensor of shape \(B, T\), got list"):
        model([[1, 2]])
    with pytest.raises(ValueError, match="idx: length 9 exceeds block_size=8"):
        model(tokens(1, 9))
    _, cache = model(tokens(2, 3))
    with pytest.raises(ValueError, match="cache: holds a batch of 2, idx has 1"):
        model(tokens(1, 1), cache)
    with pytest.raises(ValueError, match="config: expected a GPTConfig, got dict"):
        GPT(dict(TINY))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(vocab_size=0), "vocab_size: expected an int >= 1, got 0"),
        (dict(block_size=True), "block_size: expected an int >= 1, got True"),
        (dict(n_layer=1.5), "n_layer: expected an int >= 1, got 1.5"),
        (dict(n_head=0), "n_head: expected an int >= 1, got 0"),
        (dict(n_embd=10, n_head=4), "n_head: n_embd=10 is not divisible by n_head=4"),
        (dict(positions="rope"), "positions: expected 'learned' or 'sinusoidal', got 'rope'"),
        (dict(dropout=1.0), r"dropout: expected a number in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout: expected a number in \[0, 1\), got -0.1"),
    ],
)
def test_gpt_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**(TINY | kwargs))


# --------------------------------------------------------------------------- generation (rnn.generate)


def reference_generate(
    model: GPT, prompt: list[int], n: int, temperature: float, top_k: int | None, seed: int
) -> list[int]:
    """The slow way: recompute the whole (cropped) context for every new token, no cache."""
    g, ctx, bs = gen(seed), list(prompt), model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ctx[-bs:]]))
            probs = rnn.sample_probs(logits[0, -1], temperature, top_k)
            ctx.append(int(torch.multinomial(probs, 1, generator=g)))
    return ctx[len(prompt) :]


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, 3), (1.0, 1)])
def test_generate_with_the_cache_equals_recomputing_the_context(temperature, top_k):
    model = tiny_gpt(seed=1)
    model.train()
    prompt, n = [1, 5, 2, 9, 3], 15  # 5 + 15 > block_size 8: the cache slides on the way
    streamed = list(rnn.generate(model, torch.tensor(prompt), n, temperature, top_k, generator=gen(7)))
    assert len(streamed) == n and all(0 <= t < 11 for t in streamed)
    assert streamed == reference_generate(model, prompt, n, temperature, top_k, seed=7)
    assert model.training and torch.is_grad_enabled()  # nothing leaked
    if top_k == 1:  # greedy: the argmax of the recomputed context at every step
        ctx = list(prompt)
        for _ in range(n):
            ctx.append(int(model(torch.tensor([ctx[-8:]]))[0][0, -1].argmax()))
        assert streamed == ctx[len(prompt) :]


def test_generate_streams_lazily_and_reads_the_prompt_once():
    calls = []
    model = tiny_gpt(seed=2)
    forward = model.forward

    def counting(idx, cache=None):
        calls.append((idx.shape[1], 0 if cache is None else cache.length))
        return forward(idx, cache)

    model.forward = counting
    stream = rnn.generate(model, [1, 2, 3], 7, generator=gen(0))
    assert calls == []
    first = next(stream)
    assert calls == [(3, 0)] and 0 <= first < 11
    rest = list(stream)
    assert len(rest) == 6
    # the prompt once, then one token per step with the growing cache (capped at block_size 8)
    # the 7th call overflows block_size 8: the window slides and is recomputed from its 8 tokens
    assert calls == [(3, 0), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8), (8, 0)]


def test_generate_from_a_prompt_longer_than_block_size():
    """rnn.generate reads only the last block_size tokens of a long prompt (as nanoGPT crops)."""
    model = tiny_gpt(seed=3)
    prompt = [i % 11 for i in range(12)]  # block_size 8
    streamed = list(rnn.generate(model, prompt, 4, top_k=1))
    assert streamed == reference_generate(model, prompt, 4, 1.0, 1, seed=0)


# --------------------------------------------------------------------------- random_windows


def test_random_windows_shapes_shift_and_reproducibility():
    ids = torch.randint(50, (60,), generator=gen(1))
    batch = random_windows(ids, 4, 6, seed=3)
    x, y = batch(0)
    assert x.shape == y.shape == (4, 6) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    arange = random_windows(torch.arange(60), 4, 6, seed=3)  # same offsets: the starts are x[:, 0]
    xa, ya = arange(0)
    assert torch.equal(xa, xa[:, :1] + torch.arange(6)) and torch.equal(ya, xa + 1)
    assert torch.equal(x, ids[xa]) and torch.equal(y, ids[ya])  # contiguous slices of ids
    # reproducible per (seed, step), fresh across steps and seeds, global RNG untouched
    state = torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(batch(5), random_windows(ids, 4, 6, seed=3)(5), strict=True))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(arange(0)[0], arange(1)[0])
    assert not torch.equal(arange(0)[0], random_windows(torch.arange(60), 4, 6, seed=4)(0)[0])


def test_random_windows_offsets_cover_the_valid_range():
    L, block = 20, 6
    batch = random_windows(torch.arange(L), 8, block)
    starts = torch.cat([batch(s)[0][:, 0] for s in range(100)])
    ends = torch.cat([batch(s)[1][:, -1] for s in range(100)])
    assert starts.min() == 0 and starts.max() == L - block - 1  # every start in [0, L - block - 1]
    assert ends.max() == L - 1  # the last target is the last token, never past it
    assert len(starts.unique()) == L - block


def test_random_windows_bad_arguments():
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor of at least 7 token ids, got"):
        random_windows(torch.arange(6), 2, 6)
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor"):
        random_windows(torch.arange(20, dtype=torch.int32), 2, 6)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        random_windows(torch.arange(20), 0, 6)
    with pytest.raises(ValueError, match="block: expected an int >= 1, got 0"):
        random_windows(torch.arange(20), 2, 0)


# --------------------------------------------------------------------------- train_gpt


ABC = torch.tensor([i % 3 for i in range(300)])
SMALL = dict(vocab_size=3, block_size=8, n_layer=1, n_head=2, n_embd=16)
RUN = dict(batch_size=8, progress=False)


def small_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**(SMALL | kw)))


def test_train_gpt_learns_a_repetitive_text():
    model = small_gpt()
    before = evaluate_loss(model, ABC)
    h = train_gpt(model, ABC, 40, lr=1e-2, warmup_steps=5, log_every=10, **RUN)
    assert set(h.metrics) == {"loss", "grad_norm"} and h.steps == list(range(40))
    assert all(math.isfinite(x) for x in h["loss"] + h["grad_norm"])
    assert before > 1.0 and h["loss"][0] > 1.0  # about log 3 = 1.0986 (above: tied weights favour repeats)
    assert max(h["loss"][-5:]) < 0.2 and evaluate_loss(model, ABC) < 0.2  # 'abcabc' is deterministic
    assert model.training
    assert rnn.generate(model, [0], 6, top_k=1).__next__() == 1
    assert list(rnn.generate(model, [0, 1], 6, top_k=1)) == [2, 0, 1, 2, 0, 1]


def test_train_gpt_history_without_clipping_and_with_a_short_block():
    model = small_gpt()
    h = train_gpt(model, ABC, 3, block=4, grad_clip=None, **RUN)
    assert set(h.metrics) == {"loss"} and len(h) == 3


def test_train_gpt_resumes_exactly_from_a_checkpoint(tmp_path):
    straight = small_gpt()
    h_straight = train_gpt(straight, ABC, 10, **RUN)
    path = tmp_path / "gpt.pt"
    first = small_gpt()
    train_gpt(first, ABC, 5, checkpoint=path, **RUN)
    assert path.exists() and not params_equal(first, straight)
    torch.manual_seed(1234)
    resumed = small_gpt()  # a fresh, identically seeded model
    h = train_gpt(resumed, ABC, 10, checkpoint=path, **RUN)
    assert params_equal(resumed, straight)
    assert h.steps == h_straight.steps and h["loss"] == h_straight["loss"]


def test_train_gpt_resumes_exactly_after_an_interrupt(tmp_path, monkeypatch):
    """With a real cosine schedule (warmup 2 of 10 steps): stopped at step 5, re-run the same call."""
    kw = dict(warmup_steps=2, lr=3e-3, **RUN)
    straight = small_gpt(dropout=0.1)  # dropout: the torch RNG must be restored too
    h_straight = train_gpt(straight, ABC, 10, **kw)
    real = gpt_module._random_windows

    def interrupted(*args, **kwargs):
        draw = real(*args, **kwargs)

        def batch(step):
            if step == 5:
                raise KeyboardInterrupt
            return draw(step)

        return batch

    path = tmp_path / "gpt.pt"
    monkeypatch.setattr(gpt_module, "_random_windows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_gpt(small_gpt(dropout=0.1), ABC, 10, checkpoint=path, **kw)
    monkeypatch.setattr(gpt_module, "_random_windows", real)
    torch.manual_seed(99)
    resumed = small_gpt(dropout=0.1)
    h = train_gpt(resumed, ABC, 10, checkpoint=path, **kw)
    assert params_equal(resumed, straight)
    assert h["loss"] == h_straight["loss"]


def test_train_gpt_bad_arguments():
    model = small_gpt()
    with pytest.raises(ValueError, match="block: expected at most block_size=8, got 9"):
        train_gpt(model, ABC, 1, block=9, **RUN)
    with pytest.raises(ValueError, match="model: expected a GPT, got Linear"):
        train_gpt(nn.Linear(2, 2), ABC, 1, **RUN)
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        train_gpt(model, ABC, 0, **RUN)
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor of at least 9 token ids"):
        train_gpt(model, ABC[:8], 1, **RUN)


# --------------------------------------------------------------------------- evaluate_loss


def manual_windowed_nll(model: GPT, ids: torch.Tensor, block: int) -> float:
    n = (len(ids) - 1) // block
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            x = ids[i * block : (i + 1) * block]
            y = ids[i * block + 1 : (i + 1) * block + 1]
            logp = torch.log_softmax(model(x[None])[0][0], dim=-1)  # (block, V)
            total -= sum(logp[t, y[t]].item() for t in range(block))
            count += block
    return total / count


@pytest.mark.parametrize(("block", "batch_size"), [(None, 32), (5, 2), (8, 1)])
def test_evaluate_loss_equals_the_windowed_nll(block, batch_size):
    model = tiny_gpt(seed=4)
    ids = torch.randint(11, (43,), generator=gen(8))
    got = evaluate_loss(model, ids, block=block, batch_size=batch_size)
    assert got == pytest.approx(manual_windowed_nll(model, ids, block or 8), rel=1e-6)
    assert got == pytest.approx(evaluate_loss(model, ids, block=block, batch_size=100), rel=1e-6)


def manual_sliding_nll(model: GPT, ids: torch.Tensor, block: int, stride: int) -> float:
    """Each target ids[t + 1] scored once, from the window that first reaches it (windows ending at
    block, block + stride, ..., and the text's end), written out target by target."""
    last = len(ids) - 1
    ends = list(range(block, last, stride)) + [last]
    total, done = 0.0, 0
    with torch.no_grad():
        for end in ends:
            logp = torch.log_softmax(model(ids[end - block : end][None])[0][0].double(), dim=-1)  # (block, V)
            for t in range(done, end):  # targets not scored yet
                total -= logp[t - (end - block), ids[t + 1]].item()
            done = end
    return total / last


@pytest.mark.parametrize(("block", "stride", "n"), [(8, 1, 43), (8, 3, 43), (8, 8, 41), (5, 2, 30), (8, 4, 9)])
def test_sliding_window_loss_scores_every_target_once_with_its_window(block, stride, n):
    model = tiny_gpt(seed=6)
    ids = torch.randint(11, (n,), generator=gen(10))
    got = evaluate_loss(model, ids, block=block, stride=stride, batch_size=3)
    assert got == pytest.approx(manual_sliding_nll(model, ids, block, stride), rel=1e-6)
    if stride == block and (n - 1) % block == 0:  # no tail: the same as consecutive windows
        assert got == pytest.approx(evaluate_loss(model, ids, block=block), rel=1e-6)


def test_sliding_window_bad_stride():
    model = tiny_gpt(seed=6)
    ids = torch.randint(11, (40,), generator=gen(10))
    with pytest.raises(ValueError, match=r"stride: expected an int in \[1, 8\], got 9"):
        evaluate_loss(model, ids, stride=9)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_loss_uses_eval_mode_and_restores_the_mode(training):
    model = tiny_gpt(seed=5, dropout=0.3)
    model.train(training)
    ids = torch.randint(11, (40,), generator=gen(9))
    a, b = evaluate_loss(model, ids, batch_size=2), evaluate_loss(model, ids, batch_size=3)
    assert model.training == training
    assert a == pytest.approx(b, rel=1e-6)  # no dropout while evaluating (batching changes only the rounding)
    model.eval()
    assert a == pytest.approx(manual_windowed_nll(model, ids, 8), rel=1e-6)


def test_evaluate_loss_of_an_untrained_model_is_about_log_v():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(TINY | dict(vocab_size=40))))
    ids = torch.randint(40, (200,), generator=gen(2))
    assert evaluate_loss(model, ids) == pytest.approx(math.log(40), abs=0.05)


def test_evaluate_loss_bad_ids():
    model = tiny_gpt(scramble=False)
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor of at least 9 token ids"):
        evaluate_loss(model, torch.arange(8))
    with pytest.raises(ValueError, match="ids: expected a 1-D int64 tensor"):
        evaluate_loss(model, torch.arange(20).view(4, 5))


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_generate_on_cuda():
    device = torch.device("cuda")
    model = small_gpt().to(device)
    before = copy.deepcopy(model)
    h = train_gpt(model, ABC, 3, **RUN)  # ids on the CPU, bf16 autocast inside fit
    assert len(h) == 3 and all(math.isfinite(x) for x in h["loss"] + h["grad_norm"])
    assert all(p.device.type == "cuda" for p in model.parameters()) and not params_equal(model, before)
    out = list(rnn.generate(model, [0, 1], 10, generator=torch.Generator(device).manual_seed(0)))
    assert len(out) == 10 and all(0 <= t < 3 for t in out)
    assert len(list(rnn.generate(model, [0, 1, 2, 0, 1, 2], 10, top_k=1))) == 10  # 6 + 10 > block_size: slides
    assert math.isfinite(evaluate_loss(model, ABC))


# --------------------------------------------------------------------------- encoder–decoder

S2S = dict(src_vocab=13, tgt_vocab=13, max_len=12, n_layer=2, n_head=2, n_embd=16)


def tiny_s2s(seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(Seq2SeqConfig(**S2S)).to(F64).eval()
    with torch.no_grad():  # O(1) random weights: attention far from uniform, so masking mistakes show
        for p in model.parameters():
            p.normal_(0, 0.5, generator=gen(seed + 1))
    return model


def test_reversal_batch_reverses_and_pads():
    src, tgt_in, tgt_out = reversal_batch(64, 7, gen(3))
    assert src.shape == (64, 7) and tgt_in.shape == tgt_out.shape == (64, 8)
    for s, ti, to in zip(src, tgt_in, tgt_out, strict=True):
        digits = s[s != PAD].tolist()
        assert 1 <= len(digits) <= 7 and all(3 <= d <= 12 for d in digits)
        assert s[: len(digits)].tolist() == digits  # digits first, then PAD
        assert to[: len(digits) + 1].tolist() == digits[::-1] + [EOS]
        assert ti[: len(digits) + 1].tolist() == [BOS] + digits[::-1]
        assert (to[len(digits) + 1 :] == PAD).all() and (ti[len(digits) + 1 :] == PAD).all()


def test_cross_attention_equals_nn_multihead_attention_with_copied_weights():
    mha = MultiHeadAttention(8, 2).to(F64)
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 0.5, generator=gen(4))
    ref = nn.MultiheadAttention(8, 2, batch_first=True).to(F64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.qkv.weight), ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.proj.weight), ref.out_proj.bias.copy_(mha.proj.bias)
    x, memory = randn(3, 4, 8, seed=5), randn(3, 6, 8, seed=6)
    padding = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    y, (k, v) = mha(x, memory=memory, key_padding=padding)
    want, _ = ref(x, memory, memory, key_padding_mask=~padding, need_weights=False)
    assert close(y, want) and k.shape == v.shape == (3, 2, 6, 4)


def test_seq2seq_shapes_causality_and_padding_invariance():
    model = tiny_s2s()
    src, tgt_in, _ = reversal_batch(4, 6, gen(7))
    logits = model(src, tgt_in)
    assert logits.shape == (4, 7, 13) and model.head.weight is model.tgt_tok.weight
    changed = tgt_in.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 13  # a later decoder input never changes earlier outputs
    out = model(src, changed)
    assert close(out[:, :4], logits[:, :4]) and not close(out[:, 4:], logits[:, 4:])
    longer = F.pad(src, (0, 3), value=PAD)  # more padding on the source: the encoder ignores it
    assert close(model(longer, tgt_in), logits, tol=1e-10)
    other = src.clone()
    other[0, 0] = 3 if other[0, 0] != 3 else 4  # a real source token matters (through cross-attention)
    assert not close(model(other, tgt_in)[0], logits[0])
    with pytest.raises(ValueError, match=r"src: expected an int64 tensor \(B, L\) with 1 <= L <= max_len=12"):
        model(torch.zeros(2, 13, dtype=torch.int64), tgt_in)
    with pytest.raises(ValueError, match="n_embd: expected an even multiple of n_head=3"):
        Seq2SeqConfig(src_vocab=5, tgt_vocab=5, n_head=3, n_embd=16)


def test_greedy_decoding_stops_at_eos_and_pads_after_it():
    model = tiny_s2s(seed=2)
    src, _, _ = reversal_batch(5, 6, gen(8))
    out = model.greedy(src, max_new=8)
    assert out.dtype == torch.int64 and out.shape[0] == 5 and out.shape[1] <= 8 and not model.training
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1 :])
    # greedy equals re-running the decoder on its own prefix and taking the argmax at each step
    memory, padding = model.encode(src)
    prefix = torch.full((5, 1), BOS)
    for i in range(out.shape[1]):
        nxt = model.decode(prefix, memory, padding)[:, -1].argmax(-1)
        finished = (out[:, :i] == EOS).any(1)
        assert torch.equal(out[~finished, i], nxt[~finished])
        prefix = torch.cat([prefix, out[:, i : i + 1]], dim=1)


def test_train_seq2seq_lowers_the_loss_and_checks_its_arguments():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(**S2S))
    history = train_seq2seq(model, 60, batch_size=32, max_digits=6, lr=3e-3, progress=False, log_every=10)
    assert sum(history.losses[-10:]) / 10 < sum(history.losses[:10]) / 10 - 0.2
    with pytest.raises(ValueError, match="max_digits: expected at most max_len - 1 = 11, got 12"):
        train_seq2seq(model, 1, max_digits=12, progress=False)
    with pytest.raises(ValueError, match="model: expected a Seq2SeqTransformer"):
        train_seq2seq(nn.Linear(2, 2), 1, progress=False)


# --- attention probabilities for plots -------------------------------------------------------


def test_attention_weights_is_the_softmax_of_scaled_scores_and_feeds_attention():
    q, k, v = randn(2, 5, 4, seed=1), randn(2, 7, 4, seed=2), randn(2, 7, 3, seed=3)
    mask = causal_mask(5, 7)
    w = transformer.attention_weights(q, k, mask)
    by_hand = torch.softmax((q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, -math.inf), dim=-1)
    assert close(w, by_hand) and close(w.sum(-1), torch.ones(2, 5, dtype=F64))
    assert close(w @ v, attention(q, k, v, mask))


def _through_proj(mha: MultiHeadAttention, w: torch.Tensor, x: torch.Tensor, memory=None) -> torch.Tensor:
    v = split_heads(mha.qkv(memory if memory is not None else x).chunk(3, dim=-1)[2], mha.n_heads)
    return mha.proj(merge_heads(w @ v))


@pytest.mark.parametrize("causal", [False, True])
def test_mha_weights_reproduce_forward_with_padding(causal):
    mha = MultiHeadAttention(12, 3).double()
    x = randn(2, 6, 12, seed=4)
    padding = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    w = mha.weights(x, causal=causal, key_padding=padding)
    assert w.shape == (2, 3, 6, 6)
    assert close(_through_proj(mha, w, x), mha(x, causal=causal, key_padding=padding)[0])
    assert w[1, :, :, 4:].abs().max() == 0  # padded keys get no weight
    if causal:
        assert w[0].triu(1).abs().max() == 0


def test_mha_weights_for_cross_attention():
    mha = MultiHeadAttention(8, 2).double()
    x, memory = randn(1, 3, 8, seed=5), randn(1, 5, 8, seed=6)
    w = mha.weights(x, memory=memory)
    assert w.shape == (1, 2, 3, 5) and close(_through_proj(mha, w, x, memory), mha(x, memory=memory)[0])


def test_attention_maps_of_a_gpt_are_causal_and_match_its_first_layer():
    model = GPT(GPTConfig(**TINY)).double().eval()
    idx = torch.randint(0, 11, (2, 6), generator=gen(7))
    maps = transformer.attention_maps(model, idx)
    assert maps.shape == (2, 2, 2, 6, 6)
    assert close(maps.sum(-1), torch.ones(2, 2, 2, 6, dtype=F64)) and maps.triu(1).abs().max() == 0
    block = model.blocks[0]
    h = block.ln1(model.tok(idx) + model.pos(torch.arange(6)))
    assert close(_through_proj(block.attn, maps[0], h), block.attn(h, causal=True)[0])
    with pytest.raises(ValueError, match="idx"):
        transformer.attention_maps(model, torch.zeros(1, 9, dtype=torch.int64))  # longer than block_size 8
    with pytest.raises(ValueError, match="model"):
        transformer.attention_maps(nn.Linear(2, 2), idx)


def test_cross_attention_maps_ignore_source_padding_and_match_the_decoder():
    model = Seq2SeqTransformer(Seq2SeqConfig(src_vocab=13, tgt_vocab=13, max_len=8)).double()
    src, tgt_in, _ = reversal_batch(3, 5, gen(8))
    maps = model.cross_attention_maps(src, tgt_in)
    assert maps.shape == (2, 3, 4, 6, 5)
    assert close(maps.sum(-1), torch.ones(2, 3, 4, 6, dtype=F64))
    assert (src == PAD).any() and (maps * (src == PAD)[None, :, None, None, :]).abs().max() == 0
    memory, padding = model.encode(src)
    block = model.decoder[0]
    x = model.tgt_tok(tgt_in) + model.pos_table[:6]
    mid = x + block.self_attn(block.ln1(x), causal=True)[0]
    assert close(
        _through_proj(block.cross_attn, maps[0], block.ln2(mid), memory),
        block.cross_attn(block.ln2(mid), memory=memory, key_padding=padding)[0],
    )


def test_generate_without_cache_samples_the_same_tokens_as_the_cached_generator():
    model = GPT(GPTConfig(**{**TINY, "block_size": 32})).double()
    cached = list(rnn.generate(model, [1, 2, 3], 20, temperature=0.9, top_k=5, generator=gen(9)))
    assert (
        transformer.generate_without_cache(model, [1, 2, 3], 20, temperature=0.9, top_k=5, generator=gen(9)) == cached
    )
    assert model.training  # restored
    with pytest.raises(ValueError, match="temperature"):
        transformer.generate_without_cache(model, [1], 3, temperature=0.0)
    with pytest.raises(ValueError, match="model"):
        transformer.generate_without_cache(nn.Linear(2, 2), [1], 3)


def test_flops_per_token_counts_the_matrix_multiplies():
    c = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(c)
    weights = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and not n.startswith(("tok", "pos")))
    assert weights == 2 * 12 * 16**2  # the layers' matrices: 12 C^2 each
    assert model.flops_per_token() == 2 * (weights + 16 * 11) + 2 * 4 * 8 * 16
