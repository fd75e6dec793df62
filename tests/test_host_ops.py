"""The numpy-backed decision kernels return exactly what the torch operations return."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_pruning import host_ops
from lightning_pruning.selection import mask_positions

SPECIAL = [0.0, -0.0, math.inf, -math.inf, 1.0, -1.0, 1e-45, 3.4e38]
floats = st.lists(st.one_of(st.sampled_from(SPECIAL), st.floats(width=32, allow_nan=False)), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(values=floats, pick=st.integers(min_value=0, max_value=10**6))
def test_comparisons_match_torch_at_a_value_of_the_table(values: list[float], pick: int) -> None:
    table = torch.tensor(values, dtype=torch.float32)
    threshold = table[pick % table.numel()]  # decisions compare against one of the table's own values
    for ours, theirs in (
        (host_ops.greater, torch.gt),
        (host_ops.greater_equal, torch.ge),
        (host_ops.less, torch.lt),
        (host_ops.equal, torch.eq),
    ):
        result = ours(table, threshold)
        assert result.dtype == torch.bool
        assert torch.equal(result, theirs(table, threshold))
        assert torch.equal(ours(table, float(threshold)), theirs(table, threshold))
    mask = table > threshold
    assert host_ops.count_true(mask) == int(torch.count_nonzero(mask))


@settings(max_examples=200, deadline=None)
@given(values=floats, pick=st.integers(min_value=0, max_value=10**6))
def test_kth_smallest_is_kthvalue(values: list[float], pick: int) -> None:
    table = torch.tensor(values, dtype=torch.float32)
    k = pick % table.numel() + 1
    ours = host_ops.kth_smallest(table, k)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert float(ours) == float(torch.kthvalue(table, k).values)  # -0.0 == 0.0: equal as values
    wide = table.to(torch.float64)[::1]
    assert float(host_ops.kth_smallest(wide, k)) == float(torch.kthvalue(wide, k).values)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(min_value=0.0, width=32), min_size=1, max_size=300))
def test_sqrt_is_the_correctly_rounded_square_root(values: list[float]) -> None:
    table = torch.tensor([*values, 0.0, 1.1, math.inf], dtype=torch.float32)
    exact = torch.from_numpy(numpy.sqrt(table.numpy().astype(numpy.float64)).astype(numpy.float32))
    # sqrt in float64 rounded to float32 is the correctly rounded float32 sqrt (53 >= 2 * 24 + 2 bits).
    assert torch.equal(host_ops.sqrt(table), exact)
    in_place = table.clone()
    assert host_ops.sqrt_(in_place) is in_place and torch.equal(in_place, exact)
    strided = table.repeat_interleave(2)[::2]
    assert torch.equal(host_ops.sqrt(strided), strided.sqrt())  # falls back to torch


@settings(max_examples=100, deadline=None)
@given(size=st.integers(min_value=1, max_value=400), seed=st.integers(min_value=0, max_value=2**31))
def test_masked_shift_and_zeroing_match_torch(size: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(size, generator=generator)
    mask = torch.rand(size, generator=generator) < 0.5
    kept = host_ops.keep_where_(keys.clone(), mask)
    assert torch.equal(kept, keys.masked_fill(~mask, 0.0))
    raised = host_ops.add_mask_(keys.clone(), mask)
    assert torch.equal(raised, keys + mask.to(torch.float32))
    if bool(mask.any()) and not bool(mask.all()):
        assert float(raised[mask].min()) >= 1.0 > float(raised[~mask].max())


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=400),
    seed=st.integers(min_value=0, max_value=2**31),
    invert=st.booleans(),
    strided=st.booleans(),
)
def test_in_place_logic_matches_torch(size: int, seed: int, invert: bool, strided: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    # A strided `other` (every second entry of a longer mask) takes the torch path.
    longer = torch.rand(2 * size, generator=generator) < 0.5
    mask = torch.rand(size, generator=generator) < 0.5
    other = longer[::2] if strided else longer[:size].clone()
    operand = other.logical_not() if invert else other
    conjunction = mask.clone()
    assert host_ops.and_(conjunction, other, invert=invert) is conjunction
    assert torch.equal(conjunction, mask & operand)
    disjunction = mask.clone()
    assert host_ops.or_(disjunction, other, invert=invert) is disjunction
    assert torch.equal(disjunction, mask | operand)
    assert torch.equal(other, longer[::2] if strided else longer[:size])  # the operand is left as it was


def test_tensors_numpy_cannot_view_fall_back_to_torch() -> None:
    table = torch.arange(12, dtype=torch.float32).reshape(3, 4).t().reshape(-1)  # contiguous after reshape
    strided = torch.arange(24, dtype=torch.float32)[::2]  # not contiguous
    assert not strided.is_contiguous()
    assert torch.equal(host_ops.greater(strided, 7.0), strided > 7.0)
    half = table.to(torch.bfloat16)  # numpy has no bfloat16
    assert torch.equal(host_ops.greater_equal(half, 5.0), half >= 5.0)
    with_grad = table.clone().requires_grad_(True)
    assert torch.equal(host_ops.equal(with_grad, 3.0), table == 3.0)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=5000),
    density=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31),
    invert=st.booleans(),
)
def test_mask_positions_equals_nonzero(size: int, density: float, seed: int, invert: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(size, generator=generator) < density
    expected = (~mask if invert else mask).nonzero().squeeze(1)
    positions = mask_positions(mask, invert=invert)
    assert positions.dtype == torch.int32
    assert torch.equal(positions.to(torch.int64), expected)
    wide_result = mask_positions(mask, invert=invert, dtype=torch.int64)
    assert wide_result.dtype == torch.int64 and torch.equal(wide_result, expected)
    # Into a slice of a larger int64 tensor, and into a non-contiguous view.
    wide = torch.full((expected.numel() + 3,), -7, dtype=torch.int64)
    mask_positions(mask, invert=invert, out=wide[2 : 2 + expected.numel()])
    assert torch.equal(wide[2 : 2 + expected.numel()], expected)
    assert int(wide[0]) == int(wide[1]) == int(wide[-1]) == -7
    strided = torch.zeros(2 * expected.numel(), dtype=torch.int32)
    mask_positions(mask, invert=invert, out=strided[::2])
    assert torch.equal(strided[::2].to(torch.int64), expected)


def test_mask_positions_of_a_non_contiguous_mask() -> None:
    mask = (torch.arange(40) % 3 == 0)[::2]  # a strided view
    assert not mask.is_contiguous()
    assert torch.equal(mask_positions(mask).long(), mask.nonzero().squeeze(1))


def test_mask_positions_spans_several_chunks_and_checks_out_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_pruning.selection as selection

    monkeypatch.setattr(selection, "_NONZERO_CHUNK", 64)
    mask = torch.arange(1000) % 7 == 3
    assert torch.equal(mask_positions(mask).to(torch.int64), mask.nonzero().squeeze(1))
    with pytest.raises(ValueError, match="holds 5 entries"):
        mask_positions(mask, out=torch.empty(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="mask has"):
        mask_positions(mask, out=torch.empty(500, dtype=torch.int32))
