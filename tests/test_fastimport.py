"""torchvision imported without TorchDynamo, and TorchDynamo still whole afterwards."""

from __future__ import annotations

import subprocess
import sys

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


def test_torchvision_without_dynamo_and_dynamo_intact_afterwards() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_a_config_that_imports_dynamo_itself_still_loads(tmp_path) -> None:
    config = tmp_path / "config.py"
    config.write_text("import torch._dynamo\nfrom torch._dynamo.utils import counters as _counters\n"
                      "from torchvision import transforms\nepochs = 2\n", encoding="utf-8")
    code = ("import sys; from pochitrain.config import load_config; "
            f"s = load_config({str(config)!r}); assert s.epochs == 2; "
            "import torch._dynamo.utils as u; assert hasattr(u, 'counters'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
