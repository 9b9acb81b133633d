"""TFLite-Micro arena of int8 MobileNetV2-Tiny at 96/112/128/144 px, before and after the PAD work.

"before": PyTorch's symmetric padding (timm pad_type=""), converted as is: litert-torch puts a PAD op in
front of every stride-2 conv. "after": edgekd's default, TF-SAME padding with the PADs folded into SAME
convs. For each: the arena TFLite-Micro needs (total = head + tail, measured with print_allocations),
the static bound of the activations (largest sum of simultaneously live tensors), head / bound, and
the flatbuffer size. Weights are random (memory does not depend on them).

    python benchmarks/suite/export_memory.py [--sizes 96,112,128,144] [--classes 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from results import write_section

from edgekd.benchmarks.memory import analyse
from edgekd.exporters import tflite
from edgekd.exporters.runtimes import measure_arena
from edgekd.models import create_model


def student(pad_type: str, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=classes, in_chans=3, kwargs={"pad_type": pad_type})
    with torch.no_grad():  # no all-zero branch the converter could prune
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,112,128,144")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    rows = [
        "| input | padding | PAD ops | arena total | head | tail | static bound | head / bound | .tflite |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in [int(s) for s in args.sizes.split(",")]:
        calibration = torch.randn(8, 3, size, size)
        for label, pad_type in (("before: symmetric (PyTorch)", ""), ("after: SAME, PADs folded", "same")):
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "model.tflite"
                tflite.convert(student(pad_type, args.classes), calibration, path, int8=True)
                arena = measure_arena(path)
                profile = analyse(path)
                pads = tflite.op_counts(path).get("PAD", 0)
            ratio = arena["head"] / profile.peak_bytes
            rows.append(
                f"| {size}×{size}×3 | {label} | {pads} | {arena['total']:,} | {arena['head']:,} | "
                f"{arena['tail']:,} | {profile.peak_bytes:,} | {ratio:.3f} | {profile.file_bytes:,} |"
            )
            print(rows[-1], flush=True)
    body = (
        f"MobileNetV2-Tiny int8 ({args.classes} classes), bytes. TFLite-Micro's x86-64 build; the tail "
        "(persistent data, mostly per-channel requantisation) is smaller on a 32-bit MCU.\n\n" + "\n".join(rows)
    )
    write_section(
        "TFLite-Micro arena: MobileNetV2-Tiny before/after the PAD work",
        f"python benchmarks/suite/export_memory.py --sizes {args.sizes} --classes {args.classes}",
        body,
    )


if __name__ == "__main__":
    main()
