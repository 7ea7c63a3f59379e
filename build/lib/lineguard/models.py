"""The architectures LineGuard trains, written in plain PyTorch: a small explicit dict.

``MODELS`` maps a name to a builder ``(num_classes, width) -> nn.Module``;
``create_model(name, num_classes, width, weights)`` is the one way in. Every model has
``forward(x) -> logits``, ``forward_features(x) -> (N, num_features)`` (the pooled
embedding the edge uses for drift monitoring), a ``classifier`` (the head) and
``head_prefixes`` (state-dict prefixes of the head) so training can freeze the backbone
or give it a lower learning rate (``head_parameters`` / ``backbone_parameters``).

torchvision and timm cannot be imported on these machines, so the ImageNet
architectures are re-written here with torchvision's exact parameter names: a user's
torchvision state-dict file loads with ``weights=FILE``. Files are read as safetensors
or with ``torch.load(weights_only=True)`` -- never arbitrary unpickling.

``tinycnn`` is LineGuard's own small from-scratch network: a handful of
depthwise-separable stages, built for sub-millisecond CPU inference at 128 px.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from lineguard import LineguardError
from lineguard.preprocess import TileSpec


class ModelError(LineguardError):
    """An unknown architecture or a weights file that does not fit the model."""


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (torchvision's rule, never below 90 %)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm + activation, named like torchvision's Conv2dNormActivation (0, 1, 2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            norm(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class _SqueezeExcitation(nn.Module):
    """Channel attention as in torchvision.ops.SqueezeExcitation (fc1/fc2 are 1x1 convs)."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: Callable[[], nn.Module] = nn.ReLU,
        scale_act: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = scale_act()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class _Classifier(nn.Module):
    """Shared behaviour: ``forward`` = ``classifier(forward_features(x))``, optionally over tiles.

    With ``tiling`` set (:func:`set_tiling`), the input is cut into tiles inside the graph, every
    tile is scored in one batch and the tile scores are pooled into one logit pair per image
    (multiple-instance learning: a defect image has at least one defective tile). The exported
    ONNX model therefore runs the tiling itself, and training, evaluation and the edge need
    nothing else. State-dict names do not change.
    """

    num_features: int
    classifier: nn.Module
    head_prefixes: tuple[str, ...] = ("classifier.",)
    tiling: TileSpec | None = None

    def backbone_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled embedding ``(N, num_features)``; with tiles, the mean over the image's tiles."""
        if self.tiling is None:
            return self.backbone_features(x)
        tiles, k = cut_tiles(x, self.tiling)
        return self.backbone_features(tiles).unflatten(0, (x.shape[0], k)).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, embedding) in one pass: what the exported model outputs."""
        if self.tiling is None:
            embedding = self.backbone_features(x)
            return self.classifier(embedding), embedding
        tiles, k = cut_tiles(x, self.tiling)
        per_tile = self.backbone_features(tiles)
        logits = self.classifier(per_tile).unflatten(0, (x.shape[0], k))
        return pool_tile_logits(logits, self.tiling.pool), per_tile.unflatten(0, (x.shape[0], k)).mean(dim=1)


def cut_tiles(x: Tensor, tiling: TileSpec) -> tuple[Tensor, int]:
    """``(N, C, H, W)`` -> ``(N * k, C, th, tw)`` tiles in row-major order, and ``k`` tiles per image."""
    (th, tw), (sh, sw) = tiling.size, tiling.stride
    n, c = x.shape[0], x.shape[1]
    t = x.unfold(2, th, sh).unfold(3, tw, sw)  # (N, C, rows, cols, th, tw)
    rows, cols = t.shape[2], t.shape[3]
    return t.permute(0, 2, 3, 1, 4, 5).reshape(n * rows * cols, c, th, tw), rows * cols


def pool_tile_logits(logits: Tensor, pool: str) -> Tensor:
    """Tile logits ``(N, k, 2)`` -> image logits ``(N, 2)`` = ``(0, pooled margin)``.

    The margin of a tile is its defect logit minus its good logit (the last class is the
    positive one). ``lse`` pools margins with log-sum-exp, a smooth maximum whose gradient
    reaches every tile in proportion to how defective it looks; ``max`` takes the worst tile;
    ``mean`` averages (for defects spread over the whole image).
    """
    if logits.shape[-1] != 2:
        raise ModelError(f"tiled classification needs two classes (good, defect), got {logits.shape[-1]}")
    margin = logits[..., 1] - logits[..., 0]
    if pool == "max":
        pooled = margin.amax(dim=1)
    elif pool == "mean":
        pooled = margin.mean(dim=1)
    else:
        pooled = torch.logsumexp(margin, dim=1)
    return torch.stack([torch.zeros_like(pooled), pooled], dim=1)


def set_tiling(model: nn.Module, tiling: TileSpec | None) -> None:
    """Make ``model`` classify tiles of its input (None: whole images again)."""
    if not isinstance(model, _Classifier):
        raise ModelError(f"{type(model).__name__} cannot classify tiles")
    model.tiling = tiling


# --- tinycnn: LineGuard's own small network ---------------------------------------------------


class _SeparableBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, both conv-bn-relu; residual when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.dw = _ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pw = _ConvBNAct(in_ch, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class TinyCNN(_Classifier):
    """A from-scratch CNN for sub-millisecond inference: stem, 4 separable stages, GAP, linear.

    At width 1.0 it has ~0.07 M parameters and ~4.6 M multiply-adds at 96 px (8 M at 128 px);
    the stride-2 stem plus three more stride-2 stages leave a 6x6 map at 96 px. The last
    stage is the widest (256): it holds the combinations -- this topping on that ice cream --
    the head needs, and at that resolution width is cheap.
    """

    # (out_channels, stride, blocks) per stage after the stem
    STAGES: tuple[tuple[int, int, int], ...] = ((32, 2, 1), (64, 2, 2), (128, 2, 2), (256, 1, 1))

    def __init__(self, num_classes: int = 2, width: float = 1.0, dropout: float = 0.1) -> None:
        super().__init__()
        stem = _make_divisible(16 * width)
        layers: list[nn.Module] = [_ConvBNAct(3, stem, 3, 2)]
        ch = stem
        for out, stride, blocks in self.STAGES:
            out = _make_divisible(out * width)
            for i in range(blocks):
                layers.append(_SeparableBlock(ch, out, stride if i == 0 else 1))
                ch = out
        self.features = nn.Sequential(*layers)
        self.num_features = ch
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch, num_classes))  # type: ignore[misc]
        _init_weights(self, linear="normal")

    def backbone_features(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))  # type: ignore[no-any-return]


# --- MobileNetV3 (torchvision names) ----------------------------------------------------------


class _MBv3Block(nn.Module):
    """torchvision's mobilenetv3.InvertedResidual: ``block`` = [expand] dw [se] project."""

    def __init__(
        self, in_ch: int, kernel: int, exp: int, out: int, use_se: bool, hs: bool, stride: int, width: float
    ) -> None:
        super().__init__()
        in_ch, exp, out = (_make_divisible(c * width) for c in (in_ch, exp, out))
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        act: Callable[[], nn.Module] = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != in_ch:
            layers.append(_ConvBNAct(in_ch, exp, 1, norm=norm, act=act))
        layers.append(_ConvBNAct(exp, exp, kernel, stride, groups=exp, norm=norm, act=act))
        if use_se:
            layers.append(_SqueezeExcitation(exp, _make_divisible(exp // 4), scale_act=nn.Hardsigmoid))
        layers.append(_ConvBNAct(exp, out, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y  # type: ignore[no-any-return]


# (in, kernel, expanded, out, use_se, hardswish, stride) -- torchvision's _mobilenet_v3_conf
_MBV3_SMALL = (
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
)
_MBV3_LARGE = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


class MobileNetV3(_Classifier):
    """MobileNetV3 small/large exactly as torchvision builds it (same state-dict keys)."""

    def __init__(
        self,
        setting: Sequence[tuple[int, int, int, int, bool, bool, int]],
        last_channel: int,
        num_classes: int = 2,
        width: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        first = _make_divisible(setting[0][0] * width)
        layers: list[nn.Module] = [_ConvBNAct(3, first, 3, 2, norm=norm, act=nn.Hardswish)]
        layers += [_MBv3Block(*cfg, width=width) for cfg in setting]
        last_in = _make_divisible(setting[-1][3] * width)
        last_out = 6 * last_in
        layers.append(_ConvBNAct(last_in, last_out, 1, norm=norm, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = _make_divisible(last_channel * width)
        self.num_features = last_out
        self.classifier = nn.Sequential(  # type: ignore[misc]
            nn.Linear(last_out, hidden),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        _init_weights(self, linear="normal")

    def backbone_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


# --- EfficientNet-B0 (torchvision names) ------------------------------------------------------


class _StochasticDepth(nn.Module):
    """Drop the residual branch per sample while training (torchvision's "row" mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * noise.bernoulli_(keep).div_(keep)


class _MBConv(nn.Module):
    """torchvision's efficientnet.MBConv: ``block`` = [expand] dw se project, SiLU activations."""

    def __init__(self, expand: int, kernel: int, stride: int, in_ch: int, out: int, sd_prob: float) -> None:
        super().__init__()
        exp = _make_divisible(in_ch * expand)
        layers: list[nn.Module] = []
        if exp != in_ch:
            layers.append(_ConvBNAct(in_ch, exp, 1, act=nn.SiLU))
        layers.append(_ConvBNAct(exp, exp, kernel, stride, groups=exp, act=nn.SiLU))
        layers.append(_SqueezeExcitation(exp, max(1, in_ch // 4), act=nn.SiLU))
        layers.append(_ConvBNAct(exp, out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = _StochasticDepth(sd_prob)
        self.residual = stride == 1 and in_ch == out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + self.stochastic_depth(y) if self.residual else y  # type: ignore[no-any-return]


# (expand_ratio, kernel, stride, in, out, layers) -- torchvision's efficientnet_b0 setting
_EFFNET_B0 = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class EfficientNet(_Classifier):
    """EfficientNet-B0 as torchvision builds it: ``features`` (stages 1-7 are Sequentials), ``classifier``."""

    def __init__(
        self, num_classes: int = 2, width: float = 1.0, dropout: float = 0.2, stochastic_depth: float = 0.2
    ) -> None:
        super().__init__()
        setting = [(e, k, s, _make_divisible(i * width), _make_divisible(o * width), n) for e, k, s, i, o, n in _EFFNET_B0]
        layers: list[nn.Module] = [_ConvBNAct(3, setting[0][3], 3, 2, act=nn.SiLU)]
        total = sum(n for *_, n in setting)
        block_id = 0
        for expand, kernel, stride, in_ch, out, n in setting:
            stage: list[nn.Module] = []
            for i in range(n):
                sd = stochastic_depth * block_id / total
                stage.append(_MBConv(expand, kernel, stride if i == 0 else 1, in_ch if i == 0 else out, out, sd))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = setting[-1][4]
        self.num_features = 4 * last_in
        layers.append(_ConvBNAct(last_in, self.num_features, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))  # type: ignore[misc]
        _init_weights(self, linear="uniform")

    def backbone_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


# --- ResNet-18 (torchvision names) ------------------------------------------------------------


class _BasicBlock(nn.Module):
    """torchvision's resnet.BasicBlock: conv1/bn1, conv2/bn2, optional downsample (conv, bn)."""

    def __init__(self, in_ch: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + identity)  # type: ignore[no-any-return]


class ResNet18(_Classifier):
    """ResNet-18 as torchvision builds it: conv1, bn1, layer1..4, fc (``classifier`` is ``fc``)."""

    head_prefixes = ("fc.",)

    def __init__(self, num_classes: int = 2, width: float = 1.0) -> None:
        super().__init__()
        widths = [_make_divisible(c * width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stage = partial(self._stage, widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stage(0), stage(1), stage(2), stage(3)
        in_ch = widths[-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self, linear="uniform")

    @staticmethod
    def _stage(widths: list[int], i: int) -> nn.Sequential:
        in_ch, out = widths[max(i - 1, 0)], widths[i]
        return nn.Sequential(_BasicBlock(in_ch, out, 1 if i == 0 else 2), _BasicBlock(out, out, 1))

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        return self.fc

    def backbone_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# --- convnet: full 3x3 convolutions for real inspection photos ---------------------------------


class ConvNet(_Classifier):
    """A compact residual CNN trained from scratch on real inspection photos.

    Depthwise-separable stages (tinycnn) are cheap but learn slowly on real textures: a crack
    on a solar cell or a pinhole in leather is a pattern across channels that a full 3x3
    convolution picks up in a few epochs. Stem (3x3, stride 2) and four stages of torchvision
    ``BasicBlock`` s, each halving the map (a 4x4 map at 128 px), global average pooling, dropout,
    linear. At width 1.0: 32-64-128-256 channels, ~1.2 M parameters and ~60 M multiply-adds at
    128 px grey: a quarter of a plain 4-block CNN of the same widths, so two CPU cores train it for
    tens of epochs in a few minutes.
    """

    STAGES: tuple[tuple[int, int], ...] = ((32, 1), (64, 1), (128, 1), (256, 1))  # (channels, blocks)

    def __init__(self, num_classes: int = 2, width: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        stem = _make_divisible(24 * width)
        layers: list[nn.Module] = [_ConvBNAct(3, stem, 3, 2)]
        ch = stem
        for out, blocks in self.STAGES:
            out = _make_divisible(out * width)
            for b in range(blocks):
                layers.append(_BasicBlock(ch, out, 2 if b == 0 else 1))
                ch = out
        self.features = nn.Sequential(*layers)
        self.num_features = ch
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(ch, num_classes))  # type: ignore[misc]
        _init_weights(self, linear="normal")
        for m in self.modules():  # zero-init the last BN of each residual branch: blocks start as identities
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def backbone_features(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))  # type: ignore[no-any-return]


def _init_weights(model: nn.Module, linear: str) -> None:
    """torchvision's initialisation: He (fan-out) convs, unit BN, small linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


# --- the public API -----------------------------------------------------------------------------

MODELS: dict[str, Callable[[int, float], nn.Module]] = {
    "tinycnn": lambda num_classes, width: TinyCNN(num_classes, width),
    "convnet": lambda num_classes, width: ConvNet(num_classes, width),
    "mobilenetv3_small": lambda num_classes, width: MobileNetV3(_MBV3_SMALL, 1024, num_classes, width),
    "mobilenetv3_large": lambda num_classes, width: MobileNetV3(_MBV3_LARGE, 1280, num_classes, width),
    "efficientnet_b0": lambda num_classes, width: EfficientNet(num_classes, width),
    "resnet18": lambda num_classes, width: ResNet18(num_classes, width),
}


def create_model(
    name: str, num_classes: int, width: float = 1.0, weights: str | None = None, in_chans: int = 3
) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes`` head; optionally load a state-dict file.

    ``in_chans`` is 3 (RGB) or 1 (grey: the first convolution takes one channel). ``weights`` is
    a safetensors or torch state-dict file (e.g. torchvision's ImageNet weights saved as a
    file); for a grey model its RGB first-layer kernels are summed over the colours. Its
    classifier's last layer is dropped when its number of classes differs; any other mismatch
    raises ModelError listing the keys.
    """
    if name not in MODELS:
        raise ModelError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ModelError(f"width must be > 0, got {width}")
    if in_chans not in (1, 3):
        raise ModelError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
    model = MODELS[name](num_classes, width)
    if in_chans != 3:
        _set_in_channels(model, in_chans)
    if weights is not None:
        load_weights(model, weights)
    return model


def create_from_meta(meta: dict[str, Any]) -> nn.Module:
    """An untrained model of the architecture a run's ``model.json`` describes: colour, tiles and recipe head."""
    pp = meta.get("preprocess") or {}
    model = create_model(str(meta["model"]), num_classes=len(meta["classes"]), width=float(meta.get("width", 1.0)),
                         in_chans=1 if pp.get("color") == "grey" else 3)
    if pp.get("tiles"):
        set_tiling(model, TileSpec.from_dict(pp["tiles"]))
    if meta.get("head_recipes"):
        set_grouped_head(model, meta["head_recipes"])
    return model


def input_channels(model: nn.Module) -> int:
    """Channels the model's first convolution takes."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ModelError(f"{type(model).__name__} has no convolution")
    return int(first.in_channels)


def _set_in_channels(model: nn.Module, in_chans: int) -> None:
    """Replace the first convolution by one over ``in_chans`` channels (same names, fresh He init)."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride,  # type: ignore[arg-type]
                     first.padding, first.dilation, first.groups, first.bias is not None)  # type: ignore[arg-type]
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, conv)


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters of the classifier head (trained at full lr when fine-tuning)."""
    prefixes = tuple(getattr(model, "head_prefixes", ("classifier.",)))
    return (p for n, p in model.named_parameters() if n.startswith(prefixes))


def backbone_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Everything but the head (frozen or at a lower lr when fine-tuning)."""
    prefixes = tuple(getattr(model, "head_prefixes", ("classifier.",)))
    return (p for n, p in model.named_parameters() if not n.startswith(prefixes))


def last_layer_prefix(model: nn.Module) -> str:
    """State-dict prefix of the head's final Linear (e.g. ``classifier.3``, ``fc``)."""
    prefixes = tuple(getattr(model, "head_prefixes", ("classifier.",)))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (n + ".").startswith(prefixes)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear layer in its head {prefixes}")
    return names[-1]


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a safetensors or torch state-dict file safely (``weights_only=True``, no pickled code)."""
    from lineguard import storage

    try:
        data = storage.read_bytes(path)
    except LineguardError:
        raise
    except Exception as exc:
        raise ModelError(f"weights file '{path}' cannot be read: {exc}") from None
    loaded: Any
    if path.endswith(".safetensors") or _looks_like_safetensors(data):
        from safetensors.torch import load as load_safetensors

        try:
            loaded = load_safetensors(data)
        except Exception as exc:
            raise ModelError(f"weights file '{path}' is not a valid safetensors file: {exc}") from None
    else:
        try:
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"weights file '{path}' is not a plain state dict (loaded with weights_only=True, "
                f"no arbitrary unpickling): {first}"
            ) from None
    # common wrappers: {"state_dict": {...}} / {"model": {...}} and DataParallel's "module." prefix
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            wrapped = isinstance(loaded.get(key), dict) and all(not isinstance(v, Tensor) for v in loaded.values())
            if wrapped:
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelError(f"weights file '{path}' does not hold a state dict (name -> tensor)")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return dict(loaded)


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors starts with an 8-byte little-endian header length, then a JSON object."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def load_weights(model: nn.Module, path: str, strict_head: bool = False) -> list[str]:
    """Load a state-dict file into ``model``; return the keys skipped because the head differs.

    The head's final Linear is skipped (left freshly initialised) when its shape differs
    from the file's, or when ``strict_head`` is False and the file lacks it. Anything else
    that does not match raises ModelError naming the missing, unexpected and mis-shaped keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    for k, v in state.items():  # RGB kernels into a grey model: the sum is what a grey pixel (r=g=b) sees
        if k in own and v.ndim == 4 and own[k].ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1 \
                and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:]:
            state[k] = v.sum(dim=1, keepdim=True)
    last = last_layer_prefix(model)
    head_keys = {f"{last}.weight", f"{last}.bias"}
    skipped = [k for k in head_keys if k in state and k in own and state[k].shape != own[k].shape]
    for k in skipped:
        del state[k]
    missing = sorted(k for k in own if k not in state and not (k in head_keys and not strict_head))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise ModelError(
            f"weights file '{path}' does not fit {type(model).__name__} "
            f"(expected torchvision key names at the same width) -- " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)
    return sorted(skipped)


class GroupedLinear(nn.Linear):
    """A head over sub-classes -- (group, class) pairs -- that outputs class logits.

    Row ``g * num_classes + c`` scores class ``c`` within group ``g``; ``forward`` returns
    ``logsumexp`` over the groups, so ``softmax(forward(x))`` is each class's probability
    summed over its groups: the model still outputs one logit per class (ONNX, edge,
    evaluation see no difference). Training scores the sub-classes (:func:`sub_class_outputs`).
    LineGuard's groups are the recipes: "good" is a different picture per recipe (the right
    topping for *this* ice cream), which one linear layer over pooled features cannot express
    with one logit per class, and can with one per (recipe, class).
    """

    def __init__(self, in_features: int, num_classes: int, group_names: Sequence[str]) -> None:
        super().__init__(in_features, num_classes * len(group_names))
        self.num_classes = num_classes
        self.group_names = list(group_names)
        self.ungrouped = False  # True inside sub_class_outputs(): forward returns the sub-class logits

    def group(self, sub: Tensor) -> Tensor:
        """Sub-class logits ``(N, groups * classes)`` -> class logits ``(N, classes)``."""
        return torch.logsumexp(sub.unflatten(1, (len(self.group_names), self.num_classes)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        sub = super().forward(x)
        return sub if self.ungrouped else self.group(sub)


def grouped_head(model: nn.Module) -> GroupedLinear | None:
    """The model's :class:`GroupedLinear` head, or None for a plain head."""
    head = model.get_submodule(last_layer_prefix(model))
    return head if isinstance(head, GroupedLinear) else None


def set_grouped_head(model: nn.Module, group_names: Sequence[str]) -> GroupedLinear:
    """Replace the head's final Linear by a freshly initialised :class:`GroupedLinear` over ``group_names``."""
    prefix = last_layer_prefix(model)
    old = model.get_submodule(prefix)
    assert isinstance(old, nn.Linear)
    num_classes = old.num_classes if isinstance(old, GroupedLinear) else old.out_features
    head = GroupedLinear(old.in_features, num_classes, group_names)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    parent, _, name = prefix.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, head)
    return head


def remap_grouped_head(state: dict[str, Tensor], model: nn.Module, old_groups: Sequence[str]) -> list[str]:
    """Fit a saved grouped head (``old_groups``) to ``model``'s groups in ``state``, in place.

    Rows of groups both know are copied; the model's other groups keep their fresh
    initialisation. Returns the groups that were new. Used when fine-tuning onto a
    different set of recipes, so the recipes the old model knew keep what it learned.
    """
    head = grouped_head(model)
    prefix = last_layer_prefix(model)
    if head is None or f"{prefix}.weight" not in state:
        return []
    c = head.num_classes
    old_w, old_b = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    if old_w.shape != (c * len(old_groups), head.in_features):
        return list(head.group_names)  # a different head altogether: load_weights re-initialises it
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    new = []
    for g, name in enumerate(head.group_names):
        if name in old_groups:
            o = list(old_groups).index(name)
            w[g * c : (g + 1) * c], b[g * c : (g + 1) * c] = old_w[o * c : (o + 1) * c], old_b[o * c : (o + 1) * c]
        else:
            new.append(name)
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = w, b
    return new


@contextmanager
def sub_class_outputs(model: nn.Module) -> Iterator[GroupedLinear | None]:
    """Within the block, a grouped model outputs its sub-class logits; yields the head (None if plain)."""
    head = grouped_head(model)
    if head is None:
        yield None
        return
    head.ungrouped = True
    try:
        yield head
    finally:
        head.ungrouped = False


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters."""
    return sum(p.numel() for p in model.parameters())
