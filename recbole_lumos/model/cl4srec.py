"""CL4SRec (Xie et al., ICDE 2022): SASRec plus a contrastive task on augmented views.

RecBole 1.2.1 does not ship CL4SRec, so it is written here as a RecBole
``SequentialRecommender``: ``Config(model=CL4SRec)`` works, and so does the name
``CL4SRec`` through :mod:`recbole_lumos.model.registry`.

**Federated (FedCL4SRec): the negatives are the client's own windows, by choice.** A
federated client holds one user, so the only sequences its NT-Xent can contrast are
its own: the augmentations of its other windows. Those windows overlap by half
(``window_stride`` is ``L // 2``), so a negative shares up to half its items with the
anchor: harder negatives than other users' sequences, and partly false ones. We keep
this as the baseline because it is what a client can compute without seeing other
users' data (the privacy premise LUMOS also keeps), and it matches published FedCL4SRec
set-ups that contrast within the client. A client with a single window has no
negative: its term is zero, exactly (see :meth:`CL4SRec.client_blocks`). Centrally,
the negatives are the other users of the batch, as in the paper.
"""

from __future__ import annotations

import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from recbole_lumos.model.augment import random_augment
from recbole_lumos.model.item_text import item_table
from recbole_lumos.model.losses import nt_xent
from recbole_lumos.model.next_item import next_item_term


class CL4SRec(SASRec):
    r"""SASRec trained with ``L = L_rec + lambda_cl * L_cl``.

    ``L_cl`` is NT-Xent between two random augmentations (crop ``crop_ratio``, mask
    ``mask_ratio``, reorder ``reorder_ratio``; one chosen uniformly per view) of every
    sequence in the batch, with the other ``2(N-1)`` views as negatives, at
    temperature ``tau`` with similarity ``sim``. Masked items use an extra
    embedding row (id ``n_items``) that is never scored or recommended.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.lambda_cl = config["lambda_cl"]
        self.tau = config["tau"]
        self.sim = config["sim"]
        self.crop_ratio = config["crop_ratio"]
        self.mask_ratio = config["mask_ratio"]
        self.reorder_ratio = config["reorder_ratio"]
        self.mask_token = self.n_items
        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)
        self.item_embedding.apply(self._init_weights)
        if self.loss_type != "CE":
            raise NotImplementedError("CL4SRec here supports loss_type 'CE' only, as in the paper.")

    def _item_weights(self) -> torch.Tensor:
        """Embeddings of real items only (the mask row is never a candidate)."""
        return item_table(self)[: self.n_items]

    def augmented_views(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Two independent random augmentations of each sequence."""
        views = []
        for _ in range(2):
            views += random_augment(
                item_seq,
                item_seq_len,
                crop_ratio=self.crop_ratio,
                mask_ratio=self.mask_ratio,
                reorder_ratio=self.reorder_ratio,
                mask_token=self.mask_token,
            )
        return tuple(views)

    def calculate_loss(self, interaction: Interaction) -> tuple[torch.Tensor, torch.Tensor]:
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        logits = seq_output @ self._item_weights().T
        rec_loss = self.loss_fct(logits, interaction[self.POS_ITEM_ID])
        if self.lambda_cl == 0:
            return rec_loss, torch.zeros((), device=rec_loss.device)
        seq1, len1, seq2, len2 = self.augmented_views(item_seq, item_seq_len)
        z1, z2 = self.forward(seq1, len1), self.forward(seq2, len2)
        return rec_loss, self.lambda_cl * nt_xent(z1, z2, self.tau, self.sim)

    def client_blocks(
        self, inputs: torch.Tensor, owner: torch.Tensor, num_clients: int, views: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed cohort path's per-client sequences: two augmentations of each window.

        Block ``k`` is ``[2W, L]``: the first augmentation of each of its client's windows,
        then the second, padded with empty rows to the cohort's largest ``W``. A client
        with a single window has no negative in its own NT-Xent, whose gradient is then
        exactly zero, so it gets no block.
        """
        counts = torch.bincount(owner, minlength=num_clients)
        clients = (counts >= 2).nonzero().flatten()
        width = int(counts.max()) if clients.numel() else 0
        blocks = inputs.new_zeros(clients.numel(), 2 * width, inputs.size(1))
        for k, client in enumerate(clients.tolist()):
            windows = inputs[owner == client]
            lengths = (windows > 0).sum(1).clamp(min=1)
            seq1, _, seq2, _ = self.augmented_views(windows, lengths)
            blocks[k, : windows.size(0)] = seq1
            blocks[k, width : width + windows.size(0)] = seq2
        return blocks, clients

    def client_block_losses(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """``lambda_cl *`` NT-Xent of each client over its own windows (``[K]``), as
        :meth:`all_positions_loss` computes it on a federated client."""
        width = blocks.size(1) // 2
        valid = (blocks[:, :width] > 0).any(-1)
        alone = torch.vmap(lambda zc, vc: nt_xent(zc[:width], zc[width:], self.tau, self.sim, valid=vc))
        return self.lambda_cl * alone(z, valid)

    @property
    def plain_next_item_loss(self) -> bool:
        """With ``lambda_cl = 0`` CL4SRec is SASRec: the packed cohort path may train it."""
        return self.lambda_cl == 0

    def all_positions_loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        kind: str = "ce",
    ) -> torch.Tensor:
        """All-position training (central ``all_positions`` and federated clients).

        The next-item loss at every position of each window, plus ``lambda_cl`` times
        NT-Xent between two augmentations of every window in the batch. On a federated
        client the batch is the client's own windows, so a user with one window has no
        in-batch negative and only the next-item term moves it (LUMOS adds generated
        hard negatives for exactly this reason). All-zero rows (the padding that
        ``vmap`` cohorts add) take no part.
        """
        rec = next_item_term(self, inputs, targets, negatives, kind)
        if self.lambda_cl == 0:
            return rec
        lengths = (inputs > 0).sum(1)
        seq1, len1, seq2, len2 = self.augmented_views(inputs, lengths.clamp(min=1))
        z1, z2 = self.forward(seq1, len1), self.forward(seq2, len2)
        return rec + self.lambda_cl * nt_xent(z1, z2, self.tau, self.sim, valid=lengths > 0)

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self._item_weights().T
