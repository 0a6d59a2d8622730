"""Generator settings: LUMOS.yaml defaults, read from any config, bad values named with their key."""

from __future__ import annotations

import pytest

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.generation.settings import GeneratorSettings


def test_missing_keys_keep_the_defaults_of_lumos_yaml():
    settings = GeneratorSettings.from_config({"dataset": "tiny", "k_f": 2})
    assert settings.k_f == 2 and settings.rho_r == 0.3 and settings.lumos_embed_layers == 8
    assert settings.lumos_item_pool == "all" and settings.lumos_cache_dir == "saved/views"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("lumos_generation", "fast", "lumos_generation"),
        ("rho_c", 1.5, "rho_c"),
        ("k_f", 50, "k_f"),
        ("lumos_item_pool", "popular", "lumos_item_pool"),
        ("lumos_num_candidates", 0, "lumos_num_candidates"),
    ],
)
def test_bad_values_name_their_key(key, value, needle):
    with pytest.raises(ConfigurationError, match=needle):
        GeneratorSettings.from_config({key: value})
