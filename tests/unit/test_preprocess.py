"""The preprocessing contract: decoding every format to 8-bit RGB, resizing, normalising."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lineguard import LineguardError
from lineguard.preprocess import (
    ImageDecodeError,
    PreprocessParams,
    decode_image,
    image_stats,
    preprocess,
    preprocess_batch,
    resize,
)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_png_round_trip_is_exact(rgb: np.ndarray) -> None:
    out = decode_image(_encode(Image.fromarray(rgb), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_every_mode_becomes_uint8_rgb(rgb: np.ndarray, mode: str) -> None:
    img = Image.fromarray(rgb)
    if mode == "I;16":
        arr16 = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr16)
        fmt = "PNG"
    else:
        img = img.convert(mode)
        fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = decode_image(_encode(img, fmt))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    if mode == "I;16":
        np.testing.assert_allclose(out[..., 0], rgb[..., 0], atol=1)


def test_exif_orientation_is_applied(rgb: np.ndarray) -> None:
    img = Image.fromarray(rgb).rotate(90, expand=True)  # stored rotated...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...with "rotate 90 CW to view" (orientation 8 undoes a 90 CCW rotation)
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (20, 30, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, not an image at all", "not_an_image"),
    ],
)
def test_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_truncated_files_are_rejected(rgb: np.ndarray) -> None:
    for fmt in ("PNG", "JPEG"):
        data = _encode(Image.fromarray(np.tile(rgb, (10, 10, 1))), fmt)
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data[: len(data) // 2])
        assert info.value.reason in ("truncated", "corrupt")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_header() -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_header_only(50_000, 50_000))
    assert info.value.reason == "too_large"
    with pytest.raises(ImageDecodeError):
        decode_image(_png_header_only(200, 200), max_pixels=100)


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "center_crop"])
def test_resize_modes_give_the_target_size(rgb: np.ndarray, mode: str) -> None:
    params = PreprocessParams(size=(16, 24), resize=mode)  # type: ignore[arg-type]
    out = resize(rgb, params)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8


def test_letterbox_keeps_aspect_and_pads() -> None:
    wide = np.full((10, 40, 3), 200, np.uint8)
    out = resize(wide, PreprocessParams(size=(40, 40), resize="letterbox", pad_value=0))
    assert (out[:10] == 0).all() and (out[-10:] == 0).all()
    assert (out[16:24] == 200).all()


def test_normalisation_matches_the_formula(rgb: np.ndarray) -> None:
    params = PreprocessParams(size=(20, 30))
    out = preprocess(rgb, params)
    expected = (rgb.transpose(2, 0, 1) / 255.0 - np.array(params.mean)[:, None, None]) / np.array(params.std)[:, None, None]
    assert out.shape == (3, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    batch = preprocess_batch([rgb, rgb], params)
    assert batch.shape == (2, 3, 20, 30)
    np.testing.assert_array_equal(batch[0], out)


def test_params_round_trip_and_validation() -> None:
    params = PreprocessParams(size=(96, 128), resize="center_crop", pad_value=3)
    assert PreprocessParams.from_dict(params.to_dict()) == params
    with pytest.raises(LineguardError, match="missing"):
        PreprocessParams.from_dict({"size": [1, 1]})
    with pytest.raises(LineguardError):
        PreprocessParams(size=(2, 2))
    with pytest.raises(LineguardError):
        preprocess(np.zeros((4, 4), np.uint8), params)


def test_image_stats_react_to_blur_and_brightness(rgb: np.ndarray) -> None:
    base = image_stats(rgb)
    blurred = np.asarray(Image.fromarray(rgb).resize((6, 4)).resize((30, 20)))
    assert image_stats(blurred)["sharpness"] < base["sharpness"]
    brighter = np.clip(rgb.astype(int) + 40, 0, 255).astype(np.uint8)
    assert image_stats(brighter)["brightness"] > base["brightness"]
