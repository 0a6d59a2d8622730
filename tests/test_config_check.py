"""The whole config is checked once, before any data loads: values, booleans, ranges and unknown keys."""

from __future__ import annotations

import pytest

from recbole_lumos.config import build_config
from recbole_lumos.config_check import check_config, known_keys, parse_boolean, unknown_keys
from recbole_lumos.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "value"),
    [(True, True), (False, False), ("true", True), ("False", False), ("FALSE", False), (1, True), (0, False),
     ("1", True), ("0", False)],
)
def test_booleans_parse_as_recbole_users_write_them(text, value):
    assert parse_boolean("federated", text) is value


@pytest.mark.parametrize("text", ["Flase", "yes", "on", 2, 0.5, "", [True]])
def test_anything_else_is_not_a_boolean(text):
    with pytest.raises(ConfigurationError, match="must be a boolean: True or False"):
        parse_boolean("sparse_upload", text)


def test_a_boolean_written_in_lower_case_is_normalised_in_the_built_config():
    config = build_config("FedSASRec", "ml-100k", overrides={"sparse_upload": "false", "federated": "true"})
    assert config["sparse_upload"] is False and config["federated"] is True


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("local_loss", "foo", "ce, sampled_ce, bce"),
        ("train_mode", "all", "prefix, all_positions"),
        ("server_optimizer", "adamw", "sgd, momentum, adam, adagrad"),
        ("attack", "shill", "none, random, popular"),
        ("lumos_generation", "llm", "prompt, semantic, auto"),
        ("sim", "dots", "dot, cos"),
        ("user_batch_order", "length", "random, by_length"),
    ],
)
def test_a_bad_enumerated_value_lists_the_valid_ones(key, value, valid):
    with pytest.raises(ConfigurationError, match=f"{key} is '{value}', but it must be one of: {valid}"):
        build_config("LUMOS", "ml-100k", overrides={key: value})


def test_enumerated_values_the_code_lower_cases_may_be_written_in_any_case():
    check_config({"aggregator": "FedAvg", "server_optimizer": "Adam", "attack": "None", "local_optimizer": "SGD"})


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("epochs", 0, "a whole number >= 1"),
        ("client_fraction", 0, "in (0, 1]"),
        ("attack_ratio", 1.5, "in (0, 1]"),
        ("local_lr", -1.0, ">= 0"),
        ("num_negatives", 2.5, "a whole number >= 1"),
        ("ldp_delta", 1, "in (0, 1)"),
        ("federated_eval_step", "five", "a whole number >= 1 or ~"),
    ],
)
def test_a_number_out_of_its_range_is_refused(key, value, rule):
    with pytest.raises(ConfigurationError) as error:
        check_config({key: value})
    assert f"{key} is {value!r}, but it must be" in str(error.value) and rule in str(error.value)


def test_the_defaults_of_every_model_pass_the_check():
    for model in ("SASRec", "CL4SRec", "FedSASRec", "FedCL4SRec", "LUMOS", "LUMOS-noF", "LUMOS-randC"):
        build_config(model, "ml-100k")


def test_recbole_booleans_are_checked_too():
    with pytest.raises(ConfigurationError, match="use_gpu is 'maybe'"):
        check_config({"use_gpu": "maybe"})


def test_round_budgets_and_views_are_checked():
    with pytest.raises(ConfigurationError, match="round_budgets"):
        check_config({"round_budgets": [50, 0]})
    with pytest.raises(ConfigurationError, match="lumos_views"):
        check_config({"lumos_views": ["C"]})


def test_known_keys_come_from_recbole_and_this_project():
    keys = known_keys()
    # RecBole's property files, its sources' reads, this project's property files and the command line
    assert {"train_neg_sample_args", "MAX_ITEM_LIST_LENGTH", "NEG_PREFIX", "use_gpu"} <= keys
    assert {"federated_eval_step", "lumos_num_counterfactuals", "sparse_upload", "seeds", "strict"} <= keys


def test_an_unknown_key_gets_the_key_probably_meant():
    assert unknown_keys(["local_los", "learing_rate", "Epochs", "epochs", "zzz_qqq"]) == [
        ("local_los", "local_loss"),
        ("learing_rate", "learning_rate"),
        ("Epochs", "epochs"),
        ("zzz_qqq", None),
    ]
