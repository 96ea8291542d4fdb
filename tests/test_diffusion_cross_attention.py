"""diffusion.CrossAttention (the text-to-image U-Net's block, issue 18): equal to nn.MultiheadAttention
with copied weights and a key padding mask; padding changes nothing; a caption of padding only is the
unconditional branch (the identity), with finite gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aigc_lib.diffusion import CrossAttention

F64 = torch.float64


def block(C=8, D=6, heads=2, seed=0) -> CrossAttention:
    torch.manual_seed(seed)
    m = CrossAttention(C, D, groups=2, heads=heads).double()
    nn.init.normal_(m.proj.weight), nn.init.normal_(m.proj.bias)  # not the zero start: test the whole path
    return m


def reference(m: CrossAttention, x, ctx, mask) -> torch.Tensor:
    """The same computation by torch's own multi-head attention on the flattened positions."""
    B, C, H, W = x.shape
    mha = nn.MultiheadAttention(C, m.heads, kdim=ctx.shape[-1], vdim=ctx.shape[-1], batch_first=True).double()
    with torch.no_grad():
        mha.q_proj_weight.copy_(m.q.weight[:, :, 0, 0])
        mha.k_proj_weight.copy_(m.kv.weight[:C])
        mha.v_proj_weight.copy_(m.kv.weight[C:])
        mha.in_proj_bias.copy_(torch.cat([m.q.bias, m.kv.bias]))
        mha.out_proj.weight.copy_(m.proj.weight[:, :, 0, 0])
        mha.out_proj.bias.copy_(m.proj.bias)
    queries = m.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    out, _ = mha(queries, ctx, ctx, key_padding_mask=None if mask is None else ~mask, need_weights=False)
    return x + out.transpose(1, 2).reshape(B, C, H, W)


def test_equals_multihead_attention_with_a_key_padding_mask():
    g = torch.Generator().manual_seed(1)
    m = block()
    x, ctx = torch.randn(3, 8, 4, 5, generator=g, dtype=F64), torch.randn(3, 7, 6, generator=g, dtype=F64)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True, False, True, False, True, False, True]])
    torch.testing.assert_close(m(x, ctx, mask), reference(m, x, ctx, mask), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x, ctx), reference(m, x, ctx, None), rtol=1e-10, atol=1e-10)


def test_padding_changes_nothing_and_padding_only_is_the_identity():
    g = torch.Generator().manual_seed(2)
    m = block()
    x, ctx = torch.randn(2, 8, 3, 3, generator=g, dtype=F64), torch.randn(2, 4, 6, generator=g, dtype=F64)
    longer = torch.cat([ctx, 100 * torch.randn(2, 5, 6, generator=g, dtype=F64)], 1)  # padding states: anything
    mask = torch.tensor([[True] * 4 + [False] * 5] * 2)
    torch.testing.assert_close(m(x, longer, mask), m(x, ctx), rtol=1e-10, atol=1e-10)

    x.requires_grad_(True)
    none = torch.zeros(2, 9, dtype=torch.bool)
    none[1, :2] = True  # image 0: a caption of padding only; image 1: two real tokens
    out = m(x, longer, none)
    assert torch.equal(out[0], x[0])
    assert not torch.allclose(out[1], x[1])
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_starts_as_identity_and_checks_its_inputs():
    m = CrossAttention(8, 6, groups=2, heads=2)
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(m(x, torch.randn(2, 5, 6)), x)
    with pytest.raises(ValueError, match="context"):
        m(x, torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="mask"):
        m(x, torch.randn(2, 5, 6), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="heads"):
        CrossAttention(8, 6, groups=2, heads=3)
    for bad_x in (torch.randn(2, 8, 3), torch.randn(2, 4, 3, 3), torch.ones(2, 8, 3, 3, dtype=torch.int64)):
        with pytest.raises(ValueError, match="x"):
            m(bad_x, torch.randn(2, 5, 6))
    for bad_context in (torch.randn(2, 0, 6), torch.randn(2, 5, 6, dtype=F64), [[0.0]]):
        with pytest.raises(ValueError, match="context"):
            m(x, bad_context)


def test_non_finite_padding_states_never_leak():
    m = block()
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 8, 3, 3, generator=g, dtype=F64), torch.randn(2, 4, 6, generator=g, dtype=F64)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    poisoned = ctx.clone()
    poisoned[:, 2:] = float("nan")
    poisoned[1] = float("inf")
    out = m(x, poisoned, mask)
    torch.testing.assert_close(out, m(x, ctx, mask), rtol=0, atol=0)
    assert torch.equal(out[1], x[1])
