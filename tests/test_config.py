from pathlib import Path

import pytest
from conftest import CPU_SMALL

from recbole_lumos.config import build_config, parse_overrides, property_files
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.registry import resolve_model


def test_overrides_are_typed_like_recbole():
    values = parse_overrides(["--epochs=3", "--learning_rate", "0.01", "--eval_args={'order': 'TO'}", "--flag"])
    assert values == {"epochs": 3, "learning_rate": 0.01, "eval_args": {"order": "TO"}, "flag": True}


def test_bad_argument_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="--key=value"):
        parse_overrides(["epochs=3"])


def test_precedence_command_line_over_files_over_model_over_dataset_over_overall(tmp_path: Path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("hidden_size: 48\nlearning_rate: 0.5\n")
    config = build_config("CL4SRec", "ml-100k", [CPU_SMALL, str(extra)], {"learning_rate": 0.01})
    assert config["learning_rate"] == 0.01  # command line beats every file
    assert config["hidden_size"] == 48  # the last config file beats earlier ones
    assert config["n_layers"] == 1  # cpu-small beats RecBole's SASRec.yaml
    assert config["lambda_cl"] == 0.1  # properties/model/CL4SRec.yaml
    assert config["valid_metric"] == "NDCG@20"  # properties/overall.yaml beats RecBole's default
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}


def test_plugin_model_starts_from_its_recbole_base_yaml():
    config = build_config("CL4SRec", "ml-100k")
    assert (config["n_layers"], config["hidden_size"], config["inner_size"], config["loss_type"]) == (2, 64, 256, "CE")
    files = property_files(resolve_model("CL4SRec"), "ml-100k")
    assert files[0].endswith("recbole/properties/model/SASRec.yaml")
    assert files[-1].endswith("properties/model/CL4SRec.yaml")


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_config("SASRec", "ml-100k", ["nope.yaml"])


def test_a_per_dataset_model_file_is_read_after_the_model_files(tmp_path: Path, monkeypatch):
    """``properties/dataset/<dataset>/<Model>.yaml`` beats ``properties/model/<Model>.yaml`` (and a
    shorthand's file), and loses to --config_files and the command line."""
    import shutil

    import recbole_lumos.config as config_module

    root = tmp_path / "properties"
    shutil.copytree(config_module.PROPERTIES_DIR, root)
    (root / "dataset" / "ml-100k").mkdir(exist_ok=True)
    (root / "dataset" / "ml-100k" / "LUMOS.yaml").write_text("lambda_cl: 0.07\nk_f: 2\nrho_r: 0.4\n")
    (root / "dataset" / "ml-100k" / "LUMOS-randViews.yaml").write_text("rho_r: 0.2\n")
    monkeypatch.setattr(config_module, "PROPERTIES_DIR", root)
    files = property_files(resolve_model("LUMOS-randViews"), "ml-100k")
    order = [str(Path(f).relative_to(root)) for f in files if f.startswith(str(root))]
    assert order == [
        "overall.yaml",
        "dataset/ml-100k.yaml",
        "model/LUMOS.yaml",
        "model/LUMOS-randViews.yaml",
        "dataset/ml-100k/LUMOS.yaml",
        "dataset/ml-100k/LUMOS-randViews.yaml",
    ]
    config = build_config("LUMOS-randViews", "ml-100k", overrides={"k_f": 1})
    assert config["lambda_cl"] == 0.07  # the data set's LUMOS file beats LUMOS.yaml (0.1)
    assert config["rho_r"] == 0.2  # the data set's shorthand file beats its LUMOS file
    assert config["k_f"] == 1  # the command line beats them all
    assert config["lumos_view_space"] == "random"  # LUMOS-randViews.yaml still applies
    assert build_config("LUMOS", "ml-1m")["lambda_cl"] == 0.1  # another data set: the model file
