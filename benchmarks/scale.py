"""How decoding time and memory grow with the image's size (a 1k, 4k and 12k JPEG and PNG).

    python benchmarks/scale.py [--sides 1024,4096,12000] [--repeats 3]

Makes each test image from a real CUB photo (../shared/data) upscaled to the side (4:3), in a
temporary folder, then decodes each in a fresh child process the way ``localize`` does
(:func:`lcar_deploy.image_io.load_image`, then the resize to the bundle's input and work sizes)
and prints the best wall time of ``--repeats`` decodes, the decoded size (JPEGs above 2048 px
are decoded at a reduced DCT scale) and the child's peak RSS (a child that only imported the
library peaks at the figure printed first). Images over ``max_pixels`` after decoding are refused, with the error shown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

CHILD = r"""
import json, sys, time
from lcar_deploy.image_io import load_image, resize_rgb
from lcar_deploy.errors import LcarError
def hwm():  # peak RSS of this address space, MB (getrusage's would include the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
best, size, error = None, None, None
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    try:
        image = load_image(sys.argv[1])
        resize_rgb(image.rgb, 384)
        resize_rgb(image.rgb, 224)
    except LcarError as exc:
        error = str(exc).split(": ", 1)[-1]
        break
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
    size = image.rgb.shape[1::-1]
print(json.dumps({"ms": None if best is None else 1000 * best, "decoded": size,
                  "peak_mb": hwm(), "import_mb": base, "error": error}))
"""


def shared_data() -> Path:
    env = os.environ.get("LCAR_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="1024,4096,12000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source = sorted((shared_data() / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    photo = Image.open(source).convert("RGB")
    print(f"source photo: {source.name} ({photo.width}x{photo.height})")
    print("| side | format | file MB | decoded | decode + resizes, ms | peak RSS, MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="lcar-scale-") as tmp:
        for side in (int(s) for s in args.sides.split(",")):
            big = photo.resize((side, side * 3 // 4), Image.Resampling.BILINEAR)
            for fmt in ("jpg", "png"):
                path = Path(tmp) / f"{side}.{fmt}"
                big.save(path, quality=90) if fmt == "jpg" else big.save(path, compress_level=1)
                if fmt == "png":
                    del big
                run = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), str(args.repeats)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(run.stdout.strip().splitlines()[-1])
                if side == int(args.sides.split(",")[0]) and fmt == "jpg":
                    print(
                        f"(peak RSS of the child after the import alone: {r['import_mb']:.0f} MB)"
                    )
                mb = path.stat().st_size / 2**20
                if r["error"]:
                    shown = f"refused: {r['error']}"
                    print(f"| {side} | {fmt} | {mb:.1f} | - | {shown} | {r['peak_mb']:.0f} |")
                else:
                    w, h = r["decoded"]
                    print(
                        f"| {side} | {fmt} | {mb:.1f} | {w}x{h} | {r['ms']:.0f} | "
                        f"{r['peak_mb']:.0f} |"
                    )
                path.unlink()


if __name__ == "__main__":
    main()
