"""The text-aware item table: init starts from the projected texts, fusion keeps them, every path agrees."""

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from sklearn.decomposition import PCA

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import ClientPartition, IndexedPartition, collate_cohort, training_histories
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated import packed
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.model.item_text import (
    PROJECTION,
    TextAwareItemEmbedding,
    apply_item_text,
    item_table,
    text_aware_class,
)

SMALL = {
    "hidden_size": 8,
    "inner_size": 16,
    "n_layers": 1,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 20,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
}


def _texts(n: int, dim: int = 24, seed: int = 3) -> torch.Tensor:
    """Unit 'text embeddings' with a low-rank structure (so PCA has directions to find)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, dim, generator=g)
    text = torch.randn(n, 5, generator=g) @ basis + 0.05 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(text, dim=1)


def _prepared(tiny_data, model_name="SASRec", **extra):
    config = build_config(model_name, "tiny", overrides={"data_path": str(tiny_data), **SMALL, **extra})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return config, train_data._dataset


def test_init_starts_from_the_projected_text_embeddings(tiny_data):
    config, dataset = _prepared(tiny_data)
    torch.manual_seed(0)
    model = SASRec(config, dataset)
    default_norm = model.item_embedding.weight.detach()[1:].norm(dim=1).mean()
    text = _texts(model.n_items - 1)
    apply_item_text(model, "init", text, model.n_items)
    rows = model.item_embedding.weight.detach()[1:].numpy()
    reference = PCA(n_components=SMALL["hidden_size"]).fit_transform(text.numpy())  # sklearn's own PCA
    reference *= float(default_norm) / np.linalg.norm(reference, axis=1).mean()
    for k in range(SMALL["hidden_size"]):  # a principal direction is defined up to its sign
        sign = np.sign(rows[:, k] @ reference[:, k])
        np.testing.assert_allclose(rows[:, k], sign * reference[:, k], atol=1e-4)
    assert type(model.item_embedding) is torch.nn.Embedding  # init changes the start, not the model


def test_fusion_scores_with_the_text_in_every_row_and_keeps_padding_at_zero_text(tiny_data):
    config, dataset = _prepared(tiny_data)
    model = text_aware_class(SASRec)(config, dataset)
    text = _texts(model.n_items - 1)
    apply_item_text(model, "fusion", text, model.n_items)
    table = model.item_embedding
    assert isinstance(table, TextAwareItemEmbedding)
    ids = torch.tensor([[0, 1, 5]])
    expected = table.weight[ids] + table.text_projection(table.text_table[ids])
    torch.testing.assert_close(table(ids), expected)
    assert torch.equal(table.text_table[0], torch.zeros(text.shape[1]))
    interaction = {model.ITEM_SEQ: torch.tensor([[1, 2, 3, 0]]), model.ITEM_SEQ_LEN: torch.tensor([3])}
    scores = model.full_sort_predict(interaction)
    hidden = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
    torch.testing.assert_close(scores, hidden @ item_table(model).T)
    assert not torch.allclose(scores, hidden @ table.weight.T)


def test_item_text_refuses_a_model_without_a_plain_item_table(tiny_data):
    config, dataset = _prepared(tiny_data)
    model = SASRec(config, dataset)
    with pytest.raises(ConfigurationError, match="item_text"):
        apply_item_text(model, "sideways", _texts(model.n_items - 1), model.n_items)
    model.item_embedding = torch.nn.Sequential()
    with pytest.raises(ConfigurationError, match="SASRec-family"):
        apply_item_text(model, "fusion", _texts(model.n_items - 1), model.n_items)


def _fused_lumos(tiny_data):
    from recbole_lumos.data.view_blocks import view_blocks
    from recbole_lumos.model.lumos import LUMOS

    config, dataset = _prepared(tiny_data, "LUMOS", lambda_cl=0.5, lumos_num_counterfactuals=2, lumos_aug_weight=0.3)
    torch.manual_seed(0)
    model = text_aware_class(LUMOS)(config, dataset)
    apply_item_text(model, "fusion", _texts(model.n_items - 1), model.n_items)
    histories = training_histories(dataset)
    views = {
        dataset.id2token(dataset.uid_field, user): {
            name: list(dataset.id2token(dataset.iid_field, ((h + shift) % (model.n_items - 1)) + 1))
            for name, shift in (("F", 1), ("R", 2), ("C", 7))
        }
        for user, h in histories.items()
    }
    blocks = view_blocks(histories, views, dataset, config["MAX_ITEM_LIST_LENGTH"])
    for user, block in blocks.items():
        extra = torch.where(block[3] > 0, (block[3] + 5) % (model.n_items - 1) + 1, 0)
        blocks[user] = torch.cat([block[:4], extra.unsqueeze(0)])
    return model, ClientPartition(histories, config["MAX_ITEM_LIST_LENGTH"], views=blocks)


@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
def test_fusion_client_updates_agree_on_all_three_paths(tiny_data, monkeypatch, loss):
    """One by one (torch.optim), vmapped on own weights (torch.func) and packed: the same update,
    the projection included, and sparse uploads still carry only ID rows the client touched."""
    monkeypatch.setattr(packed, "CHUNK_WINDOWS", 7)
    model, partition = _fused_lumos(tiny_data)
    assert packed.supports(model)
    settings = LocalSettings(local_epochs=1, optimizer="sgd", lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    start = trainer.global_params()
    assert PROJECTION in start and "item_embedding.text_table" not in start  # the text is not a parameter
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(5)])
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1))]
    packed_updates = trainer.train_packed(start, cohort, negatives)
    functional_updates = trainer.train_functional(start, cohort, negatives)
    for c in range(len(cohort)):
        own = cohort.owner == c
        own_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
        alone = trainer.train_client(
            start, cohort.inputs[own], cohort.targets[own], own_negatives, cohort.views[c : c + 1]
        )
        assert alone.dense[PROJECTION].abs().sum() > 0  # the projection learns on every path
        for together in (packed_updates, functional_updates):
            for name, delta in alone.dense.items():
                torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=1e-6, msg=name)
            for name, (rows, values) in alone.sparse.items():
                assert torch.equal(together[c].sparse[name][0], rows), name
                torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=1e-6, msg=name)
        if loss != "ce":
            assert set(alone.sparse) == {"item_embedding.weight"}


def test_fusion_training_moves_the_projection_and_never_the_text(tiny_data, tmp_path):
    """A short federated run end to end through the CLI's path (the default encoder embeds the texts)."""
    from recbole_lumos.quick_start import run_model

    overrides = {
        "data_path": str(tiny_data),
        **SMALL,
        "item_text": "fusion",
        "epochs": 3,
        "federated_eval_step": 1,
        "clients_per_round": 16,
        "checkpoint_dir": str(tmp_path / "saved"),
        "lumos_cache_dir": str(tmp_path / "views"),
        "show_progress": False,
    }
    captured = {}
    import recbole_lumos.quick_start as quick_start

    original = quick_start.build_recommender

    def keep(*args, **kwargs):
        model = original(*args, **kwargs)
        captured["text"] = model.item_embedding.text_table.clone()
        captured["projection"] = model.item_embedding.text_projection.weight.detach().clone()
        captured["model"] = model
        return model

    quick_start.build_recommender = keep
    try:
        result = run_model("FedSASRec", "tiny", overrides=overrides, saved=False)
    finally:
        quick_start.build_recommender = original
    table = captured["model"].item_embedding
    assert torch.equal(table.text_table, captured["text"])
    assert not torch.allclose(table.text_projection.weight, captured["projection"])
    assert result.test_result["ndcg@20"] >= 0
    assert captured["text"].shape[1] == 384  # all-MiniLM-L6-v2's width: the default encoder was used
