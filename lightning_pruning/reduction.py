"""Reducing an element-wise loss to the one loss per sample that :func:`~lightning_pruning.pruning_loss` takes.

Pruning scores samples, so tasks whose loss has more than one term per sample (tokens of a sequence, pixels
of an image, coordinates of a regression target) average those terms per sample first.
"""

from __future__ import annotations

from torch import Tensor


def per_sample_mean(loss: Tensor, mask: Tensor | None = None) -> Tensor:
    """The mean of an element-wise loss over every dimension but the first (the batch), shape ``(B,)``.

    With ``mask`` only the elements where it is true (or non-zero) count: the mean token loss of each
    sequence over its real tokens, the mean pixel loss over labelled pixels. A sample whose mask is empty
    gets 0 (it contributes no gradient). Runs on the device, without a host sync.

    Examples::

        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        return pruning_loss(self, per_sample_mean(token_loss, mask=targets != PAD))
        pixel_loss = F.cross_entropy(logits, masks, reduction="none")  # (B, H, W)
        return pruning_loss(self, per_sample_mean(pixel_loss))

    Args:
        loss: element-wise loss of shape ``(B, ...)``.
        mask: ``None``, or a bool / 0-1 tensor of the same shape as ``loss`` (or broadcastable to it).

    Raises:
        ValueError: for a scalar ``loss`` or a mask that does not broadcast to it.
    """
    if loss.ndim == 0:
        raise ValueError("per_sample_mean needs a batch dimension; compute the loss with reduction='none'.")
    if loss.ndim == 1 and mask is None:
        return loss
    if mask is None:
        return loss.flatten(1).mean(dim=1)
    try:
        weights = mask.to(loss.dtype).expand_as(loss)
    except RuntimeError as error:
        raise ValueError(
            f"`mask` of shape {tuple(mask.shape)} does not broadcast to the loss of shape {tuple(loss.shape)}."
        ) from error
    # where() rather than a product, so NaN/inf in masked-out positions (e.g. padding) cannot leak in.
    total = loss.where(weights > 0, loss.new_zeros(())).mul(weights).flatten(1).sum(dim=1)
    return total / weights.flatten(1).sum(dim=1).clamp_min(1)
