"""The CUDA settings a command makes before CUDA starts (pochitrain.cuda_env)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pochitrain.cuda_env import WORK_QUEUES, prepare_cuda_env

KEY = "CUDA_DEVICE_MAX_CONNECTIONS"


def test_the_work_queues_are_set_unless_the_user_set_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY, raising=False)
    prepare_cuda_env()
    assert os.environ[KEY] == WORK_QUEUES == "32"
    monkeypatch.setenv(KEY, "4")
    prepare_cuda_env()
    assert os.environ[KEY] == "4"


@pytest.mark.parametrize("given", [None, "2"])
def test_a_command_sets_them_before_its_verb_runs(given: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != KEY}
    if given is not None:
        env[KEY] = given
    code = ("import os, sys\nfrom pochitrain.cli.main import run\n"
            "seen = []\nimport pochitrain.cli.infer as verb\n"
            "verb.run = lambda args: seen.append(os.environ.get('CUDA_DEVICE_MAX_CONNECTIONS'))\n"
            "run(['infer', 'model.pth'])\nprint(seen)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.stdout.split() == [f"['{given or WORK_QUEUES}']"], out.stderr[-2000:]


def test_the_python_api_sets_them_when_it_chooses_a_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pochitrain.config import resolve_device

    monkeypatch.delenv(KEY, raising=False)
    assert resolve_device("cpu") == "cpu"
    assert os.environ[KEY] == WORK_QUEUES
