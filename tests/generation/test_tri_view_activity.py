"""The tri-view activity diagnostic: a hand-computed term, and the command on a saved run's checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from recbole_lumos.errors import EXIT_CODE
from recbole_lumos.generation.views import ensure_views
from recbole_lumos.model.lumos import LUMOS
from recbole_lumos.report.tri_view_activity import main, tri_view_activity

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "hidden_size": 16, "inner_size": 32}


def test_identical_views_give_log_one_plus_w_c_per_client(prepare, tiny_data):
    config, _, train = prepare("tiny", tiny_data, sim="cos", w_c=0.5, lambda_cl=0.3, **NO_DROPOUT)
    torch.manual_seed(0)
    model = LUMOS(config, train)
    sequence = torch.tensor([3, 5, 7, 2, 0, 0, 0, 0, 0, 0])
    blocks = sequence.repeat(4, 4, 1)  # 4 clients; anchor, F, R and C all the same sequence
    blocks[3] = 0  # a client without views is left out
    row = tri_view_activity(model, blocks, "same")
    # s(h, P) = s(h, C) = 1 for both positives: softplus(log w_c) = log(1 + w_c), whatever lambda_cl is
    assert row.users == 3
    assert row.mean == pytest.approx(math.log(1.5), rel=1e-5)
    assert row.median == pytest.approx(math.log(1.5), rel=1e-5)
    assert row.share_low == 0.0
    assert (row.sim_f, row.sim_r, row.sim_c) == pytest.approx((1.0, 1.0, 1.0), rel=1e-5)


def test_the_command_measures_a_saved_checkpoint_from_its_cached_views(prepare, tiny_data, tiny_lm, tmp_path, capsys):
    cache = tmp_path / "views"
    config, dataset, train = prepare(
        "tiny", tiny_data, lumos_llm=str(tiny_lm), lumos_generation="semantic", lumos_cache_dir=str(cache), **NO_DROPOUT
    )
    ensure_views(config, dataset, train)
    torch.manual_seed(1)
    model = LUMOS(config, train)
    checkpoint = tmp_path / "LUMOS-run.pth"
    torch.save({"config": config, "state_dict": model.state_dict()}, checkpoint)

    assert main([f"--checkpoint={checkpoint}"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| untrained", "| trained"))]
    assert [row[0] for row in rows] == ["| untrained", "| trained"]
    for row in rows:
        assert int(row[1]) > 0 and float(row[2]) > 0.0
        assert -1.0 <= float(row[5]) <= 1.0 and -1.0 <= float(row[7].rstrip(" |")) <= 1.0

    # views the run used are not where we point: a clear error, and nothing is generated there
    elsewhere = tmp_path / "elsewhere"
    assert main([f"--checkpoint={checkpoint}", f"--lumos_cache_dir={elsewhere}"]) == EXIT_CODE
    assert "--lumos_cache_dir" in capsys.readouterr().err
    assert not elsewhere.exists() or not list(elsewhere.glob("*.views"))
    assert main([f"--checkpoint={tmp_path / 'missing.pth'}"]) == EXIT_CODE
    assert "--checkpoint" in capsys.readouterr().err
