"""One local step for a whole cohort from one packed forward/backward pass.

With ``local_epochs == 1`` every client takes exactly one optimiser step from the
global weights, so its update depends only on its own gradient ``g`` there
(:func:`~recbole_lumos.federated.packed.step.first_step`). Windows never interact in
the forward pass, so all the cohort's windows are packed into ``[W, L]`` batches, one
backward pass holds every client's gradient, and each client's weight gradient is
formed from layer inputs and output gradients instead of being summed over the cohort.

One module per job:

* :mod:`~recbole_lumos.federated.packed.forward`: SASRec's forward pass, written out
  to be cheap on a CPU and to record every layer's call, and :func:`supports`, which
  says which models qualify (others are trained one by one on their own weights);
* :mod:`~recbole_lumos.federated.packed.per_client`: per-client sums over a chunk's
  tokens, the accumulator of per-client gradients, and the layer records that fill it;
* :mod:`~recbole_lumos.federated.packed.losses`: the next-item loss at every kept position;
* :mod:`~recbole_lumos.federated.packed.gradients`: :func:`cohort_gradients`, every
  client's gradient chunk by chunk, contrastive blocks included;
* :mod:`~recbole_lumos.federated.packed.step`: :func:`first_step`, the optimiser's first
  step in closed form.

The tuning constants below belong to the package: its modules read them from here at
call time (``packed.CHUNK_WINDOWS``), so setting one on the package (as tests do)
takes effect everywhere.
"""

from recbole_lumos.federated.packed.forward import POSITIONS, TABLE, supports
from recbole_lumos.federated.packed.forward import _dropout as _dropout  # tested on its own
from recbole_lumos.federated.packed.gradients import CohortGradients, cohort_gradients
from recbole_lumos.federated.packed.losses import position_losses
from recbole_lumos.federated.packed.per_client import _Segments as _Segments  # tested on its own
from recbole_lumos.federated.packed.step import first_step

__all__ = [
    "BATCH_HEADS",
    "CHUNK_WINDOWS",
    "CHUNK_WINDOWS_GPU",
    "POSITIONS",
    "TABLE",
    "CohortGradients",
    "cohort_gradients",
    "first_step",
    "position_losses",
    "supports",
]

CHUNK_WINDOWS = 128
"""Windows per forward/backward pass on a CPU: small enough that the activations stay in cache."""

CHUNK_WINDOWS_GPU = 2048
"""Windows per pass off the CPU: large enough to fill the device (2,048 windows of 50 with a 3,417-item
softmax hold about 1.4 GB of logits)."""

_LOOP_SEGMENTS, _LOOP_TOKENS = 8, 100
"""Per-client weight gradients are one matmul per client when a chunk holds at most
``_LOOP_SEGMENTS`` clients or they average ``_LOOP_TOKENS`` tokens, else one per window."""

BATCH_HEADS = "auto"
"""Attention heads in one batched product (True), one after the other (False), or ``auto``: batched off the CPU."""

_GATHER_BELOW = 0.8
"""The last layer runs at the positions with a target only when they are fewer than this share."""
