"""A whole federated round creates nothing on the default device: the CPU stand-in for CUDA.

Under ``with torch.device("meta")`` every tensor made without an explicit device lands on
``meta``; mixed with the round's CPU tensors it raises, and copied to the host it fails. So
a round that passes here makes every tensor on the device of the data it meets, which is
what a CUDA round needs (issue: the GPU path).
"""

import pytest
import torch
from federated.test_upload_rows import CLIENTS, _trainer_and_cohort

from recbole_lumos.federated.aggregators import AGGREGATORS, build_aggregator
from recbole_lumos.federated.client_round import PrivacySettings, train_cohort_round
from recbole_lumos.federated.server_optimizer import apply_aggregate, build_server_optimizer


@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
@pytest.mark.parametrize("variant", ["SASRec", "CL4SRec", "LUMOS", "LUMOS-nc2-items-aug"])
@pytest.mark.parametrize("path", ["packed", "two_local_steps", "one_by_one", "local_dp"])
def test_a_round_makes_every_tensor_on_the_device_of_its_data(tiny_data, variant, loss, path):
    trainer, cohort = _trainer_and_cohort(tiny_data, variant, loss)
    if path == "two_local_steps":
        trainer.settings = type(trainer.settings)(**{**trainer.settings.__dict__, "local_epochs": 2})
    privacy = PrivacySettings(clip=0.5, noise_multiplier=1.0) if path == "local_dp" else PrivacySettings()
    start = trainer.global_params()
    with torch.device("meta"):
        updates = train_cohort_round(
            trainer,
            start,
            cohort,
            torch.Generator().manual_seed(1),
            torch.Generator().manual_seed(2),
            privacy,
            one_by_one=path == "one_by_one",
        )
    tensors = [t for u in updates for t in u.dense.values()]
    tensors += [t for u in updates for pair in u.sparse.values() for t in pair]
    assert len(updates) == CLIENTS and {t.device.type for t in tensors} == {"cpu"}


@pytest.mark.parametrize("aggregator", sorted(AGGREGATORS))
@pytest.mark.parametrize("server_optimizer, lazy", [("adam", False), ("adam", True), ("momentum", False)])
def test_aggregation_and_the_server_step_make_nothing_on_the_default_device(
    tiny_data, aggregator, server_optimizer, lazy
):
    trainer, cohort = _trainer_and_cohort(tiny_data, "SASRec", "sampled_ce")
    params = dict(trainer.model.named_parameters())
    config = {"max_update_norm": 1.0, "num_malicious": 1, "server_optimizer": server_optimizer}
    config.update({"server_lr": 0.01, "server_lazy_rows": lazy})
    updates = train_cohort_round(trainer, trainer.global_params(), cohort, None, None, PrivacySettings())
    before = {name: p.detach().clone() for name, p in params.items()}
    with torch.device("meta"):
        folding = build_aggregator(aggregator, {n: p.shape for n, p in params.items()}, config)
        for update in updates:
            folding.add(update)
        aggregate = folding.result()
        optimizer = build_server_optimizer(params, config)
        apply_aggregate(optimizer, params, aggregate, folding.sent_rows)
    assert {t.device.type for t in aggregate.values()} == {"cpu"}
    assert any(not torch.equal(before[n], p) for n, p in params.items())
