"""THE preprocessing contract: decode, resize, normalise. Written once, used everywhere.

Ingest decodes with :func:`decode_image`; training, evaluation and the edge runtime
all turn a decoded image into model input with :func:`preprocess`, whose parameters
(:class:`PreprocessParams`) travel inside every bundle. Only numpy and Pillow are
imported here, so the edge can use it without the training stack.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lineguard import LineguardError

if TYPE_CHECKING:
    from lineguard.config import PreprocessConfig

ResizeMode = Literal["letterbox", "stretch", "center_crop"]
DEFAULT_MAX_PIXELS = 40_000_000
# ITU-R BT.601 luma: grey model input and the brightness statistic use the same weights.
_LUMA = (0.299, 0.587, 0.114)
# What cameras and inspection tools write. Pillow's other decoders (EPS runs Ghostscript,
# and PSD, FITS, ICNS, ... are rarely exercised) are never reached with untrusted bytes.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "GIF")


class ImageDecodeError(LineguardError):
    """A file is not a usable image. ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


ColorMode = Literal["rgb", "grey"]
TilePool = Literal["max", "lse", "mean"]


@dataclass(frozen=True)
class TileSpec:
    """Tiled classification: the model scores ``size`` tiles cut every ``stride`` pixels from the resized
    image and pools the tile scores into one decision (``lse``: a smooth maximum -- one defective tile makes
    a defective image). The tiling runs inside the exported model, so the edge runs it in one ONNX call."""

    size: tuple[int, int]  # (height, width) of one tile
    stride: tuple[int, int]
    pool: TilePool = "lse"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or len(self.stride) != 2 or min(self.size) < 8 or min(self.stride) < 1:
            raise LineguardError(f"preprocess tiles need size (h, w) >= 8 px and stride >= 1, got {self}")
        if self.pool not in ("max", "lse", "mean"):
            raise LineguardError(f"preprocess tiles pool must be max, lse or mean, got {self.pool!r}")

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Tiles along (height, width) for a model input of ``image_size``."""
        (h, w), (th, tw), (sh, sw) = image_size, self.size, self.stride
        if th > h or tw > w or (h - th) % sh or (w - tw) % sw:
            raise LineguardError(f"tiles of {th}x{tw} every {sh}x{sw} px do not tile a {h}x{w} input exactly")
        return (h - th) // sh + 1, (w - tw) // sw + 1

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "stride": list(self.stride), "pool": self.pool}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileSpec:
        try:
            return cls(size=(int(data["size"][0]), int(data["size"][1])),
                       stride=(int(data["stride"][0]), int(data["stride"][1])), pool=data.get("pool", "lse"))
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise LineguardError(f"preprocess tiles block is invalid: {exc!r}") from None


@dataclass(frozen=True)
class PreprocessParams:
    """How a decoded RGB uint8 image becomes a float32 CHW tensor; stored in bundle.json.

    ``color="grey"`` turns the image into one luma channel (BT.601, the weights of
    :func:`image_stats`) after resizing; ``mean`` and ``std`` then hold one value each.
    ``tiles`` (optional) says that the model classifies tiles of the resized image.
    """

    size: tuple[int, int] = (128, 128)  # (height, width)
    resize: ResizeMode = "letterbox"
    color: ColorMode = "rgb"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    pad_value: int = 0
    tiles: TileSpec | None = None
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _shift: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise LineguardError(f"preprocess size must be (height, width) of at least 8 px, got {self.size}")
        if self.resize not in ("letterbox", "stretch", "center_crop"):
            raise LineguardError(f"preprocess resize must be letterbox, stretch or center_crop, got {self.resize!r}")
        if self.color not in ("rgb", "grey"):
            raise LineguardError(f"preprocess color must be rgb or grey, got {self.color!r}")
        c = self.channels
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise LineguardError(f"preprocess mean and std must each have {c} value(s) for color "
                                 f"{self.color}, std > 0; got mean {list(self.mean)}, std {list(self.std)}")
        if not np.all(np.isfinite([*self.mean, *self.std])):
            raise LineguardError("preprocess mean and std must be finite numbers")
        if self.tiles is not None:
            self.tiles.grid(self.size)
        # (x/255 - mean)/std == x*scale + shift, precomputed once for the hot path.
        std = np.asarray(self.std, np.float32)
        object.__setattr__(self, "_scale", (1.0 / (255.0 * std)).reshape(c, 1, 1).astype(np.float32))
        object.__setattr__(self, "_shift", (-np.asarray(self.mean, np.float32) / std).reshape(c, 1, 1))

    @property
    def channels(self) -> int:
        """Channels of the model input: 3 for rgb, 1 for grey."""
        return 1 if self.color == "grey" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        return (self.channels, *self.size)

    @property
    def scale(self) -> np.ndarray:
        """Per-channel multiplier of :func:`normalise` (``1 / (255 * std)``), shape (C, 1, 1)."""
        return self._scale

    @property
    def shift(self) -> np.ndarray:
        """Per-channel offset of :func:`normalise` (``-mean / std``), shape (C, 1, 1)."""
        return self._shift

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"size": list(self.size), "resize": self.resize, "color": self.color,
                             "mean": list(self.mean), "std": list(self.std), "pad_value": self.pad_value}
        if self.tiles is not None:
            d["tiles"] = self.tiles.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        """Build from a bundle's ``preprocess`` block; missing or odd fields are an error."""
        required = ("size", "resize", "mean", "std")
        missing = [k for k in required if k not in data]
        if missing:
            raise LineguardError(f"preprocess block is missing {', '.join(missing)}")
        try:
            tiles = data.get("tiles")
            return cls(
                size=(int(data["size"][0]), int(data["size"][1])),
                resize=data["resize"],
                color=data.get("color", "rgb"),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                pad_value=int(data.get("pad_value", 0)),
                tiles=TileSpec.from_dict(tiles) if tiles is not None else None,
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise LineguardError(f"preprocess block is invalid: {exc}") from None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def params_from_config(config: PreprocessConfig) -> PreprocessParams:
    """The :class:`PreprocessParams` of a ``preprocess`` config section: the one place config becomes the contract.

    Unset ``mean``/``std`` are ImageNet's (rgb) or their averages (grey), so pretrained
    weights see the statistics they were trained on.
    """
    grey = config.color == "grey"
    mean = config.mean or ((sum(IMAGENET_MEAN) / 3,) if grey else IMAGENET_MEAN)
    std = config.std or ((sum(IMAGENET_STD) / 3,) if grey else IMAGENET_STD)
    tiles = None
    if config.tile is not None:
        tiles = TileSpec(size=tuple(config.tile), stride=tuple(config.tile_stride or config.tile),  # type: ignore[arg-type]
                         pool=config.tile_pool)
    return PreprocessParams(size=tuple(config.size), resize=config.resize, color=config.color,  # type: ignore[arg-type]
                            mean=tuple(mean), std=tuple(std), pad_value=config.pad_value, tiles=tiles)


def _to_uint8_rgb(img: Image.Image) -> Image.Image:
    """Normalise any Pillow mode (L, LA, P, RGBA, I;16, I, F, CMYK) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr8, mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises :class:`ImageDecodeError` with reason ``empty``, ``not_an_image`` (also any
    format outside :data:`IMAGE_FORMATS`), ``too_large`` (more than ``max_pixels``:
    decompression bombs), ``truncated`` or ``corrupt``. The pixel count is checked from
    the header before any decoding, and every failure of a decoder is one of these.
    """
    if not data:
        raise ImageDecodeError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError("too_large", f"{width}x{height} exceeds {max_pixels:,} pixels")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_uint8_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", str(exc)) from None
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg.lower() or "broken data stream" in msg.lower() else "corrupt"
        raise ImageDecodeError(reason, msg) from None
    except (ValueError, SyntaxError, struct.error, EOFError, IndexError) as exc:
        raise ImageDecodeError("corrupt", str(exc) or type(exc).__name__) from None
    except (MemoryError, RecursionError) as exc:
        raise ImageDecodeError("corrupt", f"decoder ran out of resources ({type(exc).__name__})") from None
    except Exception as exc:  # a decoder plugin failing in any other way is still a bad image
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError("corrupt", f"unexpected decoded shape {arr.shape}")
    return arr


def resize(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``params.size`` without distorting it (unless ``stretch``).

    ``letterbox`` keeps the aspect ratio and pads with ``pad_value``; ``center_crop``
    scales the short side to fit and crops the centre; ``stretch`` ignores the ratio.
    Bilinear resampling in Pillow, so training and the edge get the same pixels.
    """
    out_h, out_w = params.size
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image
    pil = Image.fromarray(image)
    if params.resize == "stretch":
        return np.asarray(pil.resize((out_w, out_h), Image.Resampling.BILINEAR))
    if params.resize == "center_crop":
        scale = max(out_h / h, out_w / w)
        new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
        return np.asarray(pil.crop((left, top, left + out_w, top + out_h)))
    scale = min(out_h / h, out_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.full((out_h, out_w, 3), params.pad_value, dtype=np.uint8)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def to_model_channels(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWxC uint8 in the model's colour (``grey``: one BT.601 luma channel)."""
    if params.color == "rgb":
        return image
    luma = image.astype(np.float32) @ np.array(_LUMA, np.float32)
    return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[:, :, None]


def model_pixels(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Decoded HxWx3 uint8 RGB -> the model's uint8 pixels, HxWxC at ``params.size`` (what training caches)."""
    return to_model_channels(resize(image, params), params)


def normalise(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """HxWxC uint8 (already at ``params.size`` and in the model's colour) -> CxHxW float32, normalised.

    An HxWx3 RGB image given to a grey model is converted first.
    """
    if image.ndim == 3 and image.shape[2] != params.channels:
        image = to_model_channels(image, params)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw *= params._scale
    chw += params._shift
    return chw


def preprocess(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Decoded HxWx3 uint8 RGB image -> CxHxW float32 model input."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LineguardError(f"preprocess expects an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
    return normalise(model_pixels(image, params), params)


def preprocess_batch(images: Sequence[np.ndarray], params: PreprocessParams) -> np.ndarray:
    """A list of decoded images -> NxCxHxW float32."""
    out = np.empty((len(images), *params.input_shape), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess(image, params)
    return out


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Cheap per-image statistics for drift monitoring: brightness, contrast, colour, sharpness.

    Computed on the decoded uint8 image; the same function builds a bundle's reference
    statistics and the edge's per-frame record, so the two are comparable.
    """
    f = image.astype(np.float32)
    grey = f @ np.array(_LUMA, np.float32)
    # Sharpness: mean absolute Laplacian (a dirty lens or blur lowers it).
    lap = (
        -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    )
    means = f.reshape(-1, 3).mean(axis=0)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "mean_r": float(means[0]),
        "mean_g": float(means[1]),
        "mean_b": float(means[2]),
        "sharpness": float(np.abs(lap).mean()) if lap.size else 0.0,
    }
