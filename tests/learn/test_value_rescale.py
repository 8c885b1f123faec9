"""R2D2's value rescaling: h and h⁻¹ undo each other to 1e-5 relative over [-1000, 1000] in float32 and float64,
agree with the paper's formulas, and h is odd, monotone, 0 at 0, and compresses large values."""

from __future__ import annotations

import pytest
import torch

from townlet.learn.value_rescale import h, h_inv


def paper_h(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + eps * x


def paper_h_inv(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sign(x) * (((torch.sqrt(1 + 4 * eps * (x.abs() + 1 + eps)) - 1) / (2 * eps)) ** 2 - 1)


def grid(dtype: torch.dtype) -> torch.Tensor:
    """[-1000, 1000] in steps of 0.01 (0 included), plus magnitudes from 1e-20 to 1000 on a log scale."""
    tiny = torch.logspace(-20, 3, 2301, dtype=torch.float64)
    return torch.cat([torch.arange(-100_000, 100_001, dtype=torch.float64) / 100, tiny, -tiny]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_h_and_its_inverse_undo_each_other_to_1e_5_relative(dtype: torch.dtype) -> None:
    x = grid(dtype)
    assert (x == 0).any()
    for name, back in (("h_inv(h(x))", h_inv(h(x))), ("h(h_inv(x))", h(h_inv(x)))):
        assert back.dtype == dtype, name
        assert bool((back[x == 0] == 0).all()), name
        rel = ((back - x).abs() / x.abs())[x != 0]
        assert rel.max() < 1e-5, f"{name}: worst relative error {rel.max():.2e}"


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 0.0])
def test_h_and_h_inv_are_the_papers_formulas(eps: float) -> None:
    """Checked in float64 away from 0, where the paper's forms do not lose digits to cancellation."""
    x = torch.cat([torch.linspace(0.5, 1000, 5000, dtype=torch.float64), -torch.linspace(0.5, 1000, 5000,
                                                                                          dtype=torch.float64)])
    assert torch.allclose(h(x, eps), paper_h(x, eps), rtol=1e-12, atol=0)
    if eps > 0:  # the paper's h⁻¹ divides by eps
        assert torch.allclose(h_inv(x, eps), paper_h_inv(x, eps), rtol=1e-9, atol=0)
    assert torch.allclose(h_inv(h(x, eps), eps), x, rtol=1e-12, atol=0)


def test_h_is_odd_monotone_zero_at_zero_and_compresses() -> None:
    x = torch.arange(-100_000, 100_001, dtype=torch.float64) / 100
    y = h(x)
    assert h(torch.zeros(3)).eq(0).all() and h_inv(torch.zeros(3)).eq(0).all()
    assert torch.equal(h(-x), -y) and torch.equal(h_inv(-x), -h_inv(x))
    assert bool((y.diff() > 0).all()) and bool((h_inv(x).diff() > 0).all())
    big = x.abs() > 1e-3
    assert bool((y[big].abs() < x[big].abs()).all())  # smaller in magnitude everywhere but right at 0
    assert abs(h(torch.tensor(1000.0)).item() - (1001 ** 0.5 - 1 + 1.0)) < 1e-4  # ~ sqrt: 1000 -> 31.6
    slope = h(torch.tensor(1e-9, dtype=torch.float64)).item() / 1e-9
    assert abs(slope - (0.5 + 1e-3)) < 1e-8  # near 0, h is linear with slope 1/2 + eps (no cancellation to 0)


def test_integer_input_gives_float_and_a_negative_eps_is_refused() -> None:
    assert h(torch.tensor([3])).dtype == torch.get_default_dtype()
    assert torch.allclose(h_inv(h(torch.tensor([3, -8]))), torch.tensor([3.0, -8.0]))
    with pytest.raises(ValueError, match="eps"):
        h(torch.ones(1), eps=-1e-3)
    with pytest.raises(ValueError, match="eps"):
        h_inv(torch.ones(1), eps=-1e-3)
