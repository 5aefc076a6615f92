"""COCO captions reader: the real val2017 file and bad input."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from curate import InputError
from curate.ids import sample_uid
from curate.ingest.coco import ingest_coco
from tests.conftest import table_snapshot


@pytest.fixture(scope="module")
def val2017(coco_val2017_file: Path) -> Path:
    return coco_val2017_file


def _reasons(store) -> list[tuple[str, str]]:
    rows = store.con.execute("SELECT row_ref, reason FROM rejects").fetchall()
    return sorted((ref.rsplit(":", 1)[-1], reason) for ref, reason in rows)


def test_real_file(store, val2017):
    doc = json.loads(val2017.read_text(encoding="utf-8"))
    assert (len(doc["images"]), len(doc["annotations"])) == (5_000, 25_014)
    # counted independently: annotations repeating their image's caption word for word
    distinct = {(a["image_id"], a["caption"]) for a in doc["annotations"]}
    assert len(distinct) == 25_010

    r = ingest_coco(store, val2017, source="coco")
    assert (r.rows_in, r.samples_added, r.captions_added) == (5_000, 5_000, 25_010)
    assert r.by_variant == {"human": 25_010}
    assert r.reject_reasons == {"duplicate caption": 4}
    repeated = store.con.execute(
        "SELECT record FROM rejects WHERE reason = 'duplicate caption' ORDER BY record").fetchall()
    assert [t for (t,) in repeated] == sorted(
        t for (i, t), n in Counter((a["image_id"], a["caption"]) for a in doc["annotations"]).items() if n > 1)

    # captions per image after the collapse: 4,987 x 5, 12 x 6, 1 x 7 before it
    per_image = Counter(n for (n,) in store.con.execute("SELECT count(*) FROM captions GROUP BY uid").fetchall())
    expected = Counter(Counter(i for i, _ in distinct).values())
    assert per_image == expected and sum(k * v for k, v in per_image.items()) == 25_010

    img = doc["images"][0]
    uid = sample_uid("coco", source_id=str(img["id"]))
    row = store.con.execute(
        "SELECT url, image_path, width, height, extra->>'flickr_url', (extra->>'license')::INT FROM samples WHERE uid = ?",
        [uid]).fetchone()
    # file_name is relative to the image root, by default the captions file's folder
    assert row == (img["coco_url"], os.path.join(os.path.abspath(val2017.parent), img["file_name"]), img["width"], img["height"],
                   img["flickr_url"], img["license"])

    ann = doc["annotations"][0]
    got = store.con.execute(
        "SELECT c.text, c.generator, (c.provenance->>'annotation_id')::BIGINT FROM captions c "
        "WHERE c.uid = ? AND c.text = ?", [sample_uid("coco", source_id=str(ann["image_id"])), ann["caption"]]
    ).fetchone()
    assert got == (ann["caption"], "COCO annotators", ann["id"])


def test_ingesting_twice_adds_nothing(store, val2017):
    ingest_coco(store, val2017, source="coco")
    before = table_snapshot(store)
    r = ingest_coco(store, val2017, source="coco")
    assert (r.samples_added, r.captions_added, r.already_present) == (0, 0, 5_000)
    after = table_snapshot(store)
    for t in ("samples", "captions", "rejects"):
        assert after[t] == before[t]


def test_bad_entries_are_rejected_with_reasons(store, tmp_path):
    def image(i, **kw):
        return {"id": i, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/x/{i}.jpg",
                "width": 640, "height": 480, **kw}

    doc = {
        "images": [
            image(1), image(2), image(3),
            image(1),                    # images[3] same entry again
            image(2, width=10),          # images[4] same id, other content
            "not an image",              # images[5]
            {"file_name": "x.jpg"},      # images[6] no id
            image(7, width="wide"),      # images[7] width is a string
            image(8),                    # images[8] only bad captions
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A cat on a mat."},     # [0] kept
            {"id": 11, "image_id": 1, "caption": "A cat on a mat."},     # [1] same text, same image
            {"id": 10, "image_id": 2, "caption": "Another caption."},    # [2] repeated annotation id
            {"id": 12, "image_id": 99, "caption": "No such image."},     # [3]
            {"id": 13, "image_id": 2, "caption": 42},                    # [4] a number
            {"id": 14, "image_id": 2, "caption": ["a", "list"]},         # [5] a list
            {"id": 15, "image_id": 2},                                   # [6] no caption
            {"id": 16, "image_id": 2, "caption": "A dog."},              # [7] kept
            {"id": 17, "image_id": 8, "caption": None},                  # [8] null
            {"id": 18, "image_id": 8, "caption": "   "},                 # [9] blank
            {"id": 19, "image_id": 3, "caption": "A bird."},             # [10] kept
            {"id": 20, "image_id": 7, "caption": "Rejected image."},     # [11] its image was rejected
            [1, 2],                                                      # [12]
            {"id": True, "image_id": 3, "caption": "A boolean id."},     # [13]
        ],
    }
    path = tmp_path / "captions_bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    r = ingest_coco(store, path, source="bad")
    assert _reasons(store) == sorted([
        ("annotations[1]", "duplicate caption"), ("annotations[2]", "duplicate id"),
        ("annotations[3]", "unknown image"), ("annotations[4]", "wrong type"), ("annotations[5]", "wrong type"),
        ("annotations[6]", "missing key"), ("annotations[8]", "null caption"), ("annotations[9]", "empty caption"),
        ("annotations[11]", "unknown image"), ("annotations[12]", "not a JSON object"),
        ("annotations[13]", "wrong type"),
        ("images[3]", "duplicate row"), ("images[4]", "duplicate id"), ("images[5]", "not a JSON object"),
        ("images[6]", "missing key"), ("images[7]", "wrong type"), ("images[8]", "no valid caption"),
    ])
    assert (r.samples_added, r.captions_added) == (3, 3)
    details = dict(store.con.execute("SELECT reason || ' ' || split_part(row_ref, ':', -1), detail FROM rejects").fetchall())
    assert details["unknown image annotations[3]"] == "image_id 99 is not among the (valid) images"
    assert details["wrong type annotations[4]"] == "caption is number, expected a string (variant human)"
    assert details["wrong type images[7]"] == "'width' is string, expected number"
    assert details["duplicate id images[4]"].startswith("same uid as ")


@pytest.mark.parametrize("content, message", [
    (b'{"images": [], "annotations": [', r"captions_broken\.json is not valid JSON"),
    (b'{"images": [], "annotations": [{"caption": "caf\xe9"}]}', r"captions_broken\.json is not valid UTF-8"),
    (b'{"images": []}', r"captions_broken\.json: 'annotations' must be a list"),
    (b'{"images": {}, "annotations": []}', r"captions_broken\.json: 'images' must be a list .* got object"),
    (b'[1, 2]', r"captions_broken\.json: expected a COCO captions object"),
])
def test_unreadable_file_fails_and_leaves_the_store_unchanged(store, val2017, tmp_path, content, message):
    doc = json.loads(val2017.read_text(encoding="utf-8"))
    ids = {img["id"] for img in doc["images"][:100]}
    head = {"images": doc["images"][:100], "annotations": [a for a in doc["annotations"] if a["image_id"] in ids]}
    (tmp_path / "head.json").write_text(json.dumps(head), encoding="utf-8")
    ingest_coco(store, tmp_path / "head.json", source="coco")
    before = table_snapshot(store)
    path = tmp_path / "captions_broken.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        ingest_coco(store, path, source="coco")
    assert "\n" not in str(e.value)
    assert table_snapshot(store) == before
