"""Noisy clients: a share of each client's training items replaced by random catalogue items.

Real devices log wrong items (mis-taps, shared accounts, autoplay). ``noise_ratio``
(config key, default 0) models that on the device itself: on every client, a share of
its **training history** is replaced before anything else reads it, so the on-device
generator writes its views from the noisy history and the client trains on it, as a
real device would. Validation and test items are never touched: they are not in the
training history (:func:`~recbole_lumos.data.partition.training_histories`), and
RecBole's evaluation reads its own, clean, splits.

Rule: a history of ``n`` items has ``floor(noise_ratio * n + 0.5)`` positions, drawn
uniformly without replacement, each replaced by a catalogue item drawn uniformly
among the items other than the one it replaces. The draws depend on ``(seed, user
token)`` only, so a client's noise does not change with the other clients, the
batch or a resumed run.

The views cache key does not know the noise, so the views of noisy histories are
cached in their own folder, ``<lumos_cache_dir>/noise<ratio>-seed<seed>``
(:func:`views_config`): a clean run never reads them, and a noisy run never reads
clean views.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_lumos.data.partition import training_histories
from recbole_lumos.errors import ConfigurationError

_NOISE_STREAM = 0x4E4F4953  # keeps the noise draws apart from other (seed, user) streams


def _setting(config: Any, key: str, default: Any) -> Any:
    """``config[key]`` of a RecBole ``Config`` or a mapping, ``config.key`` of another object; ``default`` if unset."""
    if isinstance(config, Mapping):
        value = config.get(key)
    elif hasattr(config, "final_config_dict"):  # RecBole's Config: None for an unknown key
        value = config[key]
    else:
        value = getattr(config, key, None)
    return default if value is None else value


def noise_ratio(config: Any) -> float:
    """``noise_ratio`` of a RecBole ``Config`` or a mapping (0 when unset), checked to lie in [0, 1]."""
    value = _setting(config, "noise_ratio", 0.0)
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = float("nan")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigurationError(
            f"noise_ratio is {value}, but it is the share of each client's training items replaced at random "
            "and must lie in [0, 1]; e.g. --noise_ratio=0.1."
        )
    return ratio


def noisy_history(history: torch.Tensor, ratio: float, num_items: int, rng: np.random.Generator) -> torch.Tensor:
    """``history`` (internal item ids) with ``floor(ratio * n + 0.5)`` positions replaced by other items.

    ``num_items`` is RecBole's ``item_num`` (ids ``1 .. num_items - 1`` are items, 0 is padding).
    """
    n = history.numel()
    count = min(n, int(ratio * n + 0.5))
    if count == 0 or num_items < 3:
        return history.clone()
    positions = rng.choice(n, size=count, replace=False)
    original = history[positions].numpy()
    # Uniform over the num_items - 2 items other than the original: draw from 1..num_items-2 and skip it.
    drawn = rng.integers(1, num_items - 1, size=count)
    drawn = drawn + (drawn >= original)
    out = history.clone()
    out[torch.from_numpy(positions)] = torch.from_numpy(drawn.astype(np.int64))
    return out


def noisy_histories(
    histories: Mapping[int, torch.Tensor], ratio: float, num_items: int, seed: int, user_tokens: Mapping[int, str]
) -> dict[int, torch.Tensor]:
    """Every history with its share of noise; ``user_tokens`` (internal id -> token) seeds each user's draws."""
    if ratio <= 0:
        return dict(histories)
    out = {}
    for user, history in histories.items():
        rng = np.random.default_rng([_NOISE_STREAM, int(seed) & 0xFFFFFFFF, zlib.crc32(user_tokens[user].encode())])
        out[user] = noisy_history(history, ratio, num_items, rng)
    return out


def client_histories(train_dataset: Any, config: Any) -> dict[int, torch.Tensor]:
    """What each client holds on its device: its training history, with ``noise_ratio`` of it replaced.

    The one source of client histories for the engine and the generator. ``train_dataset``
    is RecBole's training split (``train_data._dataset``); ``config`` a RecBole ``Config``
    or a mapping (``noise_ratio``, ``seed``).
    """
    histories = training_histories(train_dataset)
    ratio = noise_ratio(config)
    if ratio == 0:
        return histories
    users = sorted(histories)
    tokens = train_dataset.id2token(train_dataset.uid_field, np.asarray(users, dtype=np.int64))
    seed = int(_setting(config, "seed", 2020))
    return noisy_histories(
        histories, ratio, int(train_dataset.item_num), seed, dict(zip(users, map(str, tokens), strict=True))
    )


def views_config(config: Any) -> Any:
    """``config`` (a RecBole ``Config``) for the generator: with noise, a copy whose ``lumos_cache_dir``
    names the noise and the seed.

    The item-text embeddings do not depend on the noise: the folder links the ones already
    computed beside it, so they are not computed again.
    """
    ratio = noise_ratio(config)
    if ratio == 0:
        return config
    copied = copy.copy(config)
    root = Path(str(config["lumos_cache_dir"] or "saved/views"))
    folder = root / f"noise{ratio:g}-seed{config['seed']}"
    folder.mkdir(parents=True, exist_ok=True)
    for embedding in [*root.glob("*-items-*.npy"), *root.glob("*-items-*.json")]:
        link = folder / embedding.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(embedding.resolve())
    copied.final_config_dict = {**config.final_config_dict, "lumos_cache_dir": str(folder)}
    return copied
