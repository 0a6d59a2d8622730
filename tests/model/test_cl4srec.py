import math

import pytest
import torch

from recbole_lumos.config import build_config
from recbole_lumos.model.augment import crop, mask, random_augment, reorder
from recbole_lumos.model.cl4srec import CL4SRec
from recbole_lumos.model.losses import nt_xent

SEQ = torch.tensor([[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15]])
LEN = torch.tensor([5, 2, 8])


def test_crop_keeps_a_contiguous_window_of_the_history():
    for seed in range(20):
        out, out_len = crop(SEQ, LEN, 0.6, torch.Generator().manual_seed(seed))
        assert out_len.tolist() == [3, 1, 4]
        for row, n, src, src_n in zip(out, out_len, SEQ, LEN, strict=True):
            window = row[:n].tolist()
            history = src[:src_n].tolist()
            start = history.index(window[0])
            assert history[start : start + int(n)] == window
            assert row[n:].eq(0).all()


def test_mask_replaces_exactly_floor_ratio_items_inside_the_history():
    out, out_len = mask(SEQ, LEN, 0.5, mask_token=99, generator=torch.Generator().manual_seed(0))
    assert out_len.tolist() == LEN.tolist()
    assert out.eq(99).sum(1).tolist() == [2, 1, 4]
    assert out[SEQ == 0].eq(0).all()  # padding is never masked


def test_reorder_permutes_only_a_window():
    for seed in range(20):
        out, _ = reorder(SEQ, LEN, 0.5, torch.Generator().manual_seed(seed))
        for row, src, n in zip(out, SEQ, LEN, strict=True):
            assert sorted(row[:n].tolist()) == sorted(src[:n].tolist())
            assert row[n:].eq(0).all()
            changed = (row != src).nonzero().flatten().tolist()
            if changed:
                assert changed[-1] - changed[0] + 1 <= math.floor(0.5 * int(n))


def test_random_augment_is_reproducible():
    def augment(seed: int):
        return random_augment(
            SEQ,
            LEN,
            crop_ratio=0.6,
            mask_ratio=0.3,
            reorder_ratio=0.6,
            mask_token=99,
            generator=torch.Generator().manual_seed(seed),
        )

    (a_seq, a_len), (b_seq, b_len) = augment(3), augment(3)
    assert torch.equal(a_seq, b_seq) and torch.equal(a_len, b_len)
    assert not torch.equal(augment(4)[0], a_seq)


def test_nt_xent_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    tau = 0.5
    z = torch.cat([z1, z2])
    expected = 0.0
    for i in range(4):
        positive = (i + 2) % 4
        logits = [float(z[i] @ z[j]) / tau for j in range(4) if j != i]
        pos_logit = float(z[i] @ z[positive]) / tau
        expected += -(pos_logit - math.log(sum(math.exp(v) for v in logits)))
    assert nt_xent(z1, z2, tau, "dot").item() == pytest.approx(expected / 4, rel=1e-6)


def test_cl4srec_plugs_into_recbole_and_trains(tiny_data):
    from recbole.data import create_dataset, data_preparation

    config = build_config(
        "CL4SRec",
        "tiny",
        overrides={
            "data_path": str(tiny_data),
            "hidden_size": 16,
            "inner_size": 32,
            "n_layers": 1,
            "n_heads": 1,
            "MAX_ITEM_LIST_LENGTH": 10,
        },
    )
    assert config["model"] == "CL4SRec"
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = CL4SRec(config, train_data._dataset)
    batch = next(iter(train_data))
    rec_loss, cl_loss = model.calculate_loss(batch)
    (rec_loss + cl_loss).backward()
    assert cl_loss.item() > 0
    assert model.item_embedding.weight.grad[model.n_items].abs().sum() > 0  # the mask row learns
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), model.n_items)  # the mask token is never a candidate


def test_nt_xent_with_a_validity_mask_ignores_padded_rows():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    padded1 = torch.cat([z1, torch.zeros(2, 4)])
    padded2 = torch.cat([z2, torch.zeros(2, 4)])
    valid = torch.tensor([True, True, True, False, False])
    for sim in ("dot", "cos"):
        expected = nt_xent(z1, z2, 0.5, sim)
        torch.testing.assert_close(nt_xent(padded1, padded2, 0.5, sim, valid=valid), expected)


def test_cl4srec_all_positions_loss_adds_the_contrastive_term(tiny_data):
    from recbole.data import create_dataset, data_preparation

    from recbole_lumos.model.next_item import all_position_hidden, candidate_weights, next_item_loss

    overrides = {
        "data_path": str(tiny_data),
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_dropout_prob": 0.0,
        "attn_dropout_prob": 0.0,
    }
    config = build_config("CL4SRec", "tiny", overrides=overrides)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = CL4SRec(config, train_data._dataset)
    inputs = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    targets = torch.tensor([[2, 3, 4, 5, 0], [6, 7, 8, 0, 0], [9, 10, 11, 12, 13]])
    rec = next_item_loss(all_position_hidden(model, inputs), targets, candidate_weights(model), "ce")
    torch.manual_seed(1)
    total = model.all_positions_loss(inputs, targets)
    assert total.item() > rec.item()  # NT-Xent over three windows is positive
    # An all-zero window (vmap padding) changes neither term. Identity augmentations make
    # the views independent of the random draws, which the extra row shifts.
    model.crop_ratio, model.mask_ratio, model.reorder_ratio = 1.0, 0.0, 0.0
    padded_inputs = torch.cat([inputs, torch.zeros(1, 5, dtype=torch.long)])
    padded_targets = torch.cat([targets, torch.zeros(1, 5, dtype=torch.long)])
    torch.testing.assert_close(
        model.all_positions_loss(padded_inputs, padded_targets), model.all_positions_loss(inputs, targets)
    )
    model.lambda_cl = 0.0
    torch.testing.assert_close(model.all_positions_loss(inputs, targets), rec)
