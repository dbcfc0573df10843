"""Imbalanced classes: class_weights = "balanced" (inverse class frequency, printed and recorded
in run.json) and sampler = "balanced" (every class drawn equally often), on real images."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from tiny import tiny_config

from pochitrain.cli.main import run


@pytest.fixture(scope="module")
def imbalanced(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 6 images of class 0, 2 of class 1, 4 of class 2; val as tiny_data."""
    root = tmp_path_factory.mktemp("imbalanced")
    shutil.copytree(tiny_data / "val", root / "val")
    for cls, n in (("0", 6), ("1", 2), ("2", 4)):
        (root / "train" / cls).mkdir(parents=True)
        for f in sorted((tiny_data / "train" / cls).glob("*.png"))[:n]:
            shutil.copy(f, root / "train" / cls / f.name)
    return root


def test_balanced_weights_and_sampler_train_and_are_recorded(
        imbalanced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, imbalanced, extra='class_weights = "balanced"\n'
                                                     'sampler = "balanced"\n')
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "runs"),
                "--quiet"]) == 0
    # 12 images, 3 classes: 12 / (3 x 6), 12 / (3 x 2), 12 / (3 x 4)
    assert "class_weights = 'balanced': 0 0.667, 1 2, 2 1" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["class_weights_resolved"] == pytest.approx([2 / 3, 2.0, 1.0])
    assert record["settings"]["class_weights"] == "balanced"
    assert record["settings"]["sampler"] == "balanced"


def test_the_balanced_sampler_draws_every_class_equally_often(imbalanced: Path) -> None:
    from torchvision import transforms

    from pochitrain.data import scan_image_folder
    from pochitrain.training.data import make_loader

    folder = scan_image_folder(imbalanced / "train")

    def drawn(balanced: bool) -> Counter[int]:
        loader = make_loader(folder, transforms.ToTensor(), batch_size=4, shuffle=True,
                             num_workers=0, device="cpu", seed=0, balanced=balanced)
        labels = [folder.samples[i][1] for _ in range(200) for i in loader.sampler]
        return Counter(labels)

    plain, balanced = drawn(False), drawn(True)
    assert plain == {0: 1200, 1: 400, 2: 800}  # every image once per epoch
    assert sum(balanced.values()) == 2400  # as many draws per epoch as images
    # 2,400 draws of p = 1/3 each: 800 +- 23 (1 sd); seeded, so the counts are fixed
    assert all(700 < balanced[c] < 900 for c in (0, 1, 2)), balanced


def test_wrong_values_name_the_choices(imbalanced: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for extra, expected in (('sampler = "weighted"\n', "balanced"),
                            ('class_weights = "auto"\n', "'balanced'")):
        config = tiny_config(tmp_path / extra[:7], imbalanced, extra=extra)
        assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_val_split_takes_validation_images_from_the_one_folder(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """val_split = 0.34 on 3 classes x 6 images: 2 of each class validate, the rest train;
    the split is written to paths/*.txt, seeded, and kept when the run is resumed."""
    from pochitrain.data import scan_image_folder
    from pochitrain.training.split import recorded_split, split_folder

    config = tiny_config(tmp_path / "cfg", tiny_data,
                         extra="val_split = 0.34\nval_data_root = None\n")
    assert run(["train", "-c", str(config), "--work-dir", str(tmp_path / "runs"),
                "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    train = (run_dir / "paths" / "train.txt").read_text().split()
    val = (run_dir / "paths" / "val.txt").read_text().split()
    assert len(val) == 6 and len(train) == 12 and not set(train) & set(val)
    assert Counter(Path(p).parent.name for p in val) == {"0": 2, "1": 2, "2": 2}
    assert set(train) | set(val) == {str(p) for p, _ in
                                     scan_image_folder(tiny_data / "train").samples}
    folder = scan_image_folder(tiny_data / "train")
    again, other_seed = split_folder(folder, 0.34, 42), split_folder(folder, 0.34, 7)
    assert [str(p) for p, _ in again[1].samples] == val  # seeded: the same split
    assert [p for p, _ in other_seed[1].samples] != [p for p, _ in again[1].samples]
    kept_train, kept_val = recorded_split(run_dir, folder)  # what a resumed run trains on
    assert [str(p) for p, _ in kept_val.samples] == val
    assert [str(p) for p, _ in kept_train.samples] == train

    both = tiny_config(tmp_path / "both", tiny_data, extra="val_split = 0.2\n")
    assert run(["train", "-c", str(both), "--work-dir", str(tmp_path / "runs2")]) == 2
    assert "val_split = 0.2 and val_data_root" in capsys.readouterr().err
