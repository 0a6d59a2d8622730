"""The LightningModule: what to compute in a round (federated) or a step (central).

* ``federated=True``: a training batch is a cohort of clients. The module runs their
  local epochs from the current global weights (:class:`LocalTrainer`, manual
  optimisation, the global model is never stepped here), applies local DP, and
  returns the clients' updates. Aggregation is the :class:`AggregationCallback`'s job.
* ``federated=False``: a training batch is a length-bucketed group of users; the
  all-position loss is minimised with the model's optimiser (automatic optimisation).

Validation and test use RecBole's own full-ranking code path
(``Trainer._full_sort_batch_eval`` -> ``Collector`` -> ``Evaluator``), on RecBole's
own evaluation dataloaders, so the numbers are those of a centralised RecBole run.
When the run measures exposure (an attack, or named target items), the test's scores
also feed an :class:`~recbole_lumos.report.exposure.ExposureMeter`, and ``er@K``
joins the test result.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from recbole.utils import get_trainer

from recbole_lumos.data.partition import Cohort
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.client_round import (
    PrivacySettings,
    negatives_seed,
    noise_seed,
    round_seed,
    train_cohort_round,
)
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.model.next_item import all_positions_loss

if TYPE_CHECKING:
    from recbole_lumos.federated.attacks import ModelPoisoning
    from recbole_lumos.report.exposure import ExposureMeter


class SequentialRecModule(pl.LightningModule):
    """Trains a RecBole SASRec-family model in all-position mode, federated or central."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: Any,
        federated: bool,
        poisoning: ModelPoisoning | None = None,
        exposure: ExposureMeter | None = None,
    ) -> None:
        super().__init__()
        self.poisoning = poisoning
        self.exposure = exposure
        self.model = model
        self.config = config
        self.federated = federated
        self.seed = int(config["seed"])
        self.automatic_optimization = not federated
        self.local = LocalSettings.from_config(config) if federated else None
        self.local_trainer = LocalTrainer(model, self.local) if federated else None
        self.privacy = PrivacySettings.from_config(config)
        self._recbole = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        self._round_started = 0.0
        self._round_clients = 0

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        # Every round draws from RNGs seeded by (seed, round): a resumed run repeats it exactly.
        torch.manual_seed(round_seed(self.seed, self.current_epoch))
        self._negatives = torch.Generator().manual_seed(negatives_seed(self.seed, self.current_epoch))
        self._noise = torch.Generator().manual_seed(noise_seed(self.seed, self.current_epoch))
        self._round_started = time.perf_counter()
        self._round_clients = 0
        self.model.train()

    def training_step(self, cohort: Cohort, batch_idx: int) -> Any:
        if not self.federated:
            loss = all_positions_loss(self.model, cohort.inputs, cohort.targets, views=cohort.views)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(cohort))
            return loss
        one_by_one = int(self.config["client_batch"] or 1) == 1
        updates = train_cohort_round(
            self.local_trainer,
            self.local_trainer.global_params(),
            cohort,
            self._negatives,
            self._noise,
            self.privacy,
            one_by_one,
            self.poisoning,
            self.current_epoch,
        )
        self._round_clients += len(cohort)
        self.optimizers().step()  # counts the cohort in trainer.global_step (see configure_optimizers)
        elapsed = max(time.perf_counter() - self._round_started, 1e-9)
        self.log(
            "clients_per_s",
            self._round_clients / elapsed,
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=len(cohort),
        )
        # What the server knows of these clients: who they are and the most weight each may claim.
        return {"updates": updates, "users": cohort.users.tolist(), "max_weights": cohort.weights.tolist()}

    def configure_optimizers(self):
        if self.federated:
            # Clients and server keep their own optimisers (LocalTrainer, AggregationCallback).
            # Lightning counts trainer.global_step in optimiser steps, and ModelCheckpoint skips
            # every save while global_step has not moved since its last one: without steps a
            # federated run would keep no best.ckpt and no last.ckpt. Each cohort therefore
            # steps this optimiser of one unused scalar with learning rate 0 (a no-op).
            return torch.optim.SGD([torch.zeros((), requires_grad=True)], lr=0.0)
        # RecBole's ``learner`` and ``learning_rate`` keys, as its Trainer reads them.
        learners = {
            "adam": torch.optim.Adam,
            "sgd": torch.optim.SGD,
            "adagrad": torch.optim.Adagrad,
            "rmsprop": torch.optim.RMSprop,
            "adamw": torch.optim.AdamW,
        }
        learner = str(self.config["learner"] or "adam").lower()
        if learner not in learners:
            raise ConfigurationError(
                f"learner must be one of {sorted(learners)} in all_positions mode, got {learner!r}."
            )
        return learners[learner](
            self.model.parameters(), lr=self.config["learning_rate"], weight_decay=self.config["weight_decay"] or 0.0
        )

    # ------------------------------------------------------- RecBole evaluation
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # RecBole's Interaction has its own .to(); the full-sort eval batch is a 4-tuple.
        if isinstance(batch, Cohort):
            return batch.to(device)
        if isinstance(batch, tuple):
            return tuple(b.to(device) if hasattr(b, "to") else b for b in batch)
        return batch.to(device) if hasattr(batch, "to") else batch

    def _eval_start(self, dataloader: Any) -> None:
        self.model.eval()
        self._recbole.tot_item_num = dataloader._dataset.item_num

    def _eval_step(self, batch: Any, exposure: ExposureMeter | None = None) -> None:
        interaction, scores, positive_u, positive_i = self._recbole._full_sort_batch_eval(batch)
        if exposure is not None:  # the very scores RecBole's collector ranks next
            exposure.add(interaction[self.config["USER_ID_FIELD"]], scores)
        self._recbole.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)

    def _eval_end(self, split: str) -> None:
        self._recbole.eval_collector.model_collect(self.model)
        result = self._recbole.evaluator.evaluate(self._recbole.eval_collector.get_data_struct())
        self.last_result = {k: float(v) for k, v in result.items()}
        if split == "test" and self.exposure is not None:
            self.last_result.update(self.exposure.result())
        self.log_dict({f"{split}/{k}": v for k, v in self.last_result.items()}, prog_bar=split == "valid")

    def on_validation_epoch_start(self) -> None:
        self._eval_start(self.trainer.val_dataloaders)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("valid")

    def on_test_epoch_start(self) -> None:
        self._eval_start(self.trainer.test_dataloaders)
        if self.exposure is not None:
            self.exposure.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.exposure)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
