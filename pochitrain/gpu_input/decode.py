"""Decode with fallback: nvJPEG for the JPEGs it reads like PIL, PIL for everything else.

JPEGs go to nvJPEG together, one by one after a failure; what it refuses PIL decodes
(``data.open_rgb``), whose verdict decides as on the CPU path. On the CPU torchvision decodes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pochitrain.errors import first_line

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pochitrain.gpu_input.read import Entry


class Decoder:
    """Decodes chunks of entries on ``device``. On CUDA a start-up probe (a tiny JPEG)
    runs in a thread, so nvJPEG's start overlaps other work; :attr:`name` waits for it."""

    def __init__(self, device: str) -> None:
        from pochitrain.fastimport import import_torchvision

        import_torchvision()  # decode_jpeg lives there; skip TorchDynamo's import
        self.device = device
        self.cuda = device.startswith("cuda")
        self._name: str | None = None if self.cuda else "torchvision (CPU)"
        self._probe: threading.Thread | None = None
        if self.cuda:
            self._probe = threading.Thread(target=self._run_probe, name="pochi-nvjpeg-probe",
                                           daemon=True)
            self._probe.start()

    @property
    def name(self) -> str:
        """"nvJPEG", or why PIL decodes instead (known once the start-up probe is done)."""
        if self._name is None and self._probe is not None:
            self._probe.join()
        return self._name or "PIL in threads (nvJPEG probe failed)"

    @property
    def nvjpeg(self) -> bool:
        return not self.name.startswith("PIL")

    def _run_probe(self) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, format="JPEG")
        try:
            self._decode_many([buf.getvalue()])
        except RuntimeError as exc:  # torchvision built without nvJPEG
            self._name = ("PIL in threads (nvJPEG unavailable: "
                          f"{first_line(exc)})")
            return
        self._name = "nvJPEG"

    def _decode_many(self, datas: Sequence[Any]) -> list[torch.Tensor]:
        """nvJPEG over file contents: uint8 tensors (``read.read_file``) or bytes."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [d if isinstance(d, torch.Tensor) else
                   torch.frombuffer(d if isinstance(d, bytearray) else bytearray(d),
                                    dtype=torch.uint8) for d in datas]
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))

    def _decode_jpegs(self, entries: Sequence[Entry]) -> list[torch.Tensor | None]:
        """Decoded images of JPEG entries; None where neither nvJPEG nor PIL can decode."""
        if entries and self.nvjpeg:
            try:
                return list(self._decode_many([e.payload for e in entries]))
            except RuntimeError:
                pass  # one bad file fails the whole batch: retry one by one
        return [self._decode_one(entry) for entry in entries]

    def _decode_one(self, entry: Entry) -> torch.Tensor | None:
        import numpy as np

        from pochitrain.data import open_rgb

        if self.nvjpeg:
            with contextlib.suppress(RuntimeError):
                return self._decode_many([entry.payload])[0]
        image = open_rgb(entry.source)
        return None if image is None else self._from_hwc(np.asarray(image))

    def _from_hwc(self, array: np.ndarray) -> torch.Tensor:
        """(h, w, 3) uint8 array -> (3, h, w) uint8 tensor on the device."""
        import torch

        if not array.flags.writeable:  # torch shares the memory: it must be ours
            array = array.copy()
        image = torch.from_numpy(array).permute(2, 0, 1)
        return image.to(self.device, non_blocking=True) if self.cuda else image.contiguous()

    def decode(self, entries: Sequence[Entry]) -> list[torch.Tensor | None]:
        """(3, h, w) uint8 device tensor per entry; None where undecodable."""
        jpegs = iter(self._decode_jpegs([e for e in entries if e.kind == "jpeg"]))
        return [next(jpegs) if e.kind == "jpeg" else
                self._from_hwc(e.payload) if e.kind == "rgb" else None for e in entries]
