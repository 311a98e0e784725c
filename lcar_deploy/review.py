"""``lcar-deploy review``: one static ``review.html`` to check the boxes of a ``localize`` run.

The page lives in the run folder beside ``predictions.jsonl`` and shows the overlays
(``overlays/``, written by ``localize --overlays``) as thumbnails, the images with no object
first, then by box score, lowest first: the ones most likely wrong come first. It can be
filtered by class, sorted otherwise and is paged (:data:`PAGE_SIZE` thumbnails a page), so it
stays quick for tens of thousands of images. It needs no server and no network: the records
are embedded in the page as JSON and rendered by a few lines of plain JavaScript, and it opens
from ``file://``. The filter, order and page are kept in the address's ``#`` part
(``review.html#class=cat&sort=high&page=2``).

Every string of ``predictions.jsonl`` is untrusted: the JSON is embedded with ``<``, ``>``,
``&`` and every non-ASCII character escaped (nothing in it can end the script element), the
page puts it into the document as text only, never as markup, and image addresses are
percent-encoded paths under ``overlays/`` that must lie inside the run folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from .errors import ReviewError, printable
from .io import write_atomic
from .localize import PREDICTIONS

REVIEW_PAGE = "review.html"
PAGE_SIZE = 100
"""Thumbnails on one page of ``review.html``."""
MARKER = "<!DOCTYPE html>\n<!-- lcar-deploy review -->"
"""The first two lines of every page this module writes: a ``review.html`` without it is not ours
and is never replaced."""
OVERLAYS = "overlays"


@dataclass(frozen=True)
class ReviewItem:
    """One localized image as the page shows it: its path, the overlay's address relative to
    the run folder (percent-encoded; None when it has none), the class, the box score."""

    path: str
    src: str | None
    class_name: str | None
    score: float | None
    no_object: bool

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "src": self.src,
            "class": self.class_name,
            "score": self.score,
            "no_object": self.no_object,
        }


@dataclass(frozen=True)
class ReviewRun:
    """The records of a run folder, in the page's order, and the count of failed images."""

    items: list[ReviewItem]
    failed: int


def sort_key(item: ReviewItem) -> tuple[bool, float, str]:
    """No object first, then the lowest box score, then the path."""
    return (not item.no_object, -1.0 if item.score is None else item.score, item.path)


def _bad(path: Path, lineno: int, reason: str) -> ReviewError:
    return ReviewError(f"{printable(path)}:{lineno}: {reason}")


def overlay_src(run: Path, overlay: object) -> str | None:
    """The address of a record's ``overlay`` relative to the run folder, percent-encoded;
    None unless it is a file under ``overlays/`` inside the run folder."""
    if not isinstance(overlay, str) or not overlay or "\\" in overlay or "\0" in overlay:
        return None
    parts = PurePosixPath(overlay).parts
    if len(parts) < 2 or parts[0] != OVERLAYS or ".." in parts:
        return None
    file = run / overlay
    try:
        if not file.is_file() or not file.resolve().is_relative_to(run.resolve()):
            return None
    except (OSError, ValueError):
        return None
    return quote(overlay, safe="/", errors="surrogateescape")


def _item(run: Path, predictions: Path, lineno: int, record: dict) -> ReviewItem:
    class_name = record.get("class_name")
    if class_name is not None and not isinstance(class_name, str):
        raise _bad(predictions, lineno, "class_name is not a string")
    score = record.get("score")
    if score is not None and (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        raise _bad(predictions, lineno, f"score {printable(score, 40)} is not a number in [0, 1]")
    no_object = record.get("no_object", False)
    if not isinstance(no_object, bool):
        raise _bad(predictions, lineno, "no_object is not true or false")
    return ReviewItem(
        path=record["path"],
        src=overlay_src(run, record.get("overlay")),
        class_name=class_name,
        score=None if score is None else float(score),
        no_object=no_object,
    )


def read_run(run: str | Path) -> ReviewRun:
    """Read the ``predictions.jsonl`` of a ``localize`` run folder into the page's items, in
    its order (:func:`sort_key`); :class:`ReviewError` naming the file and line at fault."""
    run = Path(run)
    if not run.is_dir():
        raise ReviewError(f"{printable(run)}: not a folder (give the --out folder of localize)")
    predictions = run / PREDICTIONS
    if not predictions.is_file():
        raise ReviewError(
            f"{printable(run)}: no {PREDICTIONS} (not the --out folder of a localize run)"
        )
    try:
        lines = predictions.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{printable(predictions)}: cannot read ({printable(exc)})") from None
    items: list[ReviewItem] = []
    failed = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(predictions, lineno, f"not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise _bad(predictions, lineno, "not a prediction record (no path)")
        if record.get("status") != "ok":
            failed += 1
            continue
        items.append(_item(run, predictions, lineno, record))
    items.sort(key=sort_key)
    return ReviewRun(items, failed)


def page_data(review: ReviewRun, title: str) -> str:
    """The JSON the page embeds, safe inside a ``<script>`` element: no ``<``, ``>`` or ``&``
    (escaped as ``\\u003c`` ...), ASCII only (U+2028 and lone surrogates escaped too)."""
    data = {
        "title": title,
        "page_size": PAGE_SIZE,
        "failed": review.failed,
        "items": [item.to_json() for item in review.items],
    }
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(review: ReviewRun, title: str) -> str:
    """The whole ``review.html``."""
    return PAGE.replace("__DATA__", page_data(review, title))


def write_review(run: str | Path) -> tuple[Path, ReviewRun]:
    """Write ``RUN/review.html`` for a ``localize`` run folder (replacing one this module
    wrote before, never another file) and return its path and what it shows."""
    run = Path(run)
    review = read_run(run)
    target = run / REVIEW_PAGE
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise ReviewError(f"{printable(target)}: exists and is not a file; move it away")
    if target.exists():
        try:
            with target.open("rb") as f:
                ours = f.read(len(MARKER)) == MARKER.encode()
        except OSError as exc:
            raise ReviewError(f"{printable(target)}: cannot read ({printable(exc)})") from None
        if not ours:
            raise ReviewError(
                f"{printable(target)}: exists and was not written by lcar-deploy review; "
                "move it away"
            )
    html = render_page(review, run.resolve().name or str(run))
    try:
        write_atomic(target, lambda tmp: tmp.write_text(html, encoding="ascii"))
    except OSError as exc:
        raise ReviewError(
            f"{printable(target)}: cannot write ({printable(exc.strerror or exc)})"
        ) from None
    return target, review


PAGE = (
    MARKER
    + """
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline';
 script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lcar-deploy review</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 0 1em 2em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ddd; }
header h1 { font-size: 1.1em; margin: 0 0 .4em; }
header label { margin-right: 1em; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 12px;
  margin-top: 12px; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 4px; padding: 4px; background: #fafafa; }
figure.no-object { border-color: #c33; background: #fff3f3; }
figure img { width: 100%; height: 160px; object-fit: contain; background: #eee; display: block; }
figure .missing { height: 160px; display: flex; align-items: center; justify-content: center;
  background: #eee; color: #888; }
figcaption { font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
figcaption .meta { font-weight: 600; }
figcaption .flag { color: #c33; font-weight: 700; }
.pager button { margin: 0 .3em; }
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<div id="counts"></div>
<div>
<label>Class <select id="class"></select></label>
<label>Order <select id="sort">
<option value="low">lowest score first</option>
<option value="high">highest score first</option>
<option value="name">file name</option>
</select></label>
<span class="pager"><button id="prev">&larr;</button><span id="page"></span><button id="next">&rarr;</button></span>
</div>
</header>
<main id="grid"></main>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const ITEMS = DATA.items;
const ALL = "\\u0000all";
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function readState() {
  const q = new URLSearchParams(location.hash.slice(1));
  return {cls: q.has("class") ? q.get("class") : ALL, sort: q.get("sort") || "low",
          page: Math.max(1, parseInt(q.get("page") || "1", 10) || 1)};
}
function writeState(s) {
  const q = new URLSearchParams();
  if (s.cls !== ALL) q.set("class", s.cls);
  if (s.sort !== "low") q.set("sort", s.sort);
  if (s.page > 1) q.set("page", String(s.page));
  const hash = q.toString();
  if (location.hash.slice(1) !== hash) location.hash = hash;
  else render();
}
function selected(s) {
  let list = s.cls === ALL ? ITEMS.slice() : ITEMS.filter((it) => (it.class ?? "") === s.cls);
  if (s.sort === "high") list.reverse();
  else if (s.sort === "name") list.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return list;
}
function card(it) {
  const f = el("figure", it.no_object ? "thumb no-object" : "thumb");
  f.dataset.path = it.path;
  f.dataset.score = it.score === null ? "" : String(it.score);
  f.dataset.noObject = String(it.no_object);
  if (it.src !== null) {
    const a = el("a");
    a.href = it.src;
    const img = el("img");
    img.loading = "lazy";
    img.alt = it.path;
    img.src = it.src;
    a.appendChild(img);
    f.appendChild(a);
  } else {
    f.appendChild(el("div", "missing", "no overlay"));
  }
  const cap = el("figcaption");
  cap.appendChild(el("div", "path", it.path));
  const meta = el("div", "meta");
  meta.appendChild(el("span", "class", it.class ?? "(no class)"));
  meta.appendChild(document.createTextNode(" \\u00b7 "));
  meta.appendChild(el("span", "score", it.score === null ? "no score" : it.score.toFixed(3)));
  if (it.no_object) {
    meta.appendChild(document.createTextNode(" \\u00b7 "));
    meta.appendChild(el("span", "flag", "no object"));
  }
  cap.appendChild(meta);
  f.appendChild(cap);
  return f;
}
function render() {
  const s = readState();
  $("class").value = s.cls;
  $("sort").value = s.sort;
  const list = selected(s);
  const pages = Math.max(1, Math.ceil(list.length / DATA.page_size));
  const page = Math.min(s.page, pages);
  const shown = list.slice((page - 1) * DATA.page_size, page * DATA.page_size);
  const grid = $("grid");
  grid.replaceChildren(...shown.map(card));
  $("page").textContent = " page " + page + " of " + pages + " ";
  $("prev").disabled = page <= 1;
  $("next").disabled = page >= pages;
  document.body.dataset.page = String(page);
  document.body.dataset.pages = String(pages);
  document.body.dataset.shown = String(shown.length);
  document.body.dataset.matching = String(list.length);
  window.scrollTo(0, 0);
}
function setup() {
  document.title = "review: " + DATA.title;
  $("title").textContent = "Review of " + DATA.title;
  const noObject = ITEMS.filter((it) => it.no_object).length;
  $("counts").textContent = ITEMS.length + " images, " + noObject + " with no object" +
    (DATA.failed ? ", " + DATA.failed + " failed (see predictions.jsonl)" : "") +
    "; no object first, then the lowest box score";
  const counts = new Map();
  for (const it of ITEMS) counts.set(it.class ?? "", (counts.get(it.class ?? "") || 0) + 1);
  const sel = $("class");
  const all = el("option", null, "all (" + ITEMS.length + ")");
  all.value = ALL;
  sel.appendChild(all);
  for (const name of [...counts.keys()].sort()) {
    const o = el("option", null, (name || "(no class)") + " (" + counts.get(name) + ")");
    o.value = name;
    sel.appendChild(o);
  }
  sel.addEventListener("change", () => writeState({...readState(), cls: sel.value, page: 1}));
  $("sort").addEventListener("change", () =>
    writeState({...readState(), sort: $("sort").value, page: 1}));
  $("prev").addEventListener("click", () => writeState({...readState(), page: readState().page - 1}));
  $("next").addEventListener("click", () => writeState({...readState(), page: readState().page + 1}));
  window.addEventListener("hashchange", render);
  render();
  document.body.dataset.renderMs = String(Math.round(performance.now()));
}
setup();
</script>
</body>
</html>
"""
)
