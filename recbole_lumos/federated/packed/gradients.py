"""Every client's gradient at the global weights from packed forward/backward passes.

Windows never interact in the forward pass (attention stays inside a window; layer
norm, dropout and the loss are per position), so all the cohort's windows are packed
into ``[W, L]`` batches with no per-client padding. Each position's loss is divided by
its client's number of positions (a client's local loss is the mean over its own
positions) and summed: one backward pass then holds every client's gradient, mixed
only in the weight gradients, which are therefore never formed; they are summed per
client from layer inputs and output gradients
(:mod:`~recbole_lumos.federated.packed.per_client`). Item-table rows get per-client
gradients too: from the input lookups, the targets and the negatives.

Windows go in chunks of ``CHUNK_WINDOWS`` (the tensors stay small), grouped by client,
and windows whose targets start late (every window of a long history but the first
trains only its second half) in chunks of their own.

Contrastive terms whose negatives stay inside one client also fit: a model may hand
over a block of sequences per client (LUMOS: its anchor and F/R/C views; CL4SRec: two
augmentations of each of its windows) and a per-client loss over their final states.
The blocks go through the same forward pass in chunks of their own, and each client's
term joins its gradient (:func:`_block_chunk_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from recbole_lumos.federated import packed
from recbole_lumos.federated.packed.forward import POSITIONS, TABLE, _fused_name, _hidden, _layer_names, _plan, _weights
from recbole_lumos.federated.packed.losses import full_softmax_gradient, position_losses
from recbole_lumos.federated.packed.per_client import _Accumulator, _Segments
from recbole_lumos.model.item_text import PROJECTION, is_text_aware, projection_gradient
from recbole_lumos.model.next_item import LOCAL_LOSSES


@dataclass
class CohortGradients:
    """Every client's gradient at the global weights."""

    dense: dict[str, torch.Tensor]
    """Parameter name -> ``[C, *shape]``."""
    sparse: dict[str, tuple[torch.Tensor, torch.Tensor, list[int]]]
    """Table name -> ``(row ids [U], gradient rows [U, d], rows per client)``: client after
    client, each client's row ids sorted."""


def _chunk_gradients(model, params, fused, inputs, targets, owner, kind, negatives, scale, acc, shared):
    """Add one chunk of windows' per-client gradients to ``acc`` (and ``shared``: candidate rows);
    ``scale[w]`` weighs every loss of window ``w``."""
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
        weights = scale.repeat_interleave(length - plan.start)[plan.kept]
        if kind == "ce":  # the logits' gradient in closed form; the encoder's by autograd from it
            logits_grad = full_softmax_gradient(hidden.detach(), kept_targets, item_weights.detach(), weights)
            total, leaves, logits = (hidden * (logits_grad @ item_weights.detach())).sum(), [], logits_grad
        else:
            losses, leaves, logits = position_losses(hidden, kept_targets, item_weights, kind, negatives)
            total = (losses * weights).sum()
        wrt = [embedded, *(r.out for r in records), *(rows for _, rows in leaves)]
        wrt += [logits] if logits is not None and kind != "ce" else []
        grads = list(torch.autograd.grad(total, wrt, allow_unused=True))
        if kind == "ce":
            grads.append(logits_grad)

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
    # nn.Embedding never updates padding; off the CPU, mask without asking (no host sync)
    if padding is not None and (ids.device.type != "cpu" or bool((ids == padding).any())):
        grad_embedded = grad_embedded * (ids != padding).unsqueeze(-1)
    acc.rows(TABLE, token_owner, ids, grad_embedded)
    for record in records:
        grad = grads.pop(0)
        if grad is not None:
            record.accumulate(grad, acc)


def _block_chunk_gradients(model, params, fused, blocks, owner, block_losses, acc, items=None):
    """Add one chunk of clients' sequence-block gradients to ``acc``.

    ``blocks`` is ``[k, R, L]`` (one block per client, rows right padded), ``owner[i]`` the
    client of block ``i``. Every row is encoded like ``SASRec.forward`` (the state at its
    last item) and ``block_losses([k, R, d] states, blocks)`` gives each client's own loss;
    with ``items`` (``[k, n]`` ids) the loss also reads those item-table rows
    (``block_losses(states, blocks, rows [k, n, d])``) and they get per-client gradients.
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
        states = hidden.view(clients, rows, -1)
        if items is None:
            total, leaves = block_losses(states, blocks).sum(), []
        else:
            leaves = [params[TABLE][items].detach().requires_grad_()]
            total = block_losses(states, blocks, leaves[0]).sum()
        wrt = [embedded, *(r.out for r in records), *leaves]
        grads = list(torch.autograd.grad(total, wrt, allow_unused=True))
    with torch.no_grad():
        _add_layer_gradients(model, grads, records, inputs, window_owner, token_owner, acc)
        if items is not None:
            acc.rows(TABLE, owner.repeat_interleave(items.size(1)), items.reshape(-1), grads.pop(0))


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
    window_scale: torch.Tensor | None = None,
    block_items: torch.Tensor | None = None,
) -> CohortGradients:
    """Every client's gradient of its mean all-position loss at ``params``.

    With ``blocks = (sequences [K, R, L], owner [K])`` and ``block_losses`` (``[K, R, d]``
    final states and the sequences -> ``[K]`` losses, already weighted), client
    ``owner[k]``'s loss also has a term over its own block ``k``: LUMOS's views, CL4SRec's
    augmented windows; ``block_items`` (``[K, n]`` ids) are item rows that term reads
    directly (LUMOS's item-level negatives).

    Each client's loss is the mean over its own positions unless ``window_scale`` (``[W]``)
    gives every window's weight (LUMOS's view windows: a second mean, weighted).

    ``inputs``/``targets`` are the cohort's packed ``[W, L]`` windows, ``owner[w]`` the
    client of window ``w``; ``negatives`` are shared ``[K]`` ids (``sampled_ce``) or one
    per position (``bce``). Tables in ``sparse_tables`` come back as per-client rows:
    exactly the rows a client touches (ids > 0), plus any other row with a non-zero
    gradient, plus ``always_rows`` (the model's special rows, e.g. a mask token). ``model``
    must satisfy :func:`supports`; its weights are not used.
    """
    if kind not in LOCAL_LOSSES:
        raise ValueError(f"local_loss must be one of {LOCAL_LOSSES}, got {kind!r}")
    text = model.item_embedding.text_table if is_text_aware(model) else None
    if text is not None:  # the pass runs on the fused table; P's gradient follows from its rows' (below)
        with torch.no_grad():
            params = {**params, TABLE: params[TABLE] + text @ params[PROJECTION].T}
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
    positions = targets.new_zeros(num_clients, dtype=params[TABLE].dtype)
    positions = positions.index_add_(0, owner, (targets > 0).sum(1).to(positions.dtype)).clamp_(min=1)
    window_scale = (1 / positions[owner] if window_scale is None else window_scale.to(positions.dtype))[order]
    inputs, targets, owner = inputs[order], targets[order], owner[order]
    negatives = negatives[order] if kind == "bce" else negatives
    groups = [0, int((~late).sum()), owner.numel()]
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
    if not chunk_windows:
        chunk_windows = packed.CHUNK_WINDOWS if inputs.device.type == "cpu" else packed.CHUNK_WINDOWS_GPU
    for begin, end in zip(groups[:-1], groups[1:], strict=True):
        for start in range(begin, end, chunk_windows):
            window = slice(start, min(start + chunk_windows, end))
            chunk_negatives = negatives[window] if kind == "bce" else negatives
            _chunk_gradients(
                model, params, fused, inputs[window], targets[window], owner[window], kind, chunk_negatives,
                window_scale[window], acc, shared,
            )  # fmt: skip
    if blocks is not None:
        if block_losses is None:
            raise ValueError("blocks need block_losses")
        sequences, block_owner = blocks
        per_chunk = max(1, chunk_windows // max(1, sequences.size(1)))
        for start in range(0, sequences.size(0), per_chunk):
            part = slice(start, min(start + per_chunk, sequences.size(0)))
            items = None if block_items is None else block_items[part]
            _block_chunk_gradients(model, params, fused, sequences[part], block_owner[part], block_losses, acc, items)
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
    if text is not None:
        dense[PROJECTION] = _projection_gradients(dense, sparse, text, num_clients)
    return CohortGradients(dense=dense, sparse=sparse)


def _projection_gradients(dense, sparse, text, num_clients):
    """Each client's gradient of the text projection ``P`` (``[C, d, t]``): the fused table is
    ``E = ID + T P^T``, so ``grad P = grad E^T T`` over the rows the client's loss reached."""
    if TABLE in dense:
        return projection_gradient(dense[TABLE], text)
    rows, grads, counts = sparse[TABLE]
    out = grads.new_zeros(num_clients, grads.size(1), text.size(1))
    start = 0
    for client, count in enumerate(counts):
        if count:
            part = slice(start, start + count)
            out[client] = projection_gradient(grads[part], text[rows[part]])
        start += count
    return out


def _sparse_rows(keys, values, rows, num_clients):
    """Sum ``values`` by ``(client, row)`` key; per client, the sorted rows it touched."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    summed = values.new_zeros(unique.numel(), values.size(-1)).index_add_(0, inverse, values)
    row = unique % rows
    keep = (row > 0) | (summed != 0).any(-1)  # id 0 is padding: sent only if it moved
    unique, row, summed = unique[keep], row[keep], summed[keep]
    counts = torch.bincount(unique // rows, minlength=num_clients).tolist()
    return row, summed, counts
