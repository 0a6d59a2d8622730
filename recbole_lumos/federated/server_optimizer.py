"""The server's update rule: FedAvg, FedAvgM, FedAdam, FedAdagrad (Reddi et al., ICLR 2021).

The aggregate of the clients' updates ``Δ`` is a pseudo-gradient ``-Δ`` for the
global backbone, stepped by a ``torch.optim`` optimiser (``server_optimizer``):

* ``sgd``: ``w += server_lr * Δ`` (FedAvg when ``server_lr`` is 1);
* ``momentum``: SGD with heavy-ball momentum ``server_momentum`` (FedAvgM);
* ``adam``: Adam with ``betas=(server_beta1, server_beta2)`` and ``eps=server_eps``
  (FedAdam; ``eps`` is the paper's adaptivity ``τ``, far above Adam's usual 1e-8);
* ``adagrad``: Adagrad with ``eps=server_eps`` (FedAdagrad).

**Lazy rows** (``server_lazy_rows``). A round's clients send only the item rows they
touched, so most rows of the item table get no pseudo-gradient in a round. A dense
Adam still moves them: their stale momentum keeps stepping them for rounds after
anybody last saw the item (about ``1 / (1 - beta1)`` times the step of the round that
touched them). With lazy rows the item tables are stepped row-wise, only at the rows
some client sent that round (TensorFlow's LazyAdam; here torch's own
``torch.optim.SparseAdam``, and ``Adagrad`` / ``SGD`` on sparse gradients). The other
parameters, which every client sends, keep the dense optimiser.

The optimiser state belongs to the run, so it is saved in Lightning checkpoints
(through :class:`~recbole_lumos.federated.callbacks.AggregationCallback`) and a
resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.update import SPARSE_TABLES

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad")


def _get(config: Any, key: str, default: Any) -> Any:
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def _torch_optimizer(name: str, params: list[torch.nn.Parameter], config: Any, lazy: bool) -> torch.optim.Optimizer:
    lr = float(_get(config, "server_lr", 1.0))
    eps = float(_get(config, "server_eps", 1e-3))
    betas = (float(_get(config, "server_beta1", 0.9)), float(_get(config, "server_beta2", 0.99)))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        if lazy:
            raise ConfigurationError(
                "server_lazy_rows needs a row-wise rule: use server_optimizer adam, adagrad or sgd, "
                "or set server_lazy_rows: False for momentum."
            )
        return torch.optim.SGD(params, lr=lr, momentum=float(_get(config, "server_momentum", 0.9)))
    if name == "adam":
        if lazy:
            return torch.optim.SparseAdam(params, lr=lr, betas=betas, eps=eps)
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps)
    raise ConfigurationError(
        f"server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {name!r}. "
        "Use sgd with server_lr: 1 for plain FedAvg."
    )


class ServerOptimizer:
    """The server step over the global backbone: a dense optimiser, plus a row-wise one for
    the item tables when ``server_lazy_rows`` is set."""

    def __init__(self, params: Mapping[str, torch.nn.Parameter], config: Any) -> None:
        name = str(_get(config, "server_optimizer", "sgd")).lower()
        lazy = bool(_get(config, "server_lazy_rows", False))
        self.tables = [n for n in params if lazy and n in SPARSE_TABLES]
        dense = [p for n, p in params.items() if n not in self.tables]
        self.dense = _torch_optimizer(name, dense, config, lazy=False) if dense or not self.tables else None
        self.rows = _torch_optimizer(name, [params[n] for n in self.tables], config, lazy=True) if self.tables else None

    @torch.no_grad()
    def step(
        self,
        params: Mapping[str, torch.nn.Parameter],
        aggregate: Mapping[str, torch.Tensor],
        sent_rows: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """One server step with ``-aggregate`` as the gradient; lazy tables only at ``sent_rows``
        (a bool mask per table; a table without one counts as sent everywhere)."""
        sent_rows = sent_rows or {}
        for name, p in params.items():
            grad = -aggregate[name].to(p.device, p.dtype)
            if name in self.tables:
                mask = sent_rows.get(name)
                rows = (
                    torch.arange(p.size(0), device=p.device) if mask is None else mask.to(p.device).nonzero().flatten()
                )
                grad = torch.sparse_coo_tensor(rows.unsqueeze(0), grad[rows], p.shape, device=p.device).coalesce()
            p.grad = grad
        for optimizer in self._optimizers():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.dense, self.rows) if o is not None]

    def state_dict(self) -> dict[str, Any]:
        # Without lazy tables the state is the dense optimiser's own (as before lazy rows existed),
        # so earlier checkpoints resume unchanged.
        if self.rows is None:
            return self.dense.state_dict()
        return {"dense": None if self.dense is None else self.dense.state_dict(), "rows": self.rows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rows is None:
            self.dense.load_state_dict(state)
            return
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])
        self.rows.load_state_dict(state["rows"])


def build_server_optimizer(
    params: Mapping[str, torch.nn.Parameter] | Iterable[torch.nn.Parameter], config: Any
) -> ServerOptimizer:
    """The ``server_optimizer`` over the global backbone's named parameters."""
    if not isinstance(params, Mapping):
        params = {str(i): p for i, p in enumerate(params)}
    return ServerOptimizer(params, config)


def apply_aggregate(
    optimizer: ServerOptimizer,
    params: Mapping[str, torch.nn.Parameter],
    aggregate: Mapping[str, torch.Tensor],
    sent_rows: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """One server step with ``-aggregate`` as the gradient of every parameter."""
    optimizer.step(params, aggregate, sent_rows)
