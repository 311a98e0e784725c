"""How well the box score ranks boxes, and what ``--boxes all`` finds (docs/experiments/2026-12-own-datasets.md,
"Box scores").

On a dataset's test split with boxes, with the GT class (GT-known), for ``arm`` (at the
bundle's box threshold) and ``lcar``:

- the share of correct boxes (IoU >= 0.5 at 224 x 224, wsolevaluation's convention) among the
  top-scored half of the images and among the bottom half, and a reliability table / plot
  (score deciles against the share correct);
- the images that ``min_box_score`` turns into ``no_object``, and how many of them were right;
- per-box precision and recall at IoU 0.5 (COCO-style greedy matching by score, each GT box
  matched once) and class-agnostic COCO AP50 of ``--boxes one`` and ``--boxes all``.

    python benchmarks/box_scores.py --dataset cub --root ../shared/data/CUB_200_2011 \
        --bundle /path/to/cub-bundle --out /tmp/scores-cub --threads 1
    python benchmarks/box_scores.py --dataset ilsvrc --root ../shared/data/ILSVRC-mini \
        --out /tmp/scores-ilsvrc --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def match(preds: list[tuple[tuple[int, ...], float]], gts: np.ndarray) -> int:
    """True positives of ``preds`` (box, score) against ``gts`` at IoU 0.5, greedy by score."""
    from lcar_deploy.metrics import box_iou

    free = np.ones(len(gts), bool)
    hits = 0
    for box, _ in sorted(preds, key=lambda p: -p[1]):
        if not free.any():
            break
        ious = box_iou(np.array(box), gts).reshape(-1) * free
        best = int(np.argmax(ious))
        if ious[best] >= 0.5:
            free[best] = False
            hits += 1
    return hits


def coco_ap50(images: list[dict]) -> float:
    """Class-agnostic COCO AP50 of the images' (box, score) lists against their GT boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: tuple[int, ...] | np.ndarray) -> list[float]:
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]

    gt_anns, dt_anns = [], []
    for i, image in enumerate(images, 1):
        for box in image["gt"]:
            w, h = xywh(box)[2:]
            gt_anns.append(
                {"id": len(gt_anns) + 1, "image_id": i, "category_id": 1,
                 "bbox": xywh(box), "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        for box, score in image["preds"]:
            dt_anns.append({"image_id": i, "category_id": 1, "bbox": xywh(box), "score": score})
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in range(1, len(images) + 1)],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": gt_anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dt_anns), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100.0 * float(evaluator.stats[1])


def summarise(rows: list[dict], min_score: float) -> dict:
    """Shares, reliability, no_object, precision / recall of one method's rows."""
    iou = np.array([r["iou"] for r in rows])
    score = np.array([r["score"] for r in rows])
    correct = iou >= 0.5
    order = np.argsort(-score, kind="stable")
    half = len(order) // 2
    deciles = np.array_split(order[::-1], 10)
    out = {
        "images": len(rows),
        "gt_known": round(100 * correct.mean(), 1),
        "top_half_correct": round(100 * correct[order[:half]].mean(), 1),
        "bottom_half_correct": round(100 * correct[order[half:]].mean(), 1),
        "reliability": [
            {
                "score_from": round(float(score[d].min()), 3),
                "score_to": round(float(score[d].max()), 3),
                "correct": round(100 * float(correct[d].mean()), 1),
            }
            for d in deciles
            if len(d)
        ],
    }
    gated = score < min_score
    out["no_object"] = int(gated.sum())
    out["no_object_correct"] = int((gated & correct).sum())
    for mode in ("one", "all"):
        preds = [[p for p in r[mode] if p[1] >= min_score] for r in rows]
        tp = sum(match(p, r["gt"]) for p, r in zip(preds, rows, strict=True))
        n_pred = sum(len(p) for p in preds)
        n_gt = sum(len(r["gt"]) for r in rows)
        out[f"boxes_{mode}"] = {
            "boxes": n_pred,
            "gt_boxes": n_gt,
            "precision": round(100 * tp / max(n_pred, 1), 1),
            "recall": round(100 * tp / max(n_gt, 1), 1),
            "ap50": round(
                coco_ap50([{"gt": r["gt"], "preds": p} for p, r in zip(preds, rows, strict=True)]),
                1,
            ),
        }
    return out


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for method, entry in summary.items():
        bins = entry["reliability"]
        centres = [(b["score_from"] + b["score_to"]) / 2 for b in bins]
        ax.plot(centres, [b["correct"] for b in bins], marker="o", label=method)
    ax.set_xlabel("box score (decile centre)")
    ax.set_ylabel("boxes with IoU >= 0.5 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from lcar_deploy.boxes import mask_to_box, threshold_boxes
    from lcar_deploy.datasets import load_dataset
    from lcar_deploy.evaluation import NAMED_CLASSES, uses_gt_class, with_bundle_classes
    from lcar_deploy.image_io import load_image
    from lcar_deploy.metrics import box_iou
    from lcar_deploy.pipeline import LocalizerSpec, objects

    spec = LocalizerSpec.from_bundle(args.bundle, device="cpu")
    data = load_dataset(args.dataset, args.root, args.split, limit=args.limit)
    gt_class = uses_gt_class(spec.bundle, data)
    if gt_class and data.kind in NAMED_CLASSES:
        data = with_bundle_classes(data, spec.bundle)
    localizer = spec.build(args.threads)
    config = localizer.config
    ungated = {mode: replace(config, boxes=mode, min_box_score=0.0) for mode in ("one", "all")}
    rows: dict[str, list[dict]] = {"arm": [], "lcar": []}
    records = [r for r in data if len(r.boxes)]
    start = time.perf_counter()
    for i in range(0, len(records), args.batch_size):
        batch = records[i : i + args.batch_size]
        images = [load_image(r.path) for r in batch]
        ids = [r.class_id if gt_class else None for r in batch]
        results = localizer.run_methods([im.rgb for im in images], ids, ("arm", "lcar"))
        for k, (record, image) in enumerate(zip(batch, images, strict=True)):
            gt = record.scaled_boxes(224, record.size or image.original_size)
            arm_map = results["arm"][k].map
            for method in rows:
                if method == "lcar":
                    mask = results["lcar"][k].mask
                    main = mask_to_box(mask, config.sgrm.box_mode)
                else:
                    main, _, mask = threshold_boxes(arm_map, config.box_threshold)
                one = objects(arm_map, mask, main, ungated["one"])
                every = objects(arm_map, mask, main, ungated["all"])
                iou = float(box_iou(np.array(one[0][0]), gt).max()) if one else 0.0
                rows[method].append(
                    {
                        "iou": iou,
                        "score": one[0][1] if one else 0.0,
                        "one": one,
                        "all": every,
                        "gt": gt,
                    }
                )
        print(f"{i + len(batch)} / {len(records)} images", flush=True)
    summary = {m: summarise(r, config.min_box_score) for m, r in rows.items()}
    summary_all = {
        "dataset": f"{args.dataset} {args.split}",
        "bundle": str(spec.bundle.path),
        "box_threshold": config.box_threshold,
        "min_box_score": config.min_box_score,
        "seconds": round(time.perf_counter() - start, 1),
        "methods": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "box_scores.json").write_text(json.dumps(summary_all, indent=2))
    plot(summary, args.out / "reliability.png", f"{args.dataset} {args.split}")
    print(json.dumps(summary_all, indent=2))


if __name__ == "__main__":
    main()
