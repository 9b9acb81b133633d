"""A camera frame or a decoded image → the model's input, in integers, the same on the host and the device.

Where deployed models most often silently disagree with Python is here: how a frame of another size and
pixel format becomes the model's input. edgekd defines the step once, in integer arithmetic that C
reproduces to the byte: the firmware's `edgekd::SetImage()` (exporters/firmware/edgekd_model.cc) computes
what `frame_to_input` computes, and image folders are decoded for training by `to_channels` and
`resize_square`, the same functions.

1. Pixel format → 8-bit channels: GRAY8 as it is, RGB888 as it is, RGB565 widened by repeating its top
   bits (r8 = r5 << 3 | r5 >> 2, g8 = g6 << 2 | g6 >> 4); three channels to one by the rounded integer
   BT.601 luma (299 R + 587 G + 114 B + 500) // 1000, one to three by repetition.
2. `data.resize` to size × size: crop = the centred square of side min(w, h); pad = the image centred on a
   black square of side max(w, h); squash = the whole frame. Then each output pixel is the rounded mean of
   its box of source pixels, box j spanning [j·n // size, max((j+1)·n // size, j·n // size + 1)) on each
   axis: an area average when shrinking, the nearest pixel when growing.
3. Normalisation and int8 quantisation folded into one table per channel: `input_lut` holds, for each of
   the 256 byte values, what the training pipeline's float normalisation and the int8 model's input
   quantisation give.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

FORMATS = ("GRAY8", "RGB888", "RGB565")  # the firmware's edgekd::PixelFormat, in order
RULES = ("crop", "pad", "squash")  # data.resize, the firmware's edgekd::Resize, in order


def unpack(frame: np.ndarray | bytes, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A frame's bytes (row-major; RGB565 two bytes a pixel, little-endian) → H×W×C uint8 (C = 1 or 3)."""
    data = np.frombuffer(bytes(frame) if not isinstance(frame, np.ndarray) else frame.tobytes(), np.uint8)
    if pixel_format == "GRAY8":
        return data[: width * height].reshape(height, width, 1).copy()
    if pixel_format == "RGB888":
        return data[: width * height * 3].reshape(height, width, 3).copy()
    if pixel_format == "RGB565":
        packed = data[: width * height * 2].view("<u2").reshape(height, width).astype(np.uint16)
        red, green, blue = packed >> 11, (packed >> 5) & 63, packed & 31
        channels = [(red << 3) | (red >> 2), (green << 2) | (green >> 4), (blue << 3) | (blue >> 2)]
        return np.stack(channels, axis=-1).astype(np.uint8)
    raise ValueError(f"pixel format {pixel_format!r}: one of {', '.join(FORMATS)}")


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H×W×C uint8 → H×W×`channels` uint8 (luma or repetition)."""
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        red, green, blue = (image[..., c].astype(np.int32) for c in range(3))
        return ((299 * red + 587 * green + 114 * blue + 500) // 1000).astype(np.uint8)[..., None]
    return np.repeat(image, channels, axis=-1)


def _boxes(length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    start = np.arange(size, dtype=np.int64) * length // size
    end = np.maximum(np.arange(1, size + 1, dtype=np.int64) * length // size, start + 1)
    return start, end


def resize_square(image: np.ndarray, size: int, rule: str) -> np.ndarray:
    """H×W×C uint8 → C×size×size uint8 by `rule` (crop, pad, squash) and box means (module docstring)."""
    height, width, channels = image.shape
    if rule == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        canvas = image[top : top + side, left : left + side]
    elif rule == "pad":
        side = max(height, width)
        canvas = np.zeros((side, side, channels), np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top : top + height, left : left + width] = image
    elif rule == "squash":
        canvas = image
    else:
        raise ValueError(f"resize rule {rule!r}: one of {', '.join(RULES)}")
    integral = np.zeros((canvas.shape[0] + 1, canvas.shape[1] + 1, channels), np.int64)
    integral[1:, 1:] = canvas.astype(np.int64).cumsum(0).cumsum(1)
    (top, bottom), (left, right) = _boxes(canvas.shape[0], size), _boxes(canvas.shape[1], size)
    sums = integral[bottom][:, right] - integral[top][:, right] - integral[bottom][:, left] + integral[top][:, left]
    counts = ((bottom - top)[:, None] * (right - left)[None, :])[..., None]
    return ((sums + counts // 2) // counts).astype(np.uint8).transpose(2, 0, 1).copy()


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (…×C×H×W) → the float input the model trains on."""
    return v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(images))


def quantise(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float model input → int8, as the int8 runtimes' inputs are prepared (round half to even, clamp)."""
    return np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)


def input_lut(mean: Sequence[float], std: Sequence[float], scale: float, zero_point: int) -> np.ndarray:
    """C×256 int8: for channel c and byte value v, the int8 input a pixel v becomes."""
    values = torch.arange(256, dtype=torch.uint8).expand(len(mean), 1, 256).contiguous()
    return quantise(normalise(values, mean, std).numpy()[:, 0, :].astype(np.float32), scale, zero_point)


def frame_to_input(
    frame: np.ndarray | bytes,
    width: int,
    height: int,
    pixel_format: str,
    *,
    size: int,
    channels: int,
    rule: str,
    lut: np.ndarray,
) -> np.ndarray:
    """What `edgekd::SetImage()` writes into the model's input: size×size×channels int8, NHWC."""
    image = resize_square(to_channels(unpack(frame, width, height, pixel_format), channels), size, rule)
    return np.stack([lut[c][image[c]] for c in range(channels)], axis=-1)
