"""The original pochitrain's Python API, used as its README and client docs use it:
``create_data_loaders`` + ``PochiTrainer`` (a short real training), ``PochiPredictor`` on
our checkpoints and on the original's format, and request bodies from
``pochitrain.api.serializers`` answered by a real ``pochi serve``."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CLASSES = ["0", "1", "2"]  # tiny_data: 6 train / 3 val 32x32 digit images per class


def _transform() -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                               transforms.Normalize([0.5] * 3, [0.5] * 3)])


@pytest.fixture(scope="module")
def loaders(tiny_data: Path) -> tuple[Any, Any, list[str]]:
    from pochitrain import create_data_loaders

    return create_data_loaders(train_root=str(tiny_data / "train"),
                               val_root=str(tiny_data / "val"), batch_size=4, num_workers=0,
                               train_transform=_transform(), val_transform=_transform())


@pytest.fixture(scope="module")
def trained(loaders: tuple[Any, Any, list[str]],
            tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The README's three steps, one short epoch on the CPU."""
    import torch

    from pochitrain import PochiTrainer

    torch.manual_seed(0)
    train_loader, val_loader, classes = loaders
    trainer = PochiTrainer(model_name="resnet18", num_classes=len(classes), device="cpu",
                           pretrained=False,
                           work_dir=str(tmp_path_factory.mktemp("api") / "work_dirs"))
    trainer.setup_training(learning_rate=0.001, optimizer_name="Adam")
    trainer.train(train_loader=train_loader, val_loader=val_loader, epochs=1)
    return trainer


def test_create_data_loaders(loaders: tuple[Any, Any, list[str]]) -> None:
    import torch

    train_loader, val_loader, classes = loaders
    assert classes == CLASSES
    images, labels = next(iter(train_loader))
    assert tuple(images.shape) == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    assert len(val_loader.dataset) == 9
    assert [int(y) for _, y in val_loader.dataset] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # picklable, as torch's own DataLoader is (e.g. handed to a spawned process)
    copy = pickle.loads(pickle.dumps(val_loader))
    assert type(copy) is type(val_loader) and isinstance(copy, torch.utils.data.DataLoader)
    assert torch.equal(next(iter(copy))[1], next(iter(val_loader))[1])


def test_trainer_writes_the_run_folder(trained: Any) -> None:
    from pochitrain.checkpoint import read_checkpoint

    run = trained.current_workspace
    assert re.fullmatch(r"\d{8}_001", run.name)
    assert trained.work_dir == run / "models"
    assert trained.epoch == 1 and 0.0 <= trained.best_accuracy <= 100.0
    best = run / "models" / "best_epoch1.pth"
    assert best.is_file() and (run / "models" / "last_model.pth").is_file()
    payload, meta = read_checkpoint(best)
    assert meta.class_names == CLASSES and meta.input_size == [32, 32]
    assert payload["epoch"] == 1 and payload["best_accuracy"] == trained.best_accuracy
    assert "optimizer_state_dict" in payload
    (metrics,) = (run / "visualization").glob("training_metrics_*.csv")  # the original's file
    assert metrics.read_text(encoding="utf-8").splitlines()[0] == (
        "epoch,learning_rate,train_loss,train_accuracy,val_loss,val_accuracy")


def test_trainer_epoch_and_validate(trained: Any, loaders: tuple[Any, Any, list[str]]) -> None:
    train_loader, val_loader, _ = loaders
    step = trained.train_one_epoch(2, train_loader)
    assert set(step) == {"loss", "accuracy"} and 0.0 <= step["accuracy"] <= 100.0
    val = trained.validate(val_loader)
    assert set(val) == {"val_loss", "val_accuracy"} and val["val_loss"] > 0
    assert trained.get_layer_wise_learning_rates() == {}


def test_stop_flag_stops_after_the_epoch(loaders: tuple[Any, Any, list[str]],
                                         tmp_path: Path) -> None:
    from pochitrain import PochiTrainer

    train_loader, val_loader, classes = loaders
    trainer = PochiTrainer("resnet18", len(classes), "cpu", pretrained=False,
                           create_workspace=False, work_dir=str(tmp_path / "models"))
    trainer.setup_training(optimizer_name="SGD", scheduler_name="StepLR",
                           scheduler_params={"step_size": 1})
    trainer.train(train_loader, val_loader, epochs=3, stop_flag_callback=lambda: True)
    assert trainer.epoch == 0 and not (tmp_path / "models").exists()  # asked before epoch 1
    calls = iter([False, True])
    trainer.train(train_loader, val_loader, epochs=3, stop_flag_callback=lambda: next(calls))
    assert trainer.epoch == 1
    assert (tmp_path / "models" / "last_model.pth").is_file()


def test_predictor_matches_predictor_api(trained: Any,
                                         loaders: tuple[Any, Any, list[str]]) -> None:
    from pochitrain import PochiPredictor, Predictor

    _, val_loader, classes = loaders
    best = trained.current_workspace / "models" / "best_epoch1.pth"
    predictor = PochiPredictor(model_name="resnet18", num_classes=len(classes), device="cpu",
                               model_path=str(best))
    predictions, confidences, metrics = predictor.predict(val_loader)
    assert predictions.shape == (9,) and confidences.shape == (9,)
    assert ((confidences > 0) & (confidences <= 1)).all()
    assert metrics["warmup_samples"] == 4 and metrics["total_samples"] == 5
    assert metrics["avg_time_per_image"] > 0
    info = predictor.get_model_info()
    assert info["epoch"] == 1 and info["best_accuracy"] == trained.best_accuracy
    assert predictor.class_names == CLASSES
    paths = [p for p, _ in val_loader.dataset.samples]
    with Predictor(best, device="cpu") as reference:
        want = [p.index for p in reference.predict(paths)]
    assert predictions.tolist() == want


def test_predictor_reads_the_originals_checkpoint(loaders: tuple[Any, Any, list[str]],
                                                  tmp_path: Path) -> None:
    import torch

    from pochitrain import PochiPredictor
    from pochitrain.errors import ModelFileError
    from pochitrain.models import build_model

    torch.manual_seed(1)
    state = {f"model.{k}": v for k, v in build_model("resnet18", 3).state_dict().items()}
    path = tmp_path / "best_epoch7.pth"
    torch.save({"epoch": 7, "model_state_dict": state, "best_accuracy": 66.7}, path)
    predictor = PochiPredictor("resnet18", 3, "cpu", str(path))
    assert (predictor.epoch, predictor.best_accuracy) == (7, 66.7)
    predictions, _, _ = predictor.predict(loaders[1])
    assert len(predictions) == 9 and set(predictions.tolist()) <= {0, 1, 2}
    with pytest.raises(ModelFileError, match="resnet18 with 4 classes"):
        PochiPredictor("resnet18", 4, "cpu", str(path))
    with pytest.raises(ModelFileError, match="見つかりません"):
        PochiPredictor("resnet18", 3, "cpu", str(tmp_path / "missing.pth"))


# ---- serializers against a real server -----------------------------------------------------


def test_serializers_round_trip_and_errors() -> None:
    from pochitrain.api.serializers import (
        JpegSerializer,
        PayloadError,
        RawArraySerializer,
        create_serializer,
    )

    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    raw = RawArraySerializer().serialize(image)
    assert set(raw) == {"image_data", "shape", "dtype", "format"}
    assert raw["shape"] == [12, 16, 3] and raw["dtype"] == "uint8" and raw["format"] == "raw"
    assert (RawArraySerializer().deserialize(raw) == image).all()
    jpeg = JpegSerializer(quality=95).serialize(np.full((8, 8, 3), (255, 0, 0), np.uint8))
    assert set(jpeg) == {"image_data", "format"} and jpeg["format"] == "jpeg"
    blue_bgr = JpegSerializer().deserialize(jpeg)[4, 4]
    assert blue_bgr[0] > 200 and blue_bgr[2] < 60  # BGR order kept through the JPEG
    assert isinstance(create_serializer("jpeg"), JpegSerializer)
    with pytest.raises(ValueError):  # the original's error type still catches it
        create_serializer("png")
    with pytest.raises(PayloadError, match="uint8"):
        RawArraySerializer().serialize(image.astype(np.float32))


def test_serializers_import_no_torch() -> None:
    code = ("import sys, pochitrain.api.serializers, pochitrain\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture(scope="module")
def serve_extra() -> None:
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def server(serve_extra: None, servers: dict[str, Any]) -> str:
    """The session's ``pochi serve`` of the untrained 10-class digits checkpoint on the CPU
    (conftest's ``servers["pth"]``); its base URL."""
    return str(servers["pth"].url)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_serve_answers_serialized_requests(fmt: str, server: str, digits_dir: Path,
                                           untrained_checkpoint: Path) -> None:
    from PIL import Image
    from serving import http_post

    from pochitrain import Prediction, Predictor
    from pochitrain.api.serializers import create_serializer

    path = min((digits_dir / "val" / "3").iterdir())
    bgr = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[..., ::-1])
    payload = create_serializer(fmt).serialize(bgr)
    reply = http_post(server + "/api/v1/predict", json=payload, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["probabilities"]) == 10
    assert {"class_id", "class_name", "confidence", "e2e_time_ms", "backend"} <= set(body)
    if fmt == "raw":  # lossless: the same prediction as the Python API on the file
        with Predictor(untrained_checkpoint, device="cpu") as reference:
            want = reference.predict(path)
        assert isinstance(want, Prediction) and body["class_id"] == want.index
        assert body["confidence"] == pytest.approx(want.probability, abs=1e-5)


def test_documented_migration_example_runs(tiny_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The example of docs/readme_python_api.md, run as written from a project folder."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "readme_python_api.md").read_text(
        encoding="utf-8")
    section = text.split("## Coming from the original pochitrain", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "digits").symlink_to(tiny_data, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "readme_python_api.md", "exec"), namespace)  # noqa: S102
    assert namespace["classes"] == CLASSES
    metrics = namespace["metrics"]  # one batch of 9: the unmeasured first batch
    assert len(namespace["predictions"]) == 9
    assert (metrics["warmup_samples"], metrics["total_samples"]) == (9, 0)


def test_setup_training_takes_the_originals_options(tmp_path: Path) -> None:
    from pochitrain import PochiTrainer
    from pochitrain.errors import UsageError

    trainer = PochiTrainer("resnet18", 3, "cpu", pretrained=False, create_workspace=False,
                           work_dir=str(tmp_path))
    with pytest.raises(UsageError, match="setup_training"):
        trainer.train(None, None)  # type: ignore[arg-type]
    trainer.setup_training(
        learning_rate=0.001, optimizer_name="SGD", scheduler_name="StepLR",
        scheduler_params={"step_size": 2}, class_weights=[1.0, 2.0, 1.0],
        enable_layer_wise_lr=True, layer_wise_lr_config={"layer_rates": {"fc": 0.01}},
        early_stopping_config={"enabled": True, "patience": 2, "min_delta": 3.0})
    rates = trainer.get_layer_wise_learning_rates()
    assert rates["fc"] == 0.01 and rates["layer1"] == 0.001 and trainer.is_layer_wise_lr_enabled()
    assert trainer.optimizer is not None
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-4 and group["momentum"] == 0.9  # the original's SGD
    assert trainer.early_stopping is not None
    assert trainer.early_stopping.min_delta == pytest.approx(0.03)  # percentage points
    with pytest.raises(UsageError, match="class_weights"):
        trainer.setup_training(class_weights=[1.0, 1.0])


def test_where_the_api_differs_from_the_original(tiny_data: Path, tmp_path: Path,
                                                  trained: Any) -> None:
    """Each difference docs/migration.md lists for the original's Python API."""
    import torch
    from PIL import Image

    from pochitrain import PochiPredictor, PochiTrainer, create_data_loaders
    from pochitrain.errors import DataError, ModelFileError, UsageError

    trainer = PochiTrainer("resnet18", 3, pretrained=False, create_workspace=False,
                           work_dir=str(tmp_path / "w"))  # device left out: "auto"
    assert trainer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    trainer.setup_training(learning_rate=0.001, optimizer_name="Adam")
    train_loader, _, _ = create_data_loaders(str(tiny_data / "train"), str(tiny_data / "val"),
                                             batch_size=4, num_workers=0)
    images, _ = next(iter(train_loader))  # no transform: tensors, not PIL images
    assert isinstance(images, torch.Tensor) and tuple(images.shape[1:]) == (3, 32, 32)
    with pytest.raises(UsageError):
        trainer.train(train_loader=train_loader, val_loader=None, epochs=1)
    with pytest.raises(DataError):
        create_data_loaders(str(tmp_path / "missing"), str(tiny_data / "val"), batch_size=4)
    mixed = tmp_path / "mixed"
    for cls, size in (("a", 32), ("b", 40)):
        (mixed / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (size, size), (i * 90, 20, 40)).save(mixed / cls / f"{i}.png")
    loader, _, _ = create_data_loaders(str(mixed), str(mixed), batch_size=4, num_workers=0)
    with pytest.raises(DataError):
        next(iter(loader))
    best = trained.current_workspace / "models" / "best_epoch1.pth"
    with pytest.raises(ModelFileError):
        PochiPredictor(model_name="resnet34", num_classes=3, device="cpu",
                       model_path=str(best))
