"""Peak RSS of `lcar-deploy localize` over a long run: flat, under 2 GB with the default bundle.

    python benchmarks/memory.py [--images 2000] [--method lcar] [--bundle DIR]

Builds a folder of N symbolic links to real CUB images (../shared/data, cycled; nothing is
copied), runs `lcar-deploy localize` on it in a child process, samples the child's RSS every
0.5 s, and prints RSS at each tenth of the run and the peak (from /proc and getrusage).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shared_data() -> Path:
    env = os.environ.get("LCAR_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and its children, MB (0 when gone)."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--method", default="lcar")
    parser.add_argument("--bundle", type=Path)
    args = parser.parse_args()
    sources = sorted((shared_data() / "CUB_200_2011" / "images").rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(args.images):
            (folder / f"{i:06d}.jpg").symlink_to(sources[i % len(sources)])
        out = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "lcar_deploy.cli",
            "localize",
            str(folder),
            "--out",
            str(out),
            "--method",
            args.method,
            "--quiet",
        ]
        if args.bundle:
            cmd += ["--bundle", str(args.bundle)]
        child = subprocess.Popen(cmd)
        samples: list[tuple[float, int, float]] = []
        start = time.perf_counter()
        predictions = out / "predictions.jsonl"
        while child.poll() is None:
            done = predictions.read_bytes().count(b"\n") if predictions.exists() else 0
            samples.append((time.perf_counter() - start, done, rss_mb(child.pid)))
            time.sleep(0.5)
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"{args.images} images, method {args.method}, exit code {child.returncode}, "
        f"{samples[-1][0]:.0f} s"
    )
    print(f"{'images done':>12} {'RSS MB':>8}")
    for tenth in range(1, 11):
        target = args.images * tenth // 10
        row = next((s for s in samples if s[1] >= target), samples[-1])
        print(f"{row[1]:>12} {row[2]:>8.0f}")
    print(
        f"peak RSS sampled {max(s[2] for s in samples):.0f} MB, "
        f"getrusage max {peak_children:.0f} MB (limit 2048 MB)"
    )


if __name__ == "__main__":
    main()
