"""The Python API: the README's example, results in the image's pixels, the CLI's boxes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from helpers import invoke
from PIL import Image

import lcar_deploy
from lcar_deploy.errors import BundleError, ImageError, LabelsError, LcarError, SettingError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.chelsea()).save(folder / "bird.jpg", quality=92)
    Image.fromarray(skimage.data.astronaut()[::2, :300]).save(folder / "a.jpg", quality=92)
    Image.fromarray(skimage.data.coffee()).save(folder / "b.jpg", quality=92)
    return folder


def test_readme_python_example_runs(
    photos: Path, small_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcar_deploy.bundle

    code = re.search(r"## Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    # The default bundle is exported (and tested) in test_export; here it is the small one.
    monkeypatch.setattr(lcar_deploy.bundle, "default_bundle_dir", lambda: small_bundle)
    monkeypatch.chdir(photos)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    r, results = namespace["r"], namespace["results"]
    width, height = Image.open(photos / "bird.jpg").size
    assert r.image_size == (width, height) and namespace["mask"].shape == (height, width)
    assert r.box is not None and 0 <= r.box[0] <= r.box[2] < width and r.box[3] < height
    assert r.boxes[0] == r.box and 0.0 <= r.score <= 1.0 and r.class_name
    assert [x.image_size for x in results] == [
        Image.open(photos / n).size for n in ("a.jpg", "b.jpg")
    ]


@pytest.mark.parametrize("method", ["arm", "lcar"])
def test_localize_gives_the_cli_boxes(
    photos: Path, small_bundle: Path, tmp_path: Path, method: str
) -> None:
    out = tmp_path / "out"
    args = ["localize", photos, "--bundle", small_bundle, "--method", method, "--out", out]
    code, _, stderr = invoke(*args, "--device", "cpu", "--quiet")
    assert code == 0, stderr
    records = {
        r["path"]: r
        for r in map(json.loads, (out / "predictions.jsonl").read_text().split("\n")[:-1])
    }
    loc = lcar_deploy.Localizer.from_bundle(small_bundle, method=method, device="cpu")
    for name, record in records.items():
        r = loc.localize(photos / name)
        assert (r.box, r.boxes, r.class_id) == (record["box"], record["boxes"], record["class_id"])
        assert list(r.image_size) == record["image_size"]


def test_arrays_and_files_agree(photos: Path, small_bundle: Path) -> None:
    loc = lcar_deploy.Localizer.from_bundle(small_bundle, method="arm", device="cpu")
    png = photos / "coffee.png"
    rgb = skimage.data.coffee()
    Image.fromarray(rgb).save(png)
    from_file, from_array = loc.localize(png), loc.localize(rgb)
    assert from_file.box == from_array.box and np.array_equal(from_file.mask, from_array.mask)
    grey = loc.localize(rgb[..., 0])
    assert grey.mask.shape == rgb.shape[:2]
    given = loc.localize(rgb, class_id=967)  # ImageNet "espresso"
    assert given.class_id == 967


def test_bad_inputs_are_clear_errors(small_bundle: Path) -> None:
    loc = lcar_deploy.Localizer.from_bundle(small_bundle, method="arm", device="cpu")
    with pytest.raises(ImageError, match=r"must be \(H, W, 3\) or \(H, W\) uint8 RGB, got float64"):
        loc.localize(np.zeros((8, 8, 3)))
    with pytest.raises(ImageError, match=r"no-such\.jpg: file not found"):
        loc.localize("no-such.jpg")
    with pytest.raises(BundleError, match="class id 5000 is not among"):
        loc.localize(np.zeros((8, 8, 3), np.uint8), class_id=5000)
    with pytest.raises(SettingError, match=r"setting sgrm\.max_steps"):
        lcar_deploy.Localizer.from_bundle(small_bundle, settings={"sgrm": {"max_steps": 0}})
    with pytest.raises(SettingError, match="setting preset"):
        lcar_deploy.Localizer.from_bundle(small_bundle, preset="fastest")
    assert issubclass(SettingError, LcarError) and issubclass(BundleError, LcarError)


def test_evaluate_writes_the_report(photos: Path, small_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    meta = root / "metadata" / "test"
    meta.mkdir(parents=True)
    Image.open(photos / "bird.jpg").save(root / "cat.png")
    (meta / "image_ids.txt").write_text("cat.png\n")
    (meta / "class_labels.txt").write_text("cat.png,281\n")
    (meta / "localization.txt").write_text("cat.png,100,20,350,290\n")
    out = tmp_path / "eval"
    result = lcar_deploy.evaluate(
        "ilsvrc", root, bundle=small_bundle, out=out, methods=["cam", "arm"], device="cpu",
        progress=False,
    )  # fmt: skip
    assert set(result.metrics["methods"]) == {"cam", "arm"} and not result.errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["dataset"]["kind"] == "ilsvrc"
    assert "| arm |" in (out / "report.md").read_text()
    with pytest.raises(SettingError, match="setting methods: unknown"):
        lcar_deploy.evaluate("ilsvrc", root, bundle=small_bundle, out=out, methods=["magic"])


THREADS = """
import sys
import lcar_deploy
from lcar_deploy.errors import SettingError
for threads in (10**6, -1, 0, True, 2.0, "4"):
    try:
        lcar_deploy.Localizer.from_bundle(sys.argv[1], method="cam", device="cpu", threads=threads)
    except SettingError as exc:
        print(exc)
"""


def test_thread_counts_out_of_range_are_refused(small_bundle: Path) -> None:
    """A million threads crashed onnxruntime: a child process, so a crash fails the test."""
    import subprocess
    import sys

    from lcar_deploy.threads import MAX_THREADS

    done = subprocess.run(
        [sys.executable, "-c", THREADS, str(small_bundle)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6, done.stdout
    assert lines[0] == f"setting threads: must be an integer from 1 to {MAX_THREADS}, got 1000000"
    assert all(line.startswith("setting threads: must be an integer from 1 to") for line in lines)


def test_class_ids_of_the_wrong_type_or_count_are_clear_errors(small_bundle: Path) -> None:
    loc = lcar_deploy.Localizer.from_bundle(small_bundle, method="cam", device="cpu")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match=r"class_id must be an integer class id or None, got str"):
        loc.localize(image, class_id="281")
    with pytest.raises(TypeError, match=r"class_ids\[1\] must be an integer class id"):
        loc.localize_batch([image, image], class_ids=[281, 2.5])
    with pytest.raises(TypeError, match=r"class_ids must be a list of class ids"):
        loc.localize_batch([image, image], class_ids="28")
    with pytest.raises(LabelsError, match=r"class_ids gives 1 class ids for 2 images"):
        loc.localize_batch([image, image], class_ids=[281])
    with pytest.raises(LabelsError, match=r"class_ids gives 3 class ids for 1 images"):
        loc.run([image], [281, 281, 281])
    assert loc.localize(image, class_id=np.int64(281)).class_id == 281
