"""What taking small depthwise layers' weight gradients tap by tap (edgekd.depthwise) does to a training
step here, and that the gradients stay the library's up to rounding.

For each network and input: the depthwise layers the timings choose (each shape's weight gradient timed
both ways, as training times it), then a training step (forward, cross-entropy, backward, AdamW) on one
batch of random images with the library's weight gradients and with the chosen taps, alternating, in
both memory formats (`--rounds` rounds of `--steps` steps; the median round), and the largest difference
between the two ways' weight gradients on one batch, relative to the largest gradient of that layer.

    python benchmarks/suite/depthwise_grad.py [--networks mobilenetv2_tiny:32:1,mobilenetv2_035:32:3,...]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from memory_format import step_rate
from results import write_section

from edgekd.cache import cpu_name
from edgekd.depthwise import DepthwiseTaps, depthwise_layers, time_weight_gradients
from edgekd.models import create_model

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
NETWORKS = "mobilenetv2_tiny:32:1,mobilenetv2_035:32:3,mobilenetv2_tiny:64:3,mobilenetv2_tiny:144:3"


def largest_difference(model, taps: DepthwiseTaps, images, labels) -> float:
    """max over the chosen layers of |taps − library| / max |library| of the weight gradient, one batch."""
    grads = []
    for use_taps in (False, True):
        model.zero_grad(set_to_none=True)
        if use_taps:
            with taps:
                F.cross_entropy(model(images), labels).backward()
        else:
            F.cross_entropy(model(images), labels).backward()
        grads.append([module.weight.grad.clone() for module in taps.modules])
    return max(((t - b).abs().max() / b.abs().max()).item() for b, t in zip(*grads, strict=True))


def measure(name: str, size: int, channels: int, args) -> list[str]:
    torch.manual_seed(0)
    images = torch.randn(args.batch, channels, size, size)
    labels = torch.randint(0, 10, (args.batch,))
    model = create_model(name, num_classes=10, in_chans=channels).train()
    layers = depthwise_layers(model, images)
    taps = DepthwiseTaps(layers, *time_weight_gradients(layers.values(), rounds=args.rounds))
    difference = largest_difference(model, taps, images, labels) if taps.modules else 0.0
    rows = []
    for label, memory_format in FORMATS.items():
        model.to(memory_format=memory_format)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch = images.contiguous(memory_format=memory_format)
        times: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds + 1):
            for use_taps in (False, True) if round_ % 2 else (True, False):
                with taps if use_taps else DepthwiseTaps({}, {}):
                    seconds = len(batch) / step_rate(model, optimizer, batch, labels, args.steps)
                if round_:  # round 0 warms up
                    times[use_taps].append(seconds)
        library, tapped = (1000 * statistics.median(times[k]) for k in (False, True))
        rows.append(
            f"| {name} {size}×{size}×{channels} | {len(taps.modules)} of {len(layers)} | {label} | {library:.1f} "
            f"| {tapped:.1f} | {library / tapped:.2f} | {difference:.1e} |"
        )
        print(rows[-1], flush=True)
    print(f"  {taps.describe()}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=NETWORKS, help="name:size:channels, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [
        "| network, input | layers tap by tap | memory format | step ms, library | step ms, taps | × faster "
        "| largest gradient difference |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for network in args.networks.split(","):
        name, size, channels = network.split(":")
        rows += measure(name, int(size), int(channels), args)
    body = (
        f"A training step (forward, cross-entropy, backward, fused AdamW) on a batch of {args.batch} random images, "
        f"2 threads, with the library's depthwise weight gradients and with the taps the timings chose, alternating "
        f"({args.rounds} rounds of {args.steps} steps after a warm-up; the median round). 'Layers tap by tap': "
        "the depthwise layers whose shape's weight gradient was at least twice as fast tap by tap (edgekd's cache "
        "keeps each shape's timing, so training makes the same choice). 'Largest gradient difference': the "
        "largest |taps − library| of a chosen layer's weight gradient on one batch, relative to that layer's "
        "largest gradient (float32 rounding; the forward and the input gradients are the library's, bit for "
        "bit).\n\n" + "\n".join(rows)
    )
    command = f"python benchmarks/suite/depthwise_grad.py --networks {args.networks}"
    write_section(f"depthwise weight gradients ({cpu_name()})", command, body)


if __name__ == "__main__":
    main()
