"""Reference models with torchvision-compatible names (torchvision is not usable here)."""

from .resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, ResNet, preprocess, resnet18

__all__ = ["BasicBlock", "ResNet", "resnet18", "IMAGENET_MEAN", "IMAGENET_STD", "preprocess"]
