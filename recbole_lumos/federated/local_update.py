"""Local training: global weights plus one client's windows in, one :class:`ClientUpdate` out.

It knows nothing about rounds, servers or aggregation (Flower's ClientApp contract).
Three paths compute the same thing (each tested against the first to float tolerance),
and upload the same rows (the rows the client's loss reads, :meth:`LocalTrainer._touched`):

* :meth:`LocalTrainer.train_client` is the reference (the oracle of tests and
  benchmarks): one client at a time, a ``torch.optim`` optimiser on a model loaded
  with the global weights;
* :meth:`LocalTrainer.train_packed` (``local_epochs == 1``, SASRec layout, the
  default): one packed forward/backward for the whole cohort, per-client gradients
  formed from layer inputs and output gradients (:mod:`~recbole_lumos.federated.packed`),
  LUMOS's and CL4SRec's per-client contrastive terms included;
* :meth:`LocalTrainer.train_functional` (any number of local steps, any model): each
  client's own weights through ``torch.func.functional_call`` and
  :func:`functional_step`, the one functional SGD/Adam (it matches ``torch.optim``).
  It replaced a ``torch.func.vmap`` path over padded per-client copies, which was 4-9x
  slower per step than the packed step on ml-1m (``benchmarks/local_steps.py``).

Each local epoch is one full-batch step over all of the client's windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

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
            where = generator.device if generator is not None else targets.device
            return torch.randint(1, self.n_items, targets.shape, generator=generator, device=where).to(targets.device)
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
        shared by the cohort, clients trained one by one (the reference), packed
        (:meth:`train_packed`) or functionally (:meth:`train_functional`).
        ``self.model`` holds the global weights again afterwards."""
        negatives = [self.draw_negatives(cohort.targets, generator) for _ in range(self.settings.local_epochs)]
        if not one_by_one and len(cohort) > 1:
            return self.train_packed(global_params, cohort, negatives)
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
        Models it cannot handle, and more than one local epoch, go to :meth:`train_functional`."""
        if self.settings.local_epochs != 1 or not packed.supports(self.model):
            return self.train_functional(global_params, cohort, negatives)
        num_clients = len(cohort)
        grads = self._packed_gradients(global_params, cohort, negatives[0])

        def step(g: torch.Tensor) -> torch.Tensor:
            return packed.first_step(g, self.settings.optimizer, self.settings.lr, _ADAM_BETAS, _ADAM_EPS)

        dense = {name: step(g) for name, g in grads.dense.items()}
        sparse = {
            name: (rows.split(counts), step(values).split(counts))
            for name, (rows, values, counts) in grads.sparse.items()
        }
        weights = cohort.weights.tolist()  # one host read per cohort, not one per client
        return [
            ClientUpdate(
                dense={name: delta[c] for name, delta in dense.items()},
                sparse={name: (rows[c], deltas[c]) for name, (rows, deltas) in sparse.items()},
                weight=float(weights[c]),
            )
            for c in range(num_clients)
        ]

    def _packed_gradients(
        self, global_params: Mapping[str, torch.Tensor], cohort: Cohort, negatives: torch.Tensor | None
    ) -> packed.CohortGradients:
        """Every client's gradient at the global weights, from one packed forward/backward.

        A model's view windows (LUMOS's ``lumos_aug_weight``) join the cohort's windows,
        each client's weighted by ``weight / its view positions`` (its own windows by
        ``1 / its positions``): the per-client loss of :meth:`train_client`."""
        blocks = items = None
        if not self.plain:
            blocks = self.model.client_blocks(cohort.inputs, cohort.owner, len(cohort), cohort.views)
            block_items = getattr(self.model, "block_items", None)
            items = None if blocks is None or block_items is None else block_items(blocks[0])
        inputs, targets, owner, scale = cohort.inputs, cohort.targets, cohort.owner, None
        if not self.plain and getattr(self.model, "aug_weight", 0) > 0:
            inputs, targets, owner, negatives, scale = self._with_view_windows(cohort, negatives)
        return packed.cohort_gradients(
            self.model,
            global_params,
            inputs,
            targets,
            owner,
            len(cohort),
            self.settings.loss,
            negatives,
            SPARSE_TABLES if self.settings.uploads_sparse else (),
            blocks=blocks,
            block_losses=None if blocks is None else self.model.client_block_losses,
            always_rows=self.always_rows,
            window_scale=scale,
            block_items=items,
        )

    def _with_view_windows(self, cohort: Cohort, negatives: torch.Tensor | None):
        """The cohort's windows followed by its clients' view windows, and every window's weight."""
        aug = self.model.augmented_windows(cohort.views, negatives, cohort.owner)
        width = max(cohort.inputs.size(1), aug.inputs.size(1))

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.size(1)))

        clients = len(cohort)
        own = torch.zeros(clients, dtype=torch.float64, device=cohort.inputs.device)
        own.index_add_(0, cohort.owner, (cohort.targets > 0).sum(1).double())
        viewed = torch.zeros_like(own).index_add_(0, aug.owner, (aug.targets > 0).sum(1).double())
        scale = torch.cat([1 / own.clamp(min=1)[cohort.owner], self.model.aug_weight / viewed.clamp(min=1)[aug.owner]])
        if self.settings.loss == "bce":
            negatives = torch.cat([padded(negatives), padded(aug.negatives)])
        return (
            torch.cat([padded(cohort.inputs), padded(aug.inputs)]),
            torch.cat([padded(cohort.targets), padded(aug.targets)]),
            torch.cat([cohort.owner, aug.owner]),
            negatives,
            scale,
        )

    @staticmethod
    def _client_gradient(
        grads: packed.CohortGradients, global_params: Mapping[str, torch.Tensor], client: int
    ) -> dict[str, torch.Tensor]:
        """One client's full-shape gradient out of a packed pass (its sparse rows scattered)."""
        out = {name: g[client] for name, g in grads.dense.items()}
        for name, (rows, values, counts) in grads.sparse.items():
            start = sum(counts[:client])
            full = torch.zeros_like(global_params[name])
            full[rows[start : start + counts[client]]] = values[start : start + counts[client]]
            out[name] = full
        return out

    # ------------------------------------------------ any number of local steps
    def _client_loss(self, params, inputs, targets, negatives, views, global_params):
        loss = functional_call(
            self.objective, {f"model.{k}": v for k, v in params.items()}, (inputs, targets, negatives, views)
        )
        if self.settings.mu > 0:
            loss = loss + 0.5 * self.settings.mu * sum(((params[n] - global_params[n]) ** 2).sum() for n in params)
        return loss

    def train_functional(
        self,
        global_params: Mapping[str, torch.Tensor],
        cohort: Cohort,
        negatives: list[torch.Tensor | None],
    ) -> list[ClientUpdate]:
        """Every client of ``cohort``, one after the other, for ``local_epochs`` steps: the
        model is called functionally on the client's own weights (``torch.func.functional_call``)
        and stepped by :func:`functional_step`. The same maths as :meth:`train_client` without
        ``torch.optim`` and without copying weights in and out of the module, which is what
        makes several local steps cheap (``benchmarks/local_steps.py``). Where the packed pass
        can train the model, every client's first step comes from it (all clients start from
        the same weights, so one pass serves them all) and only steps 2..k run one by one."""
        first = None
        if len(cohort) > 1 and packed.supports(self.model):
            first = self._packed_gradients(global_params, cohort, negatives[0])
        updates, weights = [], cohort.weights.tolist()
        for c in range(len(cohort)):
            own = cohort.owner == c
            inputs, targets = cohort.inputs[own], cohort.targets[own]
            own_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
            views = cohort.views[c : c + 1] if cohort.views is not None and self.reads_views else None
            params, state = dict(global_params), {}
            if first is not None:
                step_one = self._client_gradient(first, global_params, c)
                params = functional_step(params, step_one, state, 1, self.settings)
            for epoch in range(0 if first is None else 1, self.settings.local_epochs):
                leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
                loss = self._client_loss(leaves, inputs, targets, own_negatives[epoch], views, global_params)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                grads = {
                    k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads, strict=True)
                }
                params = functional_step(params, grads, state, epoch + 1, self.settings)
            used = [n.flatten() for n in own_negatives if n is not None]
            touched = self._touched(inputs, targets, torch.cat(used) if used else None, views)
            updates.append(self._make_update(global_params, params, touched, float(weights[c])))
        return updates


def functional_step(
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    state: dict[str, tuple[torch.Tensor, torch.Tensor]],
    step: int,
    settings: LocalSettings,
) -> dict[str, torch.Tensor]:
    """One ``torch.optim.SGD`` / ``Adam`` step (default hyper-parameters, ``settings.lr``) as a
    function: new parameter tensors; Adam's moments live in ``state`` (``step`` counts from 1)."""
    lr = settings.lr
    if settings.optimizer == "sgd":
        return {k: p.detach() - lr * grads[k] for k, p in params.items()}
    (b1, b2), out = _ADAM_BETAS, {}
    for k, p in params.items():
        if k not in state:
            state[k] = (torch.zeros_like(p), torch.zeros_like(p))
        m, v = state[k]
        m.mul_(b1).add_(grads[k], alpha=1 - b1)
        v.mul_(b2).addcmul_(grads[k], grads[k], value=1 - b2)
        denom = (v / (1 - b2**step)).sqrt() + _ADAM_EPS
        out[k] = p.detach() - lr * (m / (1 - b1**step)) / denom
    return out
