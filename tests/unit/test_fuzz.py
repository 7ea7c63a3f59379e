"""Property-based fuzzing of the three parsers of untrusted input: no exception but the project's own.

The image decoder (random bytes and mutated real images), the bundle loader (bundle.json
with fields replaced by arbitrary JSON) and the Label Studio parser (arbitrary task
structures). Each may refuse, with its own error type, and must never crash otherwise.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lineguard.edge import BundleError, load_bundle
from lineguard.edge.signing import SigningError, integrity_block
from lineguard.labelstudio import LabelStudioError, parse_export
from lineguard.preprocess import IMAGE_FORMATS, ImageDecodeError, decode_image
from tests.unit._edge_bundles import make_toy_bundle

# derandomize: the same examples on every machine and run (CI must not pass or fail by the draw); no example
# database, so a fresh clone and this checkout search alike.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _encoded(fmt: str) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


SAMPLES = [_encoded(f) for f in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_decoder_on_random_bytes(data: bytes) -> None:
    try:
        out = decode_image(data)
    except ImageDecodeError:
        return
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


@FUZZ
@given(sample=st.sampled_from(SAMPLES), cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                                     min_size=1, max_size=12), truncate=st.integers(8, 5000))
def test_decoder_on_mutated_images(sample: bytes, cuts: list[tuple[int, int]], truncate: int) -> None:
    data = bytearray(sample[:truncate])
    for pos, value in cuts:
        if data:
            data[pos % len(data)] = value
    with contextlib.suppress(ImageDecodeError):
        decode_image(bytes(data), max_pixels=1_000_000)


def test_allow_list_is_what_the_samples_cover() -> None:
    assert set(IMAGE_FORMATS) == {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "GIF"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("fuzz") / "toy")


def _paths(meta: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(meta, dict):
        for k, v in meta.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(meta, list):
        for i, v in enumerate(meta[:3]):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(data=st.data())
def test_bundle_loader_on_mutated_bundle_json(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                              data: st.DataObject) -> None:
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    paths = [p for p in _paths(meta) if p[0] != "integrity"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = meta
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    if data.draw(st.booleans()):
        # Reach past the integrity check -- where the content has a canonical form at all: NaN and infinity
        # have none, so no one (attacker or exporter) can seal them, and the loader meets them unsealed.
        with contextlib.suppress(SigningError):
            meta["integrity"] = integrity_block(meta)
    folder = tmp_path_factory.mktemp("case")
    shutil.copytree(bundle_dir, folder, dirs_exist_ok=True)
    (folder / "bundle.json").write_text(json.dumps(meta))
    with contextlib.suppress(BundleError):
        load_bundle(folder)


def test_a_bundle_json_with_infinity_cannot_be_sealed_and_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    """The case a random search once found: a non-JSON number has no canonical form, so it cannot be sealed."""
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["schema"] = [float("inf")]
    with pytest.raises(SigningError, match="canonical form"):
        integrity_block(meta)
    folder = tmp_path / "case"
    shutil.copytree(bundle_dir, folder)
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError):
        load_bundle(folder)


@FUZZ
@given(tasks=json_values)
def test_label_studio_parser_on_arbitrary_json(tmp_path_factory: pytest.TempPathFactory, tasks: Any) -> None:
    folder = tmp_path_factory.mktemp("ls")
    (folder / "export.json").write_text(json.dumps(tasks))
    with contextlib.suppress(LabelStudioError):
        parse_export(str(folder / "export.json"), str(folder))


task_shapes = st.fixed_dictionaries(
    {"id": json_values, "data": st.dictionaries(st.sampled_from(["image", "recipe", "image_id"]), json_values),
     "annotations": st.lists(st.fixed_dictionaries({
         "id": json_values, "was_cancelled": json_values, "ground_truth": json_values,
         "updated_at": json_values, "completed_by": json_values,
         "result": st.lists(st.fixed_dictionaries({"from_name": st.sampled_from(["label", "recipe", "choice", "x"]),
                                                   "value": st.fixed_dictionaries({"choices": json_values})}),
                            max_size=3) | json_values,
     }), max_size=3) | json_values},
)


@FUZZ
@given(tasks=st.lists(task_shapes, max_size=5))
def test_label_studio_parser_on_task_shaped_json(tmp_path_factory: pytest.TempPathFactory, tasks: Any) -> None:
    folder = tmp_path_factory.mktemp("ls")
    (folder / "export.json").write_text(json.dumps(tasks))
    with contextlib.suppress(LabelStudioError):
        parse_export(str(folder / "export.json"), str(folder))
