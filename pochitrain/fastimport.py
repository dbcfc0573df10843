"""Import torchvision without paying for ``torch._dynamo`` (most of torchvision's import).

``torchvision.ops.roi_align`` runs ``from torch._dynamo.utils import is_compile_supported`` at
import time, which imports all of TorchDynamo (and sympy) although nothing pochitrain does
uses it; that is most of ``import torchvision``'s time (docs/benchmarks.md).

While torchvision is being imported (directly, or by a config file that imports
``torchvision.transforms``), ``sys.modules["torch._dynamo.utils"]`` holds a small stand-in
whose ``is_compile_supported`` imports the real function on first call. The stand-in is
removed as soon as the import is done, so a later ``torch.compile`` imports the real
TorchDynamo as usual. If anything goes wrong the import is simply retried the normal way.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

_KEY = "torch._dynamo.utils"


def _stand_in() -> types.ModuleType:
    module = types.ModuleType(_KEY)

    def is_compile_supported(device_type: Any) -> Any:
        from torch._dynamo.utils import is_compile_supported as real

        return real(device_type)

    module.is_compile_supported = is_compile_supported  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def without_dynamo() -> Iterator[None]:
    """Inside this block, importing torchvision does not import TorchDynamo."""
    if "torchvision" in sys.modules or "torch._dynamo" in sys.modules or _KEY in sys.modules:
        yield
        return
    stand_in = _stand_in()
    sys.modules[_KEY] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_KEY) is stand_in:
            del sys.modules[_KEY]


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, quickly (see the module docstring)."""
    try:
        with without_dynamo():
            import torchvision
    except (ImportError, AttributeError):  # a torchvision that needs more of dynamo: plain import
        import torchvision
    return torchvision
