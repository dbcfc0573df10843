"""The Python API's inputs: images as PIL / arrays / paths, argument types and values, closed
predictors, wrong-shaped batches and long lists of paths (decoded a batch at a time)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pochitrain.errors import PochiError, is_bilingual


def _refused(call: Callable[[], Any], *words: str) -> str:
    """``call()`` raises a bilingual PochiError whose text has every one of ``words``."""
    with pytest.raises(PochiError) as caught:
        call()
    text = str(caught.value)
    assert is_bilingual(caught.value.message), text
    for word in words:
        assert word in text, (word, text)
    return text


def test_sixteen_bit_and_empty_images(untrained_checkpoint: Path, tmp_path: Path) -> None:
    from pochitrain import Predictor

    ramp = (np.arange(24 * 24, dtype=np.uint32).reshape(24, 24) * 113 % 65536)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    with Predictor(untrained_checkpoint, device="cpu") as p:
        by_path = p.preprocess(path)
        with Image.open(path) as opened:
            assert opened.mode in ("I", "I;16")
            by_image = p.preprocess(opened)
            assert p.predict(opened).probability == p.predict(path).probability
        i16 = Image.fromarray(ramp.astype(np.uint16)).convert("I;16")
        assert np.array_equal(by_path, by_image)
        assert np.array_equal(by_path, p.preprocess(i16))
        for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0), np.uint8),
                      np.zeros((0, 4, 3), np.uint8)):
            _refused(lambda e=empty: p.predict(e), "images", "empty")
        _refused(lambda: p.predict([np.zeros((8, 8, 3), np.uint8), Image.new("RGB", (0, 3))]),
                 "images", "empty")
        closed = Image.open(path)
        closed.close()
        _refused(lambda: p.predict(closed), "cannot be read")


def test_argument_types_and_values(untrained_checkpoint: Path, tmp_path: Path) -> None:
    from pochitrain import Predictor

    _refused(lambda: Predictor(untrained_checkpoint, batch_size=0), "batch_size", "Pass")
    _refused(lambda: Predictor(untrained_checkpoint, batch_size="8"), "batch_size=8")
    _refused(lambda: Predictor(tmp_path), "model", "folder")
    _refused(lambda: Predictor(untrained_checkpoint, config=tmp_path), "config", "folder")
    _refused(lambda: Predictor(untrained_checkpoint, device=0), "device")
    _refused(lambda: Predictor(untrained_checkpoint, device="gpu"), "device='cpu'")
    _refused(lambda: Predictor(untrained_checkpoint, providers=3), "providers")
    image = np.full((16, 16, 3), 90, np.uint8)
    with Predictor(untrained_checkpoint, device="cpu") as p:
        _refused(lambda: p.predict(image, top_k="3"), "top_k=3")
        _refused(lambda: p.predict(image, top_k=2.5), "top_k", "whole number")
        _refused(lambda: p.predict(image, top_k=0), "top_k", ">= 1")
        _refused(lambda: p.predict(tmp_path), "folder", str(tmp_path))
        assert len(p.predict(image, top_k=np.int64(2)).top_k) == 2
        h, w = p.meta.preprocess.input_size
        good = np.stack([p.preprocess(image)] * 2)
        for bad in (good[0], good[:, :, :h // 2], good.astype(np.uint8), good.tolist(),
                    good[:, :1]):
            _refused(lambda b=bad: p.probabilities(b), f"(N, 3, {h}, {w})")
        import torch

        assert p.probabilities(torch.from_numpy(good)).shape == (2, 10)
        _refused(lambda: p.probabilities(torch.zeros(2, 3, h + 1, w)), f"(N, 3, {h}, {w})")


def _double_engine(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TensorRT engine run by the test double (no GPU needed)."""
    import functools

    import trt_double
    from trt_double import CpuPipe, EngineSpec, double_engine

    from pochitrain.inference import trt_runner
    from pochitrain.meta import ModelMeta
    from pochitrain.preprocess import Preprocess
    from pochitrain.sample_data import CLASS_NAMES

    model = ModelMeta(CLASS_NAMES, Preprocess.simple(32, 32), model_name="linear").to_dict()
    monkeypatch.setattr(trt_runner, "open_trt_runner", functools.partial(
        trt_runner.open_trt_runner, trt=trt_double, pipe=CpuPipe()))
    return double_engine(folder, EngineSpec(chw=(3, 32, 32), profile=(1, 8, 8)), model=model)


def test_infer_arguments(untrained_checkpoint: Path, digits_dir: Path, tmp_path: Path) -> None:
    from pochitrain import infer

    image = next((digits_dir / "val" / "3").glob("*.png"))
    for kwargs, word in (({"batch_size": 0}, "batch_size=1"), ({"batch_size": "4"}, "batch_size=4"),
                         ({"data": 5}, "data"), ({"output": 1.5}, "output")):
        _refused(lambda k=kwargs: infer(untrained_checkpoint, **{"data": image, **k}), word)
    _refused(lambda: infer(tmp_path, data=image), "model_path", "folder")
    from pochitrain import convert, export_onnx, train

    _refused(lambda: export_onnx(tmp_path), "checkpoint", "folder")
    _refused(lambda: export_onnx(5), "checkpoint")
    _refused(lambda: convert(tmp_path), "onnx_path", "folder")
    _refused(lambda: train(5), "config")
    assert not list(tmp_path.iterdir())  # nothing written


def test_closed_predictor_refuses_on_every_runtime(
        untrained_checkpoint: Path, onnx_export: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pochitrain import Predictor

    image = np.full((16, 16, 3), 90, np.uint8)
    engine = _double_engine(tmp_path, monkeypatch)
    runtimes = []
    for model in (untrained_checkpoint, onnx_export(untrained_checkpoint), engine):
        p = Predictor(model, device="cpu", providers="cpu", batch_size=4)
        runtimes.append(p.runtime)
        batch = np.stack([p.preprocess(image)])
        p.predict(image)
        p.close()
        p.close()  # twice is fine
        _refused(lambda p=p: p.predict(image), "closed")
        _refused(lambda p=p, b=batch: p.probabilities(b), "closed")
        with p:
            pass
        _refused(lambda p=p: p.predict([image]), "closed")
    assert runtimes == ["pytorch", "onnx", "tensorrt"]


def test_long_path_lists_are_decoded_a_batch_at_a_time(
        untrained_checkpoint: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pochitrain.predictor as predictor_module
    from pochitrain import Predictor

    image = next((digits_dir / "val" / "3").glob("*.png"))
    events: list[str] = []
    decode = predictor_module.to_pil

    def counting_decode(item: Any, name: str = "image") -> Any:
        events.append("decode")
        return decode(item, name)

    class FirstCall(Exception):
        pass

    from pochitrain.inference.torch_runner import TorchRunner

    run = TorchRunner.run
    stop_at_first_call = [True]

    def counting_run(self: TorchRunner, batch: Any) -> Any:
        events.append("run")
        if stop_at_first_call[0]:
            raise FirstCall
        return run(self, batch)

    monkeypatch.setattr(predictor_module, "to_pil", counting_decode)
    monkeypatch.setattr(TorchRunner, "run", counting_run)
    with Predictor(untrained_checkpoint, device="cpu", batch_size=4) as p:
        with pytest.raises(FirstCall):  # 20,000 paths: stop at the first model call
            p.predict([image] * 20_000)
        assert events == ["decode"] * 4 + ["run"]
        events.clear()
        stop_at_first_call[0] = False
        preds = p.predict([image] * 10)
        assert events == (["decode"] * 4 + ["run"]) * 2 + ["decode"] * 2 + ["run"]
        assert len(preds) == 10 and len({x.probability for x in preds}) == 1
        events.clear()
        assert len(p.predict(image for _ in range(5))) == 5  # an iterator is streamed too
        assert events == ["decode"] * 4 + ["run"] + ["decode", "run"]


def test_original_api_arguments(untrained_checkpoint: Path, tiny_data: Path,
                                tmp_path: Path) -> None:
    from pochitrain import PochiPredictor, PochiTrainer, create_data_loaders
    from pochitrain.api.serializers import JpegSerializer, RawArraySerializer

    train, val = str(tiny_data / "train"), str(tiny_data / "val")
    _refused(lambda: create_data_loaders(train, val, batch_size=0), "batch_size", "Pass")
    _refused(lambda: create_data_loaders(train, val, batch_size="4"), "batch_size=4")
    _refused(lambda: create_data_loaders(train, val, num_workers=-1), "num_workers")
    _refused(lambda: create_data_loaders(5, val), "train_root")
    _refused(lambda: create_data_loaders(train, val, val_transform="resize"), "val_transform")
    _refused(lambda: PochiTrainer("resnet18", "3", device="cpu", create_workspace=False),
             "num_classes=3")
    trainer = PochiTrainer("resnet18", 3, device="cpu", pretrained=False,
                           create_workspace=False)
    _refused(lambda: trainer.setup_training(learning_rate="0.1"), "learning_rate=0.1")
    _refused(lambda: trainer.setup_training(class_weights=3), "class_weights")
    _refused(lambda: trainer.setup_training(early_stopping_config=5), "early_stopping_config")
    _refused(lambda: PochiTrainer("resnet18", 3, device="cpu", work_dir=5), "work_dir")
    _refused(lambda: PochiPredictor("resnet18", 10, "cpu", tmp_path), "model_path", "folder")
    _refused(lambda: PochiPredictor(18, 10, "cpu", untrained_checkpoint), "model_name")
    predictor = PochiPredictor("resnet18", 10, "cpu", untrained_checkpoint)
    _refused(lambda: predictor.predict([1, 2]), "data_loader")
    ones, _, _ = create_data_loaders(train, val, batch_size=1, num_workers=0)
    trainer.setup_training()
    _refused(lambda: trainer.train(ones, ones, epochs=1), "batch_size = 2", "BatchNorm")
    _, loader, _ = create_data_loaders(train, val, batch_size=4, num_workers=0)
    predictor.close()
    _refused(lambda: predictor.predict(loader), "closed")
    _refused(lambda: PochiPredictor.from_config(123, untrained_checkpoint), "config")
    _refused(lambda: JpegSerializer().serialize(np.zeros((0, 0, 3), np.uint8)), "empty")
    for quality in (2.5, "90", 0, None):
        _refused(lambda q=quality: JpegSerializer(quality=q), "quality")
    for body in ([], {"shape": [2, 2, 3]}, {"image_data": "@@@", "shape": [2, 2, 3]},
                 {"image_data": "AAAA", "shape": "2x2"}):
        text = _refused(lambda b=body: RawArraySerializer().deserialize(b))
        assert "Traceback" not in text
    with pytest.raises(ValueError):  # a PayloadError is still the original's ValueError
        RawArraySerializer().deserialize({})


def test_an_empty_path_is_named_as_empty_not_as_a_folder() -> None:
    from pochitrain.arguments import file_argument
    from pochitrain.errors import UsageError

    with pytest.raises(UsageError, match="must be a file path .*got ''"):
        file_argument("model", "")
