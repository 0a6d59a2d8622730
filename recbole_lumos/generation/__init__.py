"""The on-device generator: language model, item texts and embeddings, prompts, grounding, views cache.

Entry point: :func:`ensure_views` (docs/design.md §2.1-2.2). Command line:
``python -m recbole_lumos.generate --dataset=NAME``.
"""

from recbole_lumos.generation.language_model import load_language_model
from recbole_lumos.generation.settings import VIEW_NAMES, counterfactual_names, view_names
from recbole_lumos.generation.views import ViewSet, ensure_views

__all__ = ["VIEW_NAMES", "ViewSet", "counterfactual_names", "ensure_views", "load_language_model", "view_names"]
