"""CL4SRec's sequence augmentations, batched on right-padded RecBole sequences.

RecBole stores a history as ``item_seq[b, :n_b]`` followed by zeros. Each function
returns a new ``(item_seq, item_seq_len)`` in the same layout and never reads past
``n_b``, so no padding or future item leaks into a view. Randomness comes from
``generator`` (or torch's global RNG) so that a seeded run is reproducible.
"""

from __future__ import annotations

import torch


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu").to(like.device)


def crop(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random contiguous window of ``max(1, floor(ratio * n))`` items."""
    batch, max_len = item_seq.shape
    new_len = torch.clamp((ratio * item_seq_len.float()).floor().long(), min=1)
    new_len = torch.minimum(new_len, item_seq_len.clamp(min=1))
    start = ((item_seq_len - new_len + 1).float() * _uniform((batch,), item_seq, generator)).floor().long()
    positions = torch.arange(max_len, device=item_seq.device).unsqueeze(0)
    index = (start.unsqueeze(1) + positions).clamp(max=max_len - 1)
    cropped = torch.gather(item_seq, 1, index)
    cropped = cropped.masked_fill(positions >= new_len.unsqueeze(1), 0)
    return cropped, new_len


def mask(
    item_seq: torch.Tensor,
    item_seq_len: torch.Tensor,
    ratio: float,
    mask_token: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``floor(ratio * n)`` randomly chosen items by ``mask_token``."""
    batch, max_len = item_seq.shape
    positions = torch.arange(max_len, device=item_seq.device).unsqueeze(0)
    valid = positions < item_seq_len.unsqueeze(1)
    scores = _uniform((batch, max_len), item_seq, generator).masked_fill(~valid, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    n_masked = (ratio * item_seq_len.float()).floor().long().unsqueeze(1)
    return item_seq.masked_fill(rank < n_masked, mask_token), item_seq_len


def reorder(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a random contiguous window of ``floor(ratio * n)`` items; the rest keeps its place.

    Positions get sort keys equal to their index; inside the window the keys are
    redrawn uniformly within the window's span, so sorting permutes only the window.
    """
    batch, max_len = item_seq.shape
    width = (ratio * item_seq_len.float()).floor().long()
    start = ((item_seq_len - width + 1).float() * _uniform((batch,), item_seq, generator)).floor().long()
    positions = torch.arange(max_len, device=item_seq.device).unsqueeze(0).expand(batch, -1)
    inside = (positions >= start.unsqueeze(1)) & (positions < (start + width).unsqueeze(1))
    keys = positions.float()
    random_keys = (
        start.unsqueeze(1).float() + _uniform((batch, max_len), item_seq, generator) * width.unsqueeze(1).float()
    )
    keys = torch.where(inside, random_keys, keys)
    order = keys.argsort(dim=1)
    return torch.gather(item_seq, 1, order), item_seq_len


AUGMENTATIONS = ("crop", "mask", "reorder")


def random_augment(
    item_seq: torch.Tensor,
    item_seq_len: torch.Tensor,
    *,
    crop_ratio: float,
    mask_ratio: float,
    reorder_ratio: float,
    mask_token: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one augmentation per sequence, chosen uniformly among crop, mask and reorder."""
    choice = (_uniform((item_seq.size(0),), item_seq, generator) * 3).long().clamp(max=2).unsqueeze(1)
    cropped, cropped_len = crop(item_seq, item_seq_len, crop_ratio, generator)
    masked, _ = mask(item_seq, item_seq_len, mask_ratio, mask_token, generator)
    reordered, _ = reorder(item_seq, item_seq_len, reorder_ratio, generator)
    seq = torch.where(choice == 0, cropped, torch.where(choice == 1, masked, reordered))
    seq_len = torch.where(choice.squeeze(1) == 0, cropped_len, item_seq_len)
    return seq, seq_len
