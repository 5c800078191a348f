"""The faster CPU paths of the stage-2 step compute what the straightforward code computed.

Blocked soft cross-entropy, categorical sampling by inverse CDF, dropout masks from 16-bit integer
draws, and attention with dropout outside SDPA (rqscale.bench train measures their speed)."""
import copy

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rqscale.models.transformer import Block, Dropout, _math_attention, dropout, dropout_add, keep_mask
from rqscale.quantizer.residual import sample_categorical
from rqscale.tasks import soft_cross_entropy
import rqscale.tasks.stage2 as stage2


def _reference_ce(logits, targets):
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def test_blocked_soft_cross_entropy_matches_the_whole_tensor_formula():
    torch.manual_seed(0)
    assert len(stage2._ce_blocks(3 * 1100, 256, torch.device("cpu"))) > 1  # several blocks, a ragged last one
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(3, 1100, 256) * 4).to(dtype).requires_grad_()
        targets = torch.softmax(torch.randn(3, 1100, 256) * 2, dim=-1)
        expected = _reference_ce(logits, targets)
        got = soft_cross_entropy(logits, targets)
        assert got.dtype == torch.float32 and torch.equal(got, expected)  # same arithmetic, row for row
        g_expected, = torch.autograd.grad(expected.mean(), logits)
        g_got, = torch.autograd.grad(got.mean(), logits)
        assert g_got.dtype == dtype
        tol = 1e-9 if dtype == torch.float32 else 2e-6  # fp32 rounding order; bf16: an ulp of ~1e-4 values
        assert torch.allclose(g_got.float(), g_expected.float(), atol=tol, rtol=1e-2)


def test_soft_cross_entropy_gradient_in_double_and_wrt_targets():
    logits = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(4, 7, dtype=torch.float64), dim=-1).requires_grad_()
    expected = torch.autograd.grad(_reference_ce(logits, targets).sum(), (logits, targets))
    got = torch.autograd.grad(soft_cross_entropy(logits, targets).sum(), (logits, targets))
    for a, b in zip(got, expected):
        assert torch.allclose(a.double(), b.double(), atol=1e-6)


def test_sample_categorical_draws_with_the_given_probabilities():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(3, 12) * 1.5, dim=-1)
    p[0, 5] = 0.0
    p[0] /= p[0].sum()
    n = 200_000
    codes = sample_categorical(p.repeat(n, 1), torch.Generator().manual_seed(1)).view(n, 3)
    assert codes.dtype == torch.long and int(codes.min()) >= 0 and int(codes.max()) < 12
    freq = torch.stack([torch.bincount(codes[:, r], minlength=12).float() / n for r in range(3)])
    assert (freq - p).abs().max() < 0.005  # ~4 standard errors at n = 200k
    assert freq[0, 5] == 0.0  # a code of probability 0 is never drawn
    again = sample_categorical(p.repeat(n, 1), torch.Generator().manual_seed(1)).view(n, 3)
    assert torch.equal(codes, again)  # reproducible from the generator


def test_dropout_is_f_dropout_arithmetic_with_its_own_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 256).to(torch.bfloat16)
    y = dropout(x, 0.1)
    kept = y != 0
    assert 0.88 < float(kept.float().mean()) < 0.92
    scale = 65536 / (65536 - 6554)  # 1 / P(keep) with p rounded to 2^-16
    assert torch.equal(y[kept], (x[kept].float() * scale).to(torch.bfloat16)) and y.dtype == torch.bfloat16
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    for bad in (-0.1, 1.5):  # refused as F.dropout refuses it, not wrapped into the integer threshold
        try:
            dropout(x, bad)
            raise AssertionError(f"p={bad} must be refused")
        except ValueError as e:
            assert "between 0 and 1" in str(e)
    assert torch.equal(dropout(x, 1.0), F.dropout(x, 1.0))
    module = Dropout(0.1).eval()
    assert isinstance(module, torch.nn.Dropout) and module(x) is x
    xg = torch.randn(10, 10, requires_grad=True)
    out = dropout(xg, 0.5)
    out.sum().backward()
    assert torch.equal(xg.grad, (out != 0).float() * 2.0)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(x, 0.3))  # from the global generator: seeding reproduces it


def test_dropout_add_is_the_residual_plus_dropout_rounded_once_forward_and_backward():
    torch.manual_seed(0)
    residual, x = torch.randn(64, 300), torch.randn(64, 300)
    torch.manual_seed(5)
    expected = residual + dropout(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(dropout_add(residual, x, 0.1), expected)  # fp32: the same mask and the same arithmetic
    r16, x16 = (t.to(torch.bfloat16).requires_grad_() for t in (residual, x))
    g16 = torch.randn(64, 300).to(torch.bfloat16)
    torch.manual_seed(5)
    keep, scale = keep_mask(x16.shape, 0.1, torch.bfloat16, x16.device)  # the draw dropout_add makes
    torch.manual_seed(5)
    out = dropout_add(r16, x16, 0.1)
    exact = r16.detach().float() + x16.detach().float() * keep.float() * scale
    assert out.dtype == torch.bfloat16 and torch.equal(out, exact.to(torch.bfloat16))  # one rounding
    grad_r, grad_x = torch.autograd.grad(out, (r16, x16), g16)
    assert torch.equal(grad_r, g16)
    assert torch.equal(grad_x, (g16.float() * keep.float() * scale).to(torch.bfloat16))
    biased = g16 * (keep * scale)  # what addcmul's own gradient computes: keep * scale rounded to bf16 first
    assert float((biased.float().abs() - grad_x.float().abs()).sum() / grad_x.float().abs().sum()) < -1e-3
    assert torch.equal(dropout_add(residual, x, 0.1, training=False), residual + x)
    row = residual[:1].clone().requires_grad_()  # a broadcast residual: its gradient is summed back to its shape
    xb = x.clone().requires_grad_()
    torch.manual_seed(5)
    grad_row, grad_xb = torch.autograd.grad(dropout_add(row, xb, 0.1).sum(), (row, xb))
    assert grad_row.shape == row.shape and torch.equal(grad_row, torch.full_like(row, 64.0))
    assert torch.allclose(grad_xb, keep.float() * scale)
    try:
        dropout_add(residual, x, 1.5)
        raise AssertionError("p=1.5 must be refused")
    except ValueError as e:
        assert "between 0 and 1" in str(e)


def test_block_with_fused_residual_dropout_draws_the_masks_of_the_unfused_block():
    torch.manual_seed(0)
    block = Block(64, 4, 4, attn_dropout=0.1, resid_dropout=0.1).train()
    x = torch.randn(3, 10, 64)

    def unfused(x):
        x = x + block.attn(block.ln1(x))
        return x + block.mlp_drop(block.mlp(block.ln2(x)))

    torch.manual_seed(9)
    expected = unfused(x)
    torch.manual_seed(9)
    assert torch.allclose(block(x), expected, atol=1e-6)  # same draws in the same order; fp32 sums


def test_keep_mask_rate_scale_and_every_lane_of_a_draw():
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        keep, scale = keep_mask(torch.Size([1 << 20]), p, torch.bfloat16, torch.device("cpu"))
        assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
        rate = 1 - round(p * 65536) / 65536
        assert abs(scale - 1 / rate) < 1e-12 and abs(rate - (1 - p)) <= 2 ** -17
        lanes = keep.view(-1, 4).float().mean(0)  # the four 16-bit lanes of each int64 draw
        assert (lanes - rate).abs().max() < 0.004, (p, lanes)  # >= 4 standard errors at 2^18 per lane
    keep, scale = keep_mask(torch.Size([3, 5, 7]), 0.999999, torch.float32, torch.device("cpu"))  # an odd size, p ~ 1
    assert keep.shape == (3, 5, 7) and scale == 65536.0


def test_math_attention_is_sdpa_math_path_without_dropout():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 16)
    with sdpa_kernel(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(_math_attention(q, k, v, 0.0), expected, atol=1e-6)


def _autocast_attention(q, k, v):
    """The arithmetic of the authors' causal attention (bmm, masked_fill, softmax, bmm) under torch.autocast bf16."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        length = q.shape[-2]
        scores = torch.matmul(q, k.transpose(-2, -1) * q.shape[-1] ** -0.5)
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        return torch.matmul(F.softmax(scores, dim=-1), v)


def _attention_grads(fn, q, k, v, grad):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad.to(out.dtype))


def test_math_attention_in_bf16_is_as_accurate_as_the_authors_autocast_attention():
    """bf16 inputs: scores rounded to bf16 by the product and by the scale (exact at head_dim 16 and 64,
    not at 32), softmax accumulated in fp32 and rounded to bf16. Against exact attention of the same bf16
    inputs (float64) its error, forward and backward, is that of the authors' attention under autocast,
    and within a few times that of SDPA's math path, which keeps fp32 scores (the price of bf16 products)."""
    torch.manual_seed(0)
    exact_fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    for head_dim in (16, 32):
        for sharpness in (1.0, 4.0):  # unit-scale scores, and sharp attention
            q, k, v = torch.randn(3, 2, 4, 9, head_dim)
            q, k, v = (t.to(torch.bfloat16) for t in (q * sharpness, k * sharpness, v))
            grad = torch.randn(2, 4, 9, head_dim)
            exact, exact_grads = _attention_grads(exact_fn, q.double(), k.double(), v.double(), grad)
            with sdpa_kernel(SDPBackend.MATH):
                sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            ours, our_grads = _attention_grads(lambda *t: _math_attention(*t, 0.0), q, k, v, grad)
            theirs, their_grads = _attention_grads(_autocast_attention, q, k, v, grad)
            assert ours.dtype == torch.bfloat16
            err = {name: (t.double() - exact).abs() for name, t in (("ours", ours), ("autocast", theirs), ("sdpa", sdpa))}
            case = (head_dim, sharpness)
            assert err["ours"].max() <= 1.05 * err["autocast"].max() + 1e-4, case
            assert err["ours"].mean() <= 1.05 * err["autocast"].mean() + 1e-5, case
            assert err["ours"].mean() <= 3.0 * err["sdpa"].mean(), case
            for ours_g, theirs_g, exact_g in zip(our_grads, their_grads, exact_grads):  # the backward: q, k, v
                assert (ours_g.double() - exact_g).abs().mean() <= 1.5 * (theirs_g.double() - exact_g).abs().mean() + 1e-5, case


def test_math_attention_dropout_keeps_causality_and_expectation():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 2, 6, 8)
    v = torch.randn(1, 2, 6, 8, requires_grad=True)
    out = _math_attention(q, k, v, 0.5)
    out[:, :, 2].sum().backward()  # position 2 sees positions 0..2 only
    assert v.grad[:, :, 3:].abs().max() == 0
    qs, ks, vs = torch.randn(3, 1, 1, 4, 8)
    mean = torch.stack([_math_attention(qs, ks, vs, 0.3) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, _math_attention(qs, ks, vs, 0.0), atol=0.06)  # inverted dropout: unbiased


def test_attention_module_cpu_branch_matches_the_gpu_branch(monkeypatch):
    """CausalSelfAttention on CPU takes _math_attention; on GPU, SDPA. Both branches run here (the GPU's
    on SDPA's CPU kernel): same outputs in fp32, and in bf16 within bf16 rounding."""
    from rqscale.models import transformer

    torch.manual_seed(0)
    attention = transformer.CausalSelfAttention(64, 4, attn_dropout=0.1, resid_dropout=0.0).eval()
    half = copy.deepcopy(attention).to(torch.bfloat16)
    x = torch.randn(3, 11, 64)
    outs = {}
    for branch in ("math", "sdpa"):
        monkeypatch.setattr(transformer, "CPU_ATTENTION", branch)
        outs[branch] = (attention(x), half(x.to(torch.bfloat16)).float())
    assert torch.allclose(outs["math"][0], outs["sdpa"][0], atol=1e-5)
    assert (outs["math"][1] - outs["sdpa"][1]).abs().max() <= 0.02 * outs["sdpa"][1].abs().max()
