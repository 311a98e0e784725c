"""From an ImageFolder to COCO: train, localize with known labels, convert, COCOeval.

Builds an ImageFolder view of the CUB data (links, outside the repository:
``VIEW/{train,test}/<class folder>/<image>``), then runs the README's three commands on it:

    lcar-deploy train --dataset folder --root VIEW --out WORK/train --bundle WORK/bundle
    lcar-deploy localize VIEW/test --labels folder --bundle WORK/bundle --out WORK/loc --format coco
    (COCOeval of WORK/loc/coco.json against CUB's boxes written in COCO form)

and reports COCO AP / AP50 (bbox) and the GT-known accuracy (IoU >= 0.5, the box in the
image's pixels against CUB's box) of the same predictions, into WORK/own_data.json.

    python benchmarks/own_data.py --cub ../shared/data/CUB_200_2011 --view /tmp/cub-folder \
        --work /tmp/cub-folder-run --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_view(cub: Path, view: Path) -> None:
    """``view/{train,test}/<class>/<image>`` links to the CUB images (made once)."""
    from lcar_deploy.datasets import load_dataset

    for split in ("train", "test"):
        for record in load_dataset("cub", cub, split):
            link = view / split / record.image_id
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(record.path)


def run(*args: str | Path) -> float:
    """Run ``lcar-deploy ARGS``; its wall time in seconds."""
    command = [str(Path(sys.executable).with_name("lcar-deploy")), *map(str, args)]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def ground_truth(cub: Path, predicted: dict) -> dict:
    """CUB's test boxes in COCO form, with the images and categories of ``predicted``."""
    from lcar_deploy.datasets import load_dataset

    by_path = {r.image_id: r for r in load_dataset("cub", cub, "test")}
    categories = {c["name"]: c["id"] for c in predicted["categories"]}
    annotations = []
    for image in predicted["images"]:
        record = by_path[image["file_name"]]
        folder = image["file_name"].split("/", 1)[0]
        for x0, y0, x1, y1 in record.boxes:
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": categories[folder],
                    "bbox": [float(x0), float(y0), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    return {**predicted, "annotations": annotations}


def gt_known(cub: Path, predictions: Path) -> tuple[float, int, int]:
    """(GT-known %, images, no_object images): IoU >= 0.5 of each image's box with its CUB
    box, in the image's pixels (inclusive convention, as the evaluation's IoU)."""
    from lcar_deploy.datasets import load_dataset
    from lcar_deploy.metrics import box_iou

    by_path = {r.image_id: r for r in load_dataset("cub", cub, "test")}
    hits, total, empty = 0, 0, 0
    for line in predictions.read_text().splitlines():
        record = json.loads(line)
        if record.get("status") != "ok":
            continue
        total += 1
        if record["box"] is None:
            empty += 1
            continue
        gt = by_path[record["path"]]
        width, height = record["image_size"]
        boxes = np.minimum(gt.boxes, [width - 1, height - 1, width - 1, height - 1]).round()
        hits += float(box_iou(np.array(record["box"]), boxes.astype(np.int64)).max()) >= 0.5
    return 100.0 * hits / max(total, 1), total, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cub", type=Path, required=True)
    parser.add_argument("--view", type=Path, default=Path("/tmp/cub-folder"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/cub-folder-run"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-train", action="store_true", help="reuse WORK/bundle")
    args = parser.parse_args()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    make_view(args.cub.resolve(), args.view)
    work, threads = args.work, str(args.threads)
    times = {}
    if not args.skip_train:
        times["train_s"] = run(
            "train", "--dataset", "folder", "--root", args.view, "--out", work / "train",
            "--bundle", work / "bundle", "--foreground", "--threads", threads, "--quiet",
        )  # fmt: skip
    times["localize_s"] = run(
        "localize", args.view / "test", "--labels", "folder", "--bundle", work / "bundle",
        "--out", work / "loc", "--format", "coco", "--device", "cpu", "--threads", threads,
        "--quiet", "--force",
    )  # fmt: skip
    predicted = json.loads((work / "loc" / "coco.json").read_text())
    gt_path = work / "gt_coco.json"
    gt_path.write_text(json.dumps(ground_truth(args.cub.resolve(), predicted)))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(predicted["annotations"]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    evaluator.summarize()
    known, images, empty = gt_known(args.cub.resolve(), work / "loc" / "predictions.jsonl")
    result = {
        "images": images,
        "no_object": empty,
        "boxes": len(predicted["annotations"]),
        "AP": round(100 * float(evaluator.stats[0]), 1),
        "AP50": round(100 * float(evaluator.stats[1]), 1),
        "AP75": round(100 * float(evaluator.stats[2]), 1),
        "gt_known": round(known, 1),
        **{k: round(v, 1) for k, v in times.items()},
    }
    (work / "own_data.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
