"""The backbone probe's own pieces: its arms differ only in the stem; its timing arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest
from benchmarks.backbone import run as backbone

from mobile_multimodal.model import ModelConfig
from mobile_multimodal.training import train


def test_arms_differ_only_in_the_stem(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone.check_arms_differ_only_in_the_stem()
    default, probe = ModelConfig.from_name("default"), ModelConfig.from_name("default-effnet")
    assert replace(probe, stem="conv") == default and probe.stem == "efficientnet-lite0"
    changed = {**train.PRESETS, "backbone-probe": replace(train.PRESETS["backbone-probe"], lr=3e-4)}
    monkeypatch.setattr(backbone, "PRESETS", changed)
    with pytest.raises(SystemExit, match="more than the stem"):
        backbone.check_arms_differ_only_in_the_stem()


def test_training_stats_leave_out_the_first_step_and_average_the_tail() -> None:
    rows = [{"step": i + 1, "elapsed_s": 5.0 + 2.0 * i, "loss": float(30 - i)} for i in range(30)]
    stats = backbone.training_stats(rows)
    assert stats["s_per_step"] == pytest.approx(2.0)
    assert stats["s_per_step_incl_first"] == pytest.approx(63.0 / 30)
    assert stats["tail_steps"] == 3
    assert stats["final_losses"] == {"loss": pytest.approx(2.0)}  # mean of 3, 2, 1
