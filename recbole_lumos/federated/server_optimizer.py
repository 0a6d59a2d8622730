"""The server's update rule: FedAvg, FedAvgM, FedAdam, FedAdagrad (Reddi et al., ICLR 2021).

The aggregate of the clients' updates ``Δ`` is a pseudo-gradient ``-Δ`` for the
global backbone, stepped by a ``torch.optim`` optimiser (``server_optimizer``):

* ``sgd``: ``w += server_lr * Δ`` (FedAvg when ``server_lr`` is 1);
* ``momentum``: SGD with heavy-ball momentum ``server_momentum`` (FedAvgM);
* ``adam``: Adam with ``betas=(server_beta1, server_beta2)`` and ``eps=server_eps``
  (FedAdam; ``eps`` is the paper's adaptivity ``τ``, far above Adam's usual 1e-8);
* ``adagrad``: Adagrad with ``eps=server_eps`` (FedAdagrad).

The optimiser state belongs to the run, so it is saved in Lightning checkpoints
(through :class:`~recbole_lumos.federated.callbacks.AggregationCallback`) and a
resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from recbole_lumos.errors import ConfigurationError

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad")


def _get(config: Any, key: str, default: Any) -> Any:
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def build_server_optimizer(params: Iterable[torch.nn.Parameter], config: Any) -> torch.optim.Optimizer:
    """The ``server_optimizer`` over the global backbone's parameters."""
    name = str(_get(config, "server_optimizer", "sgd")).lower()
    lr = float(_get(config, "server_lr", 1.0))
    eps = float(_get(config, "server_eps", 1e-3))
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=float(_get(config, "server_momentum", 0.9)))
    if name == "adam":
        betas = (float(_get(config, "server_beta1", 0.9)), float(_get(config, "server_beta2", 0.99)))
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps)
    raise ConfigurationError(
        f"server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {name!r}. "
        "Use sgd with server_lr: 1 for plain FedAvg."
    )


@torch.no_grad()
def apply_aggregate(
    optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter], aggregate: Mapping[str, torch.Tensor]
) -> None:
    """One server step with ``-aggregate`` as the gradient of every parameter."""
    for name, p in params.items():
        p.grad = -aggregate[name].to(p.device, p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
