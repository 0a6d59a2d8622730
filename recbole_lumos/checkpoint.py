"""Reload any checkpoint this project wrote (our models or RecBole's) and evaluate it.

RecBole's ``load_data_and_model`` looks the model up by name inside RecBole, so it
cannot reload plugin models, and on torch >= 2.6 it cannot unpickle the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_trainer, init_logger, init_seed

from recbole_lumos.compat import load_trusted
from recbole_lumos.data.atomic_files import ensure_dataset
from recbole_lumos.errors import CheckpointError
from recbole_lumos.model.registry import resolve_model
from recbole_lumos.recommender import build_recommender


def load_data_and_model(path: str | Path, data_path: str | None = None) -> tuple[Any, ...]:
    """``(config, model, dataset, train_data, valid_data, test_data)`` from a checkpoint.

    ``data_path`` points at the dataset's parent folder when it moved since training.
    """
    try:
        checkpoint = load_trusted(str(path))
        config = checkpoint["config"]
        state = checkpoint["state_dict"]
    except (OSError, RuntimeError, KeyError, EOFError) as error:
        raise CheckpointError(
            f"Cannot read the checkpoint {path}: {error}. Pass a .pth file written by "
            "run_recbole_lumos.py (under saved/)."
        ) from None
    if data_path is not None:
        config["data_path"] = str(Path(data_path) / config["dataset"])
    if not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
        config["use_gpu"] = False
    ensure_dataset(config)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    name = config["model_display_name"] if "model_display_name" in config else config["model"]
    model = build_recommender(resolve_model(name).model_class, config, train_data._dataset).to(config["device"])
    model.load_state_dict(state)
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_checkpoint(path: str | Path, data_path: str | None = None) -> dict[str, float]:
    """Test-split metrics of a saved model, through RecBole's evaluator."""
    config, model, _, _, _, test_data = load_data_and_model(path, data_path)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {k: float(v) for k, v in result.items()}
