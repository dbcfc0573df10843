"""torchvision imported without TorchDynamo, and TorchDynamo still whole afterwards."""

from __future__ import annotations

from background import Job, Script

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
LOAD = ("import sys; from pochitrain.config import load_config; "
        "s = load_config('config.py'); assert s.epochs == 2; "
        "import torch._dynamo.utils as u; assert hasattr(u, 'counters'); print('ok')")

# both fresh interpreters, started as the session begins: each spends its time importing torch
SCRIPTS = {"fastimport_torchvision": Script(CODE),
           "fastimport_config": Script(LOAD, files={"config.py": CONFIG})}


def test_torchvision_without_dynamo_and_dynamo_intact_afterwards(
        scripts: dict[str, Job]) -> None:
    out = scripts["fastimport_torchvision"].result()
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_a_config_that_imports_dynamo_itself_still_loads(scripts: dict[str, Job]) -> None:
    out = scripts["fastimport_config"].result()
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
