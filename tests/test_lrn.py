"""Tests for the LocalResponseNorm relevance rule (lrp_cli.engine.lrn)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lrp_cli.engine.lrn import lrn_relevance

DT = torch.float64


def _window(c: int, size: int, channels: int) -> list[int]:
    """PyTorch's LRN window of channel c, clipped to existing channels (zero padding)."""
    lo, hi = size // 2, (size - 1) // 2
    return [i for i in range(c - lo, c + hi + 1) if 0 <= i < channels]


def _lrn_forward_formula(x, size, alpha, beta, k):
    """Direct loop over the documented formula (the convention under test)."""
    y = torch.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        sq = sum(x[:, i] ** 2 for i in _window(c, size, channels))
        y[:, c] = x[:, c] * (k + alpha / size * sq) ** (-beta)
    return y


def _reference(x, rel, size, alpha, beta, k, epsilon=0.0, sign_beta=None):
    """Per-neuron Python loop over the Taylor rule of Binder et al. 2016 (lrp-notes section 4)."""
    n_batch, channels = x.shape[:2]
    xs = x.reshape(n_batch, channels, -1)
    rs = rel.reshape(n_batch, channels, -1)
    out = torch.zeros_like(xs)
    a = alpha / size
    for b_i in range(n_batch):
        for p in range(xs.shape[2]):
            xv = [float(v) for v in xs[b_i, :, p]]
            rv = [float(v) for v in rs[b_i, :, p]]
            acc = [0.0] * channels
            for kk in range(channels):
                win = _window(kk, size, channels)
                s_k = k + a * sum(xv[i] ** 2 for i in win)
                terms = {}
                for j in win:
                    if j == kk:
                        terms[j] = xv[kk] * (k + a * xv[kk] ** 2) ** (-beta)
                    else:
                        terms[j] = -2 * a * beta * xv[kk] * xv[j] ** 2 * s_k ** (-beta - 1)
                if sign_beta is None:
                    den = sum(terms.values())
                    den = den + epsilon * (1.0 if den >= 0 else -1.0)
                    for j, t in terms.items():
                        acc[j] += 0.0 if den == 0 else t / den * rv[kk]
                else:
                    pos = sum(max(t, 0.0) for t in terms.values())
                    neg = sum(min(t, 0.0) for t in terms.values())
                    for j, t in terms.items():
                        v = 0.0
                        if pos != 0:
                            v += (1 + sign_beta) * max(t, 0.0) / pos
                        if neg != 0:
                            v -= sign_beta * min(t, 0.0) / neg
                        acc[j] += v * rv[kk]
            out[b_i, :, p] = torch.tensor(acc, dtype=x.dtype)
    return out.reshape(x.shape)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("k", [1.0, 2.0, 0.5])
def test_pytorch_convention(size, k):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 8, 3, 4, generator=gen, dtype=DT) * 2
    alpha, beta = 0.7, 0.6
    expected = F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)
    torch.testing.assert_close(
        _lrn_forward_formula(x, size, alpha, beta, k), expected, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        torch.nn.LocalResponseNorm(size, alpha, beta, k)(x), expected, rtol=0, atol=0
    )


def _variants():
    params = [(1.0, 0.75), (0.3, 1.3), (2.0, 0.4)]  # (alpha, beta)
    rules = [(0.0, None), (0.5, None), (0.0, 0.0), (0.0, 1.0), (0.0, 0.5)]
    for size, k, (alpha, beta), (eps, sb) in itertools.product(
        [1, 2, 3, 4, 5], [1.0, 2.0], params, rules
    ):
        yield size, k, alpha, beta, eps, sb


@pytest.mark.parametrize("size,k,alpha,beta,epsilon,sign_beta", list(_variants()))
def test_against_per_neuron_loop(size, k, alpha, beta, epsilon, sign_beta):
    gen = torch.Generator().manual_seed(1000 * size + int(10 * alpha))
    x = torch.randn(2, 7, 3, 3, generator=gen, dtype=DT)
    x[0, 3, 1, 1] = 0.0  # a neuron with zero input (all its terms vanish)
    rel = torch.randn(2, 7, 3, 3, generator=gen, dtype=DT)
    got = lrn_relevance(x, rel, size, alpha, beta, k, epsilon=epsilon, sign_beta=sign_beta)
    ref = _reference(x, rel, size, alpha, beta, k, epsilon=epsilon, sign_beta=sign_beta)
    assert got.shape == x.shape and got.dtype == DT
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_conservation_epsilon_zero(size, k):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(3, 10, 5, 5, generator=gen, dtype=DT)
    x = x + 0.2 * torch.sign(x)  # keep |x_k| away from 0
    rel = torch.randn(3, 10, 5, 5, generator=gen, dtype=DT)
    alpha, beta = 0.5, 0.75
    # exact conservation needs every D_k = sum_j T_jk != 0 (a zero one would absorb R_k)
    out = lrn_relevance(x, rel, size, alpha, beta, k, epsilon=0.0)
    torch.testing.assert_close(out.sum(1), rel.sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [3, 4, 5, 7])
@pytest.mark.parametrize("sign_beta", [0.0, 1.0, 2.5])
def test_conservation_sign_split(size, sign_beta):
    # With x_k != 0 and beta > 0, each T_kk and the off-centre terms T_jk (all of sign
    # -sign(x_k)) are nonzero when a neighbour is nonzero, so P_k and N_k are both nonzero
    # (every channel has a neighbour for size >= 3) and alpha - beta = 1 conserves.
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 9, 4, 4, generator=gen, dtype=DT)
    x = x + 0.1 * torch.sign(x)
    rel = torch.randn(2, 9, 4, 4, generator=gen, dtype=DT)
    out = lrn_relevance(x, rel, size, 0.8, 0.75, 2.0, sign_beta=sign_beta)
    torch.testing.assert_close(out.sum(1), rel.sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_after_relu_sign_beta_zero_is_identity(size):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 8, 4, 4, generator=gen, dtype=DT).abs() + 1e-3  # strictly positive
    rel = torch.randn(2, 8, 4, 4, generator=gen, dtype=DT)
    out = lrn_relevance(x, rel, size, 1.5, 0.75, 1.0, sign_beta=0.0)
    torch.testing.assert_close(out, rel, rtol=1e-12, atol=1e-12)
    # exact zeros after a ReLU: those neurons have no terms, their relevance is absorbed
    x0 = torch.relu(torch.randn(2, 8, 4, 4, generator=gen, dtype=DT))
    out0 = lrn_relevance(x0, rel, size, 1.5, 0.75, 1.0, sign_beta=0.0)
    torch.testing.assert_close(out0, torch.where(x0 > 0, rel, 0.0), rtol=1e-12, atol=1e-12)


def test_identity_mode():
    x = torch.randn(2, 5, 3, 3, dtype=DT)
    rel = torch.randn(2, 5, 3, 3, dtype=DT)
    out = lrn_relevance(x, rel, 5, 1e-4, 0.75, 2.0, mode="identity")
    assert torch.equal(out, rel)
    assert out.data_ptr() != rel.data_ptr()


def test_shapes_and_float32():
    gen = torch.Generator().manual_seed(0)
    for shape in [(2, 6), (2, 6, 5), (2, 6, 3, 4), (1, 6, 2, 3, 2)]:
        x = torch.randn(*shape, generator=gen, dtype=DT)
        rel = torch.randn(*shape, generator=gen, dtype=DT)
        ref = _reference(x, rel, 3, 1.0, 0.75, 1.0, epsilon=0.1)
        got = lrn_relevance(x, rel, 3, 1.0, 0.75, 1.0, epsilon=0.1)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
        got32 = lrn_relevance(x.float(), rel.float(), 3, 1.0, 0.75, 1.0, epsilon=0.1)
        assert got32.dtype == torch.float32 and got32.shape == x.shape
        torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-4)


def test_size_larger_than_channels():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 2, 2, generator=gen, dtype=DT)
    rel = torch.randn(2, 3, 2, 2, generator=gen, dtype=DT)
    for size in (6, 7):
        for sb in (None, 1.0):
            got = lrn_relevance(x, rel, size, 1.0, 0.75, 2.0, epsilon=0.01, sign_beta=sb)
            ref = _reference(x, rel, size, 1.0, 0.75, 2.0, epsilon=0.01, sign_beta=sb)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 6, 6, generator=gen, dtype=DT)
    rel = torch.randn(2, 16, 6, 6, generator=gen, dtype=DT)
    for sb in (None, 1.0):
        cpu = lrn_relevance(x, rel, 5, 1e-2, 0.75, 2.0, epsilon=1e-3, sign_beta=sb)
        gpu = lrn_relevance(x.cuda(), rel.cuda(), 5, 1e-2, 0.75, 2.0, epsilon=1e-3, sign_beta=sb)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "gradient"}, "mode"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"sign_beta": -0.5}, "sign_beta"),
    ],
)
def test_validation(kwargs, match):
    x = torch.randn(1, 4, 2, 2, dtype=DT)
    with pytest.raises(ValueError, match=match):
        lrn_relevance(x, x, 3, 1.0, 0.75, 1.0, **kwargs)


def test_validation_shapes_and_size():
    x = torch.randn(1, 4, 2, 2, dtype=DT)
    with pytest.raises(ValueError, match="shape"):
        lrn_relevance(x, x[:, :3], 3, 1.0, 0.75, 1.0)
    with pytest.raises(ValueError, match="size"):
        lrn_relevance(x, x, 0, 1.0, 0.75, 1.0)
