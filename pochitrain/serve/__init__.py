"""``pochi serve``: an HTTP API (the original's v1 paths) over any model file, micro-batched.

FastAPI, uvicorn, python-multipart and prometheus-client come from the optional extra
``pochitrain[serve]``; :func:`require_extra` names it when they are missing.
"""

from __future__ import annotations

import importlib.util

EXTRA_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")
INSTALL_HINT = 'pip install "pochitrain[serve]"'


def require_extra() -> None:
    """BackendMissingError naming the ``serve`` extra when one of its packages is missing."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        from pochitrain.errors import BackendMissingError

        raise BackendMissingError(
            "pochi serve に必要なパッケージがインストールされていません。\n"
            f"pochi serve needs packages that are not installed: {', '.join(missing)}.",
            f"Install the serve extra: {INSTALL_HINT}")
