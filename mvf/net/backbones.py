"""Image encoders: ``(N, 3, H, W)`` images in [0, 1] -> ``(N, C, h, w)`` feature maps.

* ``vgg``: the paper's VGG-16-style stack (13 conv 3x3 + BatchNorm + ReLU, 5 max-pools), for
  224 px on a GPU; 512 channels at stride 32.
* ``resnet18``: torchvision's ResNet-18 trunk (no pooling/fc); 512 channels at stride 32.
* ``mobilenet_v3_small``: MobileNetV3-Small's features, built here with torchvision's layout and
  keys (`mobilenet_v3_small_features`); 576 channels at stride 32.

All are built with random weights. ``pretrained`` names a local state-dict file (a torchvision
checkpoint of that architecture, or a backbone saved by mvf); classifier keys are ignored.
Nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mvf.errors import MvfError, file_error

# ImageNet statistics, so torchvision-pretrained weights see the inputs they were trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class Backbone(nn.Module):
    """Normalises [0, 1] images and runs a conv trunk. ``out_channels`` is the map depth."""

    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, C, H/32, W/32)``."""
        return self.trunk((images - self.mean) / self.std)

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's maps at strides 4, 8, 16 and 32: ``[(N, C_k, H/s_k, W/s_k)]``, the last
        being `forward`'s output. Depths in ``pyramid_channels``."""
        return self.trunk.pyramid((images - self.mean) / self.std)

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        return self.trunk.pyramid_channels


def _vgg_trunk() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for item in VGG_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item),
                       nn.ReLU(inplace=True)]
            cin = item
    # same layout and key names as torchvision's vgg16_bn ``features``, so its weights load
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    return _Features(nn.Sequential(*layers), taps=tuple(pools[1:]), pyramid_channels=(128, 256, 512, 512))


def _resnet18_trunk() -> nn.Module:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    net.avgpool = nn.Identity()
    # keep the standard module names (conv1, layer1, ...) so torchvision state dicts load
    return _ResNetTrunk(net)


class _ResNetTrunk(nn.Module):
    pyramid_channels = (64, 128, 256, 512)

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32)."""
        maps = [self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))]
        for layer in (self.layer2, self.layer3, self.layer4):
            maps.append(layer(maps[-1]))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid(x)[-1]


# MobileNetV3-Small's inverted residual blocks (Howard et al. 2019, Table 2): kernel, expanded
# channels, output channels, squeeze-excitation, hard-swish (else ReLU), stride; the input has 16.
MOBILENET_V3_SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
                      (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
                      (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
                      (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (eps 1e-3, momentum 0.01) + activation: torchvision's
    ``Conv2dNormActivation`` as MobileNetV3 uses it (keys ``0.weight``, ``1.*``)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


def _divisible_by_8(channels: float) -> int:
    """torchvision's ``_make_divisible(channels, 8)``: the nearest multiple of 8, not below 90 %."""
    out = max(8, int(channels + 4) // 8 * 8)
    return out + 8 if out < 0.9 * channels else out


class _SqueezeExcitation(nn.Module):
    """Channel gates ``hardsigmoid(fc2(relu(fc1(mean over H, W))))`` (keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * nn.functional.hardsigmoid(scale)


class _InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (k x k, stride), optional squeeze-excitation, project (1x1), plus
    the input when the shape is kept; the layer stack is ``block`` as in torchvision."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = [] if expanded == cin else [_conv_bn(cin, expanded, 1, activation=act)]
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if se:
            layers.append(_SqueezeExcitation(expanded, _divisible_by_8(expanded // 4)))
        layers.append(_conv_bn(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def mobilenet_v3_small_features() -> nn.Sequential:
    """MobileNetV3-Small's ``features`` ``(N, 3, H, W) -> (N, 576, H/32, W/32)``, random weights,
    the same modules, keys and initial weights (for the same RNG state) as torchvision's
    ``mobilenet_v3_small().features``, whose import costs ~1.5 s (it imports ``torch._dynamo``)."""
    layers: list[nn.Module] = [_conv_bn(3, 16, 3, 2, activation=nn.Hardswish)]
    cin = 16
    for kernel, expanded, cout, se, hardswish, stride in MOBILENET_V3_SMALL:
        layers.append(_InvertedResidual(cin, kernel, expanded, cout, se, hardswish, stride))
        cin = cout
    layers.append(_conv_bn(cin, 6 * cin, 1, activation=nn.Hardswish))
    features = nn.Sequential(*layers)
    # torchvision's classifier head is built next and initialised with the rest; drawing its
    # weights too keeps the random stream, so a seed gives the same network as before
    head = nn.Sequential(nn.Linear(576, 1024), nn.Linear(1024, 1000))
    for m in (*features.modules(), *head.modules()):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return features


def _mobilenet_trunk() -> nn.Module:
    # blocks 0-1 reach stride 4 (16 ch), 2-3 stride 8 (24), 4-8 stride 16 (48), 9-12 stride 32 (576)
    return _Features(mobilenet_v3_small_features(), taps=(1, 3, 8, 12), pyramid_channels=(16, 24, 48, 576))


class _Features(nn.Module):
    """A ``features`` stack; ``taps`` are the indices of the layers ending the stride-4, 8, 16
    and 32 parts (the last is the stack's end), of depths ``pyramid_channels``."""

    def __init__(self, features: nn.Module, taps: tuple[int, ...], pyramid_channels: tuple[int, ...]):
        super().__init__()
        self.features = features
        self.taps, self.pyramid_channels = taps, pyramid_channels

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps, start = [], 0
        for end in self.taps:
            x = self.features[start:end + 1](x)
            maps.append(x)
            start = end + 1
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


_BUILDERS = {
    "vgg": (_vgg_trunk, 512),
    "resnet18": (_resnet18_trunk, 512),
    "mobilenet_v3_small": (_mobilenet_trunk, 576),
}
# key prefixes of torchvision classifier heads, ignored when loading a full checkpoint
_HEAD_PREFIXES = ("fc.", "classifier.", "avgpool.")


def build_backbone(name: str, pretrained: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; load ``pretrained`` (a local state dict) when given."""
    if name not in _BUILDERS:
        raise MvfError(f"backbone '{name}': unknown (choose from {', '.join(_BUILDERS)})")
    make, channels = _BUILDERS[name]
    backbone = Backbone(make(), channels)
    if pretrained:
        load_pretrained(backbone, name, Path(pretrained))
    return backbone


def load_pretrained(backbone: Backbone, name: str, path: Path) -> None:
    """Load a local state dict into ``backbone.trunk``; `MvfError` if missing or mismatched."""
    if not path.is_file():
        raise file_error(path, f"pretrained weights for '{name}' not found (nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise file_error(path, "not a readable PyTorch state dict") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise file_error(path, "not a state dict of tensors")
    for prefix in ("module.", "trunk.", "backbone.trunk."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    target = backbone.trunk.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise file_error(path, f"does not match the '{name}' backbone ({what}, "
                               f"{len(missing)} missing / {len(unexpected)} unexpected keys)")
    bad = [k for k in target if target[k].shape != state[k].shape]
    if bad:
        raise file_error(path, f"does not match the '{name}' backbone (shape of '{bad[0]}': "
                               f"{tuple(state[bad[0]].shape)} vs {tuple(target[bad[0]].shape)})")
    backbone.trunk.load_state_dict(state)
