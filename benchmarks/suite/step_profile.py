"""Where one distillation step's time goes, phase by phase, and so how much a teacher-output cache can
win over a loop that runs the teacher every step (torchdistill's, for instance).

The step is train.py's own (Batches, the method's forward, backward, fused AdamW, the scheduler, the
running sums), timed phase by phase with a clock read after each; the teacher's forward on the same batch
is timed beside it, as an uncached loop would run it. Warm-up, then `--rounds` rounds of `--steps` steps;
the median round per phase. Then one more round under torch.profiler: the operators that take the most
time of the cached step (self CPU time). The weights are random: they change no phase's time.

    python benchmarks/suite/step_profile.py [--recipe benchmarks/suite/peer_torchdistill.yaml] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from results import write_section

from edgekd.cache import cpu_name
from edgekd.data import Batches, load_data
from edgekd.depthwise import choose_depthwise_taps
from edgekd.distributed import World
from edgekd.methods import MethodContext, build_method
from edgekd.models import create_model
from edgekd.recipe import load_recipe
from edgekd.runtime import Runtime, choose_memory_format
from edgekd.train import _Running, build_optimizer, build_scheduler

HERE = Path(__file__).resolve().parent
PHASES = ("batch", "forward and loss", "backward", "optimizer", "scheduler and sums")


def top_operators(run, steps: int, count: int) -> str:
    """A table of the `count` operators with the most self CPU time while `run()` does `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = ["| operator | calls per step | share of the step's operator time |", "| --- | ---: | ---: |"]
    rows += [f"| `{e.key}` | {e.count / steps:g} | {e.self_cpu_time_total / total:.0%} |" for e in events[:count]]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", help="a recipe path or bundled name (default: the peer benchmark's task)")
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe or HERE / "peer_torchdistill.yaml")
    data = load_data(recipe.data, recipe.seed)
    runtime = Runtime.of(recipe)

    def build(config):
        return create_model(config.model, num_classes=data.num_classes, in_chans=data.in_chans, kwargs=config.kwargs)

    # The choices the run's student stage makes here: depthwise weight gradients, then the memory format.
    student = build(recipe.student)
    images, labels, _ = next(iter(Batches(data.train, recipe.data.batch_size, shuffle=True)))
    taps = choose_depthwise_taps(student, images)
    if runtime.channels_last is None:  # channels_last: auto
        with taps:
            choice = choose_memory_format([(student, True)], images, labels, runtime, variant=taps.variant())
        runtime = replace(runtime, channels_last=choice.channels_last)

    teacher = runtime.place(build(recipe.teachers[0]).eval())
    context = MethodContext(data.in_chans, data.image_size, None, World(), train_images=len(data.train))
    method = runtime.place(build_method(recipe.distill, student, teacher, context))
    batch_size = recipe.data.batch_size
    method.build_teacher_cache(Batches(data.train_eval, batch_size, shuffle=False), len(data.train), runtime, World())
    optimizer = build_optimizer([p for p in method.parameters() if p.requires_grad], recipe.distill)
    scheduler = build_scheduler(optimizer, recipe.distill, len(Batches(data.train, batch_size, shuffle=True)))
    method.train()
    running = _Running()

    def batches():
        epoch = 0
        while True:
            epoch += 1
            yield from Batches(data.train, batch_size, shuffle=True, seed=epoch)

    source = batches()
    seconds = {phase: [] for phase in (*PHASES, "teacher forward")}

    def round_of(steps: int, with_teacher: bool = True) -> dict[str, float]:
        spent = dict.fromkeys(seconds, 0.0)
        for _ in range(steps):
            clock = time.perf_counter()
            images, labels, index = next(source)
            images, labels = runtime.batch(images, labels)
            marks = [time.perf_counter()]
            logits, losses = method(images, labels, index)
            loss = sum(losses.values())
            marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            marks.append(time.perf_counter())
            optimizer.step()
            marks.append(time.perf_counter())
            scheduler.step()
            method.after_step()
            running.add(losses, logits, labels)
            marks.append(time.perf_counter())
            for phase, start, end in zip(PHASES, [clock, *marks[:-1]], marks, strict=True):
                spent[phase] += end - start
            if with_teacher:
                started = time.perf_counter()
                with torch.inference_mode():
                    teacher(images)
                spent["teacher forward"] += time.perf_counter() - started
        return {phase: value / steps for phase, value in spent.items()}

    with taps:
        round_of(5)  # warm-up: allocator, oneDNN primitives
        for _ in range(args.rounds):
            for phase, value in round_of(args.steps).items():
                seconds[phase].append(value)
        operators = top_operators(lambda: round_of(args.steps, with_teacher=False), args.steps, count=10)
    median = {phase: statistics.median(values) for phase, values in seconds.items()}
    step = sum(median[phase] for phase in PHASES)
    rows = ["| phase | ms per step | share of the cached step |", "| --- | ---: | ---: |"]
    rows += [f"| {phase} | {median[phase] * 1e3:.1f} | {median[phase] / step:.0%} |" for phase in PHASES]
    rows.append(f"| **step with the teacher cache** | **{step * 1e3:.1f}** | 100% |")
    rows.append(f"| teacher forward (what an uncached loop adds) | {median['teacher forward'] * 1e3:.1f} | "
                f"{median['teacher forward'] / step:.0%} |")  # fmt: skip
    bound = (step + median["teacher forward"]) / step
    body = (
        f"Recipe `{recipe.name}`: {recipe.teachers[0].model} → {recipe.student.model}, {data.image_size} px × "
        f"{data.in_chans} channels, batch {batch_size}, {recipe.distill.method}, {torch.get_num_threads()} threads, "
        f"{'channels_last' if runtime.channels_last else 'contiguous'}; median of {args.rounds} rounds of "
        f"{args.steps} steps after a warm-up; {taps.describe()}.\n\n" + "\n".join(rows) + "\n\n"
        f"An otherwise identical loop that runs the teacher every step takes {bound:.2f}× as long per step: the "
        "most the cache alone can win. Past that, only a faster student forward and backward (the PyTorch "
        "kernels themselves) makes a step cheaper; the phases around them are what is left to remove.\n\n"
        f"The operators of one more round of {args.steps} cached steps under torch.profiler, by self CPU "
        "time:\n\n" + operators
    )
    print(body)
    given = f" --recipe {args.recipe}" if args.recipe else ""
    command = f"python benchmarks/suite/step_profile.py{given} --steps {args.steps} --rounds {args.rounds}"
    write_section(f"one distillation step: {recipe.name} ({cpu_name()})", command, body)  # one section per CPU


if __name__ == "__main__":
    main()
