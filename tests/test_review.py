"""``lcar-deploy review``: the records the page embeds, their order and escaping, the run
folders it refuses, and the page itself in a real headless Chromium (skipped, with the reason,
where ``chromium`` is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from PIL import Image

from lcar_deploy.errors import ReviewError
from lcar_deploy.review import (
    MARKER,
    PAGE_SIZE,
    REVIEW_PAGE,
    overlay_src,
    page_data,
    read_run,
    render_page,
    write_review,
)

HOSTILE = "</script><script>document.title='pwned'</script>&amp;\u2028\"'.jpg"
"""A file name that would end the data's script element and run code if embedded raw."""


def record(path: str, score: float | None, cls: str = "cat", overlay: bool = True) -> dict:
    rec = {
        "path": path,
        "status": "ok",
        "method": "lcar",
        "image_size": [40, 30],
        "class_id": 0,
        "class_name": cls,
        "class_score": 0.5,
        "score": score,
        "no_object": score is None,
        "box": None if score is None else [1, 1, 20, 20],
    }
    if overlay:
        rec["overlay"] = f"overlays/{path}.jpg"
    return rec


def make_run(root: Path, records: list[dict], overlays: bool = True) -> Path:
    """A localize run folder: ``predictions.jsonl`` and a small JPEG per record's overlay."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    (root / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i, r in enumerate(records):
        if overlays and "overlay" in r:
            target = root / r["overlay"]
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.full((30, 40, 3), (i * 37) % 256, np.uint8)
            Image.fromarray(pixels).save(target, quality=70)
    return root


def synthetic_run(root: Path, count: int) -> Path:
    """``count`` images over three classes, scores spread, every 50th with no object, and one
    image with a hostile name."""
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "tabby, tabby cat"]
    records = []
    for i in range(count):
        no_object = i % 50 == 7
        score = None if no_object else round(float(rng.uniform(0.01, 0.99)), 5)
        records.append(record(f"img{i:05d}.jpg", score, classes[i % 3]))
    records.append(record(HOSTILE, 0.5, "cat"))
    return make_run(root, records)


def test_order_no_object_first_then_lowest_score(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "run",
        [
            record("b.jpg", 0.9),
            record("a.jpg", 0.2),
            record("c.jpg", None),
            {"path": "bad.jpg", "status": "error", "error": "cannot decode"},
            record("d.jpg", 0.2),
        ],
    )
    review = read_run(run)
    assert [i.path for i in review.items] == ["c.jpg", "a.jpg", "d.jpg", "b.jpg"]
    assert review.failed == 1
    assert review.items[0].no_object and review.items[0].score is None
    assert review.items[1].src == "overlays/a.jpg.jpg"


def test_records_without_overlays_have_no_address(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [record("a.jpg", 0.4), record("b.jpg", 0.5, overlay=False)])
    (run / "overlays" / "a.jpg.jpg").unlink()
    assert [i.src for i in read_run(run).items] == [None, None]


@pytest.mark.parametrize(
    "overlay",
    [
        "../outside.jpg",
        "overlays/../../outside.jpg",
        "/etc/passwd",
        "masks/a.jpg.png",
        "overlays",
        "overlays\\..\\x.jpg",
        "",
        None,
        17,
    ],
)
def test_overlay_outside_overlays_is_not_shown(tmp_path: Path, overlay: object) -> None:
    run = tmp_path / "run"
    (run / "overlays").mkdir(parents=True)
    (run / "masks").mkdir()
    (run / "masks" / "a.jpg.png").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    assert overlay_src(run, overlay) is None


def test_overlay_link_out_of_the_run_is_not_shown(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "overlays").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (run / "overlays" / "a.jpg.jpg").symlink_to(tmp_path / "secret.jpg")
    assert overlay_src(run, "overlays/a.jpg.jpg") is None


def test_overlay_address_is_percent_encoded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    name = "overlays/sub dir/a#1?x=%20.jpg.jpg"
    (run / name).parent.mkdir(parents=True)
    (run / name).write_bytes(b"x")
    assert overlay_src(run, name) == "overlays/sub%20dir/a%231%3Fx%3D%2520.jpg.jpg"


def test_page_data_is_inert_inside_a_script_element(tmp_path: Path) -> None:
    names = [HOSTILE, "caf\u00e9 \u2029.jpg", "<!--x.jpg", "surrogate-\udcff.jpg"]
    run = make_run(tmp_path / "run", [record(n, 0.5, cls="<b>&cls") for n in names])
    review = read_run(run)
    text = page_data(review, "t</script>")
    assert not re.search(r"[<>&]", text)
    assert text.isascii()
    data = json.loads(text)
    assert sorted(i["path"] for i in data["items"]) == sorted(names)
    assert {i["class"] for i in data["items"]} == {"<b>&cls"}
    assert data["title"] == "t</script>"
    page = render_page(review, "t")
    assert page.startswith(MARKER)
    assert page.count("</script>") == 2  # the data's element and the code's, nothing from data


def test_page_size_is_bounded_per_image(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 1000)
    review = read_run(run)
    page = render_page(review, "run")
    empty = render_page(type(review)([], 0), "run")
    per_image = (len(page) - len(empty)) / len(review.items)
    assert len(review.items) == 1001
    assert per_image < 160, per_image  # 10,000 images stay under 2 MB


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a prediction record"),
        ('{"status": "ok"}', "not a prediction record"),
        ('{"path": "a.jpg", "status": "ok", "score": "high"}', "not a number in [0, 1]"),
        ('{"path": "a.jpg", "status": "ok", "score": true}', "not a number in [0, 1]"),
        ('{"path": "a.jpg", "status": "ok", "score": 1.5}', "not a number in [0, 1]"),
        ('{"path": "a.jpg", "status": "ok", "class_name": 3}', "class_name is not a string"),
        ('{"path": "a.jpg", "status": "ok", "no_object": "yes"}', "no_object is not true"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    run = make_run(tmp_path / "run", [record("ok.jpg", 0.5)])
    with (run / "predictions.jsonl").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ReviewError, match=rf"predictions\.jsonl:2: (.* )?{re.escape(reason)}"):
        write_review(run)
    assert not (run / REVIEW_PAGE).exists()


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ReviewError, match="not a folder"):
        read_run(tmp_path / "missing")
    with pytest.raises(ReviewError, match=r"no predictions\.jsonl"):
        read_run(tmp_path)
    (tmp_path / "predictions.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ReviewError, match="cannot read"):
        read_run(tmp_path)


def test_empty_run_gives_an_empty_page(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [])
    page, review = write_review(run)
    assert review.items == [] and page.read_text().startswith(MARKER)


def test_replaces_its_own_page_but_no_other_file(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [record("a.jpg", 0.5)])
    page, _ = write_review(run)
    make_run(run, [record("a.jpg", 0.5), record("b.jpg", 0.1)])
    write_review(run)
    assert '"path":"b.jpg"' in page.read_text()
    page.write_text("<html>my notes</html>")
    with pytest.raises(ReviewError, match="not written by lcar-deploy review"):
        write_review(run)
    assert page.read_text() == "<html>my notes</html>"
    page.unlink()
    (tmp_path / "elsewhere.html").write_text("keep")
    page.symlink_to(tmp_path / "elsewhere.html")
    with pytest.raises(ReviewError, match="not a file"):
        write_review(run)
    assert (tmp_path / "elsewhere.html").read_text() == "keep"


def test_cli_review(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [record("a.jpg", 0.5), record("b.jpg", None, overlay=False)])
    code, out, err = invoke("review", run)
    assert code == 0, err
    assert out.strip() == str(run / REVIEW_PAGE)
    assert "2 images, 1 with an overlay, 0 failed" in err
    code, _, err = invoke("review", tmp_path / "nothing")
    assert code == 1
    assert "not a folder" in err and "Traceback" not in err


# A real browser: the page as a user opens it, from file://, no server.

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium)"
)


class Thumbs(HTMLParser):
    """The thumbnails of a dumped page: each figure's data attributes and caption path."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "figure":
            self.figures.append(a)
        elif tag == "body":
            self.body = a
        elif tag == "title":
            self._in = "title"
        elif tag == "div" and a.get("class") == "path":
            self._in = "path"
            self.figures[-1]["caption"] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "path":
            self.figures[-1]["caption"] += data


def open_in_chromium(page: Path, tmp_path: Path, fragment: str = "") -> Thumbs:
    """Load ``page`` from file:// in headless Chromium and parse the DOM it rendered."""
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = Thumbs()
    parsed.feed(result.stdout)
    return parsed


@needs_chromium
def test_browser_shows_lowest_scored_first_and_pages(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 1000)
    page, review = write_review(run)
    started = time.monotonic()
    dom = open_in_chromium(page, tmp_path)
    wall = time.monotonic() - started
    assert len(dom.figures) == PAGE_SIZE
    assert dom.body["data-pages"] == str(-(-1001 // PAGE_SIZE))
    shown = [f["data-path"] for f in dom.figures]
    assert shown == [i.path for i in review.items[:PAGE_SIZE]]
    assert dom.figures[0]["data-no-object"] == "true"
    scores = [float(f["data-score"]) for f in dom.figures if f["data-score"]]
    assert scores == sorted(scores) and scores[0] < 0.05
    assert all(f["caption"] == f["data-path"] for f in dom.figures)
    # rendered from the page's own clock: opening a 1,000-image run takes under 2 s
    assert int(dom.body["data-render-ms"]) < 2000, (dom.body, wall)

    last = open_in_chromium(page, tmp_path, "page=11")
    assert len(last.figures) == 1001 - 10 * PAGE_SIZE
    assert last.figures[-1]["data-path"] == review.items[-1].path


@needs_chromium
def test_browser_filters_by_class_and_sorts(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 300)
    page, review = write_review(run)
    dom = open_in_chromium(page, tmp_path, "class=tabby%2C%20tabby%20cat&sort=high")
    expected = [i for i in review.items if i.class_name == "tabby, tabby cat"][::-1]
    assert dom.body["data-matching"] == str(len(expected))
    assert [f["data-path"] for f in dom.figures] == [i.path for i in expected]
    scores = [float(f["data-score"]) for f in dom.figures if f["data-score"]]
    assert scores == sorted(scores, reverse=True)


@needs_chromium
def test_browser_shows_hostile_names_as_text(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [record(HOSTILE, 0.5), record("a.jpg", 0.7)])
    page, _ = write_review(run)
    dom = open_in_chromium(page, tmp_path)
    assert "pwned" not in dom.title
    assert [f["caption"] for f in dom.figures] == [HOSTILE, "a.jpg"]
