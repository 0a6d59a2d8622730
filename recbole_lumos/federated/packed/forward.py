"""SASRec's forward pass written out for the packed cohort path, and which models it fits.

The forward pass is SASRec's (RecBole's ``TransformerEncoder``, as in
:func:`recbole_lumos.model.next_item.all_position_hidden`) written out here so that
every linear and layer-norm call is recorded for the per-client gradient sums
(:mod:`~recbole_lumos.federated.packed.per_client`) and so that it can be cheap on a CPU:

* query/key/value are one matrix product, and attention works on strided views;
* dropout draws 8 random bits per element (16 when ``p`` is not a multiple of
  1/256) instead of calling ``bernoulli_``, which is ~10x slower on a CPU;
* the last layer only computes what the loss reads: queries from the chunk's first
  target on, and after attention only positions with a target (:func:`_plan`).

Windows never interact in it (attention stays inside a window; layer norm, dropout
and the loss are per position), which is what lets a whole cohort share one pass.
:func:`supports` says which models qualify; others are trained one by one on their own
weights (:meth:`~recbole_lumos.federated.local_update.LocalTrainer.train_functional`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward, MultiHeadAttention, TransformerEncoder, TransformerLayer
from torch import nn

from recbole_lumos.federated import packed
from recbole_lumos.federated.packed.per_client import _Linear, _Norm, _Segments
from recbole_lumos.model.item_text import PROJECTION, TextAwareItemEmbedding, is_text_aware

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
    """Whether :func:`~recbole_lumos.federated.packed.gradients.cohort_gradients` can train
    ``model``: RecBole's SASRec layout exactly (SASRec, our CL4SRec and LUMOS), training on
    the plain next-item loss, or on it plus a per-client loss over the final states of a
    block of the client's own sequences (the model defines ``client_blocks`` and
    ``client_block_losses``: LUMOS's views, CL4SRec's augmented windows). A model with
    other extra terms says so by defining ``all_positions_loss`` without
    ``plain_next_item_loss`` being true."""
    plain = getattr(model, "plain_next_item_loss", False) or hasattr(model, "client_block_losses")
    if hasattr(model, "all_positions_loss") and not plain:
        return False
    if getattr(type(model), "get_attention_mask", None) is not SequentialRecommender.get_attention_mask:
        return False
    parts = {"item_embedding": nn.Embedding, "position_embedding": nn.Embedding, "LayerNorm": nn.LayerNorm}
    parts |= {"dropout": nn.Dropout, "trm_encoder": TransformerEncoder}
    if is_text_aware(model):  # the item table may carry item texts (model/item_text.py)
        parts["item_embedding"] = TextAwareItemEmbedding
    if any(type(getattr(model, name, None)) is not cls for name, cls in parts.items()):
        return False
    table = model.item_embedding
    if table.max_norm is not None or table.scale_grad_by_freq or table.weight.size(0) < model.n_items:
        return False
    expected = {TABLE, POSITIONS, "LayerNorm.weight", "LayerNorm.bias"}
    expected |= {PROJECTION} if is_text_aware(model) else set()
    for index, layer in enumerate(model.trm_encoder.layer):
        if type(layer) is not TransformerLayer or type(layer.multi_head_attention) is not MultiHeadAttention:
            return False
        if type(layer.feed_forward) is not FeedForward or _activation(layer.feed_forward) is None:
            return False
        expected |= {f"{name}.{p}" for name in _layer_names(index).values() for p in ("weight", "bias")}
    return {name for name, _ in model.named_parameters()} == expected


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
    gathered = _Segments(kept_owner) if kept.numel() < packed._GATHER_BELOW * suffix.numel() else None
    return _Plan(start, _Segments(token_owner, owner), kept, kept_owner, gathered)


def _batch_heads(qkv: torch.Tensor) -> bool:
    """``packed.BATCH_HEADS``: ``auto`` batches the attention heads off the CPU (one kernel for all heads, no
    Python loop between launches) and keeps the per-head loop on a CPU, where both cost the same (1.33 and
    1.34 CPU s for a 512-client ml-100k round, two heads)."""
    setting = packed.BATCH_HEADS
    return qkv.device.type != "cpu" if setting == "auto" else bool(setting)


def _attention_all_heads(qkv, mask, windows, length, heads, size, start, attention):
    """Every head's attention in one batched product: the same maths as the per-head loop."""
    q, k, v = qkv.view(windows, length, 3, heads, size).permute(2, 0, 3, 1, 4).unbind(0)  # [W, H, L, S] each
    q = q[:, :, start:]
    rows = length - start
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1 / attention.sqrt_attention_head_size)
    scores = scores + mask[..., start:, :].unsqueeze(-3)  # [L', L] or [W, L', L] -> broadcast over heads
    probs = _dropout(torch.softmax(scores, dim=-1), attention.attn_dropout)
    context = torch.matmul(probs, v)  # [W, H, L', S]
    return context.permute(0, 2, 1, 3).reshape(windows * rows, heads * size)


def _hidden(model, params, fused, inputs, tokens, plan, records):
    """States at the kept positions (``[P, d]``) and the input-embedding leaf ``[W, L, d]``."""
    windows, length = inputs.shape
    embedded = (params[TABLE][inputs] + params[POSITIONS][:length]).requires_grad_()
    h = _norm("LayerNorm", model.LayerNorm, params, embedded.view(windows * length, -1), tokens, records)
    h = _dropout(h, model.dropout)
    nz = inputs != 0
    if nz.device.type == "cpu" and bool((nz[:, 1:] <= nz[:, :-1]).all()):  # (elsewhere: no host sync)
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
        if _batch_heads(qkv):
            context = _attention_all_heads(qkv, mask, windows, length, heads, size, start, attention)
        else:
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
