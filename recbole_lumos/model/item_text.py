"""A text-aware item table for any SASRec-family model (``item_text: none | init | fusion``).

Item texts are public catalogue data, so the server and every client may hold their
embeddings. Started from them, FedSASRec on amazon-beauty was +50% test NDCG@20 at 50
rounds, but training washed the start out (+1% at the end); hence two modes:

* ``init``: the ID table starts from the text embeddings, projected to ``hidden_size``
  by PCA and scaled to the mean row norm of the default initialisation. Nothing else
  changes: the model is the plain one.
* ``fusion``: each item's representation is ``e_i = id_i + P t_i`` for the whole run, at
  the input and in the output layer, with ``t_i`` the frozen (centred) text embedding
  and ``P`` a trained ``[hidden_size, text_dim]`` projection, started at the PCA
  projection so step 0 is ``init``'s table plus the ID initialisation. ``P`` is a
  shared parameter (``item_embedding.text_projection.weight``), aggregated like the
  rest; the ID rows keep their name (``item_embedding.weight``), so sparse uploads still
  send only the rows a client touched, plus ``P``. Training cannot wash the text out:
  it is in every score.

The engine's three client-update paths read the table through :func:`item_table` (or
the module's own ``forward``), so they agree; the packed path forms the fused table
once per cohort and derives ``P``'s per-client gradient from the rows' gradients
(``grad P = sum_i grad e_i  t_i^T``, see :func:`projection_gradient`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from recbole_lumos.errors import ConfigurationError

ITEM_TEXT_MODES = ("none", "init", "fusion")
PROJECTION = "item_embedding.text_projection.weight"
"""The shared projection's parameter name (the ID table keeps ``item_embedding.weight``)."""


class TextAwareItemEmbedding(nn.Embedding):
    """``e_i = id_i + P t_i``: an ``nn.Embedding`` whose rows also carry a frozen text embedding.

    ``weight`` is the ID table (same name, shape and padding as the table it replaces);
    ``text_table`` (``[rows, text_dim]``, a buffer, zero for padding and special rows)
    is never trained; ``text_projection`` (``P``, no bias) is.
    """

    def __init__(self, table: nn.Embedding, text: torch.Tensor, projection: torch.Tensor) -> None:
        rows, dim = table.weight.shape
        if text.shape[0] != rows or projection.shape != (dim, text.shape[1]):
            raise ValueError(
                f"text table {tuple(text.shape)} and projection {tuple(projection.shape)} do not fit an item table "
                f"of {rows} rows x {dim}"
            )
        super().__init__(rows, dim, padding_idx=table.padding_idx, _weight=table.weight.data)
        self.register_buffer("text_table", text.to(table.weight.dtype).contiguous())
        self.text_projection = nn.Linear(text.shape[1], dim, bias=False)
        self.text_projection.weight.data.copy_(projection)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight, self.padding_idx) + self.text_projection(self.text_table[ids])

    def table(self) -> torch.Tensor:
        """Every row's fused representation, ``[rows, d]``."""
        return self.weight + self.text_projection(self.text_table)


def item_table(model: nn.Module) -> torch.Tensor:
    """The item representations a model scores against: the fused table when text-aware, else the ID table."""
    table = model.item_embedding
    return table.table() if isinstance(table, TextAwareItemEmbedding) else table.weight


def is_text_aware(model: nn.Module) -> bool:
    return isinstance(getattr(model, "item_embedding", None), TextAwareItemEmbedding)


def pca_projection(text: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean [t], components [dim, t])``: the top ``dim`` principal directions of the item texts."""
    mean = text.mean(0)
    centred = text - mean
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    components = vh[:dim].to(text.dtype)
    if components.shape[0] < dim:  # fewer texts (or text dimensions) than hidden units: pad with zeros
        components = torch.cat([components, components.new_zeros(dim - components.shape[0], text.shape[1])])
    return mean, components


def text_rows(text: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows, t]``: item ``i``'s text at row ``i`` (texts are ids 1..n-1), zero at padding and extra rows."""
    out = text.new_zeros(rows, text.shape[1])
    out[1 : text.shape[0] + 1] = text[: rows - 1]
    return out


def apply_item_text(model: nn.Module, mode: str, text: torch.Tensor, num_items: int) -> nn.Module:
    """Make ``model``'s item table text-aware in place (``text``: ``[num_items - 1, t]``, ids 1..n-1).

    ``init`` and ``fusion`` both start from the PCA projection of the texts, scaled to
    the mean row norm of the table's own initialisation.
    """
    if mode not in ITEM_TEXT_MODES:
        raise ConfigurationError(f"item_text is {mode!r}, but it must be one of {', '.join(ITEM_TEXT_MODES)}.")
    if mode == "none":
        return model
    table = getattr(model, "item_embedding", None)
    if not isinstance(model, SASRec) or type(table) is not nn.Embedding:
        raise ConfigurationError(
            f"item_text={mode} needs a SASRec-family model (SASRec, CL4SRec, LUMOS and their federated forms); "
            f"{type(model).__name__} has no plain item table. Drop --item_text or choose such a model."
        )
    if text.shape[0] != num_items - 1:
        raise ValueError(f"{text.shape[0]} item texts for {num_items - 1} items")
    text = text.to(table.weight.device, table.weight.dtype)
    dim = table.weight.shape[1]
    mean, components = pca_projection(text, dim)
    centred = text - mean
    projected = centred @ components.T
    target = table.weight.data[1:num_items].norm(dim=1).mean()
    scale = target / projected.norm(dim=1).mean().clamp(min=1e-12)
    if mode == "init":
        with torch.no_grad():
            table.weight[1:num_items] = projected * scale
        return model
    model.item_embedding = TextAwareItemEmbedding(table, text_rows(centred, table.weight.shape[0]), components * scale)
    return model


def _full_sort_predict(self, interaction):
    """SASRec's full ranking, scored against the fused table."""
    seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
    return seq_output @ item_table(self)[: self.n_items].T


def _calculate_loss(self, interaction):
    """SASRec's prefix-mode loss; with ``CE`` against the fused table."""
    if self.loss_type != "CE":
        return SASRec.calculate_loss(self, interaction)  # BPR reads rows through the table's forward
    seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
    logits = seq_output @ item_table(self)[: self.n_items].T
    return self.loss_fct(logits, interaction[self.POS_ITEM_ID])


_TEXT_AWARE_CLASSES: dict[type, type] = {}


def text_aware_class(base: type) -> type:
    """``base`` with RecBole SASRec's two methods that read ``item_embedding.weight`` directly
    (``full_sort_predict`` and the ``CE`` loss) scoring against the fused table instead.

    Only methods ``base`` inherits unchanged from SASRec are replaced; our models
    (CL4SRec, LUMOS) already score through :func:`item_table`.
    """
    if base not in _TEXT_AWARE_CLASSES:
        namespace = {"__module__": base.__module__, "__doc__": base.__doc__}
        if base.full_sort_predict is SASRec.full_sort_predict:
            namespace["full_sort_predict"] = _full_sort_predict
        if base.calculate_loss is SASRec.calculate_loss:
            namespace["calculate_loss"] = _calculate_loss
        _TEXT_AWARE_CLASSES[base] = type(base.__name__, (base,), namespace)
    return _TEXT_AWARE_CLASSES[base]


def projection_gradient(table_grad: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``P``'s gradient from the fused rows' gradient: ``sum_i g_i t_i^T`` (``[..., rows, d]`` -> ``[..., d, t]``)."""
    return table_grad.transpose(-1, -2) @ text
