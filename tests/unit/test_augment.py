"""Augmentation: off means identity (training input == preprocess() output), shapes, ranges, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lineguard.augment import augment_batch, is_identity, normalise_batch
from lineguard.config import AugmentConfig
from lineguard.preprocess import PreprocessParams, normalise, preprocess, resize


def _images(n: int = 6, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _batch(images: np.ndarray, params: PreprocessParams) -> torch.Tensor:
    return torch.from_numpy(np.stack([resize(im, params).transpose(2, 0, 1) for im in images]))


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "center_crop"])
def test_no_augmentation_gives_exactly_the_preprocess_output(mode: str) -> None:
    params = PreprocessParams(size=(16, 20), resize=mode, pad_value=114)  # type: ignore[arg-type]
    images = _images()
    x = augment_batch(_batch(images, params), AugmentConfig(strength=0.0), torch.Generator().manual_seed(0),
                      pad_value=params.pad_value)
    got = normalise_batch(x, params).numpy()
    want = np.stack([preprocess(im, params) for im in images])
    assert got.shape == want.shape == (6, 3, 16, 20)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_normalise_batch_matches_preprocess_normalise_on_uint8() -> None:
    params = PreprocessParams(size=(8, 8), mean=(0.1, 0.5, 0.9), std=(0.3, 0.2, 0.1))
    images = _images(3, 8, 8, seed=1)
    got = normalise_batch(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), params).numpy()
    want = np.stack([normalise(im, params) for im in images])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_identity_detection() -> None:
    assert is_identity(AugmentConfig(strength=0.0))
    assert not is_identity(AugmentConfig())
    off = {k: 0.0 for k in ("hflip", "vflip", "rotate_deg", "scale", "translate", "brightness", "contrast",
                            "saturation", "hue", "blur", "noise", "cutout")}
    assert is_identity(AugmentConfig(**off))
    assert not is_identity(AugmentConfig(**{**off, "cutout": 0.5}))


def test_full_augmentation_keeps_shape_dtype_and_range_and_changes_pixels() -> None:
    x = torch.from_numpy(_images(8, 32, 32).transpose(0, 3, 1, 2).copy())
    cfg = AugmentConfig(strength=2.0, vflip=0.5, cutout=0.5, blur=0.5)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x.float())


def test_same_seed_same_output_different_seed_different_output() -> None:
    x = torch.from_numpy(_images(4, 16, 16).transpose(0, 3, 1, 2).copy())
    cfg = AugmentConfig(cutout=0.5)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(7))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_only_is_an_exact_mirror() -> None:
    x = torch.from_numpy(_images(2, 8, 8).transpose(0, 3, 1, 2).copy())
    off = {k: 0.0 for k in ("vflip", "rotate_deg", "scale", "translate", "brightness", "contrast",
                            "saturation", "hue", "blur", "noise", "cutout")}
    out = augment_batch(x, AugmentConfig(**{**off, "hflip": 1.0}), torch.Generator().manual_seed(0))
    assert torch.equal(out, x.float().flip(3))


def test_geometric_warp_fills_with_the_pad_value() -> None:
    x = torch.full((2, 3, 16, 16), 200, dtype=torch.uint8)
    off = {k: 0.0 for k in ("hflip", "vflip", "rotate_deg", "brightness", "contrast", "saturation", "hue",
                            "blur", "noise", "cutout")}
    cfg = AugmentConfig(**{**off, "translate": 0.5, "scale": 0.5}, strength=1.0)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(1), pad_value=10)
    values = set(torch.round(out).unique().tolist())
    assert values <= set(range(10, 201))
    assert 10.0 in values  # the uncovered border is the letterbox colour, not black


def test_colour_jitter_leaves_grey_images_grey() -> None:
    grey = torch.from_numpy(np.repeat(_images(4, 12, 12)[..., :1], 3, axis=3).transpose(0, 3, 1, 2).copy())
    off = {k: 0.0 for k in ("hflip", "vflip", "rotate_deg", "scale", "translate", "blur", "noise", "cutout")}
    out = augment_batch(grey, AugmentConfig(**off, brightness=0.3, contrast=0.3, saturation=0.5, hue=0.3),
                        torch.Generator().manual_seed(2))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-3) and torch.allclose(out[:, 1], out[:, 2], atol=1e-3)
