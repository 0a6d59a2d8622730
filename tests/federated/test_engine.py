"""The Lightning engine end to end on tiny data: equivalence, resume, traffic, uploads."""


import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_ENGINE, write_tiny_dataset

from recbole_lumos.checkpoint import evaluate_checkpoint
from recbole_lumos.compat import load_trusted
from recbole_lumos.config import build_config
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.runner import run_name
from recbole_lumos.quick_start import run_model

TINY = TINY_ENGINE


def _params(result) -> dict[str, torch.Tensor]:
    return load_trusted(result.checkpoint)["state_dict"]


def test_one_client_one_sgd_step_equals_a_central_sgd_step(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", name="one", n_users=1, n_items=30)
    common = {**TINY, "data_path": str(data), "epochs": 1, "seed": 3, "topk": [5], "valid_metric": "NDCG@5"}
    federated = run_model(
        "SASRec",
        "one",
        overrides={
            **common,
            "federated": True,
            "clients_per_round": 1,
            "local_epochs": 1,
            "local_optimizer": "sgd",
            "local_lr": 0.5,
            "local_loss": "ce",
            "sparse_upload": False,
            "aggregator": "fedavg",
            "server_optimizer": "sgd",
            "server_lr": 1.0,
            "checkpoint_dir": str(tmp_path / "fed"),
        },
    )
    central = run_model(
        "SASRec",
        "one",
        overrides={
            **common,
            "train_mode": "all_positions",
            "learner": "sgd",
            "learning_rate": 0.5,
            "user_batch_size": 1,
            "checkpoint_dir": str(tmp_path / "central"),
        },
    )
    fed_params, central_params = _params(federated), _params(central)
    start = run_model(
        "SASRec",
        "one",
        overrides={
            **common,
            "train_mode": "all_positions",
            "learning_rate": 0.0,
            "checkpoint_dir": str(tmp_path / "start"),
        },
    )
    moved = 0
    for name, value in central_params.items():
        torch.testing.assert_close(fed_params[name], value, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(value, _params(start)[name]))
    assert moved > 5  # the step really changed the weights


def test_federated_run_reports_metrics_and_bytes(tiny_data):
    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={
            **TINY,
            "data_path": str(tiny_data),
            "epochs": 2,
            "client_fraction": 0.5,
            "client_batch": 8,
            "num_negatives": 8,
        },
    )
    assert set(result.test_result) == {"hit@10", "hit@20", "ndcg@10", "ndcg@20"}
    assert result.federated and result.train_mode == "all_positions" and result.epochs == 2
    assert [t["clients"] for t in result.traffic] == [20.0, 20.0]
    params = load_trusted(result.checkpoint)["state_dict"]
    dense_bytes = sum(v.numel() * v.element_size() for v in params.values())
    assert result.bytes_down_per_client == dense_bytes
    assert 0 < result.bytes_up_per_client < dense_bytes  # sparse item rows
    assert evaluate_checkpoint(result.checkpoint) == result.test_result


@pytest.mark.parametrize("server_optimizer", ["sgd", "adam"])
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tiny_data, tmp_path, monkeypatch, server_optimizer):
    """A run killed in round 3 and rerun resumes from the checkpoint written after round 2."""
    from recbole_lumos.federated.callbacks import AggregationCallback

    settings = {
        **TINY,
        "server_optimizer": server_optimizer,  # adam: its moments must survive the restart
        "server_lr": 1.0 if server_optimizer == "sgd" else 0.01,
        "data_path": str(tiny_data),
        "client_fraction": 0.5,
        "client_batch": 4,
        "hidden_dropout_prob": 0.2,
        "federated_eval_step": 1,  # early stopping and best.ckpt state must survive too
        "federated_stopping_step": 100,
        "epochs": 4,
    }
    straight = run_model("FedSASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "a")})

    apply = AggregationCallback._apply

    def killed_in_round_3(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("killed")
        apply(self, trainer, pl_module)

    with monkeypatch.context() as patch:
        patch.setattr(AggregationCallback, "_apply", killed_in_round_3)
        with pytest.raises(RuntimeError, match="killed"):
            run_model("FedSASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "b")})
    last = next((tmp_path / "b").glob("FedSASRec-tiny-*/last.ckpt"))  # written every round
    starts = []
    fit = pl.Trainer.fit
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, ckpt_path=None, **k: starts.append(ckpt_path)
                        or fit(self, *a, ckpt_path=ckpt_path, **k))
    resumed = run_model("FedSASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "b")})
    assert starts == [str(last)]  # the rerun restarted from the checkpoint, not from scratch
    killed_clock = next(v for k, v in load_trusted(str(last))["callbacks"].items() if "RunClock" in k)
    assert resumed.time_complete and straight.time_complete
    assert killed_clock["wall_s"] > 0 and killed_clock["cpu_s"] > 0
    assert resumed.wall_time_s > killed_clock["wall_s"]  # both segments are counted
    assert resumed.cpu_time_s > killed_clock["cpu_s"]
    assert resumed.epochs == 4
    assert resumed.valid_curve == straight.valid_curve
    assert resumed.best_valid_result == straight.best_valid_result
    assert resumed.test_result == straight.test_result
    for name, value in _params(straight).items():
        torch.testing.assert_close(_params(resumed)[name], value)


def test_a_run_resumed_from_a_checkpoint_without_a_clock_says_its_time_is_partial(tiny_data, tmp_path):
    """Checkpoints written before the run clock existed: the earlier time is unknown."""
    settings = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path), "epochs": 2}
    run_model("FedSASRec", "tiny", overrides=settings)
    last = next(tmp_path.glob("FedSASRec-tiny-*/last.ckpt"))
    checkpoint = load_trusted(str(last))
    checkpoint["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items() if "RunClock" not in k}
    torch.save(checkpoint, last)
    resumed = run_model("FedSASRec", "tiny", overrides={**settings, "epochs": 3})
    assert resumed.epochs == 3
    assert not resumed.time_complete


def test_resuming_a_run_that_went_past_the_budget_is_a_clear_error_and_keeps_the_checkpoint(tiny_data, tmp_path):
    settings = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path), "epochs": 3}
    run_model("FedSASRec", "tiny", overrides=settings)
    last = next(tmp_path.glob("FedSASRec-tiny-*/last.ckpt"))
    before = last.read_bytes()
    with pytest.raises(ConfigurationError, match="already trained 3 rounds.*Raise --epochs"):
        run_model("FedSASRec", "tiny", overrides={**settings, "epochs": 2})
    assert last.read_bytes() == before
    assert run_model("FedSASRec", "tiny", overrides={**settings, "epochs": 4}).epochs == 4


def test_a_moved_run_folder_keeps_its_best_score_and_resumes_from_the_new_place(tiny_data, tmp_path):
    """Lightning forgets the best score when the checkpoint folder moved; ours re-bases it."""
    import shutil

    from recbole_lumos.federated.callbacks import RunFolderCheckpoint

    settings = {**TINY, "data_path": str(tiny_data), "federated_eval_step": 1, "federated_stopping_step": 100}
    first = run_model("FedSASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "a"), "epochs": 2})
    folder = next((tmp_path / "a").glob("FedSASRec-tiny-*"))
    shutil.move(str(folder), str(tmp_path / "b" / folder.name))
    saved = next(v for k, v in load_trusted(str(tmp_path / "b" / folder.name / "last.ckpt"))["callbacks"].items()
                 if "ModelCheckpoint" in k and v.get("best_model_score") is not None)
    callback = RunFolderCheckpoint(dirpath=str(tmp_path / "b" / folder.name), monitor="valid/ndcg@20", mode="max")
    plain = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "b"), monitor="valid/ndcg@20", mode="max")
    assert callback.state_key == plain.state_key  # checkpoints of older runs restore into it
    callback.load_state_dict(saved)
    assert callback.best_model_score == saved["best_model_score"]
    assert callback.best_model_path == str(tmp_path / "b" / folder.name / "best.ckpt")
    resumed = run_model("FedSASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "b"), "epochs": 3})
    assert resumed.epochs == 3 and len(resumed.valid_curve) == 3  # rounds 1-2 from the moved folder, then 3
    assert resumed.valid_curve[:2] == first.valid_curve
    assert resumed.best_valid_score == pytest.approx(max(p["ndcg@20"] for p in resumed.valid_curve), abs=1e-4)
    assert not (tmp_path / "a" / folder.name).exists()


def _first_round_change(tiny_data, tmp_path, monkeypatch, aggregator, device="cpu"):
    """How the global model moved in round 1 (server SGD, lr 1: the aggregate itself)."""
    from recbole_lumos.federated.callbacks import AggregationCallback

    changes = []
    apply = AggregationCallback._apply

    def recording(self, trainer, pl_module):
        before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        apply(self, trainer, pl_module)
        changes.append({n: p.detach() - before[n] for n, p in pl_module.model.named_parameters()})

    monkeypatch.setattr(AggregationCallback, "_apply", recording)
    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={
            **TINY,
            "data_path": str(tiny_data),
            "epochs": 1,
            "aggregator": aggregator,
            "max_update_norm": 0.05,
            "num_malicious": 1,
            "client_batch": 8,
            "server_optimizer": "sgd",
            "server_lr": 1.0,
            "checkpoint_dir": str(tmp_path / aggregator),
            "use_gpu": device == "cuda",
        },
    )
    assert set(result.test_result) == {"hit@10", "hit@20", "ndcg@10", "ndcg@20"}
    assert {delta.device.type for delta in changes[0].values()} == {device}
    return changes[0]


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "norm_bound", "krum"])
def test_every_aggregator_runs_a_round(tiny_data, tmp_path, monkeypatch, aggregator, device):
    """Each robust aggregator moves the model, and not as FedAvg does (a no-op or a silent
    fallback to the mean would fail here)."""
    robust = _first_round_change(tiny_data, tmp_path, monkeypatch, aggregator, device)
    mean = _first_round_change(tiny_data, tmp_path, monkeypatch, "fedavg", device)
    assert any(bool(delta.abs().sum() > 0) for delta in robust.values())
    assert any(not torch.allclose(robust[name], mean[name]) for name in mean)
    if aggregator == "norm_bound":  # the mean of clipped updates is within the bound
        assert float(torch.cat([d.flatten() for d in robust.values()]).norm()) <= 0.05 + 1e-6


@pytest.mark.parametrize("order", ["random", "by_length"])
def test_central_user_batches(tiny_data, order):
    """Central all-position batches: every user once per epoch; random batches change from epoch
    to epoch (by_length keeps users of similar length together, which trained worse)."""
    from recbole.data import create_dataset, data_preparation

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import ClientPartition, training_histories
    from recbole_lumos.federated.runner import client_loader

    overrides = {**TINY, "data_path": str(tiny_data), "user_batch_size": 3, "user_batch_order": order}
    config = build_config("SASRec", "tiny", overrides=overrides)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    loader = client_loader(config, partition, federated=False)
    lengths = [client.history.numel() for client in partition.clients]
    epochs = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        batches = [sorted(batch) for batch in loader.batch_sampler]
        assert sorted(u for batch in batches for u in batch) == list(range(len(partition)))
        epochs.append(batches)
    by_size = sorted(lengths)
    buckets = sorted(tuple(by_size[i : i + 3]) for i in range(0, len(by_size), 3))

    def batch_lengths(batches):
        return sorted(tuple(sorted(lengths[u] for u in batch)) for batch in batches)

    if order == "by_length":  # ties between equal lengths are broken at random
        assert batch_lengths(epochs[0]) == batch_lengths(epochs[1]) == buckets
    else:
        assert {tuple(b) for b in epochs[0]} != {tuple(b) for b in epochs[1]}
        assert batch_lengths(epochs[0]) != buckets


def test_unknown_user_batch_order_is_refused(tiny_data):
    from recbole_lumos.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="user_batch_order"):
        run_model("SASRec", "tiny", overrides={**TINY, "data_path": str(tiny_data), "train_mode": "all_positions",
                                               "user_batch_order": "sorted", "epochs": 1})


def test_federated_result_is_the_best_validation_checkpoint(tiny_data, tmp_path):
    """The reported valid metrics are the best validation's, not the last round's."""
    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={
            **TINY,
            "data_path": str(tiny_data),
            "epochs": 12,
            "federated_eval_step": 2,
            "federated_stopping_step": 100,
            "topk": [5],
            "valid_metric": "NDCG@5",
            "server_lr": 0.3,
            "checkpoint_dir": str(tmp_path),
        },
    )
    scores = [point["ndcg@5"] for point in result.valid_curve]
    assert len(scores) == 6
    assert result.best_valid_result["ndcg@5"] == pytest.approx(max(scores), abs=1e-4)
    assert next(tmp_path.glob("FedSASRec-tiny-*/best.ckpt")).is_file()


def test_run_names_ignore_an_unset_views_seed_so_older_checkpoints_still_resume(tiny_data):
    overrides = {"data_path": str(tiny_data), "lumos_generation": "semantic"}
    config = build_config("LUMOS", "tiny", overrides=overrides)
    name = run_name(config)
    del config.final_config_dict["lumos_views_seed"]  # what a version without the key hashed
    assert run_name(config) == name
    assert run_name(build_config("LUMOS", "tiny", overrides={**overrides, "lumos_views_seed": 7})) != name


def test_a_run_cut_by_its_round_budget_says_so(tiny_data, tmp_path, caplog):
    settings = {**TINY, "data_path": str(tiny_data), "client_batch": 8, "num_negatives": 8}
    settings |= {"federated_eval_step": 1, "federated_stopping_step": 1, "server_optimizer": "sgd"}
    cut = run_model("FedSASRec", "tiny", overrides={**settings, "epochs": 1, "checkpoint_dir": str(tmp_path / "c")})
    assert cut.ended_by_budget and "before early stopping" in caplog.text
    caplog.clear()
    # lr 0: nothing improves after the first validation, so early stopping ends the run in round 2
    frozen = {**settings, "epochs": 50, "server_lr": 0.0, "checkpoint_dir": str(tmp_path / "s")}
    stopped = run_model("FedSASRec", "tiny", overrides=frozen)
    assert stopped.epochs < 50 and not stopped.ended_by_budget and "before early stopping" not in caplog.text


def test_round_budgets_report_the_best_model_up_to_each_budget_and_change_nothing_else(tiny_data, tmp_path):
    """Valid and test at rounds 4 and 8 are those of the best validation up to that round (the
    checkpoint copied then, evaluated after training); a budget past the run's length (50 > 12
    rounds) is left out; and the run's own numbers are those of the same run without budgets."""
    settings = {**TINY, "data_path": str(tiny_data), "epochs": 12, "federated_eval_step": 2, "topk": [5]}
    settings |= {"federated_stopping_step": 100, "valid_metric": "NDCG@5", "server_lr": 0.3}
    with_budgets = run_model(
        "FedSASRec", "tiny", overrides={**settings, "round_budgets": [4, 8, 50], "checkpoint_dir": str(tmp_path / "b")}
    )
    without = run_model(
        "FedSASRec", "tiny", overrides={**settings, "round_budgets": [], "checkpoint_dir": str(tmp_path / "n")}
    )
    assert without.at_budgets == []
    assert with_budgets.valid_curve == without.valid_curve
    assert with_budgets.test_result == without.test_result
    by_budget = {entry["rounds"]: entry for entry in with_budgets.at_budgets}
    assert sorted(by_budget) == [4, 8]
    for budget in (4, 8):
        seen = [p for p in with_budgets.valid_curve if p["epoch"] + 1 <= budget]
        best = max(seen, key=lambda p: p["ndcg@5"])  # first of the best, as the checkpoint keeps it
        assert by_budget[budget]["best_round"] == int(best["epoch"]) + 1
        assert by_budget[budget]["valid"]["ndcg@5"] == pytest.approx(best["ndcg@5"], abs=1e-4)
        assert list((tmp_path / "b").glob(f"FedSASRec-tiny-*/best-round{budget}.ckpt"))
    # the curve must move for the budgets to mean anything: round 4's best is not the final best
    assert by_budget[4]["valid"]["ndcg@5"] < with_budgets.best_valid_result["ndcg@5"]


def test_a_run_shorter_than_its_validation_step_says_only_what_happened(tiny_data, tmp_path, caplog):
    """3 rounds, a validation every 5: no validation ran, so the warning claims no best score, names the
    federated key, and no round budget past the run's end (50, 100, 200) is reported."""
    settings = {**TINY, "data_path": str(tiny_data), "client_batch": 8, "num_negatives": 8, "epochs": 3}
    settings |= {"federated_eval_step": 5, "round_budgets": [50, 100, 200], "checkpoint_dir": str(tmp_path)}
    result = run_model("FedSASRec", "tiny", overrides=settings)
    assert result.epochs == 3 and result.ended_by_budget and result.at_budgets == []
    assert "with no validation (federated_eval_step is 5, more than 3)" in caplog.text
    assert "still improving" not in caplog.text and "nan" not in caplog.text
    assert "(epochs < eval_step)" not in caplog.text


def test_the_server_refuses_a_corrupt_update_and_aggregates_the_rest(tiny_data, tmp_path, monkeypatch):
    """A client whose upload holds a NaN is refused (logged, counted), the others are aggregated."""
    from recbole_lumos.federated import module

    honest = module.train_cohort_round

    def first_client_sends_nan(*args, **kwargs):
        updates = honest(*args, **kwargs)
        name = next(iter(updates[0].dense))
        updates[0].dense[name] = torch.full_like(updates[0].dense[name], float("nan"))
        return updates

    monkeypatch.setattr(module, "train_cohort_round", first_client_sends_nan)
    settings = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path), "epochs": 2}
    result = run_model(
        "FedSASRec", "tiny", overrides={**settings, "clients_per_round": 12, "client_batch": 4, "num_negatives": 8}
    )
    assert result.refused_updates == 2 * 3  # one client in each of a round's three cohorts
    assert [t["refused_updates"] for t in result.traffic] == [3.0, 3.0]
    assert all(torch.isfinite(v).all() for v in _params(result).values())


def test_client_dropout_drops_a_reproducible_share_of_each_round(tiny_data, tmp_path):
    from recbole_lumos.data.partition import RoundSampler

    sampler = RoundSampler(40, clients_per_round=10, client_batch=3, seed=2, dropout=0.35)
    assert len(sampler.dropped(5)) == 3 and len(sampler) == 3  # 7 answer: cohorts of 3, 3, 1
    assert sampler.dropped(5).tolist() == RoundSampler(40, clients_per_round=10, client_batch=3, seed=2,
                                                       dropout=0.35).dropped(5).tolist()
    assert sorted([*sampler.dropped(5), *sampler.answering(5)]) == sorted(sampler.round_clients(5))
    assert sorted(c for cohort in sampler.cohorts(5) for c in cohort) == sorted(sampler.answering(5))
    settings = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path), "epochs": 2}
    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={**settings, "clients_per_round": 12, "client_batch": 4, "num_negatives": 8, "client_dropout": 0.25},
    )
    assert result.dropped_clients == 2 * 3
    assert [t["clients"] for t in result.traffic] == [9.0, 9.0]  # the round aggregates those that answered
    assert result.refused_updates == 0
    with pytest.raises(ConfigurationError, match="client_dropout"):
        run_model("FedSASRec", "tiny", overrides={**settings, "client_dropout": 1.0})
