"""Every network comes from `timm.create_model`. MobileNetV2-Tiny is registered in timm's registry here,
so it is just another timm name."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args, round_channels
from timm.models.efficientnet import _create_effnet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekd.errors import ModelError
from edgekd.registry import did_you_mean

# timm's MobileNetV2 stages; MobileNetV2-Tiny scales their channels by 0.35 like mobilenetv2_035.
_MOBILENETV2_ARCH = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s2_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]

# timm's register_model reads the defining module's `default_cfgs`.
default_cfgs = generate_default_cfgs(
    {
        "mobilenetv2_tiny.untrained": {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 144, 144),
            "pool_size": (5, 5),
            "crop_pct": 0.875,
            "interpolation": "bilinear",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "first_conv": "conv_stem",
            "classifier": "classifier",
            "paper_name": "MCUNet: Tiny Deep Learning on IoT Devices",
            "paper_ids": "arXiv:2007.10319",
        },
    }
)


@register_model
def mobilenetv2_tiny(pretrained: bool = False, width: float = 0.35, **kwargs: Any) -> nn.Module:
    """MobileNetV2 width 0.35 with the last 1×1 conv at 448 channels (0.35 × 1280) instead of timm's
    fixed 1280: MCUNet's TinyMobileNetV2, 0.75 M parameters and 23.5 M MACs at 144×144 (1000 classes).

    It pads like TensorFlow ("SAME": a stride-2 conv on an even input pads only bottom/right), the way
    TFLite kernels pad. PyTorch's symmetric padding would make the converter put a standalone PAD op
    before every stride-2 conv, and the PAD's output is what sets the TFLite-Micro arena's peak.

    `width` scales every layer, the last 1×1 conv included (1280 × width), unlike timm's mobilenetv2_*
    which keep 1280 features at every width; `fit` searches over it.
    """
    if not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise ValueError(f"width must be a number in (0, 4], got {width!r}")
    kwargs.setdefault("pad_type", "same")
    model_kwargs = dict(
        block_args=decode_arch_def(_MOBILENETV2_ARCH),
        num_features=round_channels(1280, multiplier=width),
        stem_size=32,
        round_chs_fn=partial(round_channels, multiplier=width),
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, "relu6"),
        **kwargs,
    )
    return _create_effnet("mobilenetv2_tiny", pretrained, **model_kwargs)


def check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    hint = did_you_mean(name, timm.list_models(), n=3, cutoff=0.6) or "; `timm.list_models()` lists them"
    raise ModelError(f"unknown timm model '{name}'{hint}")


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    checkpoint: Path | None = None,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model with the recipe's classes and channels; weights from the hub or a checkpoint."""
    check_model_name(name)
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **(kwargs or {})
        )
    except (OSError, RuntimeError) as exc:  # hub unreachable, offline, or no weights published
        if not pretrained:
            raise ModelError(f"model '{name}' cannot be built with kwargs {kwargs or {}}: {_first_line(exc)}") from None
        raise ModelError(
            f"cannot load pretrained weights for '{name}' ({_first_line(exc)}); "
            "give `checkpoint: path` or a `train:` block instead"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a model's constructor rejects bad kwargs in many ways
        raise ModelError(f"model '{name}' rejects kwargs {kwargs or {}}: {_first_line(exc)}") from None
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def load_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load a state dict (bare, or inside an edgekd weights file) with weights_only=True. Returns the
    file's metadata (empty for a bare state dict)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelError(f"checkpoint {path} is a directory; give the weights file inside it")
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols above the one-line error
            warnings.simplefilter("ignore")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise ModelError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a PyTorch state dict?"
        ) from None
    if isinstance(content, dict) and "state_dict" in content:
        state_dict, metadata = content["state_dict"], {k: v for k, v in content.items() if k != "state_dict"}
    elif isinstance(content, dict):
        state_dict, metadata = content, {}
    else:
        raise ModelError(f"checkpoint {path} holds a {type(content).__name__}, not a state dict")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # tensor shapes differ: another width or class count
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ModelError(
            f"checkpoint {path} does not fit the model ({first}); same architecture and classes?"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"checkpoint {path} does not fit the model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]}); was it saved from the same architecture and classes?"
        )
    return metadata


def probe_model(model: nn.Module, name: str, kwargs: dict, in_chans: int, image_size: int) -> None:
    """One forward pass on a blank image, so that a kwarg the model only reads when it runs (a string
    where it needs a number) or an input too small for it is reported before any training."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_chans, image_size, image_size))
    except Exception as exc:  # noqa: BLE001 - a model fails its forward pass in many ways
        raise ModelError(
            f"model '{name}' with kwargs {kwargs or {}} fails on a {in_chans}×{image_size}×{image_size} image: "
            f"{_first_line(exc)}"
        ) from None
    model.train(was_training)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_chans: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (PyTorch's FLOP counter counts 2 per MAC)."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    probe = torch.zeros(1, in_chans, image_size, image_size, device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(probe)
    model.train(was_training)
    return counter.get_total_flops() // 2
