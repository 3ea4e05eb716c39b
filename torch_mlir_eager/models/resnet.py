"""ResNet18 with torchvision's module and parameter names.

torchvision cannot be installed next to the CPU build of torch this project pins, so the
architecture is defined here. Module names, parameter/buffer names, shapes and the default
initialisation follow ``torchvision.models.resnet`` exactly, so a ``state_dict`` saved from
``torchvision.models.resnet18()`` loads into :func:`resnet18` unchanged.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Type

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "ResNet",
    "resnet18",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "preprocess",
]

#: Per-channel mean and standard deviation of ImageNet (RGB), as used by torchvision.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding (no bias, as in torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (no bias, as in torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(
        self,
        block: Type[BasicBlock],
        layers: List[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = 64

        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: Type[BasicBlock], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18 (He et al. 2015) with torchvision's layout and random initialisation.

    Pretrained weights are not downloaded; load a torchvision ``state_dict`` with
    ``model.load_state_dict(torch.load(path))``.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


def _require_pil():
    try:
        from PIL import Image  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "preprocess() needs Pillow; install it with `pip install pillow` "
            "or `pip install torch_mlir_eager[image]`"
        ) from e
    return Image


def preprocess(image, resize: int = 256, crop: int = 224) -> Tensor:
    """torchvision's classic ImageNet evaluation transform, without torchvision.

    ``Resize(256)`` (shorter side, bilinear) -> ``CenterCrop(224)`` -> ``ToTensor()`` ->
    ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``. ``image`` is a PIL image or a path to an
    image file. Returns a float32 tensor of shape ``(3, crop, crop)``; add the batch
    dimension with ``.unsqueeze(0)``.
    """
    Image = _require_pil()
    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = image.convert("RGB")

    # Resize the shorter side to `resize`, keeping the aspect ratio (torchvision's rule:
    # the longer side is int(resize * long / short), truncated).
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        bilinear = getattr(Image, "Resampling", Image).BILINEAR
        image = image.resize((new_w, new_h), bilinear)

    # Center crop (torchvision rounds the offsets).
    w, h = image.size
    if w < crop or h < crop:
        raise ValueError(f"image {w}x{h} is smaller than the crop size {crop}")
    left = int(round((w - crop) / 2.0))
    top = int(round((h - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))

    # ToTensor: HWC uint8 -> CHW float in [0, 1].
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = data.view(crop, crop, 3).permute(2, 0, 1).to(torch.float32).div_(255.0)

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std
