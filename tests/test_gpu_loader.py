"""training.gpu_loader: transform mapping, the GPU/CPU decision, and the loader on CPU tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision import transforms as T

from pochitrain.data import scan_image_folder
from pochitrain.errors import ConfigError
from pochitrain.training import gpu_loader as G

NORM = T.Normalize([0.5] * 3, [0.5] * 3)
AUGMENT = T.Compose([T.RandomResizedCrop(24), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                     T.RandomRotation(10), T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor(), NORM])
VAL = T.Compose([T.Resize((32, 32)), T.ToTensor(), NORM])


def test_common_transforms_map_and_run_on_uint8_tensors() -> None:
    ops, why = G.map_transforms(AUGMENT)
    assert why is None and ops is not None and len(ops) == 7
    assert isinstance(ops[5], G.ToFloat)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    out = G.apply(ops, image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert -1.01 <= float(out.min()) and float(out.max()) <= 1.01


def test_val_transform_matches_pil_path_closely() -> None:
    from PIL import Image

    torch.manual_seed(0)
    arr = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8)
    pil = VAL(Image.fromarray(arr.numpy()))
    ops, _ = G.map_transforms(VAL)
    gpu = G.apply(ops or [], arr.permute(2, 0, 1).contiguous())
    assert gpu.shape == pil.shape
    assert float((gpu - pil).abs().mean()) < 0.05  # antialiased resize, 2/255 levels on average


def test_unsupported_transform_falls_back_with_the_reason() -> None:
    odd = T.Compose([T.Resize((32, 32)), T.Lambda(lambda x: x), T.ToTensor()])
    ops, why = G.map_transforms(odd)
    assert ops is None and "Lambda" in (why or "")
    use, reason = G.decide("auto", "cuda", {"train_transform": odd, "val_transform": VAL})
    assert not use and reason.startswith("train_transform: Lambda")
    assert G.decide("auto", "cuda", {"train_transform": AUGMENT, "val_transform": VAL})[0]
    assert G.decide("auto", "cpu", {"train_transform": AUGMENT})[1] == "no CUDA device"
    assert not G.decide(False, "cuda", {"train_transform": AUGMENT})[0]
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        G.decide(True, "cpu", {"train_transform": AUGMENT})
    with pytest.raises(ConfigError):
        G.decide("yes", "cuda", {})


def _folder(digits_dir: Path, tmp_path: Path, corrupt: bool = True) -> Path:
    from PIL import Image

    root = tmp_path / "data"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((digits_dir / "train" / cls).glob("*.png"))[:5]):
            if i % 2:  # some JPEGs, some PNGs
                Image.open(f).convert("RGB").save(root / cls / f"{f.stem}.jpg", quality=95)
            else:
                shutil.copy(f, root / cls / f.name)
    if corrupt:
        (root / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_loader_decodes_transforms_and_skips_on_cpu(digits_dir: Path, tmp_path: Path) -> None:
    folder = scan_image_folder(_folder(digits_dir, tmp_path), "test", allow_unlabelled=False)
    ops, _ = G.map_transforms(AUGMENT)
    loader = G.GpuLoader(folder, ops or [], batch_size=4, shuffle=True, device="cpu", seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    images = sum(int(b.images.shape[0]) for b in batches if b.images is not None)
    skipped = [i for b in batches for i in b.skipped]
    assert images == 10 and len(skipped) == 1
    assert folder.samples[skipped[0]][0].name == "broken.jpg"
    assert batches[0].images is not None and batches[0].images.shape[1:] == (3, 24, 24)
    # resharded (DDP): the sampler decides the indices
    half = loader.resharded([0, 2, 4], 2, drop_last=True)
    assert [int(b.images.shape[0]) for b in half if b.images is not None] == [2]


def test_decode_once_cache_prints_its_size(digits_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = scan_image_folder(_folder(digits_dir, tmp_path, corrupt=False), "test",
                               allow_unlabelled=False)
    cache = G.build_cache(folder, "ram", "cpu", "train")
    assert "GiB" in capsys.readouterr().out and len(cache.images) == 10
    assert all(c is not None and c.dtype == torch.uint8 for c in cache.images.values())
    assert G.cache_bytes(folder) == sum(c.numel() for c in cache.images.values())
    ops, _ = G.map_transforms(VAL)
    loader = G.GpuLoader(folder, ops or [], batch_size=8, shuffle=False, device="cpu",
                         seed=0, cache=cache)
    assert [int(b.images.shape[0]) for b in loader if b.images is not None] == [8, 2]


def _passes(loader: G.GpuLoader, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [[(b.images.clone(), b.labels.clone()) for b in loader if b.images is not None]
            for _ in range(n)]


@pytest.mark.parametrize("kept_images", [13, 3])  # every image (and the broken one), or 3
def test_images_kept_from_the_first_pass_give_the_same_batches(
        digits_dir: Path, tmp_path: Path, kept_images: int) -> None:
    """gpu_input_cache = "auto": the first pass keeps what it decodes while the budget lasts;
    the next passes take those from memory (their files are gone by then) and decode the
    rest, and every batch equals the batch of a loader that decodes every pass."""
    root = _folder(digits_dir, tmp_path)
    folder = scan_image_folder(root, "test", allow_unlabelled=False)
    ops, _ = G.map_transforms(AUGMENT)
    plain = G.GpuLoader(folder, ops or [], batch_size=4, shuffle=True, device="cpu", seed=0)
    torch.manual_seed(0)  # the random transforms draw from torch's global generator
    expected = _passes(plain, 3)
    one_image = 3 * 32 * 32  # the digits are 32x32 RGB in uint8
    cache = G.DecodedImages("cpu", budget=kept_images * one_image)
    kept = G.GpuLoader(folder, ops or [], batch_size=4, shuffle=True, device="cpu", seed=0,
                       cache=cache)
    torch.manual_seed(0)
    got = _passes(kept, 1)
    held = {i for i, image in cache.images.items() if image is not None}
    assert len(held) == min(kept_images, 10) and cache.used <= kept_images * one_image
    assert (len(cache.images) == 11) == (kept_images == 13)  # the broken file: kept as None
    if kept_images == 13:
        shutil.rmtree(root)  # nothing is read again
    got += _passes(kept, 2)
    for want, have in zip(expected, got, strict=True):
        assert len(want) == len(have)
        for (x, y), (x2, y2) in zip(want, have, strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    if root.exists():  # the kept images are the decoded ones, left as they were
        for i in held:
            again = G.decode([folder.samples[i][0]], kept.decoder, kept.pool)[0]
            assert torch.equal(cache.images[i], again)


def test_auto_keeps_images_only_on_a_gpu_with_a_later_epoch() -> None:
    assert G.kept_images("cpu", 5) is None
    assert G.kept_images("cuda", 1) is None
    kept = G.kept_images("cuda:0", 2)
    assert kept is not None and kept.budget is None  # worked out when the first pass starts
