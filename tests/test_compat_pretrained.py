"""pretrained = True: ImageNet weights from the torch hub cache, downloaded when missing.

No test touches the network: TORCH_HOME is a temporary folder, the "download" copies a local
file, and the offline case makes the download fail.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from pochitrain.models import WeightsDownloadError, build_model

NAME = "mobilenet_v3_small"  # the smallest supported network


def _url() -> str:
    import torchvision

    return torchvision.models.get_model_weights(NAME).DEFAULT.url


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file in torchvision's format (1000 classes, seeded values)."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("server") / Path(_url()).name
    torch.save(build_model(NAME, 1000).state_dict(), path)
    return path


def test_cached_weights_are_used(tmp_path: Path, imagenet_file: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints" / imagenet_file.name
    cache.parent.mkdir(parents=True)
    cache.write_bytes(imagenet_file.read_bytes())

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = build_model(NAME, 3, pretrained=True)
    reference = torch.load(imagenet_file, weights_only=True)
    first = next(iter(reference))
    assert torch.equal(model.state_dict()[first], reference[first])
    assert model.classifier[-1].out_features == 3  # new head for 3 classes
    assert _bn_momenta(model) == {0.1}  # torchvision's mobilenet_v3 says 0.01


def _bn_momenta(model: torch.nn.Module) -> set[float | None]:
    return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_batchnorm_statistics_follow_a_short_training() -> None:
    """From scratch, mobilenet_v3 too: after 30 training steps on one batch, the first
    BatchNorm's running mean has moved most of the way to that batch's mean (96 %; at
    torchvision's 0.01 it would be 26 %)."""
    torch.manual_seed(0)
    model = build_model(NAME, 3).train()
    assert _bn_momenta(model) == {0.1}
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = model.features[0][0]
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        target = conv(batch).mean(dim=(0, 2, 3))
        for _ in range(30):
            model(batch)
    moved = (first.running_mean / target).median().item()
    assert 0.9 < moved <= 1.0, moved


def test_download_into_hub_cache_with_progress(tmp_path: Path, imagenet_file: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls: list[tuple[str, str, bool]] = []

    def fake_download(url: str, dst: str, hash_prefix: object = None,
                      progress: bool = True) -> None:
        calls.append((url, dst, progress))
        Path(dst).write_bytes(imagenet_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    build_model(NAME, 2, pretrained=True)
    cache = tmp_path / "hub" / "checkpoints" / imagenet_file.name
    assert calls == [(_url(), str(cache), True)] and cache.is_file()
    assert "Downloading the ImageNet weights" in capsys.readouterr().out
    build_model(NAME, 2, pretrained=True)  # the cache is reused
    assert len(calls) == 1


def test_offline_error_names_url_and_cache_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsDownloadError) as err:
        build_model(NAME, 2, pretrained=True)
    cache = tmp_path / "hub" / "checkpoints" / Path(_url()).name
    assert _url() in err.value.message and str(cache) in err.value.message
    assert "ダウンロードできません" in err.value.message and str(cache) in err.value.remedy
    assert not cache.exists()


def test_damaged_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints" / Path(_url()).name
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"truncated")
    with pytest.raises(WeightsDownloadError, match="cannot be loaded") as err:
        build_model(NAME, 2, pretrained=True)
    assert f"Delete {cache}" in err.value.remedy
