"""Steady-state `localize` throughput of two installs, side by side in one run.

    python benchmarks/throughput.py DIR --old OLD/.venv/bin/lcar-deploy \
        [--new .venv/bin/lcar-deploy] [--pairs 3] [--threads 2]

Runs ``lcar-deploy localize DIR --out TMP --threads N --quiet`` with the old and the new
command in turn, ``--pairs`` times, on an otherwise idle machine. While each run goes, the
lines of its ``predictions.jsonl`` are counted every 0.1 s; the steady-state rate is the
images written between the 10% and the 90% marks over the time between them, so the start-up
(imports, the bundle, the first batch) and the last batches are left out. The summary line's
own img/s (the whole run) is printed beside it. Each command runs in its own directory's
install, with its own default bundle, as a user of that version would run it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def steady_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Images per second between the first samples at 10% and at 90% of ``total``."""
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    return (high[1] - low[1]) / (high[0] - low[0])


def run(command: Path, images: Path, threads: int) -> tuple[float, float]:
    """(steady-state img/s, the summary's img/s) of one localize run."""
    total = sum(1 for p in images.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        out = Path(tmp) / "out"
        argv = [str(command), "localize", str(images), "--out", str(out)]
        argv += ["--threads", str(threads), "--quiet"]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp
        )
        samples = []
        while proc.poll() is None:
            samples.append((time.perf_counter(), count_lines(out / "predictions.jsonl")))
            time.sleep(0.1)
        output = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise SystemExit(f"{command} exited {proc.returncode}:\n{output[-2000:]}")
        samples.append((time.perf_counter(), count_lines(out / "predictions.jsonl")))
    summary = re.findall(r"([0-9.]+) img/s", output)
    return steady_rate(samples, total), float(summary[-1]) if summary else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="a folder of images (no sub-folders)")
    parser.add_argument("--old", type=Path, required=True, help="the old install's lcar-deploy")
    parser.add_argument("--new", type=Path, default=Path(".venv/bin/lcar-deploy"))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"old": [], "new": []}
    print(f"{'pair':<6}{'install':<8}{'steady img/s':>14}{'summary img/s':>15}")
    for pair in range(1, args.pairs + 1):
        for name, command in (("old", args.old), ("new", args.new)):
            steady, summary = run(command.resolve(), args.images.resolve(), args.threads)
            rates[name].append(steady)
            print(f"{pair:<6}{name:<8}{steady:>14.2f}{summary:>15.2f}", flush=True)
        print(f"{'':<6}{'ratio':<8}{rates['new'][-1] / rates['old'][-1]:>13.2f}x")
    old, new = statistics.mean(rates["old"]), statistics.mean(rates["new"])
    print(f"\nmean steady state: old {old:.2f} img/s, new {new:.2f} img/s, {new / old:.2f}x")


if __name__ == "__main__":
    main()
