"""torchvision imported without TorchDynamo, and TorchDynamo still whole afterwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

CODE = """
import sys
from pochitrain.fastimport import import_torchvision
tv = import_torchvision()
assert 'torch._dynamo' not in sys.modules, 'dynamo was imported'
assert 'torch._dynamo.utils' not in sys.modules, 'the stand-in was left behind'
import torch
model = tv.models.get_model('resnet18', num_classes=3).eval()
with torch.inference_mode():
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
ra = sys.modules['torchvision.ops.roi_align']
assert ra.is_compile_supported('cpu') in (True, False)   # the stand-in calls the real one
import torch._dynamo.utils as real
assert hasattr(real, 'is_compile_supported') and hasattr(real, 'counters')
f = torch.compile(lambda x: x * 2, backend='eager')
assert float(f(torch.ones(1))) == 2.0
print('ok')
"""


CONFIG = ("import torch._dynamo\nfrom torch._dynamo.utils import counters as _counters\n"
          "from torchvision import transforms\nepochs = 2\n")
HANG_GUARD_S = 300


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Both fresh interpreters, started together: each spends its time importing torch."""
    config = tmp_path_factory.mktemp("fastimport") / "config.py"
    config.write_text(CONFIG, encoding="utf-8")
    load = ("import sys; from pochitrain.config import load_config; "
            f"s = load_config({str(config)!r}); assert s.epochs == 2; "
            "import torch._dynamo.utils as u; assert hasattr(u, 'counters'); print('ok')")
    procs = {name: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, code in (("torchvision", CODE), ("config", load))}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _output(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, out, err


def test_torchvision_without_dynamo_and_dynamo_intact_afterwards(
        runs: dict[str, subprocess.Popen[str]]) -> None:
    code, out, err = _output(runs["torchvision"])
    assert code == 0 and out.strip() == "ok", out + err


def test_a_config_that_imports_dynamo_itself_still_loads(
        runs: dict[str, subprocess.Popen[str]]) -> None:
    code, out, err = _output(runs["config"])
    assert code == 0 and out.strip() == "ok", out + err
