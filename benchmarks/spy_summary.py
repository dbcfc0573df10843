"""Summarise a ``py-spy record -f raw --threads`` file: samples per thread, the leaf functions
and the nearest pochitrain frame of each sample (where our code spends the interpreter).

    python3 benchmarks/spy_summary.py profile.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter


def _ours(frames: list[str]) -> str:
    for f in reversed(frames):
        if "pochitrain/" in f or "benchmarks/" in f or "(pochi" in f:
            return f
    return frames[-1] if frames else "?"


def _short(frame: str) -> str:
    return re.sub(r"\(/\S*/(site-packages|dist-packages|lib/python3\.\d+)/", "(", frame)


def summarise(path: str, top: int) -> str:
    threads: Counter[str] = Counter()
    per_thread: dict[str, Counter[str]] = {}
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        head = [f for f in frames[:3] if f.startswith(("thread", "process"))]
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        # name the thread by a frame that says what it does
        role = next((f.split(" ")[0] for f in body if f.split(" ")[0] in (
            "produce", "_each", "_worker", "worker", "_run_batch", "run_inference", "fit",
            "main", "<module>")), "?")
        key = " ".join(head)[:60] if ":" in " ".join(head) else f"{' '.join(head)[:40]} {role}"
        threads[key] += n
        leaves[_short(body[-1]) if body else "?"] += n
        ours[_short(_ours(body))] += n
        per_thread.setdefault(key, Counter())[_short(_ours(body))] += n
        total += n
    out = [f"samples: {total}", "", "by thread:"]
    out += [f"  {n:7d} {100 * n / total:5.1f}%  {k}" for k, n in threads.most_common(top)]
    for key, _ in threads.most_common(6):
        out += [f"  in {key}:"]
        out += [f"    {n:7d} {100 * n / total:5.1f}%  {k}"
                for k, n in per_thread[key].most_common(8)]
    out += ["", "leaf functions:"]
    out += [f"  {n:7d} {100 * n / total:5.1f}%  {k}" for k, n in leaves.most_common(top)]
    out += ["", "nearest pochitrain frame:"]
    out += [f"  {n:7d} {100 * n / total:5.1f}%  {k}" for k, n in ours.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print(summarise(args.path, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
