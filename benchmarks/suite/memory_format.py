"""Which memory format trains each network faster here: contiguous (NCHW) or channels_last (NHWC).

A training step (forward, cross-entropy, backward, AdamW) of each network on a batch of random
images, the two formats alternating (rounds × steps each), 2 threads; images/s of the median round.
It checks the recipe's default, `channels_last: true`, network by network.

    python benchmarks/suite/memory_format.py [--models mobilenetv2_tiny,mobilenetv2_035,resnet18]
                                             [--size 32] [--channels 1] [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from results import write_section

from edgekd.models import create_model

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step_rate(model: torch.nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2_tiny,mobilenetv2_035,resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [
        "| network | depthwise convs | contiguous images/s | channels_last images/s | channels_last ÷ contiguous |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in args.models.split(","):
        torch.manual_seed(0)
        images = torch.randn(args.batch, args.channels, args.size, args.size)
        labels = torch.randint(0, 10, (args.batch,))
        setups = {}
        for label, memory_format in FORMATS.items():
            model = create_model(name, num_classes=10, in_chans=args.channels).train().to(memory_format=memory_format)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            batch = images.contiguous(memory_format=memory_format)
            step_rate(model, optimizer, batch, labels, 2)  # warm-up
            setups[label] = (model, optimizer, batch)
        rates: dict[str, list[float]] = {label: [] for label in FORMATS}
        for _ in range(args.rounds):
            for label, (model, optimizer, batch) in setups.items():
                rates[label].append(step_rate(model, optimizer, batch, labels, args.steps))
        contiguous, channels_last = (statistics.median(rates[label]) for label in FORMATS)
        convs = [m for m in setups["contiguous"][0].modules() if isinstance(m, torch.nn.Conv2d)]
        depthwise = "yes" if any(c.groups > 1 and c.groups == c.in_channels for c in convs) else "no"
        rows.append(f"| {name} | {depthwise} | {contiguous:,.0f} | {channels_last:,.0f} | "
                    f"{channels_last / contiguous:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    body = (
        f"One training step (forward, cross-entropy, backward, fused AdamW) on a batch of {args.batch} random "
        f"{args.size}×{args.size}×{args.channels} images, 2 threads; the formats alternate, {args.rounds} rounds "
        f"of {args.steps} steps, median round.\n\n" + "\n".join(rows)
    )
    command = (f"python benchmarks/suite/memory_format.py --models {args.models} --size {args.size} "
               f"--channels {args.channels} --rounds {args.rounds} --steps {args.steps}")  # fmt: skip
    write_section("memory format: contiguous vs channels_last", command, body)


if __name__ == "__main__":
    main()
