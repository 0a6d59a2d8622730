"""Local training: global weights plus one client's windows in, one :class:`ClientUpdate` out.

It knows nothing about rounds, servers or aggregation (Flower's ClientApp contract).
Three paths compute the same thing (each tested against the first to float tolerance):

* :meth:`LocalTrainer.train_client` is the reference: one client at a time, a
  ``torch.optim`` optimiser on a model loaded with the global weights;
* :meth:`LocalTrainer.train_packed` (``local_epochs == 1``, SASRec layout, the
  default): one packed forward/backward for the whole cohort, per-client gradients
  formed from layer inputs and output gradients (:mod:`~recbole_lumos.federated.packed`),
  LUMOS's and CL4SRec's per-client contrastive terms included;
* :meth:`LocalTrainer.train_cohort` (any number of local epochs, any model):
  ``torch.func.vmap`` over per-client copies of the weights and a functional
  SGD/Adam step that matches ``torch.optim``.

Each local epoch is one full-batch step over all of the client's windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from recbole_lumos.data.partition import Cohort
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated import packed
from recbole_lumos.federated.client_model import always_uploaded_rows, client_loss_is_plain, reads_client_views
from recbole_lumos.federated.update import SPARSE_TABLES, ClientUpdate
from recbole_lumos.model.next_item import AllPositionsObjective, sample_negatives


@dataclass(frozen=True)
class LocalSettings:
    """The client-side training recipe (config keys in parentheses)."""

    local_epochs: int = 1  # (local_epochs)
    optimizer: str = "adam"  # (local_optimizer: sgd | adam)
    lr: float = 0.001  # (local_lr)
    loss: str = "sampled_ce"  # (local_loss: ce | sampled_ce | bce)
    num_negatives: int = 256  # (num_negatives, sampled_ce only)
    mu: float = 0.0  # (mu: FedProx proximal weight, only with aggregator: fedprox)
    sparse_upload: bool = True  # (sparse_upload)

    @classmethod
    def from_config(cls, config: Mapping) -> LocalSettings:
        def get(key, default):
            return config[key] if key in config and config[key] is not None else default

        settings = cls(
            local_epochs=int(get("local_epochs", cls.local_epochs)),
            optimizer=str(get("local_optimizer", cls.optimizer)).lower(),
            lr=float(get("local_lr", cls.lr)),
            loss=str(get("local_loss", cls.loss)),
            num_negatives=int(get("num_negatives", cls.num_negatives)),
            mu=float(get("mu", 0.0)) if get("aggregator", "fedavg") == "fedprox" else 0.0,
            sparse_upload=bool(get("sparse_upload", cls.sparse_upload)),
        )
        if settings.optimizer not in ("sgd", "adam"):
            raise ConfigurationError(f"local_optimizer must be 'sgd' or 'adam', got {settings.optimizer!r}.")
        if settings.local_epochs < 1:
            raise ConfigurationError(f"local_epochs must be at least 1, got {settings.local_epochs}.")
        return settings

    @property
    def uploads_sparse(self) -> bool:
        """Full softmax touches every item row, so only sampled losses upload sparsely."""
        return self.sparse_upload and self.loss != "ce"


_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass
class _Vocabulary:
    """Per-client local item tables: ``index[c, j]`` is the global row of local id ``j``."""

    index: torch.Tensor
    sizes: list[int]
    skip: int


class LocalTrainer:
    """Runs clients' local epochs from the global weights of ``model``."""

    def __init__(self, model: nn.Module, settings: LocalSettings) -> None:
        self.model = model
        self.settings = settings
        self.plain = client_loss_is_plain(model)
        self.reads_views = reads_client_views(model)
        self.always_rows = always_uploaded_rows(model)
        self.objective = AllPositionsObjective(model, settings.loss, plain=self.plain)
        self.n_items = model.n_items

    # ------------------------------------------------------------------ helpers
    def global_params(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def draw_negatives(self, targets: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Negatives for one cohort and local epoch: shared ``[K]`` ids, or one per position for bce."""
        if self.settings.loss == "sampled_ce":
            return sample_negatives(self.n_items, self.settings.num_negatives, generator, targets.device)
        if self.settings.loss == "bce":
            return torch.randint(1, self.n_items, targets.shape, generator=generator).to(targets.device)
        return None

    def _make_update(
        self,
        global_params: Mapping[str, torch.Tensor],
        local_params: Mapping[str, torch.Tensor],
        touched_items: torch.Tensor,
        weight: float,
    ) -> ClientUpdate:
        dense, sparse = {}, {}
        for name, start in global_params.items():
            delta = local_params[name].detach() - start
            if name in SPARSE_TABLES and self.settings.uploads_sparse:
                changed = delta.abs().sum(1).nonzero().flatten()
                rows = torch.unique(torch.cat([touched_items, changed]))
                sparse[name] = (rows, delta[rows].clone())
            else:
                dense[name] = delta
        return ClientUpdate(dense=dense, sparse=sparse, weight=weight)

    def _touched(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None,
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rows a client's loss reads, so the rows it uploads on every path: its items, its
        negatives, its views' items (when its loss reads them) and the model's special rows."""
        parts = [inputs.flatten(), targets.flatten(), self.always_rows.to(inputs.device)]
        if negatives is not None:
            parts.append(negatives.flatten())
        if views is not None:
            parts.append(views.flatten())
        ids = torch.unique(torch.cat(parts))
        return ids[ids > 0]

    # ------------------------------------------------------- reference: one by one
    def train_client(
        self,
        global_params: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: list[torch.Tensor | None],
        views: torch.Tensor | None = None,
    ) -> ClientUpdate:
        """One client, ``torch.optim``; ``negatives[e]`` are local epoch ``e``'s negatives,
        ``views`` the client's own ``[1, 4, L]`` LUMOS view block."""
        views = views if self.reads_views else None  # e.g. LUMOS without C: a lone client's term is 0
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(global_params[name])
        params = [p for p in self.model.parameters()]
        if self.settings.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.settings.lr)
        else:
            optimizer = torch.optim.Adam(params, lr=self.settings.lr, betas=_ADAM_BETAS, eps=_ADAM_EPS)
        for epoch in range(self.settings.local_epochs):
            optimizer.zero_grad()
            loss = self.objective(inputs, targets, negatives[epoch], views)
            if self.settings.mu > 0:
                loss = loss + 0.5 * self.settings.mu * sum(
                    ((p - global_params[n]) ** 2).sum() for n, p in self.model.named_parameters()
                )
            loss.backward()
            optimizer.step()
        local = {name: p for name, p in self.model.named_parameters()}
        touched = self._touched(
            inputs,
            targets,
            torch.cat([n.flatten() for n in negatives if n is not None])
            if any(n is not None for n in negatives)
            else None,
            views,
        )
        return self._make_update(global_params, local, touched, float((targets > 0).sum()))

    # ------------------------------------------------------------ a whole cohort
    def cohort_updates(
        self,
        global_params: Mapping[str, torch.Tensor],
        cohort: Cohort,
        generator: torch.Generator | None,
        one_by_one: bool = False,
    ) -> list[ClientUpdate]:
        """Every client's update for one cohort: negatives drawn once per local epoch and
        shared by the cohort, clients trained one by one (reference) or vmapped together.
        ``self.model`` holds the global weights again afterwards."""
        negatives = [self.draw_negatives(cohort.targets, generator) for _ in range(self.settings.local_epochs)]
        if not one_by_one and len(cohort) > 1:
            if self.settings.local_epochs == 1:
                return self.train_packed(global_params, cohort, negatives)
            return self.train_cohort(global_params, cohort, negatives)
        updates = []
        for c in range(len(cohort)):
            own = cohort.owner == c
            own_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
            own_views = None if cohort.views is None else cohort.views[c : c + 1]
            updates.append(
                self.train_client(global_params, cohort.inputs[own], cohort.targets[own], own_negatives, own_views)
            )
        with torch.no_grad():  # train_client trains self.model in place: restore the global weights
            for name, p in self.model.named_parameters():
                p.copy_(global_params[name])
        return updates

    # ------------------------------------------------- cohort: one packed step
    def train_packed(
        self,
        global_params: Mapping[str, torch.Tensor],
        cohort: Cohort,
        negatives: list[torch.Tensor | None],
    ) -> list[ClientUpdate]:
        """One local epoch for every client of ``cohort`` from one packed forward/backward
        (:mod:`recbole_lumos.federated.packed`); same maths as :meth:`train_client`.
        Models it cannot handle, and more than one local epoch, go to :meth:`train_cohort`."""
        if self.settings.local_epochs != 1 or not packed.supports(self.model):
            return self.train_cohort(global_params, cohort, negatives)
        num_clients = len(cohort)
        blocks = None
        if not self.plain:
            blocks = self.model.client_blocks(cohort.inputs, cohort.owner, num_clients, cohort.views)
        grads = packed.cohort_gradients(
            self.model,
            global_params,
            cohort.inputs,
            cohort.targets,
            cohort.owner,
            num_clients,
            self.settings.loss,
            negatives[0],
            SPARSE_TABLES if self.settings.uploads_sparse else (),
            blocks=blocks,
            block_losses=None if blocks is None else self.model.client_block_losses,
            always_rows=self.always_rows,
        )

        def step(g: torch.Tensor) -> torch.Tensor:
            return packed.first_step(g, self.settings.optimizer, self.settings.lr, _ADAM_BETAS, _ADAM_EPS)

        dense = {name: step(g) for name, g in grads.dense.items()}
        sparse = {
            name: (rows.split(counts), step(values).split(counts))
            for name, (rows, values, counts) in grads.sparse.items()
        }
        return [
            ClientUpdate(
                dense={name: delta[c] for name, delta in dense.items()},
                sparse={name: (rows[c], deltas[c]) for name, (rows, deltas) in sparse.items()},
                weight=float(cohort.weights[c]),
            )
            for c in range(num_clients)
        ]

    # ---------------------------------------------------------- cohort: vmapped
    def _client_loss(self, params, inputs, targets, negatives, views, global_params):
        loss = functional_call(
            self.objective, {f"model.{k}": v for k, v in params.items()}, (inputs, targets, negatives, views)
        )
        if self.settings.mu > 0:
            loss = loss + 0.5 * self.settings.mu * sum(((params[n] - global_params[n]) ** 2).sum() for n in params)
        return loss

    def train_cohort(
        self,
        global_params: Mapping[str, torch.Tensor],
        cohort: Cohort,
        negatives: list[torch.Tensor | None],
    ) -> list[ClientUpdate]:
        """All clients of ``cohort`` at once; identical maths to :meth:`train_client`."""
        num_clients = len(cohort)
        counts = torch.bincount(cohort.owner, minlength=num_clients)
        max_windows = int(counts.max())
        slot = torch.arange(cohort.owner.numel()) - torch.cumsum(counts, 0)[cohort.owner] + counts[cohort.owner]
        length = cohort.inputs.size(1)
        inputs = torch.zeros(num_clients, max_windows, length, dtype=torch.long)
        targets = torch.zeros_like(inputs)
        inputs[cohort.owner, slot] = cohort.inputs
        targets[cohort.owner, slot] = cohort.targets
        per_client_negatives = [self._per_client(n, cohort, slot, num_clients, max_windows) for n in negatives]
        views = None if cohort.views is None or not self.reads_views else cohort.views.unsqueeze(1)

        vocab = None
        if self.settings.uploads_sparse:
            vocab, inputs, targets, per_client_negatives, views = self._local_vocabulary(
                inputs, targets, per_client_negatives, views
            )
        params = {}
        for name, value in global_params.items():
            if vocab is not None and name == SPARSE_TABLES[0]:
                params[name] = value[vocab.index]  # each client holds only its own rows
            else:
                params[name] = value.unsqueeze(0).repeat(num_clients, *([1] * value.dim()))
        state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
        grad_fn = grad(self._client_loss)
        with self._mask_token(1 if vocab is not None and self.always_rows.numel() else None):
            for epoch in range(self.settings.local_epochs):
                neg = per_client_negatives[epoch]
                in_dims = (0, 0, 0, None if neg is None or neg.dim() == 1 else 0, None if views is None else 0, None)
                grads = vmap(grad_fn, in_dims=in_dims, randomness="different")(
                    params, inputs, targets, neg, views, dict(global_params)
                )
                params = self._step(params, grads, state, epoch + 1)

        updates = []
        for c in range(num_clients):
            local = {k: v[c] for k, v in params.items()}
            weight = float(cohort.weights[c])
            if vocab is not None:
                updates.append(self._local_vocabulary_update(global_params, local, vocab, c, weight))
                continue
            client_negatives = [n if n is None or n.dim() == 1 else n[c] for n in per_client_negatives]
            touched = self._touched(
                inputs[c],
                targets[c],
                torch.cat([n.flatten() for n in client_negatives])
                if any(n is not None for n in client_negatives)
                else None,
                None if views is None else views[c],
            )
            updates.append(self._make_update(global_params, local, touched, weight))
        return updates

    # ------------------------------------------- per-client item vocabularies
    def _local_vocabulary(self, inputs, targets, negatives, views=None):
        """Remap each client's item ids to a small local table of the rows it touches.

        With a sampled loss a client only ever reads the rows of its own items, its
        negatives, its views' items (and the mask token, if the model has one): those
        rows alone are copied, trained and uploaded. Local id 0 is padding, local id 1
        the mask token.
        """
        num_clients = inputs.size(0)
        rows = self.model.item_embedding.weight.size(0)
        mask = int(self.always_rows[0]) if self.always_rows.numel() else None
        vocabularies = []
        for c in range(num_clients):
            parts = [inputs[c].flatten(), targets[c].flatten()]
            parts += [n.flatten() if n.dim() == 1 else n[c].flatten() for n in negatives if n is not None]
            if views is not None:
                parts.append(views[c].flatten())
            ids = torch.unique(torch.cat(parts))
            ids = ids[(ids > 0) & (ids != (mask if mask is not None else -1))]
            head = [0] + ([mask] if mask is not None else [])
            vocabularies.append(torch.cat([torch.tensor(head, dtype=torch.long), ids]))
        size = max(v.numel() for v in vocabularies)
        index = torch.zeros(num_clients, size, dtype=torch.long)
        lookup = torch.zeros(num_clients, rows, dtype=torch.long)
        for c, v in enumerate(vocabularies):
            index[c, : v.numel()] = v
            lookup[c, v] = torch.arange(v.numel())

        def remap(ids: torch.Tensor) -> torch.Tensor:
            if ids.dim() == 1:  # shared negatives become per-client local ids
                return lookup[:, ids]
            return torch.gather(lookup, 1, ids.reshape(num_clients, -1)).reshape(ids.shape)

        vocab = _Vocabulary(index=index, sizes=[v.numel() for v in vocabularies], skip=len(head))
        negatives = [None if n is None else remap(n) for n in negatives]
        return vocab, remap(inputs), remap(targets), negatives, None if views is None else remap(views)

    def _local_vocabulary_update(self, global_params, local, vocab, client: int, weight: float) -> ClientUpdate:
        table = SPARSE_TABLES[0]
        dense = {name: local[name].detach() - start for name, start in global_params.items() if name != table}
        rows = vocab.index[client, 1 : vocab.sizes[client]]  # everything but padding
        delta = local[table][1 : vocab.sizes[client]].detach() - global_params[table][rows]
        order = torch.argsort(rows)
        return ClientUpdate(dense=dense, sparse={table: (rows[order], delta[order])}, weight=weight)

    @contextlib.contextmanager
    def _mask_token(self, local_id: int | None):
        """Inside a local table the mask token (CL4SRec, LUMOS) has local id 1."""
        previous = getattr(self.model, "mask_token", None)
        if local_id is not None and previous is not None:
            self.model.mask_token = local_id
        try:
            yield
        finally:
            if previous is not None:
                self.model.mask_token = previous

    @staticmethod
    def _per_client(negatives, cohort, slot, num_clients, max_windows):
        if negatives is None or negatives.dim() == 1:
            return negatives
        out = torch.zeros(num_clients, max_windows, negatives.size(-1), dtype=torch.long)
        out[cohort.owner, slot] = negatives
        return out

    def _step(self, params, grads, state, step):
        lr = self.settings.lr
        if self.settings.optimizer == "sgd":
            return {k: p - lr * grads[k] for k, p in params.items()}
        (b1, b2), out = _ADAM_BETAS, {}
        for k, p in params.items():
            m, v = state[k]
            m.mul_(b1).add_(grads[k], alpha=1 - b1)
            v.mul_(b2).addcmul_(grads[k], grads[k], value=1 - b2)
            m_hat = m / (1 - b1**step)
            denom = (v / (1 - b2**step)).sqrt() + _ADAM_EPS
            out[k] = p - lr * m_hat / denom
        return out
