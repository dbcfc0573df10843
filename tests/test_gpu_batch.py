"""training.gpu_batch / gpu_resample: the batched transforms of the GPU input, on CPU tensors.

Real photos (scikit-learn's and matplotlib's sample JPEGs, cropped to different sizes) are
compared with torchvision's per-image result and PIL's; random ops are checked statistically
over seeded batches of a few hundred."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from background import Job
from interpreted import sample_photo_paths, sample_photos, worst_levels
from PIL import Image
from torchvision import transforms as T

from pochitrain.data import scan_image_folder
from pochitrain.training import gpu_batch as B
from pochitrain.training import gpu_loader as G
from pochitrain.training import gpu_resample as R

NORM = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
VAL = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor(), NORM])


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """12 RGB photos of different sizes (about 100-240 px a side)."""
    paths = sample_photo_paths()
    if not paths:
        pytest.skip("no sample photos (scikit-learn / matplotlib) installed")
    return sample_photos(paths)


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def _plan(chain: T.Compose) -> tuple[B.Plan, list]:
    ops, _ = G.map_transforms(chain)
    plan, why = B.compile_chain(ops or [])
    assert plan is not None, why
    return plan, ops or []


@pytest.mark.parametrize("chain", [VAL, T.Compose([T.Resize((48, 80)), T.ToTensor(), NORM]),
                                   T.Compose([T.Resize(64, interpolation=T.InterpolationMode
                                                       .BICUBIC), T.CenterCrop(56),
                                              T.ToTensor()])])
def test_deterministic_chain_matches_torchvision_and_pil(photos: list[Image.Image],
                                                         chain: T.Compose) -> None:
    plan, ops = _plan(chain)
    images = [_tensor(p) for p in photos]
    out = plan(images)
    per_image = torch.stack([G.apply(ops, im) for im in images])
    pil = torch.stack([chain(p) for p in photos])
    assert out.shape == per_image.shape and out.dtype == torch.float32
    # one resample instead of two: a fraction of a grey level on average (1/255 = 0.004,
    # times 1/std ~ 4.4 after Normalize)
    assert float((out - per_image).abs().mean()) < 0.01
    assert float((out - pil).abs().mean()) < 0.01
    assert float((out - pil).abs().max()) < 0.5


def test_augment_chain_shapes_dtypes_and_range(photos: list[Image.Image]) -> None:
    chain = T.Compose([T.RandomResizedCrop(40), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                       T.RandomRotation(10), T.ColorJitter(0.3, 0.3, 0.3, 0.1),
                       T.RandomGrayscale(0.2), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    plan, _ = _plan(chain)
    assert [s.kind for s in plan.stages] == ["geo", "pix", "pix", "pix", "pix", "pix"]
    torch.manual_seed(0)
    out = plan([_tensor(p) for p in photos])
    assert out.shape == (12, 3, 40, 40) and out.dtype == torch.float32
    assert -1.0 <= float(out.min()) and float(out.max()) <= 1.0
    torch.manual_seed(0)
    assert torch.equal(out, plan([_tensor(p) for p in photos]))  # seeded: reproducible


def test_flip_probability_and_pixels() -> None:
    torch.manual_seed(0)
    geo = R.Geometry.of([(20, 30)] * 400)
    R.horizontal_flip(geo, T.RandomHorizontalFlip(0.3))
    assert 0.24 < float((geo.x.a < 0).double().mean()) < 0.36
    # a left-dark / right-bright image: flipped ones come out right-dark
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, 4:] = 255
    plan, _ = _plan(T.Compose([T.Resize((8, 8)), T.RandomHorizontalFlip(0.5), T.ToTensor()]))
    torch.manual_seed(1)
    out = plan([image] * 300)
    flipped = out[:, 0, 0, 0] > 0.5
    assert 0.42 < float(flipped.double().mean()) < 0.58
    assert torch.equal(out[flipped], TF.hflip(image.float() / 255).expand(int(flipped.sum()),
                                                                         -1, -1, -1))


def test_random_resized_crop_draws_like_torchvision() -> None:
    torch.manual_seed(0)
    geo = R.Geometry.of([(375, 500)] * 400 + [(4, 400)] * 10)  # the last ones: fallback
    crop = T.RandomResizedCrop(32, scale=(0.2, 0.9), ratio=(0.5, 2.0))
    R.random_resized_crop(geo, crop)
    ch, cw = geo.y.a * 32, geo.x.a * 32  # crop size in source pixels
    area = (ch * cw)[:400] / (375 * 500)
    assert float(area.min()) >= 0.19 and float(area.max()) <= 0.91
    assert 0.45 < float(area.mean()) < 0.65  # uniform in [0.2, 0.9]: mean 0.55
    ratio = (cw / ch)[:400]
    assert float(ratio.min()) > 0.45 and float(ratio.max()) < 2.2
    # top-left offsets inside the image
    top, left = geo.y.b[:400], geo.x.b[:400]
    assert bool((top >= 0).all() and (top + ch[:400] <= 375.01).all() and (left >= 0).all())
    # torchvision's fallback: the whole height, the widest allowed ratio, centred
    assert torch.allclose(ch[400:], torch.full((10,), 4.0, dtype=torch.float64))
    assert torch.allclose(cw[400:], torch.full((10,), 8.0, dtype=torch.float64))
    assert torch.allclose(geo.x.b[400:], torch.full((10,), 196.0, dtype=torch.float64))


def test_color_jitter_ranges_and_rotation_exact() -> None:
    torch.manual_seed(0)
    grey = torch.full((300, 3, 4, 4), 100.0)
    out = B._color_jitter(T.ColorJitter(brightness=0.5), 255.0)(grey)[:, 0, 0, 0] / 100
    assert float(out.min()) >= 0.5 and float(out.max()) <= 1.5 and float(out.std()) > 0.2
    # hue and saturation leave a grey image grey
    same = B._color_jitter(T.ColorJitter(saturation=0.5, hue=0.3), 255.0)(grey)
    assert torch.allclose(same, grey, atol=0.02)  # grey weights sum to 0.9999
    image = torch.rand(2, 3, 9, 13)
    rotate = B._affine(T.RandomRotation((30, 30)), 1.0)(image)
    expected = torch.stack([TF.rotate(im, 30.0, fill=[0.0] * 3) for im in image])
    assert torch.equal(rotate, expected)


def test_random_crop_with_padding_is_a_shifted_window() -> None:
    torch.manual_seed(0)
    image = torch.arange(3 * 10 * 10, dtype=torch.float32).view(3, 10, 10) % 251
    plan, _ = _plan(T.Compose([T.RandomCrop(10, padding=2), T.ToTensor()]))
    out = plan([image.to(torch.uint8)] * 6) * 255
    padded = TF.pad(image.to(torch.uint8), [2]).float()
    for o in out:
        assert any(torch.allclose(o, padded[:, i:i + 10, j:j + 10], atol=1e-3)
                   for i in range(5) for j in range(5))


def test_chunked_resample_equals_one_chunk(photos: list[Image.Image],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plan, _ = _plan(VAL)
    images = [_tensor(p) for p in photos]
    whole = plan(images)
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 3 * 200 * 200)
    assert torch.allclose(plan(images), whole, atol=1e-5)


def test_chains_without_a_batched_form_say_why() -> None:
    cases = {
        "GaussianBlur": T.Compose([T.Resize((32, 32)), T.GaussianBlur(3), T.ToTensor()]),
        "before the images have one size": T.Compose([T.ColorJitter(0.2), T.CenterCrop(32)]),
        "different sizes": T.Compose([T.Resize(32), T.ToTensor()]),
        "expand": T.Compose([T.Resize((32, 32)), T.RandomRotation(5, expand=True)]),
        "fill": T.Compose([T.RandomCrop(32, padding=2, fill=3)]),
    }
    for reason, chain in cases.items():
        ops, _ = G.map_transforms(chain)
        plan, why = B.compile_chain(ops or [])
        assert plan is None and reason in (why or ""), (reason, why)
    # dtype conversions before the crop are fine (a scaling commutes with the resample)
    ops, _ = G.map_transforms(T.Compose([T.ToTensor(), T.RandomResizedCrop(16), NORM]))
    assert B.compile_chain(ops or [])[0] is not None


def _jpeg_folder(photos: list[Image.Image], root: Path) -> Path:
    for i, p in enumerate(photos):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        p.save(root / str(i % 2) / f"{i:02d}.jpg", quality=92)
    return root


def test_loader_batched_matches_per_image_and_prefetch_is_deterministic(
        photos: list[Image.Image], tmp_path: Path) -> None:
    folder = scan_image_folder(_jpeg_folder(photos, tmp_path / "d"), "test",
                               allow_unlabelled=False)
    ops, _ = G.map_transforms(VAL)

    def images(**kw: object) -> torch.Tensor:
        loader = G.GpuLoader(folder, ops or [], batch_size=5, shuffle=False, device="cpu",
                             seed=0, **kw)  # type: ignore[arg-type]
        return torch.cat([b.images for b in loader if b.images is not None])

    batched, per_image = images(), images(batched=False)
    assert batched.shape == per_image.shape == (12, 3, 64, 64)
    assert float((batched - per_image).abs().mean()) < 0.01
    aug = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor()])
    ops, _ = G.map_transforms(aug)
    runs = []
    for prefetch in (0, 2, 2):
        torch.manual_seed(3)
        loader = G.GpuLoader(folder, ops or [], batch_size=5, shuffle=True, device="cpu",
                             seed=0, prefetch=prefetch, drop_last=True)
        runs.append(torch.cat([b.images for b in loader if b.images is not None]))
    assert runs[0].shape == (10, 3, 32, 32)  # drop_last: 2 full batches of 5
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])


def test_loader_falls_back_per_image_and_says_so_once(photos: list[Image.Image], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = scan_image_folder(_jpeg_folder(photos, tmp_path / "d"), "test",
                               allow_unlabelled=False)
    ops, _ = G.map_transforms(T.Compose([T.Resize((24, 24)), T.GaussianBlur(3), T.ToTensor()]))
    loader = G.GpuLoader(folder, ops or [], batch_size=8, shuffle=True, device="cpu", seed=0)
    for _ in range(2):
        assert [int(b.images.shape[0]) for b in loader if b.images is not None] == [8, 4]
    said = capsys.readouterr().out
    assert said.count("image by image") == 1 and "GaussianBlur" in said


def test_gpu_loaders_drop_the_last_train_batch_and_warm_up(
        photos: list[Image.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    folder = scan_image_folder(_jpeg_folder(photos, tmp_path / "d"), "test",
                               allow_unlabelled=False)
    monkeypatch.setattr(G, "decide", lambda *a: (True, "test"))  # CUDA's path, on the CPU
    settings = SimpleNamespace(gpu_input=True, gpu_input_cache=None, batch_size=1, seed=0)
    state = torch.random.get_rng_state()
    loaders = G.gpu_loaders(settings, folder, folder, "cpu", VAL, VAL)
    assert loaders is not None
    for loader in loaders:
        loader.warm_up()  # transforms one batch: the random state is put back
    assert torch.equal(state, torch.random.get_rng_state())
    train, val = loaders
    assert train.drop_last and not val.drop_last  # 12 >= 8 full batches
    assert (train.batch_size, val.batch_size) == (1, 4)  # validation: 4x, no backward pass
    assert "(train batched, val batched)" in capsys.readouterr().out
    settings.batch_size = 5
    train, _ = G.gpu_loaders(settings, folder, folder, "cpu", VAL, VAL)  # type: ignore[misc]
    assert not train.drop_last and len(train) == 3


def test_banded_kernels_agree_with_the_matmul_resample(matmul_check: Job) -> None:
    """The Triton kernels (run by Triton's interpreter on the CPU) give the matmul resample's
    pixels within a few grey levels (mean under half a level), flips, crops, padding and
    upscales included (``interpreted.start_matmul_check``, started with the session)."""
    if matmul_check.proc is None:
        pytest.skip(matmul_check.problem or "")
    worst = worst_levels(matmul_check)
    assert len(worst) == 3
    for max_diff, mean_diff in worst:  # a uint8 intermediate (PIL's) against float matmuls
        assert max_diff <= 3.0 and mean_diff < 0.5, worst
