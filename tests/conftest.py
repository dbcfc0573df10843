"""Session fixtures: real image folders and real (tiny) models, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits sample: <dir>/train/<0..9>/*.png and <dir>/val/<0..9>/*.png."""
    from pochitrain.sample_data import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 checkpoint for the digits classes with random (seeded) weights."""
    import torch

    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model, save_checkpoint
    from pochitrain.preprocess import Preprocess
    from pochitrain.sample_data import CLASS_NAMES

    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASS_NAMES)).eval()
    meta = ModelMeta(CLASS_NAMES, Preprocess.simple(32, 32), model_name="resnet18")
    path = tmp_path_factory.mktemp("untrained") / "models" / "untrained.pth"
    path.parent.mkdir()
    save_checkpoint(path, model, meta)
    return path
