"""Label Studio round trip: tasks out, annotations back in, and nothing outside the root (R3)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lineguard import LineguardError
from lineguard.labelstudio import (
    CONFIG_FILENAME,
    KEPT_PROBLEM_KINDS,
    PROBLEM_KINDS,
    LabelStudioError,
    UnresolvableImage,
    export_tasks,
    import_export,
    labelling_config,
    normalise_label,
    parse_export,
    resolve_image_url,
)
from tests._labelstudio_export import labelled_export

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "labelstudio"
FULL_EXPORT = FIXTURES / "project-3-at-2026-05-04-16-25-export.json"
MIN_EXPORT = FIXTURES / "project-3-at-2026-05-04-16-26-export-min.json"
SYNONYMS = {"good": ["good", "ok", "pass"], "bad": ["bad", "nok", "ng", "not_ok", "defect"]}

# The files the fixture export's local-file URLs point at (relative to the photos root).
FIXTURE_FILES = [
    "Vanilla Sprinkles/unsorted/IMG_0001.png",
    "Vanilla Sprinkles/unsorted/IMG_0002.png",
    "Vanilla Sprinkles/unsorted/IMG_0003.png",
    "chocolate-nuts/unsorted/cone-0004.png",
    "chocolate-nuts/unsorted/cone-0005.png",
    "chocolate-nuts/unsorted/cone-0008.png",
    "STRAWBERRY_DRIZZLE/unsorted/IMG_0009.png",
    "Mint Chips/unsorted/IMG_0014.png",
    "Mint Chips/unsorted/IMG_0015.png",
]


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """The folder the fixture export was made from, plus a secret file next to it and a symlink out."""
    root = tmp_path / "photos"
    for i, rel in enumerate(FIXTURE_FILES):
        _png(root / rel, i)
    _png(tmp_path / "secret.png", 255)
    os.symlink(tmp_path / "secret.png", root / "Mint Chips" / "unsorted" / "link_out.png")
    return root


# --- parsing a real-shaped export ------------------------------------------------------------------


def test_full_export_gives_the_right_records_and_reports_every_other_task(photos: Path) -> None:
    records, problems = parse_export(str(FULL_EXPORT), str(photos), label_synonyms=SYNONYMS)
    got = {
        r.task_id: (r.source_path, r.label, r.recipe, r.defect_type, r.annotator, r.annotation_id)
        for r in records
    }
    assert got == {
        # two annotators disagree: the later one (bob) wins
        "101": (
            "Vanilla Sprinkles/unsorted/IMG_0001.png",
            "good",
            "vanilla_sprinkles",
            "",
            "bob@factory.example",
            "1002",
        ),
        # a ground-truth annotation beats a later ordinary one
        "102": (
            "Vanilla Sprinkles/unsorted/IMG_0002.png",
            "bad",
            "vanilla_sprinkles",
            "spillage",
            "rita.reviewer@factory.example",
            "1003",
        ),
        # a newer cancelled annotation is ignored
        "104": (
            "chocolate-nuts/unsorted/cone-0004.png",
            "good",
            "chocolate_nuts",
            "",
            "alice@factory.example",
            "1006",
        ),
        # "NOK" through the synonyms; recipe from task data; defect name normalised
        "108": (
            "chocolate-nuts/unsorted/cone-0008.png",
            "bad",
            "chocolate_nuts",
            "partial_topping",
            "bob@factory.example",
            "1010",
        ),
        # "OK" is good: a stale defect choice is dropped; recipe choice normalised
        "109": (
            "STRAWBERRY_DRIZZLE/unsorted/IMG_0009.png",
            "good",
            "strawberry_drizzle",
            "",
            "alice@factory.example",
            "1011",
        ),
        # a local-files URL with the Label Studio host in front
        "114": (
            "Mint Chips/unsorted/IMG_0014.png",
            "bad",
            "mint_chips",
            "partial_topping",
            "rita.reviewer@factory.example",
            "1016",
        ),
    }
    kinds = {(p.task_id, p.kind) for p in problems}
    assert kinds == {
        ("101", "disagreement"),
        ("102", "disagreement"),
        ("103", "cancelled"),
        ("105", "unlabelled"),
        ("106", "unresolvable"),
        ("107", "outside_root"),
        ("110", "outside_root"),
        ("111", "unresolvable"),
        ("112", "unresolvable"),
        ("113", "outside_root"),
        ("115", "unknown_label"),
        ("116", "missing_file"),
        ("117", "outside_root"),
    }
    # never silently dropped: every task is a record or a problem that says why not
    tasks = json.loads(FULL_EXPORT.read_text())
    dropped = {p.task_id for p in problems if p.kind not in KEPT_PROBLEM_KINDS}
    assert dropped | set(got) == {str(t["id"]) for t in tasks}
    assert not dropped & set(got)
    assert all(p.kind in PROBLEM_KINDS for p in problems)


def test_json_min_export(photos: Path) -> None:
    records, problems = parse_export(str(MIN_EXPORT), str(photos), label_synonyms=SYNONYMS)
    assert [(r.task_id, r.label, r.recipe, r.defect_type, r.annotator) for r in records] == [
        ("101", "good", "vanilla_sprinkles", "", "bob@factory.example"),
        ("108", "bad", "chocolate_nuts", "partial_topping", "bob@factory.example"),
    ]
    assert {(p.task_id, p.kind) for p in problems} == {
        ("101", "disagreement"),
        ("105", "unlabelled"),
        ("107", "outside_root"),
    }


# --- exports made by a real Label Studio (1.23.2) -------------------------------------------------
# Made by running `lineguard label export` on six images under <docroot>/photos, importing
# ls-1.23.2-imported-tasks.json into a project whose labelling interface is
# ls-1.23.2-accepted-labelling-config.xml, labelling through Label Studio's API as two users
# (one reviewer ground truth, one cancelled, one left unlabelled, one file uploaded into
# Label Studio), then Export -> JSON and JSON-MIN.

REAL_EXPORT = FIXTURES / "ls-1.23.2-project-1-export.json"
REAL_MIN_EXPORT = FIXTURES / "ls-1.23.2-project-1-export-min.json"


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    """LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of the real export, with its photos/ folder."""
    tasks = json.loads((FIXTURES / "ls-1.23.2-imported-tasks.json").read_text())
    for i, task in enumerate(tasks):
        _png(tmp_path / "docroot" / "photos" / task["data"]["source_path"], i)
    _png(tmp_path / "media" / "upload" / "1" / "a04e57cb-cone_0042.png")
    return tmp_path / "docroot"


def test_real_label_studio_json_export(docroot: Path) -> None:
    records, problems = parse_export(
        str(REAL_EXPORT), str(docroot / "photos"), local_files_root=str(docroot), label_synonyms=SYNONYMS
    )
    assert {r.task_id: (r.source_path, r.label, r.recipe, r.defect_type, r.annotator) for r in records} == {
        "1": ("Mint Chips/unsorted/IMG 0006.png", "bad", "mint_chips", "partial_topping", "2"),
        "2": ("Vanilla Sprinkles/unsorted/IMG_0001.png", "good", "vanilla_sprinkles", "", "2"),  # latest
        "3": (
            "Vanilla Sprinkles/unsorted/IMG_0002.png",
            "bad",
            "vanilla_sprinkles",
            "spillage",
            "1",
        ),  # ground truth
        "5": ("chocolate-nuts/unsorted/cone-0004.png", "good", "chocolate_nuts", "", "1"),
    }
    assert {(p.task_id, p.kind) for p in problems} == {
        ("2", "disagreement"),
        ("3", "disagreement"),
        ("4", "cancelled"),
        ("6", "unlabelled"),
        ("7", "unresolvable"),  # uploaded into Label Studio, not under the photos root
    }
    # with Label Studio's media folder as the root, the uploaded file resolves (and nothing else)
    records, _ = parse_export(str(REAL_EXPORT), str(docroot.parent / "media"), label_synonyms=SYNONYMS)
    assert [(r.task_id, r.source_path, r.label, r.defect_type) for r in records] == [
        ("7", "upload/1/a04e57cb-cone_0042.png", "bad", "wrong_topping")
    ]


def test_real_label_studio_json_min_export(docroot: Path) -> None:
    """JSON-MIN has one row per annotation, no cancelled annotations and no ground-truth flag."""
    records, problems = parse_export(
        str(REAL_MIN_EXPORT), str(docroot / "photos"), local_files_root=str(docroot), label_synonyms=SYNONYMS
    )
    assert {r.task_id: (r.label, r.recipe, r.defect_type, r.annotation_id) for r in records} == {
        "1": ("bad", "mint_chips", "partial_topping", "7"),
        "2": ("good", "vanilla_sprinkles", "", "2"),
        "3": ("good", "vanilla_sprinkles", "", "4"),  # the latest: JSON-MIN drops the ground-truth flag
        "5": ("good", "chocolate_nuts", "", "6"),
    }
    assert {(p.task_id, p.kind) for p in problems} == {
        ("2", "disagreement"),
        ("3", "disagreement"),
        ("6", "unlabelled"),
        ("7", "unresolvable"),
    }


def test_labelling_config_is_the_one_label_studio_accepted() -> None:
    """If this fails, the config changed: check the new one in a real Label Studio, then update the fixture."""
    accepted = (FIXTURES / "ls-1.23.2-accepted-labelling-config.xml").read_text()
    assert (
        labelling_config(["good", "bad"], ["chocolate_nuts", "mint_chips", "vanilla_sprinkles"]) == accepted
    )


def test_upload_urls_resolve_against_label_studios_media_folder(tmp_path: Path) -> None:
    media = tmp_path / "media"
    _png(media / "upload" / "3" / "8f2c1a3e-cone_0042.png")
    records, _ = parse_export(str(FULL_EXPORT), str(media), label_synonyms=SYNONYMS)
    assert [(r.task_id, r.source_path, r.label, r.defect_type) for r in records] == [
        ("106", "upload/3/8f2c1a3e-cone_0042.png", "bad", "wrong_topping")
    ]


def test_not_a_label_studio_export(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(LabelStudioError, match="not valid JSON"):
        parse_export(str(bad), str(tmp_path))
    bad.write_text('{"tasks": 3}')
    with pytest.raises(LabelStudioError, match="expected a list of tasks"):
        parse_export(str(bad), str(tmp_path))


# --- R3: nothing outside the root ----------------------------------------------------------------------


def _presign(url: str) -> str:
    return "/tasks/7/presign/?fileuri=" + base64.b64encode(url.encode()).decode().rstrip("=")


HOSTILE = [
    "/data/local-files/?d=../secret.png",
    "/data/local-files/?d=../../etc/passwd",
    "/data/local-files/?d=%2e%2e%2fsecret.png",
    "/data/local-files/?d=%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/data/local-files/?d=%252e%252e%252fsecret.png",
    "/data/local-files/?d=ok/../../secret.png",
    "/data/local-files/?d=..%5Csecret.png",
    "/data/local-files/?d=/etc/passwd",
    "/data/local-files/?d=%2Fetc%2Fpasswd",
    "/data/local-files/?d=C:%5CWindows%5Cwin.ini",
    "/data/local-files/?d=~/secret.png",
    "/data/local-files/?d=ok%00.png",
    "/data/local-files/?d=a.png&d=../secret.png",
    "/data/local-files/?d=link_out.png",
    "/data/local-files/?d=linkdir/secret.png",
    "http://localhost:8080/data/local-files/?d=../secret.png",
    "/data/upload/../../secret.png",
    "/data/upload/3/%2e%2e/%2e%2e/%2e%2e/secret.png",
    "../secret.png",
    "ok/../../secret.png",
    "..\\secret.png",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "file:///etc/passwd",
    "https://evil.example.com/secret.png",
    "s3://bucket/secret.png",
    "gs://bucket/secret.png",
    _presign("../secret.png"),
    _presign("/data/local-files/?d=../secret.png"),
    _presign(_presign("../secret.png")),
    "/tasks/7/presign/?fileuri=%%%notbase64",
    "",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_urls_outside_the_root_are_refused(tmp_path: Path, url: str) -> None:
    root = tmp_path / "root"
    _png(root / "ok" / "a.png")
    _png(root / "a.png")
    _png(tmp_path / "secret.png", 255)
    os.symlink(tmp_path / "secret.png", root / "link_out.png")
    os.symlink(tmp_path, root / "linkdir")
    with pytest.raises(UnresolvableImage) as info:
        resolve_image_url(url, str(root))
    assert info.value.kind in ("outside_root", "unresolvable", "no_image")


def test_local_files_root_above_the_root_still_confines_to_the_root(tmp_path: Path) -> None:
    _png(tmp_path / "docroot" / "project" / "ok" / "a.png")
    _png(tmp_path / "docroot" / "other" / "b.png")
    root, docroot = str(tmp_path / "docroot" / "project"), str(tmp_path / "docroot")
    assert resolve_image_url("/data/local-files/?d=project/ok/a.png", root, docroot) == "ok/a.png"
    with pytest.raises(UnresolvableImage, match="outside the root"):
        resolve_image_url("/data/local-files/?d=other/b.png", root, docroot)


def test_urls_under_the_root_resolve(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _png(root / "Mint Chips" / "ok" / "a b.png")
    os.symlink(root / "Mint Chips" / "ok" / "a b.png", root / "alias.png")
    r = str(root)
    assert resolve_image_url("/data/local-files/?d=Mint%20Chips/ok/a%20b.png", r) == "Mint Chips/ok/a b.png"
    assert resolve_image_url("/data/local-files?d=Mint+Chips/ok/a+b.png", r) == "Mint Chips/ok/a b.png"
    assert resolve_image_url("https://ls.example:8080/data/local-files/?d=Mint%20Chips/ok/a%20b.png", r) == (
        "Mint Chips/ok/a b.png"
    )
    assert resolve_image_url("Mint Chips/./ok/a b.png", r) == "Mint Chips/ok/a b.png"
    assert resolve_image_url("alias.png", r) == "alias.png"  # a symlink inside the root keeps its name
    assert resolve_image_url(_presign("/data/local-files/?d=alias.png"), r) == "alias.png"
    with pytest.raises(UnresolvableImage) as info:
        resolve_image_url("/data/local-files/?d=Mint%20Chips/ok/gone.png", r)
    assert info.value.kind == "missing_file"


def test_object_store_urls_resolve_only_under_the_root() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lsroot/ds/images/ab/abc.png", b"x")
    fs.pipe("/lsroot/other/x.png", b"x")
    root = "memory://lsroot/ds"
    assert resolve_image_url("memory://lsroot/ds/images/ab/abc.png", root) == "images/ab/abc.png"
    assert resolve_image_url(_presign("memory://lsroot/ds/images/ab/abc.png"), root) == "images/ab/abc.png"
    assert resolve_image_url("/data/local-files/?d=images/ab/abc.png", root) == "images/ab/abc.png"
    for url in (
        "memory://lsroot/other/x.png",
        "memory://lsroot/ds/../other/x.png",
        "memory://lsroot/ds/images/%2e%2e/%2e%2e/other/x.png",
        "memory://lsroot/dsx/images/ab/abc.png",
        "s3://lsroot/ds/images/ab/abc.png",
        "/data/local-files/?d=../other/x.png",
    ):
        with pytest.raises(UnresolvableImage):
            resolve_image_url(url, root)
    with pytest.raises(UnresolvableImage) as info:
        resolve_image_url("memory://lsroot/ds/images/ab/gone.png", root)
    assert info.value.kind == "missing_file"


# --- which annotation counts ------------------------------------------------------------------------


def _ann(
    aid: int, label: str | None, when: str, *, cancelled: bool = False, gt: bool = False
) -> dict[str, Any]:
    result = (
        []
        if label is None
        else [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    )
    return {
        "id": aid,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": gt,
        "completed_by": aid,
        "created_at": when,
        "updated_at": when,
    }


def _parse_tasks(tmp_path: Path, tasks: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    _png(tmp_path / "a.png")
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    records, problems = parse_export(str(export), str(tmp_path), label_synonyms=SYNONYMS)
    return records, problems


@pytest.mark.parametrize(
    ("annotations", "label", "kinds"),
    [
        (
            [_ann(1, "good", "2026-01-01T00:00:00Z"), _ann(2, "bad", "2026-01-02T00:00:00Z")],
            "bad",
            {"disagreement"},
        ),
        (
            [_ann(1, "good", "2026-01-03T00:00:00Z"), _ann(2, "bad", "2026-01-02T00:00:00Z")],
            "good",
            {"disagreement"},
        ),
        (
            [_ann(1, "bad", "2026-01-01T00:00:00Z", gt=True), _ann(2, "good", "2026-01-09T00:00:00Z")],
            "bad",
            {"disagreement"},
        ),
        (
            [_ann(1, "ok", "2026-01-01T00:00:00Z"), _ann(2, "bad", "2026-01-09T00:00:00Z", cancelled=True)],
            "good",
            set(),
        ),
        (
            [_ann(1, "PASS", "2026-01-01T00:00:00+02:00"), _ann(2, "good", "2026-01-01T00:00:00Z")],
            "good",
            set(),
        ),
        ([_ann(1, None, "2026-01-01T00:00:00Z")], None, {"no_label"}),
        ([_ann(1, "bad", "2026-01-01T00:00:00Z", cancelled=True)], None, {"cancelled"}),
        ([], None, {"unlabelled"}),
        ([_ann(1, "scratched", "2026-01-01T00:00:00Z")], None, {"unknown_label"}),
    ],
)
def test_the_latest_live_annotation_counts(
    tmp_path: Path, annotations: list[dict[str, Any]], label: str | None, kinds: set[str]
) -> None:
    records, problems = _parse_tasks(
        tmp_path, [{"id": 1, "data": {"image": "a.png"}, "annotations": annotations}]
    )
    assert [r.label for r in records] == ([label] if label else [])
    assert {p.kind for p in problems} == kinds


def test_two_choices_for_the_class_is_ambiguous_and_stock_template_name_is_read(tmp_path: Path) -> None:
    two = {"from_name": "label", "type": "choices", "value": {"choices": ["good", "bad"]}}
    stock = {"from_name": "choice", "type": "choices", "value": {"choices": ["Defect"]}}
    records, problems = _parse_tasks(
        tmp_path,
        [
            {"id": 1, "data": {"image": "a.png"}, "annotations": [{"id": 1, "result": [two]}]},
            {"id": 2, "data": {"image": "a.png"}, "annotations": [{"id": 2, "result": [stock]}]},
        ],
    )
    assert [(r.task_id, r.label) for r in records] == [("2", "bad")]
    assert [(p.task_id, p.kind) for p in problems] == [("1", "ambiguous_label")]


def test_two_tasks_for_one_file_keep_the_later_and_say_so(tmp_path: Path) -> None:
    records, problems = _parse_tasks(
        tmp_path,
        [
            {"id": 1, "data": {"image": "a.png"}, "annotations": [_ann(1, "bad", "2026-01-05T00:00:00Z")]},
            {
                "id": 2,
                "data": {"image": "/data/local-files/?d=a.png"},
                "annotations": [_ann(2, "good", "2026-01-02T00:00:00Z")],
            },
            {"id": 3, "data": {"url": "a.png"}, "annotations": [_ann(3, "good", "2026-01-02T00:00:00Z")]},
        ],
    )
    assert [(r.task_id, r.label) for r in records] == [("1", "bad")]
    assert [(p.task_id, p.kind) for p in problems] == [("2", "duplicate"), ("3", "no_image")]


def test_normalise_label() -> None:
    assert normalise_label(" OK ", SYNONYMS) == "good"
    assert normalise_label("not ok", SYNONYMS) == "bad"
    assert normalise_label("OK parts", SYNONYMS) == "good"
    assert normalise_label("not ok parts", SYNONYMS) == "bad"
    assert normalise_label("NOK_2024-05-01", SYNONYMS) == "bad"
    assert normalise_label("ok or ng", SYNONYMS) is None
    assert normalise_label("maybe", SYNONYMS) is None
    assert normalise_label("", SYNONYMS) is None


# --- export -------------------------------------------------------------------------------------------


def test_labelling_config_is_valid_xml_with_the_classes_recipes_and_defects() -> None:
    xml = labelling_config(["good", "bad"], ["vanilla_sprinkles", "mint_chips"])
    view = ET.fromstring(xml)
    assert view.tag == "View"
    image = view.find("Image")
    assert image is not None and image.get("name") == "image" and image.get("value") == "$image"
    tags = {c.get("name"): c for c in view.findall("Choices")}
    assert [c.get("value") for c in tags["label"]] == ["good", "bad"]
    assert [c.get("value") for c in tags["recipe"]] == ["vanilla_sprinkles", "mint_chips"]
    defect = tags["defect_type"]
    assert [c.get("value") for c in defect] == [
        "missing_topping",
        "partial_topping",
        "spillage",
        "wrong_topping",
    ]
    assert (defect.get("visibleWhen"), defect.get("whenTagName"), defect.get("whenChoiceValue")) == (
        "choice-selected",
        "label",
        "bad",
    )
    assert all(c.get("toName") == "image" for c in tags.values())
    assert "recipe" not in {
        c.get("name") for c in ET.fromstring(labelling_config(["good", "bad"])).findall("Choices")
    }
    # odd class names are escaped, not injected
    assert ET.fromstring(labelling_config(['a"b<c>', "bad"])).find("Choices/Choice").get("value") == 'a"b<c>'  # type: ignore[union-attr]


@pytest.fixture
def raw_folder(tmp_path: Path) -> Path:
    """A raw folder: some files labelled by folder or file name, some not, plus junk."""
    src = tmp_path / "raw"
    for rel in (
        "Vanilla Sprinkles/ok/v1.png",
        "Vanilla Sprinkles/NOK_2024-05-01/v2.png",
        "Vanilla Sprinkles/unsorted/IMG_0042_NOK.jpg",
        "Vanilla Sprinkles/unsorted/IMG_0043.png",
        "Mint Chips/unsorted/m1.png",
        "Mint Chips/unsorted/m 2.png",
        "loose.png",
        ".hidden/h.png",
    ):
        _png(src / rel)
    (src / "notes.txt").write_text("not an image")
    (src / "Mint Chips" / ".DS_Store").write_text("x")
    return src


def test_export_a_folder(raw_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ls" / "tasks.json"
    summary = export_tasks(str(raw_folder), str(out), label_synonyms=SYNONYMS)
    tasks = json.loads(out.read_text())
    assert summary.tasks == len(tasks) == 7
    by_path = {t["data"]["source_path"]: t["data"] for t in tasks}
    assert set(by_path) == {
        "Vanilla Sprinkles/ok/v1.png",
        "Vanilla Sprinkles/NOK_2024-05-01/v2.png",
        "Vanilla Sprinkles/unsorted/IMG_0042_NOK.jpg",
        "Vanilla Sprinkles/unsorted/IMG_0043.png",
        "Mint Chips/unsorted/m1.png",
        "Mint Chips/unsorted/m 2.png",
        "loose.png",
    }
    assert (
        by_path["Mint Chips/unsorted/m 2.png"]["image"]
        == "/data/local-files/?d=Mint%20Chips/unsorted/m%202.png"
    )
    assert by_path["Mint Chips/unsorted/m1.png"]["recipe"] == "mint_chips"
    assert by_path["loose.png"]["recipe"] == ""
    config = ET.fromstring((tmp_path / "ls" / CONFIG_FILENAME).read_text())
    recipes = [c.get("value") for c in config.findall("Choices[@name='recipe']/Choice")]
    assert recipes == ["mint_chips", "vanilla_sprinkles"]
    for data in tasks:  # every URL written resolves back to its own file
        assert resolve_image_url(data["data"]["image"], str(raw_folder)) == data["data"]["source_path"]

    summary = export_tasks(str(raw_folder), str(out), only_unlabelled=True, label_synonyms=SYNONYMS)
    assert {t["data"]["source_path"] for t in json.loads(out.read_text())} == {
        "Vanilla Sprinkles/unsorted/IMG_0043.png",
        "Mint Chips/unsorted/m1.png",
        "Mint Chips/unsorted/m 2.png",
        "loose.png",
    }
    assert summary.skipped == 3

    labels = tmp_path / "labels.csv"
    labels.write_text(" File ,Label \nMint Chips\\unsorted\\m1.png, OK\nloose.png,\n")
    export_tasks(
        str(raw_folder), str(out), only_unlabelled=True, labels_csv=str(labels), label_synonyms=SYNONYMS
    )
    assert {t["data"]["source_path"] for t in json.loads(out.read_text())} == {
        "Vanilla Sprinkles/unsorted/IMG_0043.png",
        "Mint Chips/unsorted/m 2.png",
        "loose.png",
    }


def test_export_with_a_local_files_root_above_the_folder(raw_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export_tasks(str(raw_folder), str(out), local_files_root=str(tmp_path), label_synonyms=SYNONYMS)
    urls = [t["data"]["image"] for t in json.loads(out.read_text())]
    assert all(u.startswith("/data/local-files/?d=raw/") for u in urls)
    with pytest.raises(LabelStudioError, match="not under --local-files-root"):
        export_tasks(str(raw_folder), str(out), local_files_root=str(raw_folder / "Mint Chips"))


def test_export_skips_links_that_leave_the_local_files_root(raw_folder: Path, tmp_path: Path) -> None:
    _png(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", raw_folder / "leak.png")
    summary = export_tasks(str(raw_folder), str(tmp_path / "tasks.json"), label_synonyms=SYNONYMS)
    assert summary.tasks == 7 and any("leak.png" in n for n in summary.notes)


def test_export_with_predictions(raw_folder: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []

    def predict(data: bytes, recipe: str) -> tuple[str, float]:
        seen.append((len(data), recipe))
        return ("bad" if recipe == "mint_chips" else "good"), 0.875

    out = tmp_path / "tasks.json"
    summary = export_tasks(
        str(raw_folder), str(out), predict=predict, model_version="cones:3", label_synonyms=SYNONYMS
    )
    assert summary.with_predictions == 7 and len(seen) == 7 and all(n > 0 for n, _ in seen)
    task = next(
        t for t in json.loads(out.read_text()) if t["data"]["source_path"] == "Mint Chips/unsorted/m1.png"
    )
    (pred,) = task["predictions"]
    assert pred["model_version"] == "cones:3" and pred["score"] == 0.875
    assert {r["from_name"]: r["value"]["choices"] for r in pred["result"]} == {
        "label": ["bad"],
        "recipe": ["mint_chips"],
    }


def test_export_a_dataset(simple_dataset: Any, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    summary = export_tasks(simple_dataset.root, str(out))
    tasks = json.loads(out.read_text())
    assert summary.tasks == len(tasks) == len(simple_dataset.manifest)
    rows = simple_dataset.manifest.set_index("image_id")
    for t in tasks:
        d = t["data"]
        row = rows.loc[d["image_id"]]
        assert d["dataset_version"] == simple_dataset.version
        assert (d["recipe"], d["source_path"], d["dataset_label"]) == (row.recipe, row.source_path, row.label)
        assert resolve_image_url(d["image"], simple_dataset.root) == row.path
    config = ET.fromstring((tmp_path / CONFIG_FILENAME).read_text())
    assert [c.get("value") for c in config.findall("Choices[@name='label']/Choice")] == simple_dataset.classes
    assert [
        c.get("value") for c in config.findall("Choices[@name='recipe']/Choice")
    ] == simple_dataset.recipes
    with pytest.raises(LabelStudioError, match="every image in it is labelled"):
        export_tasks(simple_dataset.root, str(out), only_unlabelled=True)


def test_export_refuses_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioError, match=r"does not exist|not a folder"):
        export_tasks(str(tmp_path / "nope"), str(tmp_path / "t.json"))


# --- the round trip ---------------------------------------------------------------------------------


def _by_source(truth: dict[str, tuple[str, str, str]]) -> Any:
    """The person's answer for a task: the truth of its source file."""
    return lambda task: truth[task["data"]["source_path"]]


def test_round_trip_export_annotate_import(raw_folder: Path, tmp_path: Path) -> None:
    tasks_file = tmp_path / "ls" / "tasks.json"
    export_tasks(str(raw_folder), str(tasks_file), only_unlabelled=True, label_synonyms=SYNONYMS)
    truth = {
        "Vanilla Sprinkles/unsorted/IMG_0043.png": ("bad", "vanilla_sprinkles", "spillage"),
        "Mint Chips/unsorted/m1.png": ("good", "", ""),
        "Mint Chips/unsorted/m 2.png": ("bad", "mint_chips", "missing_topping"),
        "loose.png": ("good", "chocolate_nuts", ""),
    }
    export = tmp_path / "ls" / "export.json"
    export.write_text(json.dumps(labelled_export(json.loads(tasks_file.read_text()), _by_source(truth))))
    labels_csv = tmp_path / "labels.csv"
    parsed = import_export(str(export), str(labels_csv), str(raw_folder), label_synonyms=SYNONYMS)
    assert parsed.problems == []
    rows = list(csv.DictReader(io.StringIO(labels_csv.read_text())))
    assert list(rows[0]) == ["file", "label", "recipe", "defect_type"]
    # the recipe falls back to what export read from the folder name when the annotator left it
    expected = {**truth, "Mint Chips/unsorted/m1.png": ("good", "mint_chips", "")}
    assert {r["file"]: (r["label"], r["recipe"], r["defect_type"]) for r in rows} == expected


def test_round_trip_from_a_dataset_keeps_image_ids(simple_dataset: Any, tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.json"
    export_tasks(simple_dataset.root, str(tasks_file))
    tasks = json.loads(tasks_file.read_text())
    truth = {t["data"]["source_path"]: ("good", t["data"]["recipe"], "") for t in tasks}  # relabel all good
    export = tmp_path / "export.json"
    export.write_text(json.dumps(labelled_export(tasks, _by_source(truth))))
    records, problems = parse_export(str(export), simple_dataset.root)
    assert problems == []
    assert {r.image_id for r in records} == set(simple_dataset.manifest["image_id"])
    assert {r.source_path for r in records} == set(simple_dataset.manifest["path"])


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_export_and_import(raw_folder: Path, tmp_path: Path, photos: Path) -> None:
    from lineguard.cli import app

    runner = CliRunner()
    out = tmp_path / "cli" / "tasks.json"
    result = runner.invoke(app, ["label", "export", str(raw_folder), "--out", str(out), "--only-unlabelled"])
    assert result.exit_code == 0, result.output
    assert "Wrote 4 tasks" in " ".join(result.output.split())
    assert (tmp_path / "cli" / CONFIG_FILENAME).is_file()

    labels_csv = tmp_path / "cli" / "labels.csv"
    result = runner.invoke(
        app, ["label", "import", str(FULL_EXPORT), "--root", str(photos), "--out", str(labels_csv)]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "Wrote 6 labels" in text and "11 tasks gave no label" in text
    assert "outside_root task 107" in text
    assert len(labels_csv.read_text().splitlines()) == 7

    result = runner.invoke(
        app,
        ["label", "import", str(FULL_EXPORT), "--root", str(photos), "--out", str(labels_csv), "--strict"],
    )
    assert result.exit_code != 0 and isinstance(result.exception, LineguardError)


def test_cli_user_errors_are_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "export.json"
    bad.write_text("[1, 2]")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lineguard.cli",
            "label",
            "import",
            str(bad),
            "--out",
            str(tmp_path / "l.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not a Label Studio JSON export" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "l.csv").exists()


def test_cli_export_with_a_bundles_predictions(tmp_path: Path) -> None:
    """Pre-annotations come from a real (toy) bundle run by the edge predictor."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("lineguard.export")
    from lineguard.cli import app
    from tests.unit._edge_bundles import make_toy_bundle

    bundle = make_toy_bundle(tmp_path / "bundle")
    src = tmp_path / "raw"
    _png(src / "vanilla" / "unsorted" / "dark.png", 20)  # the toy model calls bright images bad
    _png(src / "vanilla" / "unsorted" / "bright.png", 240)
    out = tmp_path / "tasks.json"
    result = CliRunner().invoke(
        app, ["label", "export", str(src), "--out", str(out), "--predictions", str(bundle)]
    )
    assert result.exit_code == 0, result.output
    preds = {t["data"]["source_path"]: t["predictions"][0] for t in json.loads(out.read_text())}
    chosen = {
        p: {r["from_name"]: r["value"]["choices"][0] for r in pred["result"]} for p, pred in preds.items()
    }
    assert chosen == {
        "vanilla/unsorted/dark.png": {"label": "good", "recipe": "vanilla"},
        "vanilla/unsorted/bright.png": {"label": "bad", "recipe": "vanilla"},
    }
    assert all(pred["model_version"] == "toy:1" and 0.5 <= pred["score"] <= 1.0 for pred in preds.values())


def test_round_trip_on_synth_messy_data_through_ingest(tmp_path: Path) -> None:
    """On real files from `synth --messy`: export exactly the unlabelled files, label them, ingest the export."""
    import pandas as pd

    from lineguard.config import SynthConfig
    from lineguard.ingest import ingest
    from lineguard.manifest import load_dataset
    from lineguard.synth import synth

    raw = tmp_path / "raw"
    synth(str(raw), SynthConfig(recipes=2, per_class=4, size=32), messy=True, workers=1)
    truth = pd.read_csv(raw / ".truth" / "ground_truth.csv", dtype=str, keep_default_na=False)
    truth = truth.set_index("source_path")
    tasks_file = tmp_path / "ls" / "tasks.json"
    export_tasks(str(raw), str(tasks_file), only_unlabelled=True, labels_csv=str(raw / "labels.csv"))
    tasks = json.loads(tasks_file.read_text())
    exported = {t["data"]["source_path"] for t in tasks}
    unlabelled = set(truth.index[truth["expected"] == "unlabelled"])
    assert unlabelled and unlabelled <= exported
    assert not exported & set(truth.index[truth["expected"] == "image"])  # nothing already labelled

    to_label = [t for t in tasks if t["data"]["source_path"] in unlabelled]
    answers = {
        p: (truth.at[p, "label"], truth.at[p, "recipe"], truth.at[p, "defect_type"]) for p in unlabelled
    }
    export = tmp_path / "ls" / "export.json"
    export.write_text(json.dumps(labelled_export(to_label, _by_source(answers))))
    report = ingest(str(export), str(tmp_path / "ds"), root=str(raw))
    ds = load_dataset(str(tmp_path / "ds"))
    got = {r.source_path: (r.label, r.recipe) for r in ds.manifest.itertuples()}
    assert got == {p: answers[p][:2] for p in unlabelled}
    assert set(ds.manifest["label_source"]) == {"labelstudio"} and report.version == ds.version
