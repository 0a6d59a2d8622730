"""Adversarial clients (docs/design.md §4): fake users that poison data, malicious clients that poison updates.

Threat model. The attacker controls extra devices: ``round(attack_ratio * B)`` new
clients (at least one), ``B`` the number of benign clients. They get fresh client ids
after the dataset's users (``user_num, user_num + 1, ...``), join the federation
like anyone else (the round sampler draws them with the same probability as a
benign client) and are never evaluated: they are not in RecBole's dataset, so its
validation and test splits never contain them. The attacker knows the catalogue and
the items' popularity (public charts; here counted on the benign training
histories, never on validation or test items), not the other clients' histories or
views. Every draw is seeded by ``seed``: the same seed gives the same fake users,
the same targets and the same malicious updates.

Targets (``target_items``): ``N`` (an integer) cold items drawn with ``seed`` from
the least popular half of the catalogue, or a list of item tokens.

A fake client's history has ``attack_length`` items (default: the median benign
training-history length). Every second item is a target (cycling through the
targets in a random order), the others are fillers:

* ``random``: fillers uniform over the catalogue;
* ``popular``: fillers drawn from the most popular items (the top 5% of the
  catalogue, at least as many as the fillers);
* ``bandwagon``: half popular, half random fillers.

A fake LUMOS client writes its own views (it controls its device; the generator
never sees it, and no benign client's views see it): F is its recent history
followed by ``k_f`` targets, R is its recent history with a share ``rho_r`` of its
fillers replaced by targets, C is random catalogue items.

Model poisoning (``scaled``, ``sign_flip``, ``gaussian``): the malicious clients are
the same extra clients, holding bandwagon sequences. Each computes its honest
update on that sequence, then sends, instead of it:

* ``scaled``: the update times ``attack_scale`` (a boosted, targeted update,
  Bagdasaryan et al.'s model replacement);
* ``sign_flip``: minus the update (untargeted: it pushes the model away from
  what the clients learn);
* ``gaussian``: Gaussian noise of standard deviation ``attack_std`` in every
  coordinate it sends (untargeted).

The upload keeps its rows (a sparse upload names the same rows) and its claimed
weight. A malicious client controls its device and skips local DP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.update import ClientUpdate

DATA_POISONING = ("random", "popular", "bandwagon")
MODEL_POISONING = ("scaled", "sign_flip", "gaussian")
ATTACKS = ("none", *DATA_POISONING, *MODEL_POISONING)

DEFAULT_TARGETS = 10
"""Cold targets drawn when an attack is set and ``target_items`` is not."""
COLD_SHARE = 0.5
"""Targets are drawn from this least popular share of the catalogue."""
POPULAR_SHARE = 0.05
"""``popular`` fillers come from this most popular share of the catalogue."""

_TARGET_STREAM, _FAKE_STREAM, _UPDATE_STREAM = 0x54415247, 0x46414B45, 0x5550444E


def _get(config: Any, key: str, default: Any = None) -> Any:
    # RecBole's Config has no .get()
    return config[key] if key in config and config[key] is not None else default


@dataclass(frozen=True)
class AttackSettings:
    """The attack of a run (config keys in parentheses)."""

    attack: str = "none"  # (attack)
    ratio: float = 0.1  # (attack_ratio): malicious clients per benign client
    targets: int | tuple[str, ...] | None = None  # (target_items): a count of cold items, or item tokens
    scale: float = 10.0  # (attack_scale)
    std: float = 0.1  # (attack_std)
    length: int | None = None  # (attack_length): items per fake history; None: the benign median

    @classmethod
    def from_config(cls, config: Any) -> AttackSettings:
        """Read and check the attack keys; a bad value raises :class:`ConfigurationError` naming the key."""
        attack = str(_get(config, "attack", "none")).strip().lower()
        if attack not in ATTACKS:
            raise ConfigurationError(
                f"Unknown attack {attack!r}. Choose one of {', '.join(ATTACKS)} (data poisoning by fake users: "
                f"{', '.join(DATA_POISONING)}; model poisoning: {', '.join(MODEL_POISONING)}), e.g. --attack=bandwagon."
            )
        ratio = float(_get(config, "attack_ratio", cls.ratio))
        if attack != "none" and not (0.0 < ratio <= 1.0 and math.isfinite(ratio)):
            raise ConfigurationError(
                f"attack_ratio is {ratio}, but it is the number of malicious clients per benign client and must "
                "lie in (0, 1]; e.g. --attack_ratio=0.05."
            )
        scale, std = float(_get(config, "attack_scale", cls.scale)), float(_get(config, "attack_std", cls.std))
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigurationError(f"attack_scale must be a positive number, got {scale}; e.g. --attack_scale=10.")
        if not (math.isfinite(std) and std > 0):
            raise ConfigurationError(f"attack_std must be a positive number, got {std}; e.g. --attack_std=0.1.")
        length = _get(config, "attack_length")
        if length is not None and int(length) < 2:
            raise ConfigurationError(f"attack_length must be at least 2 items, got {length}.")
        return cls(
            attack,
            ratio,
            _targets_setting(_get(config, "target_items")),
            scale,
            std,
            None if length is None else int(length),
        )

    @property
    def active(self) -> bool:
        return self.attack != "none"

    @property
    def poisons_updates(self) -> bool:
        return self.attack in MODEL_POISONING

    @property
    def measures_exposure(self) -> bool:
        """ER@K is computed when an attack is set or targets are named."""
        return self.active or self.targets is not None

    def num_malicious(self, num_benign: int) -> int:
        return max(1, round(self.ratio * num_benign)) if self.active else 0


def _targets_setting(value: Any) -> int | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigurationError(f"target_items must be a count or a list of item tokens, got {value!r}.")
    if isinstance(value, int):
        if value < 1:
            raise ConfigurationError(f"target_items must be at least 1, got {value}; e.g. --target_items=10.")
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigurationError("target_items is an empty list; name at least one item token, or give a count.")
        return tuple(str(v) for v in value)
    raise ConfigurationError(
        f"target_items is {value!r}: give a count of cold items (--target_items=10) or a list of item tokens "
        "(--target_items=\"['50','181']\")."
    )


def item_popularity(histories: Mapping[int, torch.Tensor], num_items: int) -> np.ndarray:
    """Training interactions per internal item id (index 0, padding, stays 0)."""
    counts = np.zeros(num_items, dtype=np.int64)
    for history in histories.values():
        np.add.at(counts, history.numpy(), 1)
    counts[0] = 0
    return counts


def target_item_ids(
    setting: int | tuple[str, ...] | None, popularity: np.ndarray, seed: int, token_to_id: Mapping[str, int]
) -> np.ndarray:
    """The target items' internal ids, sorted.

    ``setting`` is :attr:`AttackSettings.targets` (``None`` means :data:`DEFAULT_TARGETS`);
    ``popularity`` is :func:`item_popularity`; ``token_to_id`` the catalogue's token -> id map.
    """
    if setting is None:
        setting = DEFAULT_TARGETS
    if isinstance(setting, tuple):
        missing = [t for t in setting if t not in token_to_id or token_to_id[t] == 0]
        if missing:
            raise ConfigurationError(
                f"target_items names {', '.join(map(repr, missing))}, which {'is' if len(missing) == 1 else 'are'} "
                "not in the catalogue (after RecBole's filters). Name item tokens of the .item/.inter files."
            )
        return np.unique(np.asarray([token_to_id[t] for t in setting], dtype=np.int64))
    items = np.arange(1, len(popularity))
    by_popularity = items[np.argsort(popularity[1:], kind="stable")]  # least popular first, ties by id
    pool = by_popularity[: max(setting, int(len(items) * COLD_SHARE))]
    if setting > len(pool):
        raise ConfigurationError(f"target_items asks for {setting} targets, but the catalogue has {len(pool)} items.")
    rng = np.random.default_rng([_TARGET_STREAM, int(seed) & 0xFFFFFFFF])
    return np.sort(rng.choice(pool, size=setting, replace=False))


@dataclass
class FakeClients:
    """The attacker's clients: histories (and LUMOS view blocks) under fresh user ids."""

    histories: dict[int, torch.Tensor]
    blocks: dict[int, torch.Tensor] | None = None

    @property
    def users(self) -> list[int]:
        return sorted(self.histories)


def _right_padded(ids: Sequence[int], max_len: int) -> torch.Tensor:
    row = torch.zeros(max_len, dtype=torch.long)
    kept = list(ids)[-max_len:]
    row[: len(kept)] = torch.tensor(kept, dtype=torch.long)
    return row


def _fillers(kind: str, count: int, rng: np.random.Generator, popular: np.ndarray, others: np.ndarray) -> np.ndarray:
    def draw(pool: np.ndarray, n: int) -> np.ndarray:
        return rng.choice(pool, size=n, replace=n > len(pool))

    if kind == "random":
        return draw(others, count)
    if kind == "popular":
        return draw(popular, count)
    half = count // 2  # bandwagon
    return rng.permutation(np.concatenate([draw(popular, count - half), draw(others, half)]))


def fake_history(
    kind: str, length: int, targets: np.ndarray, rng: np.random.Generator, popular: np.ndarray, others: np.ndarray
) -> np.ndarray:
    """``length`` items: fillers of ``kind`` at even positions, targets (cycled, random order) at odd ones."""
    history = np.zeros(length, dtype=np.int64)
    slots = np.arange(1, length, 2)
    history[slots] = np.resize(rng.permutation(targets), len(slots))
    fill = np.arange(0, length, 2)
    history[fill] = _fillers(kind, len(fill), rng, popular, others)
    return history


def fake_view_block(
    history: np.ndarray,
    targets: np.ndarray,
    max_len: int,
    k_f: int,
    rho_r: float,
    rng: np.random.Generator,
    num_items: int,
    num_counterfactuals: int = 1,
) -> torch.Tensor:
    """The ``[3 + n_c, L]`` block a fake LUMOS client writes for itself: anchor, F and R promoting the
    targets, ``n_c`` counterfactuals of random items."""
    recent = history[-max_len:]
    promoted = np.resize(rng.permutation(targets), max(k_f, 1))[:k_f]
    kept = min(len(history), max_len - k_f)
    future = np.concatenate([history[len(history) - kept :], promoted])
    rephrased = recent.copy()
    fillers = np.flatnonzero(~np.isin(recent, targets))
    if len(fillers):
        count = min(len(fillers), max(1, round(rho_r * len(recent))))
        chosen = rng.choice(fillers, size=count, replace=False)
        rephrased[chosen] = np.resize(rng.permutation(targets), count)
    counterfactuals = [rng.integers(1, num_items, size=len(recent)) for _ in range(num_counterfactuals)]
    rows = [recent, future, rephrased, *counterfactuals]
    return torch.stack([_right_padded(row.tolist(), max_len) for row in rows])


def fake_clients(
    settings: AttackSettings,
    benign: Mapping[int, torch.Tensor],
    targets: np.ndarray,
    first_user: int,
    num_items: int,
    seed: int,
    views: Mapping[str, Any] | None = None,
) -> FakeClients:
    """The attacker's clients for ``settings`` (none when no attack is set).

    ``benign`` are the benign clients' clean training histories (their count sizes the
    attack, their popularity picks ``popular`` fillers); ``first_user`` the first free
    internal user id (RecBole's ``user_num``). ``views`` (``max_len``, ``k_f``, ``rho_r``,
    ``num_counterfactuals``) asks for LUMOS view blocks too.
    """
    if not settings.active:
        return FakeClients({}, {} if views is not None else None)
    num_benign = sum(1 for h in benign.values() if h.numel() >= 2)
    count = settings.num_malicious(num_benign)
    lengths = [h.numel() for h in benign.values() if h.numel() >= 2]
    length = settings.length or max(2, int(np.median(lengths)) if lengths else 2)
    popularity = item_popularity(benign, num_items)
    items = np.setdiff1d(np.arange(1, num_items), targets)
    ranked = items[np.argsort(-popularity[items], kind="stable")]
    popular = ranked[: max(int(math.ceil(POPULAR_SHARE * (num_items - 1))), (length + 1) // 2)]
    kind = settings.attack if settings.attack in DATA_POISONING else "bandwagon"
    histories, blocks = {}, ({} if views is not None else None)
    for index in range(count):
        user = first_user + index
        rng = np.random.default_rng([_FAKE_STREAM, int(seed) & 0xFFFFFFFF, index])
        history = fake_history(kind, length, targets, rng, popular, items)
        histories[user] = torch.from_numpy(history)
        if blocks is not None:
            blocks[user] = fake_view_block(
                history,
                targets,
                int(views["max_len"]),
                int(views["k_f"]),
                float(views["rho_r"]),
                rng,
                num_items,
                int(views.get("num_counterfactuals", 1)),
            )
    return FakeClients(histories, blocks)


class ModelPoisoning:
    """What a malicious client sends instead of its honest update (``scaled``, ``sign_flip``, ``gaussian``)."""

    def __init__(self, kind: str, malicious: Sequence[int], scale: float = 10.0, std: float = 0.1, seed: int = 0):
        if kind not in MODEL_POISONING:
            raise ConfigurationError(f"Model poisoning is one of {', '.join(MODEL_POISONING)}, got {kind!r}.")
        self.kind = kind
        self.malicious = frozenset(int(u) for u in malicious)
        self.scale = float(scale)
        self.std = float(std)
        self.seed = int(seed)

    def is_malicious(self, user: int) -> bool:
        return int(user) in self.malicious

    def _noise(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        return noise.mul_(self.std).to(like.device)

    def apply(self, update: ClientUpdate, user: int, round_index: int) -> ClientUpdate:
        """The poisoned upload of ``user`` in round ``round_index`` (a new object; same rows and weight)."""
        if self.kind == "gaussian":
            state = np.random.SeedSequence([_UPDATE_STREAM, self.seed & 0xFFFFFFFF, round_index, int(user)])
            generator = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
            dense = {name: self._noise(t, generator) for name, t in update.dense.items()}
            sparse = {name: (index, self._noise(rows, generator)) for name, (index, rows) in update.sparse.items()}
        else:
            factor = self.scale if self.kind == "scaled" else -1.0
            dense = {name: t * factor for name, t in update.dense.items()}
            sparse = {name: (index, rows * factor) for name, (index, rows) in update.sparse.items()}
        return ClientUpdate(dense=dense, sparse=sparse, weight=update.weight)
