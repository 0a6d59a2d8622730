"""Generator settings: LUMOS.yaml defaults, read from any config, bad values named with their key."""

from __future__ import annotations

import pytest

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.generation import counterfactual_names, view_names
from recbole_lumos.generation.settings import GeneratorSettings, is_counterfactual


def test_missing_keys_keep_the_defaults_of_lumos_yaml():
    settings = GeneratorSettings.from_config({"dataset": "tiny", "k_f": 2})
    assert settings.k_f == 2 and settings.rho_r == 0.3 and settings.lumos_embed_layers == 8
    assert settings.lumos_item_pool == "all" and settings.lumos_cache_dir == "saved/views"
    assert settings.lumos_num_counterfactuals == 1 and settings.view_names == ("F", "R", "C")


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


def test_counterfactuals_are_named_c_then_c2_onwards():
    assert counterfactual_names(1) == ("C",) and counterfactual_names() == ("C",)
    assert counterfactual_names(4) == ("C", "C2", "C3", "C4")
    assert view_names(3) == ("F", "R", "C", "C2", "C3")
    assert GeneratorSettings.from_config({"lumos_num_counterfactuals": 2}).view_names == ("F", "R", "C", "C2")
    assert [is_counterfactual(n) for n in ("C", "C2", "C12", "F", "R", "C1", "C0", "Cx")] == [
        True, True, True, False, False, False, False, False
    ]  # fmt: skip


@pytest.mark.parametrize("value", [0, -2, 2.5, "4", True])
def test_fewer_than_one_counterfactual_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError, match="lumos_num_counterfactuals is .* at least 1"):
        GeneratorSettings.from_config({"lumos_num_counterfactuals": value})
