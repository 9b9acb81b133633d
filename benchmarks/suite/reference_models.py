"""Published reference networks, rebuilt layer for layer in PyTorch so that edgekd can run them on the
emulated Cortex-M and compare with latencies measured on real boards.

- `mlperf_ic`: MLPerf Tiny image classification, ResNet-8 for CIFAR-10 (32×32×3, 16/32/64 filters;
  mlcommons/tiny benchmark/training/image_classification/keras_model.py at 16 filters, v0.5).
- `mobilenet_v1_025`: MobileNetV1 α=0.25 at 96×96, 2 classes: MLPerf Tiny visual wake words with 3
  input channels, TFLM's person_detect with 1 (7,157,888 MACs, which `tests` check).
- `mobilenet_v2_030_80`: Keras-style MobileNetV2 α=0.30 at 80×80, 1000 classes, last conv 1280: the
  model of Plumerai's 2021 Cortex-M comparison (TFLM 2.5 + CMSIS-NN on STM32F746: 129 ms).

Every stride-2 conv pads TensorFlow-style ("same"), as the published TFLite models do, so the
exported graphs have no PAD op. The published models end with a SOFTMAX; these end at the logits, as
edgekd's students do (edgekd's PT2E int8 path would leave a softmax in float), which leaves out a few
thousand instructions. Weights are random (instruction counts do not depend on them), with
BatchNorm scales drawn away from zero so that no branch quantises to nothing.
"""

from __future__ import annotations

import torch
from timm.layers import create_conv2d
from timm.models.efficientnet import _gen_mobilenet_v2
from torch import nn


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1, relu: str = "relu"):
    layers = [
        create_conv2d(in_channels, out_channels, kernel, stride=stride, padding="same", groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU6() if relu == "relu6" else nn.ReLU())
    return nn.Sequential(*layers)


class _GlobalMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class ResNet8(nn.Module):
    def __init__(self, filters: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, filters, 3, 1)
        self.stacks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        channels = filters
        for stack, width in enumerate((filters, 2 * filters, 4 * filters)):
            stride = 1 if stack == 0 else 2
            self.stacks.append(
                nn.Sequential(_conv_bn(channels, width, 3, stride), _conv_bn(width, width, 3, 1, relu=""))
            )
            self.shortcuts.append(
                nn.Identity() if stack == 0 else create_conv2d(channels, width, 1, stride=2, padding="same")
            )
            channels = width
        self.pool = _GlobalMean()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stack, shortcut in zip(self.stacks, self.shortcuts, strict=True):
            x = torch.relu(shortcut(x) + stack(x))
        return self.classifier(self.pool(x))


class MobileNetV1(nn.Module):
    PLAN = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, alpha: float = 0.25, in_chans: int = 3, num_classes: int = 2):
        super().__init__()
        channels = int(32 * alpha)
        layers = [_conv_bn(in_chans, channels, 3, 2)]
        for width, stride in self.PLAN:
            out = int(width * alpha)
            layers += [_conv_bn(channels, channels, 3, stride, groups=channels), _conv_bn(channels, out, 1, 1)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = _GlobalMean()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def mlperf_ic() -> nn.Module:
    return _randomised(ResNet8())


def mobilenet_v1_025(in_chans: int = 3) -> nn.Module:
    return _randomised(MobileNetV1(0.25, in_chans=in_chans, num_classes=2))


def mobilenet_v2_030_80() -> nn.Module:
    model = _gen_mobilenet_v2("mobilenetv2_100", 0.30, pad_type="same", num_classes=1000)
    return _randomised(model)


# name → (builder, input shape C×H×W)
REFERENCE_MODELS = {
    "mlperf-ic-resnet8": (mlperf_ic, (3, 32, 32)),
    "mlperf-vww-mobilenetv1-0.25": (mobilenet_v1_025, (3, 96, 96)),
    "person-detect-mobilenetv1-0.25": (lambda: mobilenet_v1_025(in_chans=1), (1, 96, 96)),
    "mobilenetv2-0.30-80px-1000": (mobilenet_v2_030_80, (3, 80, 80)),
}
