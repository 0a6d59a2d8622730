"""The generator's settings, read once from a RecBole ``Config`` (or any mapping).

Every key has the default of ``properties/model/LUMOS.yaml``, so the generator also
works with a config of another model (tests, notebooks) or with a plain dict. The
functions of this package take a :class:`GeneratorSettings`, not the config: the
config dict is not threaded through the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from recbole_lumos.errors import ConfigurationError

GEN_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``lumos_gen_dtype`` values."""

VIEW_NAMES = ("F", "R", "C")
"""The three views of docs/design.md §2.1: future-oriented, rephrasing, counterfactual."""


def counterfactual_names(num_counterfactuals: int = 1) -> tuple[str, ...]:
    """``("C", "C2", ..., "C{n_c}")``: the first keeps the name ``C`` so that views and caches of ``n_c = 1``
    are exactly those of the three-view layout."""
    return ("C", *(f"C{k}" for k in range(2, int(num_counterfactuals) + 1)))


def view_names(num_counterfactuals: int = 1) -> tuple[str, ...]:
    """Every view of a user, in block order: ``F``, ``R``, then :func:`counterfactual_names`."""
    return ("F", "R", *counterfactual_names(num_counterfactuals))


def is_counterfactual(name: str) -> bool:
    """``C``, ``C2``, ...: the hard negatives (grounded inside their far candidates only)."""
    return name == "C" or (name.startswith("C") and name[1:].isdigit() and int(name[1:]) >= 2)


MODES = ("prompt", "semantic", "auto")
VIEW_SPACES = ("text", "random")


@dataclass(frozen=True)
class GeneratorSettings:
    """What the generator reads from the config; the field names are the config keys."""

    dataset: str = ""
    seed: int = 2020
    lumos_views_seed: int | None = None
    """Seed of the views' random choices; ``None``: the run's ``seed``. Fix it to train several seeds on one
    set of views (a client writes its views once; prompt mode costs seconds per user)."""
    MAX_ITEM_LIST_LENGTH: int = 50
    eval_args: Any = None
    k_f: int = 3
    rho_r: float = 0.3
    rho_c: float = 0.3
    lumos_num_counterfactuals: int = 1
    """``n_c``: counterfactual views per user (``C``, ``C2``, ...), each an independent draw from the far pool,
    so that a one-user client batch has several hard negatives (docs/design.md §2.3)."""
    lumos_generation: str = "auto"
    lumos_llm: str | None = None
    lumos_llm_file: str | None = None
    lumos_llm_adapter: str | None = None
    lumos_item_encoder: str | None = None
    """Item-text encoder: ``~`` or ``all-MiniLM-L6-v2`` (the embedded sentence encoder), ``lm`` (the language
    model's mean-pooled hidden states) or any sentence-transformers folder or cached hub id."""
    lumos_item_pool: str = "all"
    lumos_view_space: str = "text"
    """``text``: semantic views are built in the item encoder's space; ``random``: in a space of random unit
    vectors of the same size, seeded by the views' seed (``LUMOS-randViews``: same layout, counts and draws, no
    semantics). Semantic minus random is what the item texts add through the views."""
    lumos_far_fraction: float = 0.05
    lumos_embed_layers: int = 8
    lumos_embed_max_tokens: int = 32
    lumos_embed_batch_size: int = 64
    lumos_intent_window: int = 5
    lumos_prompt_history: int = 10
    lumos_num_candidates: int = 20
    lumos_max_new_tokens: int = 32
    lumos_gen_batch_size: int | str = "auto"
    """Prompts decoded together: ``auto`` is 16 on a CPU and 128 on a GPU."""
    lumos_gen_dtype: str = "auto"
    """The language model's dtype: ``auto`` is bfloat16 on a GPU that supports it, else float32."""
    lumos_prompt_version: int = 1
    lumos_cache_dir: str = "saved/views"
    lumos_max_users: int | None = None
    device: str | None = None
    """RecBole's ``device`` (it follows ``use_gpu`` and ``gpu_id``): where the language model runs, and what
    ``lumos_generation: auto`` reads. ``None`` (no RecBole config): a GPU when there is one."""
    show_progress: bool = True
    data_filters: tuple = ()
    """RecBole keys that change which interactions survive loading (part of the split)."""

    @property
    def view_names(self) -> tuple[str, ...]:
        """The views each user gets: F, R and the ``lumos_num_counterfactuals`` counterfactuals."""
        return view_names(int(self.lumos_num_counterfactuals))

    @property
    def views_seed(self) -> int:
        """The seed the views are drawn (and cached) with."""
        return int(self.seed if self.lumos_views_seed is None else self.lumos_views_seed)

    @classmethod
    def from_config(cls, config: Any) -> GeneratorSettings:
        """Read every field from ``config`` (RecBole ``Config``, mapping or namespace); missing keys keep defaults."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name == "data_filters":
                continue
            value = _lookup(config, field.name)
            if value is not None:
                values[field.name] = str(value) if field.name == "device" else value
        values["data_filters"] = tuple(
            (key, repr(_lookup(config, key))) for key in _DATA_FILTER_KEYS if _lookup(config, key) is not None
        )
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Fail early, with the key to change, on values that cannot work."""
        if self.lumos_generation not in MODES:
            raise ConfigurationError(
                f"lumos_generation is {self.lumos_generation!r}, but it must be one of {', '.join(MODES)} "
                "(prompt: the language model answers prompts; semantic: views in its embedding space; "
                "auto: prompt on a GPU, semantic otherwise). For example --lumos_generation=semantic."
            )
        if self.lumos_view_space not in VIEW_SPACES:
            raise ConfigurationError(
                f"lumos_view_space is {self.lumos_view_space!r}, but it must be one of {', '.join(VIEW_SPACES)} "
                "(text: views in the item encoder's space; random: in random item embeddings, the LUMOS-randViews "
                "ablation). For example --lumos_view_space=text."
            )
        if self.lumos_view_space == "random" and self.lumos_generation == "prompt":
            raise ConfigurationError(
                "lumos_view_space=random makes semantic views from random item embeddings; prompt views carry the "
                "language model's reading of the titles whatever the space. Use --lumos_generation=semantic with it."
            )
        if self.lumos_item_pool not in ("train", "all"):
            raise ConfigurationError(
                f"lumos_item_pool is {self.lumos_item_pool!r}, but it must be 'train' (view items come from the "
                "items of the training split) or 'all' (any catalogue item). For example --lumos_item_pool=train."
            )
        for key in ("rho_r", "rho_c", "lumos_far_fraction"):
            value = getattr(self, key)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigurationError(
                    f"{key} is {value}, but it is a share and must lie in [0, 1]; e.g. --{key}=0.3."
                )
        for key in (
            "MAX_ITEM_LIST_LENGTH",
            "lumos_embed_layers",
            "lumos_embed_max_tokens",
            "lumos_embed_batch_size",
            "lumos_intent_window",
            "lumos_prompt_history",
            "lumos_num_candidates",
            "lumos_max_new_tokens",
        ):
            if int(getattr(self, key)) < 1:
                raise ConfigurationError(f"{key} is {getattr(self, key)}, but it must be at least 1.")
        batch = self.lumos_gen_batch_size
        if batch != "auto" and (isinstance(batch, bool) or not str(batch).isdigit() or int(batch) < 1):
            raise ConfigurationError(
                f"lumos_gen_batch_size is {batch!r}, but it must be 'auto' or a whole number of prompts of at least "
                "1; e.g. --lumos_gen_batch_size=64."
            )
        if self.lumos_gen_dtype not in GEN_DTYPES:
            raise ConfigurationError(
                f"lumos_gen_dtype is {self.lumos_gen_dtype!r}, but it must be one of {', '.join(GEN_DTYPES)}; "
                "e.g. --lumos_gen_dtype=float32."
            )
        n_c = self.lumos_num_counterfactuals
        if isinstance(n_c, bool) or not isinstance(n_c, int | np.integer) or n_c < 1:
            raise ConfigurationError(
                f"lumos_num_counterfactuals is {n_c!r}, but it counts the counterfactual views (C, C2, ...) each "
                "user gets and must be an integer of at least 1; e.g. --lumos_num_counterfactuals=4."
            )
        if not 0 <= int(self.k_f) < int(self.MAX_ITEM_LIST_LENGTH):
            raise ConfigurationError(
                f"k_f is {self.k_f}, but the F view keeps MAX_ITEM_LIST_LENGTH - k_f history items, so k_f must lie "
                f"in [0, {int(self.MAX_ITEM_LIST_LENGTH) - 1}]; e.g. --k_f=3."
            )


_DATA_FILTER_KEYS = (
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "TIME_FIELD",
    "load_col",
    "rm_dup_inter",
    "val_interval",
    "filter_inter_by_user_or_item",
    "user_inter_num_interval",
    "item_inter_num_interval",
)


def _lookup(config: Any, key: str) -> Any:
    """``config[key]`` for a RecBole ``Config`` or a mapping, ``config.key`` for a namespace; ``None`` if absent."""
    if isinstance(config, GeneratorSettings):
        return getattr(config, key, None)
    if isinstance(config, Mapping):
        return config.get(key)
    if hasattr(config, "final_config_dict"):  # RecBole Config: __getitem__ returns None for unknown keys
        return config[key]
    return getattr(config, key, None)
