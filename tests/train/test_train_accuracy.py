"""log.train_accuracy: acc/train, the whole training split in eval mode at every evaluation, checked against an
independent count with the final checkpoint's network; off by default."""

from __future__ import annotations

import torch
from conftest import TINY, compose, scalars, train_in_process

from bnlab.data.datasets import load_dataset
from bnlab.models.nets import build_model


def test_acc_train_is_the_eval_mode_accuracy_on_the_whole_training_split(tmp_path):
    overrides = [*TINY, "log.train_accuracy=true", "norm=bnlab"]
    result = train_in_process(tmp_path / "run", *overrides)
    assert result.status == "completed", result.error
    logged = scalars(tmp_path / "run")
    assert [step for step, _ in logged["acc/train"]] == [step for step, _ in logged["acc/test"]] == [0, 5, 10, 11]

    cfg = compose(*overrides)
    data = load_dataset(cfg.data.name, seed=cfg.train.seed, flatten=True)
    model = build_model(cfg.model, cfg.norm, data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    model.eval()  # the running statistics, as the loop evaluates
    with torch.no_grad():
        correct = int((model(data.x_train).argmax(1) == data.y_train).sum())  # (N,) compared, counted
    for value in (logged["acc/train"][-1][1], result.metrics["acc/train"]):  # event file; summary.json
        assert abs(value - correct / len(data.y_train)) < 1e-6  # the same count, divided in float32


def test_acc_train_is_not_logged_unless_asked(tmp_path):
    assert compose().log.train_accuracy is False
    assert train_in_process(tmp_path / "run", *TINY).status == "completed"
    assert "acc/train" not in scalars(tmp_path / "run")
