"""The README's picture: real overlays of a bundle in one PNG grid (docs/overview.png).

    python scripts/overlay_grid.py [--bundle DIR] [--out docs/overview.png] [--threads 1]
        [--skimage astronaut.png,coffee.png,...] [--cub 4] [--ilsvrc 4] [--data DIR]

Localizes a few of scikit-image's sample photos and a few CUB and ILSVRC-mini test images
(evenly spread over the test split; from ``--data``, else ``$LCAR_SHARED_DATA``, else
``../shared/data``; a dataset that is not there is left out, with a note) as ``lcar-deploy
localize --overlays`` does, with the bundle (default: the default bundle) and its own method,
predicted class, and draws the overlays (mask contour yellow, box red) in a grid, each captioned
with the class and box score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lcar_deploy.datasets import load_dataset
from lcar_deploy.localize import PREDICTIONS, LocalizeOptions, localize_folder
from lcar_deploy.pipeline import Localizer

SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png")
DATASETS = (("cub", "CUB_200_2011"), ("ilsvrc", "ILSVRC-mini"))
TILE = (300, 225)
CAPTION = 22
COLUMNS = 4


def shared_data() -> Path:
    """``$LCAR_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("LCAR_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def skimage_photos(names: list[str]) -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"not among scikit-image's photos in {folder}: {', '.join(missing)}")
    return [folder / n for n in names]


def dataset_images(data: Path, counts: dict[str, int]) -> list[Path]:
    """``counts[kind]`` test images of each dataset found under ``data``, evenly spread."""
    chosen: list[Path] = []
    for kind, folder in DATASETS:
        count = counts.get(kind, 0)
        if not count:
            continue
        if not (data / folder).is_dir():
            print(f"{data / folder}: not found, left out", file=sys.stderr)
            continue
        records = load_dataset(kind, data / folder, "test").records
        step = len(records) / count
        chosen += [Path(records[int(i * step)].path) for i in range(min(count, len(records)))]
    return chosen


def localize_overlays(
    images: list[Path], bundle: Path | None, threads: int, work: Path
) -> list[dict]:
    """Localize ``images`` (linked into one folder, in this order) with overlays; their
    ``predictions.jsonl`` records, in the same order."""
    folder = work / "images"
    folder.mkdir()
    names = []
    for i, image in enumerate(images):
        name = f"{i:02d}-{image.name}"
        (folder / name).symlink_to(image.resolve())
        names.append(name)
    localizer = Localizer.from_bundle(
        bundle, threads=threads, notify=lambda m: print(m, file=sys.stderr)
    )
    out = work / "run"
    localize_folder(
        localizer, folder, out, LocalizeOptions(overlays=True), progress=False, threads=threads
    )
    records = {}
    for line in (out / PREDICTIONS).read_text().splitlines():
        record = json.loads(line)
        if record.get("status") == "ok":
            record["overlay"] = str(out / record["overlay"])
        records[record["path"]] = record
    return [records[n] for n in names]


def caption(record: dict) -> str:
    if record.get("status") != "ok":
        return "failed"
    name = (record.get("class_name") or "").split(",")[0]
    if record.get("no_object"):
        return f"{name}: no object"
    return f"{name} {record['score']:.2f}"


def grid(records: list[dict], columns: int = COLUMNS) -> Image.Image:
    """The overlays, letterboxed into equal tiles, captioned, ``columns`` a row."""
    columns = max(1, min(columns, len(records)))
    rows = -(-len(records) // columns)
    w, h = TILE
    sheet = Image.new("RGB", (columns * w, rows * (h + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for i, record in enumerate(records):
        x, y = (i % columns) * w, (i // columns) * (h + CAPTION)
        if record.get("status") == "ok":
            tile = Image.open(record["overlay"]).convert("RGB")
            tile.thumbnail((w - 4, h - 4))
            sheet.paste(tile, (x + (w - tile.width) // 2, y + (h - tile.height) // 2))
        draw.text((x + w // 2, y + h + 2), caption(record), fill="black", font=font, anchor="ma")
    return sheet


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the default bundle)")
    parser.add_argument("--out", type=Path, default=Path("docs/overview.png"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--skimage", default=",".join(SKIMAGE_PHOTOS), help="photo names, comma-separated"
    )
    parser.add_argument("--cub", type=int, default=4, help="CUB test images")
    parser.add_argument("--ilsvrc", type=int, default=4, help="ILSVRC-mini test images")
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder")
    parser.add_argument("--columns", type=int, default=COLUMNS)
    args = parser.parse_args(argv)
    photos = skimage_photos([n for n in args.skimage.split(",") if n])
    images = photos + dataset_images(
        args.data or shared_data(), {"cub": args.cub, "ilsvrc": args.ilsvrc}
    )
    if not images:
        raise SystemExit("no image to localize")
    with tempfile.TemporaryDirectory(prefix="overlay-grid-") as work:
        records = localize_overlays(images, args.bundle, args.threads, Path(work))
        sheet = grid(records, args.columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{len(records)} images -> {args.out} ({np.prod(sheet.size) // 1000} k pixels)")
    return args.out


if __name__ == "__main__":
    main()
