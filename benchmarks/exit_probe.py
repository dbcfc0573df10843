"""How long a command's interpreter takes to end after its work: runs ``pochi ARGS...`` in a
child process and reports the wall, and the time from the verb's return to the child's end
(Python's finalization, CUDA's teardown). ``--fast`` ends the child with ``os._exit`` after
flushing, to see what skipping the finalization would save.

    PYTHONPATH=. python3 benchmarks/exit_probe.py [--fast] infer model.pth --data DIR -o OUT
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time


def child(argv: list[str], fast: bool) -> None:
    from pochitrain.cli.main import run

    rc = run(argv)
    print(f"returned_at {time.time():.4f}", file=sys.stderr, flush=True)
    if fast:
        sys.stdout.flush()
        os._exit(rc)
    sys.exit(rc)


def main() -> int:
    args = sys.argv[1:]
    fast = args[:1] == ["--fast"]
    args = args[1:] if fast else args
    code = f"import sys; sys.path.insert(0, {os.getcwd()!r}); sys.argv = ['x'] + {args!r}; " \
           f"from benchmarks.exit_probe import child; child(sys.argv[1:], {fast})"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    end = time.time()
    m = re.search(r"returned_at (\S+)", proc.stderr)
    out = {"rc": proc.returncode, "fast_exit": fast, "wall_s": round(end - t0, 3),
           "exit_s": round(end - float(m.group(1)), 3) if m else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
