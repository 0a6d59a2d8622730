"""One local step for a whole cohort from one packed forward/backward pass.

With ``local_epochs == 1`` every client takes exactly one optimiser step from the
global weights, so its update depends only on its own gradient ``g`` there:

* SGD: ``-lr * g``;
* Adam (``torch.optim.Adam``'s first step): ``m = (1 - b1) g``, ``v = (1 - b2) g^2``,
  ``-lr / (1 - b1) * m / (sqrt(v) / sqrt(1 - b2) + eps)``;
* FedProx's proximal term has zero gradient at the global weights and drops out.

Windows never interact in the forward pass (attention stays inside a window; layer
norm, dropout and the loss are per position), so all the cohort's windows are packed
into ``[W, L]`` batches with no per-client padding. Each position's loss is divided by
its client's number of positions (a client's local loss is the mean over its own
positions) and summed: one backward pass then holds every client's gradient, mixed
only in the weight gradients, which are therefore never formed. Instead (as Opacus
does for per-sample gradients) autograd returns the gradient at the output of every
linear and layer-norm layer, and a client's weight gradient is the sum over its
tokens of ``grad_out^T input``: one matrix product per client. Item-table rows get
per-client gradients too: from the input lookups, the targets and the negatives.

The forward pass is SASRec's (RecBole's ``TransformerEncoder``, as in
:func:`recbole_lumos.model.next_item.all_position_hidden`) written out here so that
it can be cheap on a CPU:

* windows go in chunks of ``CHUNK_WINDOWS`` (the tensors stay small), grouped by
  client, and windows whose targets start late (every window of a long history but
  the first trains only its second half) in chunks of their own;
* query/key/value are one matrix product, and attention works on strided views;
* dropout draws 8 random bits per element (16 when ``p`` is not a multiple of
  1/256) instead of calling ``bernoulli_``, which is ~10x slower on a CPU;
* the last layer only computes what the loss reads: queries from the chunk's first
  target on, and after attention only positions with a target.

Contrastive terms whose negatives stay inside one client also fit: a model may hand
over a block of sequences per client (LUMOS: its anchor and F/R/C views; CL4SRec: two
augmentations of each of its windows) and a per-client loss over their final states.
The blocks go through the same forward pass in chunks of their own, and each client's
term joins its gradient (:func:`_block_chunk_gradients`).

:func:`supports` says which models qualify; others use the vmapped path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward, MultiHeadAttention, TransformerEncoder, TransformerLayer
from torch import nn

from recbole_lumos.model.next_item import LOCAL_LOSSES

CHUNK_WINDOWS = 128
"""Windows per forward/backward pass: small enough that the activations stay in cache."""

_LOOP_SEGMENTS, _LOOP_TOKENS = 8, 100
"""Per-client weight gradients are one matmul per client when a chunk holds at most
``_LOOP_SEGMENTS`` clients or they average ``_LOOP_TOKENS`` tokens, else one per window."""

_GATHER_BELOW = 0.8
"""The last layer runs at the positions with a target only when they are fewer than this share."""

TABLE = "item_embedding.weight"
POSITIONS = "position_embedding.weight"


def _activation(feed_forward: FeedForward):
    act = feed_forward.intermediate_act_fn
    function = getattr(act, "__func__", None)
    if function is FeedForward.gelu:
        return F.gelu  # RecBole's erf form, fused
    if function is FeedForward.swish:
        return F.silu
    if act in (F.relu, torch.tanh, torch.sigmoid):
        return act
    return None


def _layer_names(index: int) -> dict[str, str]:
    prefix = f"trm_encoder.layer.{index}"
    attention, feed_forward = f"{prefix}.multi_head_attention", f"{prefix}.feed_forward"
    return {
        "query": f"{attention}.query",
        "key": f"{attention}.key",
        "value": f"{attention}.value",
        "dense": f"{attention}.dense",
        "norm1": f"{attention}.LayerNorm",
        "dense_1": f"{feed_forward}.dense_1",
        "dense_2": f"{feed_forward}.dense_2",
        "norm2": f"{feed_forward}.LayerNorm",
    }


def supports(model: nn.Module) -> bool:
    """Whether :func:`cohort_gradients` can train ``model``: RecBole's SASRec layout exactly
    (SASRec, our CL4SRec and LUMOS), training on the plain next-item loss, or on it plus a
    per-client loss over the final states of a block of the client's own sequences (the
    model defines ``client_blocks`` and ``client_block_losses``: LUMOS's views, CL4SRec's
    augmented windows). A model with other extra terms says so by defining
    ``all_positions_loss`` without ``plain_next_item_loss`` being true."""
    plain = getattr(model, "plain_next_item_loss", False) or hasattr(model, "client_block_losses")
    if hasattr(model, "all_positions_loss") and not plain:
        return False
    if getattr(type(model), "get_attention_mask", None) is not SequentialRecommender.get_attention_mask:
        return False
    parts = {"item_embedding": nn.Embedding, "position_embedding": nn.Embedding, "LayerNorm": nn.LayerNorm}
    parts |= {"dropout": nn.Dropout, "trm_encoder": TransformerEncoder}
    if any(type(getattr(model, name, None)) is not cls for name, cls in parts.items()):
        return False
    table = model.item_embedding
    if table.max_norm is not None or table.scale_grad_by_freq or table.weight.size(0) < model.n_items:
        return False
    expected = {TABLE, POSITIONS, "LayerNorm.weight", "LayerNorm.bias"}
    for index, layer in enumerate(model.trm_encoder.layer):
        if type(layer) is not TransformerLayer or type(layer.multi_head_attention) is not MultiHeadAttention:
            return False
        if type(layer.feed_forward) is not FeedForward or _activation(layer.feed_forward) is None:
            return False
        expected |= {f"{name}.{p}" for name in _layer_names(index).values() for p in ("weight", "bias")}
    return {name for name, _ in model.named_parameters()} == expected


@dataclass
class CohortGradients:
    """Every client's gradient at the global weights."""

    dense: dict[str, torch.Tensor]
    """Parameter name -> ``[C, *shape]``."""
    sparse: dict[str, tuple[torch.Tensor, torch.Tensor, list[int]]]
    """Table name -> ``(row ids [U], gradient rows [U, d], rows per client)``: client after
    client, each client's row ids sorted."""


# ----------------------------------------------------------------------------- helpers
def _dropout(x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
    """Inverted dropout like ``nn.Dropout``, from 8- or 16-bit random numbers (much faster on CPU)."""
    p = module.p
    if not module.training or p == 0:
        return x
    if p >= 1:
        return x * 0
    # 8 random bits per element when they express 1 - p exactly (p = 0.5, 0.25, ...), else 16.
    bits, dtype = (8, torch.int8) if float(p * 256).is_integer() else (16, torch.int16)
    threshold = round((1 - p) * 2**bits) - 2 ** (bits - 1)  # keep when a signed draw is below it
    if threshold >= 2 ** (bits - 1):  # p below the resolution: nothing is dropped
        return x * (1 / (1 - p))
    words = torch.empty((x.numel() * bits + 63) // 64, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    noise = words.view(dtype)[: x.numel()].view(x.shape)
    keep = torch.empty_like(x)
    torch.lt(noise, threshold, out=keep)
    return x * keep.mul_(1 / (1 - p))


class _Segments:
    """Which client each token belongs to, for per-client sums over a chunk's tokens.

    ``owner`` (sorted) is per token. With ``window_owner`` set, the tokens are whole
    windows (``[W, L']`` flattened) and ``window_owner[w]`` owns window ``w``.
    """

    def __init__(self, owner: torch.Tensor, window_owner: torch.Tensor | None = None) -> None:
        clients, counts = torch.unique_consecutive(owner, return_counts=True)
        self.owner = owner
        self.window_owner = window_owner
        self.clients = clients
        self.counts = counts.tolist()
        self.bounds = [0, *torch.tensor(self.counts).cumsum(0).tolist()]
        self.loop = len(self.counts) <= _LOOP_SEGMENTS or owner.numel() >= _LOOP_TOKENS * len(self.counts)
        self._padded = None

    def _runs(self):
        return zip(self.clients.tolist(), self.bounds[:-1], self.bounds[1:], strict=True)

    def outer(self, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out[c] += grad_c^T x_c`` for every client ``c`` (rows of ``grad``/``x`` are tokens)."""
        if self.loop:  # few clients: one matmul each
            for c, start, end in self._runs():
                out[c].addmm_(grad[start:end].T, x[start:end])
            return
        if self.window_owner is not None:  # many clients: one matmul per window
            windows = self.window_owner.numel()
            per_window = torch.bmm(
                grad.view(windows, -1, grad.size(-1)).transpose(1, 2), x.view(windows, -1, x.size(-1))
            )
            out.index_add_(0, self.window_owner, per_window)
            return
        if self._padded is None:  # many clients, ragged tokens: pad each client's tokens
            segment = torch.repeat_interleave(torch.arange(len(self.counts)), torch.tensor(self.counts))
            slot = torch.arange(self.owner.numel()) - torch.tensor(self.bounds[:-1])[segment]
            self._padded = (segment.to(x.device), slot.to(x.device), max(self.counts))
        segment, slot, longest = self._padded

        def pad(t):
            padded = t.new_zeros(len(self.counts), longest, t.size(-1))
            padded[segment, slot] = t
            return padded

        every = torch.arange(out.size(0), device=self.clients.device)
        if self.clients.numel() == out.size(0) and torch.equal(self.clients, every):
            # every client of ``out`` is here, in order: accumulate in place (with a full-softmax
            # item table this saves a [clients, items, d] temporary and a pass over it)
            out.baddbmm_(pad(grad).transpose(1, 2), pad(x))
            return
        out.index_add_(0, self.clients, torch.bmm(pad(grad).transpose(1, 2), pad(x)))

    def sum(self, value: torch.Tensor, out: torch.Tensor) -> None:
        """``out[c] += sum of value over c's tokens``."""
        if self.window_owner is not None:
            windows = self.window_owner.numel()
            out.index_add_(0, self.window_owner, value.view(windows, -1, *value.shape[1:]).sum(1))
        else:
            out.index_add_(0, self.owner, value)


class _Accumulator:
    """Per-client dense gradients and sparse ``(client * rows + row, gradient)`` entries."""

    def __init__(self, params: Mapping[str, torch.Tensor], num_clients: int) -> None:
        self.params = params
        self.num_clients = num_clients
        self.dense: dict[str, torch.Tensor] = {}
        self.entries: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def get(self, name: str, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.dense:
            self.dense[name] = like.new_zeros(self.num_clients, *shape)
        return self.dense[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name, self.params[name], self.params[name].shape)

    def rows(self, name: str, clients: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None) -> None:
        """Row ``ids[i]`` of client ``clients[i]`` gets ``values[i]`` (zeros if ``None``: touched only)."""
        keys = (clients * self.params[name].size(0) + ids).flatten()
        if values is None:
            values = self.params[name].new_zeros(keys.numel(), self.params[name].size(1))
        self.entries.setdefault(name, []).append((keys, values.reshape(keys.numel(), self.params[name].size(1))))


# ----------------------------------------------------------------------- forward pass
class _Linear:
    """A linear layer's call: per-client weight gradients from its input and output gradient."""

    def __init__(self, name: str, x: torch.Tensor, out: torch.Tensor, segments: _Segments) -> None:
        self.name, self.x, self.out, self.segments = name, x, out, segments

    def accumulate(self, grad: torch.Tensor, acc: _Accumulator) -> None:
        features = (grad.size(-1), self.x.size(-1))
        self.segments.outer(grad, self.x, acc.get(f"{self.name}.weight", grad, features))
        self.segments.sum(grad, acc.get(f"{self.name}.bias", grad, features[:1]))


class _Norm:
    """A layer norm's call: per-client weight gradients from its input and output gradient."""

    def __init__(self, name: str, module: nn.LayerNorm, x: torch.Tensor, out: torch.Tensor, segments) -> None:
        self.name, self.module, self.x, self.out, self.segments = name, module, x, out, segments

    def accumulate(self, grad: torch.Tensor, acc: _Accumulator) -> None:
        normalised = F.layer_norm(self.x, self.module.normalized_shape, None, None, self.module.eps)
        self.segments.sum(grad * normalised, acc[f"{self.name}.weight"])
        self.segments.sum(grad, acc[f"{self.name}.bias"])


def _linear(name, weight, bias, x, segments, records):
    out = F.linear(x, weight, bias)
    records.append(_Linear(name, x, out, segments))
    return out


def _norm(name, module, params, x, segments, records):
    out = F.layer_norm(x, module.normalized_shape, params[f"{name}.weight"], params[f"{name}.bias"], module.eps)
    records.append(_Norm(name, module, x, out, segments))
    return out


def _fused_name(index: int) -> str:
    return f"trm_encoder.layer.{index}.multi_head_attention.query_key_value"


def _weights(params, name):
    return params[f"{name}.weight"], params[f"{name}.bias"]


@dataclass
class _Plan:
    """What a chunk's last layer computes: only what the loss reads."""

    start: int
    """Queries from this position on: no window of the chunk has a target before it."""
    tokens: _Segments
    """The last layer's tokens: positions ``start..L-1`` of every window."""
    kept: torch.Tensor
    """Indices of those tokens that have a target."""
    kept_owner: torch.Tensor
    gathered: _Segments | None
    """Set when the last layer after attention runs at the kept tokens only."""


def _plan(targets: torch.Tensor, owner: torch.Tensor) -> _Plan:
    windows, length = targets.shape
    has = targets > 0
    first = torch.where(has.any(1), has.to(torch.uint8).argmax(1), length)
    start = min(int(first.min()), length - 1)
    suffix = has[:, start:].reshape(-1)
    kept = suffix.nonzero().flatten()
    token_owner = owner.repeat_interleave(length - start)
    kept_owner = token_owner[kept]
    gathered = _Segments(kept_owner) if kept.numel() < _GATHER_BELOW * suffix.numel() else None
    return _Plan(start, _Segments(token_owner, owner), kept, kept_owner, gathered)


def _hidden(model, params, fused, inputs, tokens, plan, records):
    """States at the kept positions (``[P, d]``) and the input-embedding leaf ``[W, L, d]``."""
    windows, length = inputs.shape
    embedded = (params[TABLE][inputs] + params[POSITIONS][:length]).requires_grad_()
    h = _norm("LayerNorm", model.LayerNorm, params, embedded.view(windows * length, -1), tokens, records)
    h = _dropout(h, model.dropout)
    nz = inputs != 0
    if bool((nz[:, 1:] <= nz[:, :-1]).all()):
        # Padding only at the end: for a real position the causal mask is RecBole's mask.
        mask = torch.full((length, length), -10000.0, device=inputs.device).triu_(1)
    else:  # [W, 1, L, L] -> [W, L, L]: the same for every head
        mask = model.get_attention_mask(inputs).squeeze(1)
    layers = model.trm_encoder.layer
    if not layers:
        return h.view(windows, length, -1)[:, plan.start :].reshape(-1, h.size(-1))[plan.kept], embedded
    for index, layer in enumerate(layers):
        names = _layer_names(index)
        attention, feed_forward = layer.multi_head_attention, layer.feed_forward
        heads, size = attention.num_attention_heads, attention.attention_head_size
        last = index == len(layers) - 1
        start = plan.start if last else 0  # nothing reads the last layer before the first target
        qkv = _linear(_fused_name(index), *fused[index], h, tokens, records)
        parts = qkv.view(windows, length, 3 * heads, size).unbind(2)  # strided views, no copies
        context = []
        for head in range(heads):
            q, k, v = parts[head][:, start:], parts[heads + head], parts[2 * heads + head]
            scores = torch.baddbmm(
                mask[..., start:, :], q, k.transpose(1, 2), alpha=1 / attention.sqrt_attention_head_size
            )
            probs = _dropout(torch.softmax(scores, dim=-1), attention.attn_dropout)
            context.append(torch.bmm(probs, v))
        context = torch.cat(context, dim=-1).view(-1, heads * size)
        segments = tokens
        if last:
            if start > 0:
                h = h.view(windows, length, -1)[:, start:].reshape(-1, h.size(-1))
            segments = plan.tokens
            if plan.gathered is not None:  # nor at positions without a target
                context, h, segments = context[plan.kept], h[plan.kept], plan.gathered
        out = _linear(names["dense"], *_weights(params, names["dense"]), context, segments, records)
        out = _dropout(out, attention.out_dropout)
        h = _norm(names["norm1"], attention.LayerNorm, params, out + h, segments, records)
        inner = _linear(names["dense_1"], *_weights(params, names["dense_1"]), h, segments, records)
        inner = _activation(feed_forward)(inner)
        out = _linear(names["dense_2"], *_weights(params, names["dense_2"]), inner, segments, records)
        out = _dropout(out, feed_forward.dropout)
        h = _norm(names["norm2"], feed_forward.LayerNorm, params, out + h, segments, records)
    return (h if plan.gathered is not None else h[plan.kept]), embedded


# --------------------------------------------------------------------------- the loss
def _losses(hidden, targets, item_weights, kind, negatives):
    """``next_item_loss``'s per-position losses at the kept positions.

    Returns the losses, the per-position leaves ``[(ids, rows)]`` gathered from the item
    table, and the logits of shared candidates (all items for ``ce``, the shared
    negatives for ``sampled_ce``) whose gradients are summed per client against ``hidden``.
    """
    if kind == "ce":
        logits = hidden @ item_weights.T
        return F.cross_entropy(logits, targets, reduction="none"), [], logits
    target_rows = item_weights[targets].requires_grad_()
    pos = (hidden * target_rows).sum(-1)
    if kind == "sampled_ce":
        # -log_softmax([pos, neg])[0] (uniform negatives: no log-Q shift, see next_item_loss); accidental
        # hits removed.
        neg = hidden @ item_weights[negatives].T
        hit = torch.isin(targets, negatives).nonzero().flatten()  # the few positions with accidental hits
        if hit.numel():
            row, column = (negatives == targets[hit].unsqueeze(-1)).nonzero(as_tuple=True)
            neg.index_put_((hit[row], column), neg.new_tensor(float("-inf")))
        losses = torch.logsumexp(torch.cat([pos.unsqueeze(-1), neg], -1), -1) - pos
        return losses, [(targets, target_rows)], neg
    negative_rows = item_weights[negatives].requires_grad_()
    neg = (hidden * negative_rows).sum(-1)
    losses = F.softplus(-pos) + F.softplus(neg)
    return losses, [(targets, target_rows), (negatives, negative_rows)], None


def _chunk_gradients(model, params, fused, inputs, targets, owner, kind, negatives, positions, acc, shared):
    """Add one chunk of windows' per-client gradients to ``acc`` (and ``shared``: candidate rows)."""
    windows, length = inputs.shape
    token_owner = owner.repeat_interleave(length)
    tokens = _Segments(token_owner, owner)
    plan = _plan(targets, owner)
    ids = inputs.reshape(-1)
    if kind == "bce":  # negatives at positions without a target are touched all the same
        skipped = targets.reshape(-1) == 0
        acc.rows(TABLE, token_owner[skipped], negatives.reshape(-1)[skipped], None)
    if plan.kept.numel() == 0:  # nothing to learn: the inputs are touched, that is all
        acc.rows(TABLE, token_owner, ids, None)
        return
    records: list = []
    with torch.enable_grad():
        hidden, embedded = _hidden(model, params, fused, inputs, tokens, plan, records)
        item_weights = params[TABLE][: model.n_items]
        kept_targets = targets[:, plan.start :].reshape(-1)[plan.kept]
        if kind == "bce":
            negatives = negatives[:, plan.start :].reshape(-1)[plan.kept]
        losses, leaves, logits = _losses(hidden, kept_targets, item_weights, kind, negatives)
        total = (losses / positions[plan.kept_owner]).sum()
        wrt = [embedded, *(r.out for r in records), *(rows for _, rows in leaves)]
        wrt += [logits] if logits is not None else []
        grads = list(torch.autograd.grad(total, wrt, allow_unused=True))

    with torch.no_grad():  # the per-client sums read activations that are part of the graph
        _add_layer_gradients(model, grads, records, inputs, owner, token_owner, acc)
        for leaf_ids, _ in leaves:
            acc.rows(TABLE, plan.kept_owner, leaf_ids, grads.pop(0))
        if logits is not None:
            (plan.gathered or _Segments(plan.kept_owner)).outer(grads[0], hidden, shared)


def _add_layer_gradients(model, grads, records, inputs, owner, token_owner, acc):
    """Per-client sums of the input-embedding gradient (``grads[0]``, popped) and of every
    recorded layer's weight gradient (popped in order)."""
    windows, length = inputs.shape
    ids = inputs.reshape(-1)
    grad_embedded = grads.pop(0).view(windows * length, -1)
    acc[POSITIONS][:, :length].index_add_(0, owner, grad_embedded.view(windows, length, -1))
    padding = model.item_embedding.padding_idx
    if padding is not None and bool((ids == padding).any()):  # nn.Embedding never updates padding
        grad_embedded = grad_embedded * (ids != padding).unsqueeze(-1)
    acc.rows(TABLE, token_owner, ids, grad_embedded)
    for record in records:
        grad = grads.pop(0)
        if grad is not None:
            record.accumulate(grad, acc)


def _block_chunk_gradients(model, params, fused, blocks, owner, block_losses, acc):
    """Add one chunk of clients' sequence-block gradients to ``acc``.

    ``blocks`` is ``[k, R, L]`` (one block per client, rows right padded), ``owner[i]`` the
    client of block ``i``. Every row is encoded like ``SASRec.forward`` (the state at its
    last item) and ``block_losses([k, R, d] states, blocks)`` gives each client's own loss.
    """
    clients, rows, length = blocks.shape
    inputs = blocks.reshape(clients * rows, length)
    window_owner = owner.repeat_interleave(rows)
    token_owner = window_owner.repeat_interleave(length)
    last = ((inputs > 0).sum(1) - 1).clamp(min=0)  # SASRec.forward reads position len - 1 (0 if empty)
    marks = torch.zeros_like(inputs)
    marks[torch.arange(inputs.size(0), device=inputs.device), last] = 1
    plan = _plan(marks, window_owner)  # one kept position per row, in row order
    records: list = []
    with torch.enable_grad():
        hidden, embedded = _hidden(model, params, fused, inputs, _Segments(token_owner, window_owner), plan, records)
        total = block_losses(hidden.view(clients, rows, -1), blocks).sum()
        grads = list(torch.autograd.grad(total, [embedded, *(r.out for r in records)], allow_unused=True))
    with torch.no_grad():
        _add_layer_gradients(model, grads, records, inputs, window_owner, token_owner, acc)


def cohort_gradients(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    owner: torch.Tensor,
    num_clients: int,
    kind: str,
    negatives: torch.Tensor | None,
    sparse_tables: tuple[str, ...] = (),
    chunk_windows: int | None = None,
    blocks: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_losses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    always_rows: torch.Tensor | None = None,
) -> CohortGradients:
    """Every client's gradient of its mean all-position loss at ``params``.

    With ``blocks = (sequences [K, R, L], owner [K])`` and ``block_losses`` (``[K, R, d]``
    final states and the sequences -> ``[K]`` losses, already weighted), client
    ``owner[k]``'s loss also has a term over its own block ``k``: LUMOS's views, CL4SRec's
    augmented windows.

    ``inputs``/``targets`` are the cohort's packed ``[W, L]`` windows, ``owner[w]`` the
    client of window ``w``; ``negatives`` are shared ``[K]`` ids (``sampled_ce``) or one
    per position (``bce``). Tables in ``sparse_tables`` come back as per-client rows:
    exactly the rows a client touches (ids > 0), plus any other row with a non-zero
    gradient, plus ``always_rows`` (the model's special rows, e.g. a mask token). ``model``
    must satisfy :func:`supports`; its weights are not used.
    """
    if kind not in LOCAL_LOSSES:
        raise ValueError(f"local_loss must be one of {LOCAL_LOSSES}, got {kind!r}")
    if kind == "sampled_ce" and (negatives is None or negatives.dim() != 1):
        raise ValueError("sampled_ce needs a shared 1-d tensor of negative item ids")
    if kind == "bce" and (negatives is None or negatives.shape != targets.shape):
        raise ValueError("bce needs one negative item per position (same shape as targets)")
    if kind == "ce":  # the full softmax reaches every row
        sparse_tables = tuple(name for name in sparse_tables if name != TABLE)
    # Windows by owner, those whose first target is late in the window apart (their chunks
    # skip the early queries of the last layer).
    length = inputs.size(1)
    has = targets > 0
    late = has.any(1) & (has.to(torch.uint8).argmax(1) >= length // 2)
    order = torch.argsort(late.long() * num_clients + owner, stable=True)
    inputs, targets, owner = inputs[order], targets[order], owner[order]
    negatives = negatives[order] if kind == "bce" else negatives
    groups = [0, int((~late).sum()), owner.numel()]
    positions = targets.new_zeros(num_clients, dtype=params[TABLE].dtype)
    positions = positions.index_add_(0, owner, (targets > 0).sum(1).to(positions.dtype)).clamp_(min=1)
    layers = range(len(model.trm_encoder.layer))
    fused = []
    for index in layers:
        names = _layer_names(index)
        parts = [_weights(params, names[part]) for part in ("query", "key", "value")]
        fused.append((torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])))

    acc = _Accumulator(params, num_clients)
    n_items, dim = model.n_items, params[TABLE].size(1)
    shared = None
    if kind == "ce":
        shared = acc[TABLE][:, :n_items]
    elif kind == "sampled_ce":
        shared = params[TABLE].new_zeros(num_clients, negatives.numel(), dim)
    chunk_windows = chunk_windows or CHUNK_WINDOWS
    for begin, end in zip(groups[:-1], groups[1:], strict=True):
        for start in range(begin, end, chunk_windows):
            window = slice(start, min(start + chunk_windows, end))
            chunk_negatives = negatives[window] if kind == "bce" else negatives
            _chunk_gradients(
                model, params, fused, inputs[window], targets[window], owner[window], kind, chunk_negatives,
                positions, acc, shared,
            )  # fmt: skip
    if blocks is not None:
        if block_losses is None:
            raise ValueError("blocks need block_losses")
        sequences, block_owner = blocks
        per_chunk = max(1, chunk_windows // max(1, sequences.size(1)))
        for start in range(0, sequences.size(0), per_chunk):
            part = slice(start, min(start + per_chunk, sequences.size(0)))
            _block_chunk_gradients(model, params, fused, sequences[part], block_owner[part], block_losses, acc)
    if always_rows is not None and always_rows.numel():
        clients = torch.arange(num_clients, device=owner.device).unsqueeze(1).expand(-1, always_rows.numel())
        acc.rows(TABLE, clients, always_rows.to(owner.device).unsqueeze(0).expand_as(clients), None)
    if kind == "sampled_ce":  # every client touches all the shared negatives
        clients = torch.arange(num_clients, device=owner.device).unsqueeze(1).expand(-1, negatives.numel())
        acc.rows(TABLE, clients, negatives.unsqueeze(0).expand_as(clients), shared)

    dense = acc.dense
    for index in layers:  # split query/key/value
        names = _layer_names(index)
        for p in ("weight", "bias"):
            fused_grad = dense.pop(f"{_fused_name(index)}.{p}", None)
            if fused_grad is not None:
                for part, grad in zip(("query", "key", "value"), fused_grad.chunk(3, dim=1), strict=True):
                    dense[f"{names[part]}.{p}"] = grad
    sparse = {}
    for name, parts in acc.entries.items():
        keys = torch.cat([k for k, _ in parts])
        values = torch.cat([v for _, v in parts])
        rows = params[name].size(0)
        if name in sparse_tables:
            sparse[name] = _sparse_rows(keys, values, rows, num_clients)
        else:
            acc[name].view(num_clients * rows, -1).index_add_(0, keys, values)
    for name, value in params.items():  # anything the pass never reached
        if name in sparse_tables and name not in sparse:
            sparse[name] = (owner.new_zeros(0), value.new_zeros(0, *value.shape[1:]), [0] * num_clients)
        elif name not in sparse_tables and name not in dense:
            dense[name] = value.new_zeros(num_clients, *value.shape)
    return CohortGradients(dense=dense, sparse=sparse)


def _sparse_rows(keys, values, rows, num_clients):
    """Sum ``values`` by ``(client, row)`` key; per client, the sorted rows it touched."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    summed = values.new_zeros(unique.numel(), values.size(-1)).index_add_(0, inverse, values)
    row = unique % rows
    keep = (row > 0) | (summed != 0).any(-1)  # id 0 is padding: sent only if it moved
    unique, row, summed = unique[keep], row[keep], summed[keep]
    counts = torch.bincount(unique // rows, minlength=num_clients).tolist()
    return row, summed, counts


def first_step(grad: torch.Tensor, optimizer: str, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """The parameter change of ``torch.optim.SGD``/``Adam``'s first step from gradient ``grad``
    (computed in place: ``grad`` is overwritten and returned)."""
    if optimizer == "sgd":
        return grad.mul_(-lr)
    b1, b2 = betas
    denom = torch.mul(grad, grad).mul_(1 - b2).sqrt_().div_(math.sqrt(1 - b2)).add_(eps)  # sqrt(v_hat) + eps
    return grad.mul_(1 - b1).div_(denom).mul_(-lr / (1 - b1))  # -lr * m_hat / denom
