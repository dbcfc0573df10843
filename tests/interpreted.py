"""The two checks of the fused Triton resize kernels that run under Triton's interpreter
(``TRITON_INTERPRET=1``), each in its own process.

The interpreter runs every kernel program in Python: a long job for one core. conftest.py
starts both checks when the session begins if a test that reads them is selected
(tests/background.py); the tests (test_gpu_input_banded, test_gpu_batch) only wait for the
results and judge them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from background import Job, start
from PIL import Image

# Every pixel of resize_normalize against PIL (Preprocess.__call__); prints the worst grey
# level difference of each case.
PIL_CHECK = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from pochitrain.data import open_rgb
from pochitrain.gpu_input import resize_normalize
from pochitrain.preprocess import Preprocess

paths, cases = json.loads(sys.argv[1])
images = [np.asarray(open_rgb(p)) for p in paths]
tensors = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous() for a in images]
worst = []
for case in cases:
    pp = Preprocess.from_dict(case)
    out = torch.empty((len(tensors), 3, *pp.input_size), dtype=torch.float32)
    resize_normalize(tensors, pp, out)
    ref = np.stack([pp(Image.fromarray(a)) for a in images])
    grey = np.abs(out.numpy() - ref) * np.asarray(pp.std).reshape(1, 3, 1, 1) * 255
    worst.append(float(grey.max()))
# the first case again, the batch reversed: every image's windows now come from the cache
pp = Preprocess.from_dict(cases[0])
out = torch.empty((len(tensors), 3, *pp.input_size), dtype=torch.float32)
resize_normalize(tensors[::-1], pp, out)
ref = np.stack([pp(Image.fromarray(a)) for a in images[::-1]])
worst.append(float((np.abs(out.numpy() - ref) * np.asarray(pp.std).reshape(1, 3, 1, 1) * 255).max()))
print(json.dumps(worst))
"""

# The training chains with the banded kernels on and off (the matmul resample); prints the
# max and mean grey level difference of each chain.
MATMUL_CHECK = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from torchvision import transforms as T
from pochitrain.gpu_input import KERNELS
from pochitrain.training import gpu_batch as B, gpu_loader as G, gpu_resample as R
paths = json.loads(sys.argv[1])
images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
          .contiguous() for p in paths]
worst = []
assert R.use_banded(images, "bilinear")
for chain in (T.Compose([T.RandomResizedCrop(24, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                         T.RandomVerticalFlip()]),
              T.Compose([T.Resize(30, interpolation=T.InterpolationMode.BICUBIC),
                         T.CenterCrop(26)]),
              T.Compose([T.Resize(90), T.RandomCrop(84, padding=5)])):
    plan, why = B.compile_chain(G.map_transforms(chain)[0])
    got = []
    for banded in (True, False):
        KERNELS.broken = None if banded else "off"
        torch.manual_seed(3)
        got.append(plan(images))
    assert KERNELS.broken == "off"
    d = (got[0] - got[1]).abs() * 255  # grey levels
    worst.append([float(d.max()), float(d.mean())])
print(json.dumps(worst))
"""

# resize_normalize's cases: (input size, resize, crop, interpolation, mean/std) of PIL_CHECK
PIL_CASES = [
    {"input_size": [24, 24], "resize": [28], "center_crop": [24, 24]},  # downscale + crop
    {"input_size": [24, 24], "resize": [28], "center_crop": [24, 24],
     "interpolation": "bicubic"},
    {"input_size": [48, 48], "resize": [40], "center_crop": [48, 48]},  # crop pads
    {"input_size": [40, 30], "resize": [40, 30], "mean": [0.5] * 3, "std": [0.25] * 3},  # exact
    {"input_size": [20, 20], "resize": None, "center_crop": [20, 20]},  # crop only
]


def worst_levels(job: Job) -> list:
    """The JSON list a check printed last; fails with its stderr when it failed."""
    done = job.result()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _launch(script: str, arg: str) -> Job:
    return start(["-c", script, arg], TRITON_INTERPRET="1")


def odd_photo(seed: int, w: int, h: int) -> Image.Image:
    """A smooth random RGB picture of w x h (upscaled noise: real gradients, no flat areas)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def start_pil_check(folder: Path, digit_png: Path) -> Job:
    """JPEGs (decoded by libjpeg) of odd sizes, upscaled and downscaled, a grayscale JPEG and
    a real digit PNG, all in one batch, through every case of ``PIL_CASES``."""
    if importlib.util.find_spec("triton") is None:  # its test module is skipped
        return Job(None, problem="triton is not installed")
    paths = []
    for i, (w, h) in enumerate([(71, 53), (37, 64)]):
        paths.append(folder / f"{i}.jpg")
        odd_photo(i, w, h).save(paths[-1], quality=85)
    paths.append(folder / "gray.jpg")
    odd_photo(9, 45, 33).convert("L").save(paths[-1])
    paths.append(digit_png)
    return _launch(PIL_CHECK, json.dumps([[str(p) for p in paths], PIL_CASES]))


def sample_photo_paths() -> list[Path]:
    """scikit-learn's and matplotlib's sample JPEGs that are installed."""
    found = []
    for pkg, rel in (("sklearn", "datasets/images/china.jpg"),
                     ("sklearn", "datasets/images/flower.jpg"),
                     ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / rel
            if path.exists():
                found.append(path)
    return found


def sample_photos(paths: list[Path]) -> list[Image.Image]:
    """12 RGB crops of different sizes (about 100-240 px a side) of the sample photos."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        with Image.open(paths[i % len(paths)]) as im:
            im = im.convert("RGB")
            w, h = int(rng.integers(100, 240)), int(rng.integers(100, 240))
            x, y = int(rng.integers(0, im.width - w)), int(rng.integers(0, im.height - h))
            out.append(im.crop((x, y, x + w, y + h)))
    return out


def start_matmul_check(folder: Path) -> Job:
    """Two sample photos of different shapes (landscape, portrait), halved (the interpreter
    runs each program in Python), through three training chains: flips, crops, padding and
    upscales."""
    photo_paths = sample_photo_paths()
    if not photo_paths:
        return Job(None, problem="no sample photos (scikit-learn / matplotlib) installed")
    paths = []
    for i, im in enumerate(sample_photos(photo_paths)[1:3]):
        paths.append(str(folder / f"{i}.png"))
        im.resize((im.width // 2, im.height // 2)).save(paths[-1])
    return _launch(MATMUL_CHECK, json.dumps(paths))
