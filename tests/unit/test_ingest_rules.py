"""Ingest logic without files: label rules, safe paths, near-duplicate grouping, splits."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from lineguard.config import IngestConfig, load_config
from lineguard.ingest import LabelRules, assign_splits, near_duplicate_groups, normalise_name, safe_relpath
from lineguard.ingest.rules import path_votes, recipe_from_filename, resolve
from lineguard.ingest.splits import balance_test

RULES = LabelRules(IngestConfig())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Vanilla Sprinkles", "vanilla_sprinkles"),
        ("chocolate-nuts", "chocolate_nuts"),
        ("STRAWBERRY_DRIZZLE", "strawberry_drizzle"),
        ("  Mint  Chips!! ", "mint_chips"),
    ],
)
def test_normalise_name(name: str, expected: str) -> None:
    assert normalise_name(name) == expected


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("Good", {"good"}),
        ("OK parts", {"good"}),
        ("good cones", {"good"}),
        ("PASS", {"good"}),
        ("bad cones", {"bad"}),
        ("NOK_2024-05-01", {"bad"}),
        ("Defect", {"bad"}),
        ("reject", {"bad"}),
        ("NG", {"bad"}),
        ("not ok", {"bad"}),  # the longer synonym wins; never the 'ok' inside it
        ("IMG_0042_NOK", {"bad"}),
        ("cone-0007-ok", {"good"}),
        ("unsorted", set()),
        ("okra", set()),  # whole tokens only
        ("png", set()),
        ("ok_vs_ng", {"good", "bad"}),
        ("Non defective 01 (1)", {"good"}),  # a negated defect word is 'good', never 'bad'
        ("no_defect", {"good"}),
        ("defect-free", {"good"}),
    ],
)
def test_classes_in_names(name: str, classes: set[str]) -> None:
    assert RULES.classes_in(name) == classes


def test_csv_label_cells() -> None:
    assert RULES.csv_label(" OK") == "good"
    assert RULES.csv_label("nok ") == "bad"
    assert RULES.csv_label("DEFECT") == "bad"
    assert RULES.csv_label("Scratch Marks") == "scratch_marks"  # not a synonym: used as a class as-is
    assert RULES.csv_label("  ") is None


def test_custom_synonyms_and_overlap_rejected() -> None:
    cfg = load_config(None, ["ingest.label_synonyms={good: [gut], bad: [schlecht]}"]).ingest
    assert LabelRules(cfg).classes_in("Gut") == {"good"}
    with pytest.raises(Exception, match="listed for both"):
        load_config(None, ["ingest.label_synonyms={good: [ok], bad: [ok]}"])


@pytest.mark.parametrize(
    "raw",
    ["../x.png", "a/../../x.png", "/etc/passwd", "C:\\data\\x.png", "c:/x.png", "s3://bucket/x.png",
     "\\\\server\\share\\x.png", "", "  ", "a/..\\..\\x.png"],
)
def test_safe_relpath_refuses_escapes(raw: str) -> None:
    assert safe_relpath(raw) is None


def test_safe_relpath_normalises_windows_paths() -> None:
    assert safe_relpath(" Vanilla Sprinkles\\Good\\IMG_1.png ") == "Vanilla Sprinkles/Good/IMG_1.png"
    assert safe_relpath("./a//b/./c.png") == "a/b/c.png"


def test_path_votes_folder_filename_recipe() -> None:
    v = path_votes("Vanilla Sprinkles/NOK_2024-05-01/IMG_1.png", RULES, class_folders=False)
    assert v.label == {"folder": {"bad"}}
    assert v.recipe == {"top_folder": {"vanilla_sprinkles"}}
    v = path_votes("Mint Chips/unsorted/cone-0007-ok.png", RULES, class_folders=False)
    assert v.label == {"filename": {"good"}}
    v = path_votes("good/IMG_1.png", RULES, class_folders=False)
    assert v.label == {"folder": {"good"}}
    assert v.recipe == {}  # a label folder is never a recipe
    v = path_votes("Scratch/IMG_1.png", RULES, class_folders=True)
    assert v.label == {"folder": {"scratch"}}
    v = path_votes("x/bad/vanilla_bad_missing_topping_00001.png", RULES, class_folders=False)
    assert v.defect == "missing_topping"


def test_class_folder_is_the_label_whatever_the_file_name_says() -> None:
    # A leather dataset's "good/Non defective 01.jpg" or a "defect/ok_batch_3.png": the user's folder decides.
    assert path_votes("good/Defective sample 01.jpg", RULES, class_folders=True).label == {"folder": {"good"}}
    assert path_votes("defect/ok_batch_3.png", RULES, class_folders=True).label == {"folder": {"bad"}}


def _resolve(path: str, rows: list[dict[str, str]] | None = None, **cfg):
    config = IngestConfig(**cfg)
    rules = LabelRules(config)
    return resolve(path, path_votes(path, rules, False), rows or [], rules, config)


def test_resolve_agreeing_sources() -> None:
    label, recipe, _, source, conflict = _resolve("Mint Chips/Good/a.png", [{"label": " ok", "recipe": "Mint Chips"}])
    assert (label, recipe, source, conflict) == ("good", "mint_chips", "csv", None)


def test_resolve_label_conflict_is_reported_not_decided() -> None:
    label, _, _, _, conflict = _resolve("Mint Chips/Good/a.png", [{"label": "NG"}])
    assert label is None
    assert conflict is not None and conflict["field"] == "label"
    assert conflict["values"] == {"csv": ["bad"], "folder": ["good"]}
    # two CSV rows for one file that disagree are a conflict too
    _, _, _, _, conflict = _resolve("unsorted/a.png", [{"label": "ok"}, {"label": "nok"}])
    assert conflict is not None
    # a folder name and a file name that disagree
    _, _, _, _, conflict = _resolve("x/Good/IMG_1_NOK.png")
    assert conflict is not None and conflict["values"] == {"filename": ["bad"], "folder": ["good"]}


def test_resolve_recipe_conflict_and_order() -> None:
    _, _, _, _, conflict = _resolve("Mint Chips/Good/a.png", [{"label": "ok", "recipe": "Vanilla Sprinkles"}])
    assert conflict is not None and conflict["field"] == "recipe"
    # recipe_from without csv: the csv recipe is not a source, so no conflict
    label, recipe, _, _, conflict = _resolve(
        "Mint Chips/Good/a.png", [{"label": "ok", "recipe": "Vanilla"}], recipe_from=["top_folder"]
    )
    assert (label, recipe, conflict) == ("good", "mint_chips", None)


def test_unlabelled_has_no_label_and_no_conflict() -> None:
    label, recipe, _, _, conflict = _resolve("Mint Chips/unsorted/DSC0001.png")
    assert (label, recipe, conflict) == (None, "mint_chips", None)


def test_recipe_from_filename_picks_longest_known() -> None:
    known = ["mint", "mint_chips", "vanilla_sprinkles"]
    assert recipe_from_filename("x/mint_chips_good_ok_00001.png", known) == "mint_chips"
    assert recipe_from_filename("x/IMG_0001.png", known) is None


# --- near duplicates -----------------------------------------------------------------------------


def _brute_force(hashes: list[int], k: int) -> list[set[int]]:
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in itertools.combinations(range(len(hashes)), 2):
        if (hashes[a] ^ hashes[b]).bit_count() <= k:
            parent[max(find(a), find(b))] = min(find(a), find(b))
    groups: dict[int, set[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(find(i), set()).add(i)
    return sorted(groups.values(), key=min)


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_banded_grouping_equals_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    base = [int(rng.integers(0, 2**63)) for _ in range(40)]
    hashes = []
    for h in base:  # each base hash plus a few neighbours within a few bits
        hashes.append(h)
        for _ in range(2):
            flips = rng.choice(64, int(rng.integers(0, k + 3)), replace=False)
            hashes.append(h ^ sum(1 << int(f) for f in flips))
    roots = near_duplicate_groups(hashes, k)
    groups: dict[int, set[int]] = {}
    for i, r in enumerate(roots):
        groups.setdefault(r, set()).add(i)
    assert sorted(groups.values(), key=min) == _brute_force(hashes, k)
    assert all(roots[i] == min(g) for g in groups.values() for i in g)


def test_thumbnail_check_breaks_false_hash_matches() -> None:
    hashes = [0, 0, 0]
    thumbs = np.array([[10] * 768, [11] * 768, [90] * 768], dtype=np.uint8)
    roots = near_duplicate_groups(hashes, 4, thumbs, max_diff=3.5)
    assert roots == [0, 0, 2]


def test_perceptual_hash_survives_reencode_and_resize() -> None:
    from lineguard.ingest import perceptual_hash, thumbnail

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    img = np.zeros((96, 96, 3), np.uint8)
    img[..., 0] = (xx * 2).astype(np.uint8)
    img[(xx - 40) ** 2 + (yy - 50) ** 2 < 400] = (250, 200, 30)
    img = np.clip(img + rng.integers(0, 8, img.shape), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img).resize((86, 86), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=70)
    near = np.asarray(Image.open(buf).convert("RGB"))
    other = np.ascontiguousarray(img[::-1])
    assert (perceptual_hash(img) ^ perceptual_hash(near)).bit_count() <= 8
    diff = np.abs(thumbnail(img).astype(int) - thumbnail(near).astype(int)).mean()
    assert diff <= IngestConfig().near_duplicate_max_diff
    assert (perceptual_hash(img) ^ perceptual_hash(other)).bit_count() > 8


# --- splits --------------------------------------------------------------------------------------


def _groups(n: int = 200) -> dict[str, tuple[str, int]]:
    rng = np.random.default_rng(1)
    return {f"g{i:04d}": (f"r{i % 3}/{'good' if i % 2 else 'bad'}", int(rng.integers(1, 4))) for i in range(n)}


def test_assign_splits_reproducible_and_stratified() -> None:
    groups = _groups()
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = assign_splits(groups, fractions, seed=0)
    assert a == assign_splits(dict(reversed(list(groups.items()))), fractions, seed=0)  # input order irrelevant
    assert a != assign_splits(groups, fractions, seed=1)
    assert set(a) == set(groups)
    for stratum in {s for s, _ in groups.values()}:
        sizes = {k: 0 for k in fractions}
        for gid, (s, n) in groups.items():
            if s == stratum:
                sizes[a[gid]] += n
        total = sum(sizes.values())
        for split, share in fractions.items():
            assert abs(sizes[split] - share * total) <= 3, (stratum, sizes)


def test_balance_test_downsamples_majority_per_recipe() -> None:
    items = [(f"i{n:03d}", "r1", "good") for n in range(10)] + [(f"j{n:03d}", "r1", "bad") for n in range(4)]
    items += [(f"k{n:03d}", "r2", "good") for n in range(3)]
    split_of = {i[0]: "test" for i in items}
    moved, warnings = balance_test(items, split_of, seed=0, holdout="unused")
    assert len(moved) == 6 and all(m.startswith("i") for m in moved)
    assert sum(1 for i in items if i[1] == "r1" and split_of[i[0]] == "test") == 8
    assert any("r2" in w for w in warnings)  # one class only: reported, not balanced
    again = {i[0]: "test" for i in items}
    assert balance_test(items, again, seed=0, holdout="unused")[0] == moved
