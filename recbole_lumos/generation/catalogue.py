"""The whole catalogue's text embeddings, for consumers other than the views (the item table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recbole_lumos.generation.embedding import item_embeddings
from recbole_lumos.generation.item_text import dataset_item_texts
from recbole_lumos.generation.settings import GeneratorSettings
from recbole_lumos.generation.views import _GeneratorSession


def catalogue_embeddings(config: Any, dataset: Any) -> np.ndarray:
    """``[item_num - 1, dim]``: the ``lumos_item_encoder`` embedding of every item's text, internal
    ids 1..n-1 in order, from the same cache the views use."""
    settings = GeneratorSettings.from_config(config)
    texts = dataset_item_texts(config, dataset)
    session = _GeneratorSession(settings)
    matrix, _ = item_embeddings(settings, texts.texts, Path(settings.lumos_cache_dir), session.text_encoder)
    return matrix
