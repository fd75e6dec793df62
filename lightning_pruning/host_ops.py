"""Elementwise kernels for the host-side decisions, run through numpy on CPU tensors.

Decisions run once per epoch on CPU tables of N entries. On one thread, torch's CPU kernels for a few
operations are several times slower than numpy's on the same memory (comparisons that produce a bool
tensor, logical operations on bool tensors, ``count_nonzero``, ``kthvalue``, a masked fill);
``benchmarks/overhead.py`` measures the decisions that use them. Every function here returns exactly what
the torch operation returns (IEEE comparisons), except :func:`sqrt`, which is correctly rounded where torch's
vectorised CPU kernel is not always; all fall back to torch for tensors numpy cannot view (not on the CPU,
not contiguous, or of a dtype numpy lacks).
"""

from __future__ import annotations

import numpy
import torch
from torch import Tensor

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64, torch.int16, torch.uint8, torch.bool)


def viewable(tensor: Tensor) -> bool:
    """Whether numpy can work on ``tensor`` in place: a contiguous CPU tensor of a dtype numpy has, without grad."""
    return (
        tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and tensor.dtype in _NUMPY_DTYPES
        and not tensor.requires_grad
    )


def _scalar(threshold: Tensor | float) -> float | int:
    return threshold.item() if isinstance(threshold, Tensor) else threshold


def greater(values: Tensor, threshold: Tensor | float) -> Tensor:
    """``values > threshold`` (a bool tensor) for a 1-D tensor and a scalar."""
    if not viewable(values):
        return values > threshold
    return torch.from_numpy(numpy.greater(values.numpy(), _scalar(threshold)))


def greater_equal(values: Tensor, threshold: Tensor | float) -> Tensor:
    """``values >= threshold`` (a bool tensor) for a 1-D tensor and a scalar."""
    if not viewable(values):
        return values >= threshold
    return torch.from_numpy(numpy.greater_equal(values.numpy(), _scalar(threshold)))


def less(values: Tensor, threshold: Tensor | float) -> Tensor:
    """``values < threshold`` (a bool tensor) for a 1-D tensor and a scalar."""
    if not viewable(values):
        return values < threshold
    return torch.from_numpy(numpy.less(values.numpy(), _scalar(threshold)))


def equal(values: Tensor, threshold: Tensor | float) -> Tensor:
    """``values == threshold`` (a bool tensor) for a 1-D tensor and a scalar."""
    if not viewable(values):
        return values == threshold
    return torch.from_numpy(numpy.equal(values.numpy(), _scalar(threshold)))


def count_true(mask: Tensor) -> int:
    """The number of ``True`` entries of a bool tensor (``int(torch.count_nonzero(mask))``)."""
    if not viewable(mask):
        return int(torch.count_nonzero(mask))
    return int(numpy.count_nonzero(mask.numpy()))


def and_(mask: Tensor, other: Tensor, *, invert: bool = False) -> Tensor:
    """``mask &= other`` (``mask &= ~other`` with ``invert``) for bool tensors, in place; returns ``mask``."""
    if not (viewable(mask) and viewable(other) and mask.dtype == other.dtype == torch.bool):
        return mask.logical_and_(other.logical_not() if invert else other)
    # On bools a & ~b is a > b: no temporary for the negation.
    (numpy.greater if invert else numpy.logical_and)(mask.numpy(), other.numpy(), out=mask.numpy())
    return mask


def or_(mask: Tensor, other: Tensor, *, invert: bool = False) -> Tensor:
    """``mask |= other`` (``mask |= ~other`` with ``invert``) for bool tensors, in place; returns ``mask``."""
    if not (viewable(mask) and viewable(other) and mask.dtype == other.dtype == torch.bool):
        return mask.logical_or_(other.logical_not() if invert else other)
    # On bools a | ~b is a >= b: no temporary for the negation.
    (numpy.greater_equal if invert else numpy.logical_or)(mask.numpy(), other.numpy(), out=mask.numpy())
    return mask


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest entry (1-based) of a 1-D tensor without NaN, as a 0-dim tensor of its dtype: the value
    of ``torch.kthvalue(values, k).values``, by numpy's ``partition`` (about ten times faster on CPU, and its
    working copy holds the values only, not torch's int64 indices beside them)."""
    if not viewable(values):
        return torch.kthvalue(values, k).values
    return torch.tensor(numpy.partition(values.numpy(), k - 1)[k - 1], dtype=values.dtype)


def add_mask_(values: Tensor, mask: Tensor) -> Tensor:
    """Adds 1 to ``values`` where the bool ``mask`` holds, in place (keys in ``[0, 1)`` move to ``[1, 2)``, above
    every unmasked key); returns ``values``."""
    if not (viewable(values) and viewable(mask) and values.is_floating_point()):
        return values.add_(mask.to(values.dtype))
    numpy.add(values.numpy(), mask.numpy(), out=values.numpy())
    return values


def keep_where_(values: Tensor, mask: Tensor) -> Tensor:
    """Zeroes ``values`` where the bool ``mask`` is ``False``, in place, as ``values * mask`` (finite values: the same
    as ``masked_fill_(~mask, 0)``, an order of magnitude faster than torch's masked fill); returns ``values``."""
    if not (viewable(values) and viewable(mask) and values.is_floating_point()):
        return values.masked_fill_(mask.logical_not(), 0.0)
    numpy.multiply(values.numpy(), mask.numpy(), out=values.numpy())
    return values


def sqrt(values: Tensor) -> Tensor:
    """The correctly rounded (IEEE) square root of a float tensor, as a new tensor.

    torch's vectorised CPU ``sqrt`` returns a float32 result one ulp off the correctly rounded one for a
    sizeable share of inputs (measured on torch 2.14's AVX2 kernel), so it can differ between CPU builds, and
    it takes a slow path on zeros, which fresh variance tables are full of. numpy's is the hardware's, exact.
    """
    if not viewable(values) or not values.is_floating_point():
        return values.sqrt()
    return torch.from_numpy(numpy.sqrt(values.numpy()))


def sqrt_(values: Tensor) -> Tensor:
    """:func:`sqrt` in place; returns ``values``."""
    if not viewable(values) or not values.is_floating_point():
        return values.sqrt_()
    numpy.sqrt(values.numpy(), out=values.numpy())
    return values
