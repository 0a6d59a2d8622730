"""Item-text embeddings: the space in which views are built and answers are grounded.

Every catalogue item's text is embedded once by the generator's own language model:
the hidden states after its first ``lumos_embed_layers`` layers, mean-pooled over the
tokens and L2-normalised. The model is not loaded twice: a forward hook stops it
after the last layer we need (a truncated *view* of the same weights), so the cost
is ``layers / num_layers`` of a forward pass and the LM head is never run. With
``lumos_item_encoder`` a separate sentence encoder (``AutoModel``, mean pooling)
replaces the language model for this job.

The embeddings are cached as ``.npy`` beside the views, keyed by model, adapter,
layers, max tokens and a hash of the texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_lumos.errors import LanguageModelError
from recbole_lumos.generation.language_model import _first_line, generator_device, model_identity
from recbole_lumos.generation.settings import GeneratorSettings

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the hook on the last needed layer: the rest of the model is skipped."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The stack of transformer blocks of a causal LM or encoder (``layers``, ``h``, ``layer`` or ``blocks``)."""
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "encoder", None), getattr(base, "decoder", None)):
        for name in ("layers", "h", "layer", "blocks"):
            stack = getattr(holder, name, None) if holder is not None else None
            if isinstance(stack, torch.nn.ModuleList) and len(stack) > 0:
                return stack
    return None


class TextEncoder:
    """Mean-pooled, L2-normalised hidden states of the first ``layers`` blocks of ``model``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        layers: int | None,
        max_tokens: int,
        batch_size: int,
        final_norm: bool = True,
    ) -> None:
        self.model = model
        self.base = getattr(model, "base_model", model)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        stack = decoder_layers(model)
        self.stop_layer = None
        if layers is not None and stack is not None and layers < len(stack):
            self.stop_layer = stack[layers - 1]
        # The final RMSNorm/LayerNorm of a decoder puts every token on the same scale before pooling,
        # so a few huge-activation channels do not dominate the cosine similarity.
        self.norm = getattr(self.base, "norm", None) if final_norm and self.stop_layer is not None else None
        self.dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.stop_layer is None:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.stop_layer.register_forward_hook(hook)
        try:
            self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        hidden = captured[0]
        return self.norm(hidden) if self.norm is not None else hidden

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """``[len(texts), dim]`` float32, unit rows; texts are batched by length to waste no padding."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, add_special_tokens=True)[
            "input_ids"
        ]
        ids = [seq if seq else [self.tokenizer.pad_token_id] for seq in ids]
        order = np.argsort([len(seq) for seq in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        pad = self.tokenizer.pad_token_id or 0
        batches = range(0, len(order), self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="embedding item texts", unit="batch")
        with torch.inference_mode():
            for start in batches:
                chosen = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in chosen)
                input_ids = torch.full((len(chosen), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chosen), width), dtype=torch.long)
                for row, i in enumerate(chosen):  # right padding: real tokens keep positions 0..n-1
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                hidden = self._hidden(input_ids, mask).float()
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[chosen] = pooled.cpu().numpy()
        return out


def load_item_encoder(name: str, settings: GeneratorSettings) -> TextEncoder:
    """A sentence encoder (``lumos_item_encoder``) loaded with ``AutoModel``; mean pooling over all layers."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModel.from_pretrained(name)
    except Exception as error:
        raise LanguageModelError(
            f"Could not load the item encoder {name!r}: {_first_line(error)}. Pass --lumos_item_encoder= with a "
            "cached hub id or a folder holding a sentence-transformers-like model (config.json, weights and "
            "tokenizer), or leave it unset to embed items with the language model."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.to(generator_device(settings)).eval()
    return TextEncoder(
        model,
        tokenizer,
        layers=None,
        max_tokens=settings.lumos_embed_max_tokens,
        batch_size=settings.lumos_embed_batch_size,
        final_norm=False,
    )


def lm_text_encoder(model: torch.nn.Module, tokenizer: Any, settings: GeneratorSettings) -> TextEncoder:
    """The language model itself as a text encoder, truncated to ``lumos_embed_layers`` blocks."""
    return TextEncoder(
        model,
        tokenizer,
        layers=settings.lumos_embed_layers,
        max_tokens=settings.lumos_embed_max_tokens,
        batch_size=settings.lumos_embed_batch_size,
    )


def embedding_identity(settings: GeneratorSettings) -> dict[str, Any]:
    """What determines the item embeddings (besides the texts); part of both cache keys."""
    if settings.lumos_item_encoder:
        encoder = str(settings.lumos_item_encoder)
        if Path(encoder).expanduser().exists():
            encoder = str(Path(encoder).expanduser().resolve())
        return {"encoder": encoder, "max_tokens": settings.lumos_embed_max_tokens}
    return {
        **model_identity(settings),
        "layers": settings.lumos_embed_layers,
        "max_tokens": settings.lumos_embed_max_tokens,
    }


def texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def item_embeddings(
    settings: GeneratorSettings,
    texts: Sequence[str],
    cache_dir: Path,
    encoder: Callable[[], TextEncoder],
) -> tuple[np.ndarray, dict[str, float]]:
    """``[len(texts), dim]`` unit embeddings of the catalogue, from the ``.npy`` cache or ``encoder()``.

    ``encoder`` is called only on a cache miss (it may load a model). Returns the
    matrix and timings (``embedding_seconds``, 0 when cached).
    """
    key = {**embedding_identity(settings), "texts": texts_hash(texts), "count": len(texts)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{settings.dataset or 'items'}-items-{digest}.npy"
    if path.is_file():
        try:
            matrix = np.load(path)
            if matrix.shape[0] == len(texts):
                logger.info("item embeddings loaded from %s", path)
                return matrix, {"embedding_seconds": 0.0}
        except (OSError, ValueError):
            pass
        logger.warning("item embedding cache %s is unreadable or stale; recomputing it", path)
    text_encoder = encoder()
    start = time.perf_counter()
    matrix = text_encoder.encode(texts, progress=settings.show_progress)
    seconds = time.perf_counter() - start
    logger.info(
        "embedded %d item texts in %.1f s (%.1f ms per item)", len(texts), seconds, 1000 * seconds / max(1, len(texts))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, matrix)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return matrix, {"embedding_seconds": seconds}
