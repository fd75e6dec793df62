"""Compact, lossless encodings of the tensors in a callback's checkpoint state.

* bool tensors are bit-packed (1 bit per entry instead of 1 byte);
* integer tensors are stored in the narrowest integer type that holds their values;
* a float tensor with few distinct values (loss weights) is stored as uint8 codes into a table of them;
* a subset stored as a bit mask rides in the sign bits of a per-sample table that has none set (a running
  variance, a table of non-negative losses): the mask then costs no bytes at all (:func:`encode_state`).

Every encoded form is a dict of tensors and plain values, so checkpoints still load with
``torch.load(..., weights_only=True)``; :func:`decode` restores the original dtype and shape exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy
import torch
from torch import Tensor

from lightning_pruning.selection import mask_positions

_MARK = "__lightning_pruning_codec__"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_NARROW = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_SMALL_TABLE = 256
# Below this many entries the encoding saves too little to be worth a dict.
_MIN_ENTRIES = 64


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack_bits(mask: Tensor) -> Tensor:
    """The entries of a bool tensor packed 8 per byte (little-endian bit order), flattened."""
    flat = mask.reshape(-1).to(torch.uint8)
    padding = -flat.numel() % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    return torch.sum(flat.view(-1, 8) * _BIT_WEIGHTS, dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``numel`` bool entries."""
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS) != 0
    return bits.reshape(-1)[:numel]


def encode(value: Any, *, table: bool = False) -> Any:
    """A compact form of ``value`` when it is a tensor that can be stored smaller, else ``value`` itself.

    Args:
        value: any state value.
        table: also try the value-table code for float tensors (costs a sort; meant for loss weights).
    """
    if not isinstance(value, Tensor) or value.numel() < _MIN_ENTRIES or value.is_sparse:
        return value
    value = value.detach().cpu()
    header = {_MARK: 1, "dtype": _dtype_name(value.dtype), "shape": list(value.shape)}
    if value.dtype == torch.bool:
        return {**header, "bits": pack_bits(value)}
    if not value.is_floating_point() and not value.is_complex() and value.dtype in _NARROW:
        low, high = int(value.min()), int(value.max())
        for dtype in _NARROW:
            info = torch.iinfo(dtype)
            if info.min <= low and high <= info.max:
                break
        if dtype.itemsize >= value.dtype.itemsize:
            return value.clone()
        return {**header, "values": value.reshape(-1).to(dtype)}
    if table and value.is_floating_point():
        values, codes = torch.unique(value.reshape(-1), return_inverse=True)
        if values.numel() <= _SMALL_TABLE and not bool(torch.isnan(values).any()):
            return {**header, "table": values, "codes": codes.to(torch.uint8)}
    return value.clone()


def decode(value: Any) -> Any:
    """The original tensor of an :func:`encode`'d value (other values are returned unchanged)."""
    if not isinstance(value, dict) or value.get(_MARK) != 1:
        return value
    dtype = getattr(torch, value["dtype"])
    shape = list(value["shape"])
    numel = 1
    for size in shape:
        numel *= int(size)
    if "bits" in value:
        flat = unpack_bits(value["bits"], numel)
    elif "sign_flagged" in value:
        flat = value["sign_flagged"].clone()
        numpy.bitwise_and(_int32_bits(flat), numpy.int32(2**31 - 1), out=_int32_bits(flat))
    elif "table" in value:
        flat = value["table"][value["codes"].long()]
    else:
        flat = value["values"]
    return flat.to(dtype).reshape(shape)


def encode_indices(indices: Tensor, num_samples: int) -> Any:
    """A compact form of a subset of ``[0, num_samples)``: a bit mask when the indices are strictly ascending
    (their order then follows from the mask) and a mask is smaller than the narrowed indices, else
    :func:`encode`'d indices. Lossless: :func:`decode_indices` returns the same tensor, order included."""
    size = indices.numel()
    if size >= _MIN_ENTRIES and indices.ndim == 1 and num_samples // 8 < size * indices.element_size():
        flat = indices.detach().cpu()
        if bool((flat[1:] > flat[:-1]).all()) and int(flat[0]) >= 0 and int(flat[-1]) < num_samples:
            mask = torch.zeros(num_samples, dtype=torch.bool)
            mask[flat.long()] = True
            return {_MARK: 1, "dtype": _dtype_name(indices.dtype), "num_samples": num_samples, "mask": pack_bits(mask)}
    return encode(indices)


def decode_indices(value: Any, method_state: dict[str, Any] | None = None) -> Any:
    """Inverse of :func:`encode_indices` (plain tensors are returned unchanged).

    Args:
        value: the encoded subset.
        method_state: the encoded tables stored beside it (:func:`encode_state`), needed when the subset's
            mask rides in the sign bits of one of them.
    """
    if isinstance(value, dict) and value.get(_MARK) == 1 and "flags_in" in value:
        if method_state is None:
            raise ValueError("this subset is stored in the sign bits of a method table: pass `method_state`")
        carrier = method_state[value["flags_in"]]["sign_flagged"]
        mask = torch.from_numpy(numpy.less(_int32_bits(carrier), 0))
        return mask_positions(mask, dtype=getattr(torch, value["dtype"]))
    if isinstance(value, dict) and value.get(_MARK) == 1 and "mask" in value:
        mask = unpack_bits(value["mask"], int(value["num_samples"]))
        return mask_positions(mask, dtype=getattr(torch, value["dtype"]))  # no int64 copy of an int32 subset
    return decode(value)


# The sign bit of a float32 / int32 entry, as an int32.
_SIGN_BIT = -(2**31)
_CARRIER_DTYPES = (torch.float32, torch.int32)


def _int32_bits(value: Tensor) -> numpy.ndarray:
    """An int32 numpy view of a contiguous 4-byte tensor (no copy)."""
    return value.numpy().view(numpy.int32)


def _can_carry(value: Any, num_samples: int) -> bool:
    """Whether ``value`` is a per-sample 4-byte table with every sign bit clear (no negative value, no -0.0, no
    negative NaN): its sign bits can then hold one flag per sample and be cleared again exactly."""
    return (
        isinstance(value, Tensor)
        and value.dtype in _CARRIER_DTYPES
        and value.ndim == 1
        and value.numel() == num_samples >= _MIN_ENTRIES
        and value.device.type == "cpu"
        and value.is_contiguous()
        and not value.requires_grad
        and int(_int32_bits(value).min()) >= 0
    )


def encode_state(tables: dict[str, Any], subset: Tensor, num_samples: int) -> tuple[dict[str, Any], Any]:
    """The encoded tables and subset of a callback's state (:func:`encode`, :func:`encode_indices`).

    When the subset is stored as a bit mask and one of the tables is a per-sample float32 / int32 table whose
    sign bits are all clear, the mask is written into that table's sign bits instead of beside it: the
    checkpoint then holds nothing per sample beyond the tables. :func:`decode_state` inverts this exactly.

    Args:
        tables: the method's state values by name (tensors or plain values; not modified).
        subset: the current epoch's subset of ``[0, num_samples)``.
        num_samples: N.
    """
    encoded_subset = encode_indices(subset, num_samples)
    carrier = None
    if isinstance(encoded_subset, dict) and "mask" in encoded_subset:
        carrier = next((name for name, value in tables.items() if _can_carry(value, num_samples)), None)
    encoded: dict[str, Any] = {}
    for name, value in tables.items():
        if name != carrier:
            encoded[name] = encode(value) if isinstance(value, Tensor) else copy.deepcopy(value)
            continue
        flagged = value.detach().clone()
        flags = unpack_bits(encoded_subset["mask"], num_samples).numpy()
        numpy.bitwise_or(_int32_bits(flagged), numpy.int32(_SIGN_BIT), out=_int32_bits(flagged), where=flags)
        encoded[name] = {_MARK: 1, "dtype": _dtype_name(value.dtype), "shape": [num_samples], "sign_flagged": flagged}
        encoded_subset = {
            _MARK: 1,
            "dtype": encoded_subset["dtype"],
            "num_samples": num_samples,
            "flags_in": name,
        }
    return encoded, encoded_subset


def decode_state(tables: dict[str, Any], subset: Any) -> tuple[dict[str, Any], Any]:
    """Inverse of :func:`encode_state`: the decoded tables by name and the subset (the arguments are not modified)."""
    decoded = {name: copy.deepcopy(decode(value)) for name, value in tables.items()}
    return decoded, decode_indices(subset, tables)
