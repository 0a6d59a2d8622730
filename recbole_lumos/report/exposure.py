"""ER@K, the exposure ratio of target items: how far an attack pushed them into benign users' top K.

For a target item ``t``: among the evaluated (benign) users whose **training
history** does not hold ``t``, the share whose top-K list holds ``t``. ER@K is that
share averaged over the targets (a target that every user has already met is left
out of the mean). A fake user is never an evaluated user: it is not in RecBole's
dataset.

The top-K list is RecBole's own: the same full-ranking scores its evaluator reads
(padding at ``-inf``, and the history too when the data is not ``repeatable``), cut with the same
``torch.topk(scores, max(topk))``, so ties break the same way. Position ``i`` (0-based)
is in the top K when ``i < K``: exactly K positions (one public harness counts
``rank <= K``, K + 1 positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def exposure_ratio(top_items: torch.Tensor, targets: torch.Tensor, interacted: torch.Tensor, k: int) -> float:
    """ER@``k`` of one set of users.

    ``top_items`` ``[U, >= k]``: each user's ranked item ids (best first);
    ``targets`` ``[T]``: the target ids; ``interacted`` ``[U, T]`` bool: the user's
    training history holds the target. NaN when no target has an eligible user.
    """
    exposed = (top_items[:, :k, None] == targets.view(1, 1, -1)).any(1)
    eligible = ~interacted
    users = eligible.sum(0)
    shares = (exposed & eligible).sum(0)[users > 0].double() / users[users > 0]
    return float(shares.mean()) if shares.numel() else float("nan")


class ExposureMeter:
    """ER@K for every K of ``topk``, accumulated over RecBole's evaluation batches.

    ``histories`` maps internal user ids to training histories (what "has interacted"
    means); ``num_users`` is RecBole's ``user_num``.
    """

    def __init__(
        self, targets: Sequence[int], topk: Sequence[int], histories: Mapping[int, torch.Tensor], num_users: int
    ) -> None:
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.topk = sorted(int(k) for k in topk)
        target_array = self.targets.numpy()
        interacted = np.zeros((num_users, len(target_array)), dtype=bool)
        for user, history in histories.items():
            if 0 <= user < num_users:
                interacted[user] = np.isin(target_array, history.numpy())
        self.interacted = torch.from_numpy(interacted)
        self.reset()

    def reset(self) -> None:
        self._exposed = torch.zeros(len(self.topk), len(self.targets), dtype=torch.long)
        self._eligible = torch.zeros(len(self.targets), dtype=torch.long)

    def add(self, users: torch.Tensor, scores: torch.Tensor) -> None:
        """One batch: internal user ids ``[B]`` and RecBole's full-sort scores ``[B, num_items]``."""
        top = torch.topk(scores, max(self.topk), dim=-1).indices.cpu()
        eligible = ~self.interacted[users.cpu()]
        targets = self.targets.view(1, 1, -1)
        self._eligible += eligible.sum(0)
        for row, k in enumerate(self.topk):
            exposed = (top[:, :k, None] == targets).any(1)
            self._exposed[row] += (exposed & eligible).sum(0)

    def result(self) -> dict[str, float]:
        """``{"er@K": value}`` for every K (NaN when no target has an eligible user)."""
        keep = self._eligible > 0
        out = {}
        for row, k in enumerate(self.topk):
            shares = self._exposed[row][keep].double() / self._eligible[keep]
            out[f"er@{k}"] = float(shares.mean()) if shares.numel() else float("nan")
        return out
