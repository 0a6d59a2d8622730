"""The per-user partition: each user's training history and its all-position windows.

A client is one user. Its data is its **training history** only: the items before
its validation and test items. The history is rebuilt from RecBole's *training*
split (the first row's one-item prefix followed by every training target), so
nothing from the validation or test rows can reach a client.

A history ``s`` of ``n`` items gives ``n - 1`` next-item positions: inputs
``s[:-1]``, targets ``s[1:]``. They are cut into windows of ``L =
MAX_ITEM_LIST_LENGTH`` inputs fed once with a causal mask (the original SASRec
recipe), instead of one padded sample per prefix.

**Window rule.** If ``n - 1 <= L`` there is one window. Otherwise windows start every
``S`` positions (``window_stride``, default ``L // 2``), and the last one is aligned
to the end of the history. Each window only trains the positions that the previous
window did not reach. So every position is trained exactly once, and apart from the
first window's own first positions, every trained position sees at least ``L - S``
items of context. A smaller stride gives more context per position (closer to
prefix mode, where a position sees up to ``L`` items) at ``L / S`` forward passes
per position instead of 2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def training_histories(train_dataset) -> dict[int, torch.Tensor]:
    """Internal user id -> training history (internal item ids, time order).

    ``train_dataset`` is RecBole's training split of a sequential dataset
    (``train_data._dataset``): one row per training target, with its prefix.
    """
    inter = train_dataset.inter_feat
    uid_field = train_dataset.uid_field
    iid_field = train_dataset.iid_field
    list_field = getattr(train_dataset, f"{iid_field}_list_field")
    users = inter[uid_field].numpy()
    targets = inter[iid_field].numpy()
    first_items = inter[list_field][:, 0].numpy()
    lengths = inter[train_dataset.item_list_length_field].numpy()
    order = np.argsort(users, kind="stable")  # each user's rows, in their original (time) order
    users, targets, first_items, lengths = users[order], targets[order], first_items[order], lengths[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    if (lengths[starts] != 1).any():
        raise ValueError("training rows must start with a one-item prefix; is the data time-ordered?")
    histories: dict[int, torch.Tensor] = {}
    for user_targets, start in zip(np.split(targets, starts[1:]), starts, strict=True):
        items = np.concatenate([[first_items[start]], user_targets])
        histories[int(users[start])] = torch.from_numpy(items.astype(np.int64))
    return histories


def release_prefix_samples(train_dataset) -> int:
    """Cut RecBole's prefix samples of the training split to their first item; the bytes freed.

    RecBole's sequential data preparation stores, for every training row, its whole
    ``[L]`` prefix of items and of timestamps: 561 MB on ml-1m at L 50. All-position
    training reads only each user's history, which :func:`training_histories` rebuilds
    from a row's first item and its target, so the rest is never read. (RecBole's own
    trainer, ``train_mode: prefix``, does read it: call this for all-position runs only.)
    """
    inter = train_dataset.inter_feat
    suffix = train_dataset.config["LIST_SUFFIX"]
    freed = 0
    for field, value in list(inter.interaction.items()):
        if field.endswith(suffix) and value.dim() == 2 and value.size(1) > 1:
            freed += (value.size(1) - 1) * value.size(0) * value.element_size()
            inter.interaction[field] = value[:, :1].clone()
    return freed


def window_starts(num_positions: int, max_len: int, stride: int | None = None) -> list[int]:
    """Start of every window over ``num_positions`` inputs (see the module docstring)."""
    if num_positions <= max_len:
        return [0]
    stride = max(1, min(stride or max_len // 2, max_len))
    starts = list(range(0, num_positions - max_len, stride))
    starts.append(num_positions - max_len)
    return sorted(set(starts))


def make_windows(
    history: torch.Tensor, max_len: int, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, each ``[num_windows, max_len]``; target 0 means "no loss here"."""
    inputs_all, targets_all = history[:-1], history[1:]
    m = inputs_all.numel()
    starts = window_starts(m, max_len, stride)
    inputs = torch.zeros(len(starts), max_len, dtype=torch.long)
    targets = torch.zeros(len(starts), max_len, dtype=torch.long)
    covered = 0  # positions [0, covered) are already trained
    for w, start in enumerate(starts):
        end = min(start + max_len, m)
        inputs[w, : end - start] = inputs_all[start:end]
        first_new = max(covered, start)
        targets[w, first_new - start : end - start] = targets_all[first_new:end]
        covered = end
    return inputs, targets


@dataclass
class ClientData:
    """One client's private training data."""

    user: int
    history: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    views: torch.Tensor | None = None
    """LUMOS: ``[4, L]`` anchor + F/R/C item ids made from this client's history only."""

    @property
    def num_positions(self) -> int:
        return int((self.targets > 0).sum())


class ClientPartition(Dataset):
    """All clients of a dataset; ``partition[i]`` is client ``i``'s :class:`ClientData`."""

    def __init__(
        self,
        histories: dict[int, torch.Tensor],
        max_len: int,
        stride: int | None = None,
        views: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.max_len = max_len
        self.clients = [
            ClientData(user, history, *make_windows(history, max_len, stride), None if views is None else views[user])
            for user, history in sorted(histories.items())
            if history.numel() >= 2
        ]
        self.skipped_users = sorted(user for user, history in histories.items() if history.numel() < 2)

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, index: int) -> ClientData:
        return self.clients[index]


@dataclass
class Cohort:
    """Clients trained together: their windows stacked, with each window's owner."""

    clients: list[int]
    users: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    """``owner[w]`` is the position in ``clients`` of the client that owns window ``w``."""
    weights: torch.Tensor
    """Training positions per client (FedAvg weight)."""
    views: torch.Tensor | None = None
    """LUMOS: ``[num_clients, 4, L]``, each client's own view block."""

    def __len__(self) -> int:
        return len(self.clients)

    def to(self, device: torch.device | str) -> Cohort:
        return Cohort(
            self.clients,
            self.users.to(device),
            self.inputs.to(device),
            self.targets.to(device),
            self.owner.to(device),
            self.weights.to(device),
            None if self.views is None else self.views.to(device),
        )


def collate_cohort(batch: Sequence[tuple[int, ClientData]]) -> Cohort:
    """Stack the windows of several clients, trimming padding to the longest window."""
    indices = [index for index, _ in batch]
    clients = [client for _, client in batch]
    inputs = torch.cat([c.inputs for c in clients])
    targets = torch.cat([c.targets for c in clients])
    used = int((inputs > 0).sum(1).max()) if inputs.numel() else 1
    owner = torch.cat([torch.full((c.inputs.size(0),), i, dtype=torch.long) for i, c in enumerate(clients)])
    return Cohort(
        clients=indices,
        users=torch.tensor([c.user for c in clients]),
        inputs=inputs[:, :used],
        targets=targets[:, :used],
        owner=owner,
        weights=torch.tensor([float(c.num_positions) for c in clients]),
        views=None if clients[0].views is None else torch.stack([c.views for c in clients]),
    )


class IndexedPartition(Dataset):
    """``partition`` items paired with their index (so a cohort knows which clients it holds)."""

    def __init__(self, partition: ClientPartition) -> None:
        self.partition = partition

    def __len__(self) -> int:
        return len(self.partition)

    def __getitem__(self, index: int) -> tuple[int, ClientData]:
        return index, self.partition[index]


class RoundSampler(Sampler[list[int]]):
    """Samples a round's clients and groups them into cohorts of ``client_batch``.

    The sample of round ``r`` depends only on ``(seed, r)``, so a resumed run draws
    the same clients. Lightning calls :meth:`set_epoch` with the round index. With
    ``sort_by_length`` the round's clients are ordered by number of windows before
    being cut into cohorts (less padding; used for centralised all-position training).

    ``dropout`` (``client_dropout``) is the share of a round's sampled clients that never
    answer: ``floor(dropout * clients_per_round)`` of them, drawn from ``(seed, r)`` too
    (:meth:`dropped`). The cohorts hold the clients that answer (:meth:`answering`).
    """

    def __init__(
        self,
        num_clients: int,
        *,
        clients_per_round: int,
        client_batch: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        shuffle: bool = True,
        dropout: float = 0.0,
    ) -> None:
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {clients_per_round}")
        if not 0 <= dropout < 1:
            raise ValueError(f"client dropout must be a share in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.client_batch = max(1, client_batch)
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.shuffle = shuffle
        self.round = 0
        # Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``, not on the
        # batch sampler itself: point that attribute here so every round is announced.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.round = epoch

    def round_clients(self, round_index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, round_index])
        if self.clients_per_round == self.num_clients:
            chosen = rng.permutation(self.num_clients) if self.shuffle else np.arange(self.num_clients)
        else:
            chosen = np.sort(rng.choice(self.num_clients, self.clients_per_round, replace=False))
            if self.shuffle:
                chosen = rng.permutation(chosen)
        if self.lengths is not None:
            chosen = chosen[np.argsort(self.lengths[chosen], kind="stable")]
        return chosen

    def num_dropped(self) -> int:
        """Sampled clients per round that never answer: ``floor(dropout * clients_per_round)``."""
        return int(self.dropout * self.clients_per_round + 1e-9)

    def _dropped_mask(self, round_index: int) -> np.ndarray:
        mask = np.zeros(self.clients_per_round, dtype=bool)
        if self.num_dropped():
            rng = np.random.default_rng([self.seed, round_index, 2])
            mask[rng.choice(self.clients_per_round, self.num_dropped(), replace=False)] = True
        return mask

    def dropped(self, round_index: int) -> np.ndarray:
        """The round's sampled clients that never answer (``dropout``), in sample order."""
        return self.round_clients(round_index)[self._dropped_mask(round_index)]

    def answering(self, round_index: int) -> np.ndarray:
        """The round's sampled clients that answer, in sample order."""
        return self.round_clients(round_index)[~self._dropped_mask(round_index)]

    def cohorts(self, round_index: int) -> list[list[int]]:
        """Round ``round_index``'s cohorts of answering clients, in training order."""
        chosen = self.answering(round_index).tolist()
        cohorts = [chosen[i : i + self.client_batch] for i in range(0, len(chosen), self.client_batch)]
        if self.lengths is not None and self.shuffle:
            order = np.random.default_rng([self.seed, round_index, 1]).permutation(len(cohorts))
            cohorts = [cohorts[i] for i in order]
        return cohorts

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the round is read when the first cohort is requested, not when the
        # iterator is made (a resumed Lightning run makes it before calling set_epoch).
        yield from self.cohorts(self.round)

    def __len__(self) -> int:
        answering = self.clients_per_round - self.num_dropped()
        return -(-answering // self.client_batch)
