"""The file-reader helper process of the GPU pipeline (``gpu_input/read_proc.py``), run for real:
same batches, skips and order as the read thread over odd files, a helper that dies, and more
files in a batch than its shared buffer holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pochitrain.data import scan_image_folder
from pochitrain.gpu_input import GpuBatches, ReaderProcess, SlotChunks, read_item, read_proc
from pochitrain.preprocess import Preprocess

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux only")
PP = Preprocess(input_size=[24, 24], resize=[28], center_crop=[24, 24])


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain JPEGs, and each kind of file the helper must send back to the command: a PNG, a
    truncated JPEG, an EXIF-rotated one, a CMYK one, an empty file, and a JPEG padded past
    a slot's size (still valid: zero padding after the end marker)."""
    root = tmp_path_factory.mktemp("odd")
    for c in ("a", "b"):
        (root / c).mkdir()
    for i in range(70):
        _photo(i, 30 + i % 9, 26 + i % 5).save(root / "ab"[i % 2] / f"{i:03d}.jpg")
    good = (root / "a" / "000.jpg").read_bytes()
    _photo(80, 33, 29).save(root / "a" / "080.png")
    (root / "a" / "081_cut.jpg").write_bytes(good[: len(good) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(82, 40, 20).save(root / "b" / "082_rotated.jpg", exif=exif.tobytes())
    _photo(83, 30, 30).convert("CMYK").save(root / "b" / "083_cmyk.jpg")
    (root / "b" / "084_empty.jpg").write_bytes(b"")
    (root / "a" / "085_padded.jpg").write_bytes(good + bytes(read_proc.SLOT_BYTES + 10))
    return root


def _batches(folder: Path, mode: str, batch: int,
             monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    monkeypatch.setenv("POCHI_READER", mode)
    samples = scan_image_folder(folder).samples
    return [(b.clone() if b is not None else None, paths, labels, skipped)
            for b, paths, labels, skipped in GpuBatches(PP, "cpu")(samples, batch)]


@pytest.mark.parametrize("batch, slots", [(16, read_proc.SLOTS), (70, 2)])
def test_helper_gives_the_batches_of_the_read_thread(odd_folder: Path, batch: int, slots: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 slots of 32 files for batches of 70: groups that find no free slot are read here
    monkeypatch.setattr(read_proc, "SLOTS", slots)
    ref = _batches(odd_folder, "thread", batch, monkeypatch)
    got = _batches(odd_folder, "process", batch, monkeypatch)
    assert [g[1:] for g in got] == [r[1:] for r in ref]
    assert all(torch.equal(g[0], r[0]) for g, r in zip(got, ref))
    skipped = {p.name for r in ref for p in r[3]}
    assert skipped == {"081_cut.jpg", "084_empty.jpg"}  # PIL's verdict, as on the CPU path
    assert sum(len(r[1]) for r in ref) == 74


def test_helper_answers_what_the_command_must_read_itself(odd_folder: Path) -> None:
    from PIL import Image as PILImage

    reader = ReaderProcess.start(PILImage.MAX_IMAGE_PIXELS)
    assert reader is not None
    try:
        paths = sorted(p for p in odd_folder.rglob("*") if p.is_file())
        odd = [p for p in paths if not p.name[:3].isdigit() or "_" in p.name or p.suffix != ".jpg"]
        plain = [p for p in paths if p not in odd][:3]
        reader.request(5, plain + odd)
        slot, answers = reader.receive()
    finally:
        reader.close()
    assert slot == 5
    kinds = {p.name: kind for p, (kind, _, _) in zip(plain + odd, answers)}
    assert [kinds[p.name] for p in plain] == ["jpeg"] * 3
    assert {n for n, k in kinds.items() if k == "other"} == {p.name for p in odd}
    first_off, first_size = answers[0][1], answers[0][2]
    assert first_off == 5 * read_proc.SLOT_BYTES and first_size == plain[0].stat().st_size


def test_a_helper_that_dies_leaves_the_command_reading(odd_folder: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # one slot, and the helper is killed (and waited for) just before the second request is
    # sent: whatever the timing, that request and every later one find it gone
    monkeypatch.setattr(read_proc, "SLOTS", 1)
    samples = scan_image_folder(odd_folder).samples
    reader = ReaderProcess.start(None)
    assert reader is not None
    send = reader.request
    sent: list[int] = []

    def request(slot: int, paths: list[Path]) -> None:
        if len(sent) == 1:
            reader.stop()  # a helper killed mid-run
        sent.append(slot)
        send(slot, paths)

    monkeypatch.setattr(reader, "request", request)
    chunks = SlotChunks(reader, samples, 10, lambda paths: [read_item(p) for p in paths])
    got = []
    for chunk in chunks:
        got += [(p, kind) for p, _, kind, _ in chunk]
        chunks.consumed(len(chunk))
    reader.close()
    assert len(sent) == 2  # the first request answered, the second failed
    assert chunks.failed is not None
    assert [p for p, _ in got] == [p for p, _ in samples]
    want = {p: read_item(p)[0] for p, _ in samples}
    assert all(kind == want[p] for p, kind in got)


def test_helper_imports_nothing_heavy() -> None:
    import subprocess

    code = ("import sys, pochitrain.gpu_input.read_proc; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
