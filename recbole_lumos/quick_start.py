"""Train and evaluate one model, the way ``recbole.quick_start.run_recbole`` does.

The steps, seeds and calls are RecBole's own (``init_seed`` -> ``create_dataset`` ->
``data_preparation`` -> ``init_seed`` -> model -> ``get_trainer(...).fit/evaluate``),
so a RecBole model gives exactly the numbers RecBole gives. What differs: models are
passed as classes (plugins work), the dataset is checked first (clear errors), a
dataset object can be shared by several models, and the result is also written as
JSON next to the checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import Dataset
from recbole.utils import get_trainer, init_logger, init_seed, set_color

from recbole_lumos.config import build_config
from recbole_lumos.data.atomic_files import ensure_dataset
from recbole_lumos.model.registry import resolve_model


@dataclass
class RunResult:
    """One finished (model, dataset, seed) run, as written to ``<checkpoint>.json``."""

    model: str
    dataset: str
    seed: int
    best_valid_score: float
    best_valid_result: dict[str, float]
    test_result: dict[str, float]
    checkpoint: str | None
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


class DatasetCache:
    """Reuse one RecBole dataset object across models whose data settings agree."""

    def __init__(self) -> None:
        self._datasets: dict[str, Dataset] = {}

    @staticmethod
    def key(config: Config) -> str:
        names = sorted(set(config.parameters["Dataset"]) | {"data_path", "dataset", "eval_args", "MAX_ITEM_LIST_LENGTH"})
        return repr([(name, config[name]) for name in names])

    def get(self, config: Config) -> Dataset:
        key = self.key(config)
        if key not in self._datasets:
            self._datasets[key] = create_dataset(config)
        return self._datasets[key]


def _unique_checkpoint(path: str) -> str:
    """RecBole names checkpoints by the second; never overwrite an earlier file."""
    candidate, n = Path(path), 1
    while candidate.exists():
        candidate = Path(path).with_name(f"{Path(path).stem}-{n}.pth")
        n += 1
    return str(candidate)


# Keys copied into the result JSON (the full config is in the checkpoint and the log).
_REPORTED_KEYS = (
    "MAX_ITEM_LIST_LENGTH", "hidden_size", "n_layers", "n_heads", "epochs", "learning_rate",
    "train_batch_size", "stopping_step", "valid_metric", "eval_args", "data_path",
)


def run_model(
    model: str,
    dataset: str,
    config_files: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    saved: bool = True,
    datasets: DatasetCache | None = None,
) -> RunResult:
    """Train ``model`` on ``dataset`` and evaluate it on the test split."""
    spec = resolve_model(model)
    config = build_config(spec, dataset, config_files, overrides)
    ensure_dataset(config)
    started = time.perf_counter()
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    data = (datasets or DatasetCache()).get(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = spec.model_class(config, train_data._dataset).to(config["device"])
    logger.info(recommender)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
    trainer.saved_model_file = _unique_checkpoint(trainer.saved_model_file)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    result = RunResult(
        model=spec.name,
        dataset=dataset,
        seed=config["seed"],
        best_valid_score=float(best_valid_score),
        best_valid_result={k: float(v) for k, v in best_valid_result.items()},
        test_result={k: float(v) for k, v in test_result.items()},
        checkpoint=str(Path(trainer.saved_model_file).resolve()) if saved else None,
        wall_time_s=time.perf_counter() - started,
        config={key: config[key] for key in _REPORTED_KEYS if key in config},
    )
    if saved:
        json_path = Path(trainer.saved_model_file).with_suffix(".json")
        result.save(json_path)
        logger.info(set_color("results", "blue") + f": {json_path}")
    return result
