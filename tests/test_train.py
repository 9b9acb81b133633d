from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgekd.recipe import TrainConfig
from edgekd.rundir import atomic_save
from edgekd.runtime import Runtime, recalibrate_batchnorm
from edgekd.train import MetricsLog, build_optimizer, build_scheduler


def train_quietly(stage, method, config, data, runtime, folder: Path, **options):
    """train_stage with what these tests share: seed 0, batches of 16 in this process, no resume, no output,
    checkpoints and metrics.csv in `folder`."""
    from rich.console import Console

    from edgekd.train import StageOptions, train_stage

    settings = StageOptions(
        seed=0,
        batch_size=16,
        workers=0,
        checkpoint=folder / "checkpoints" / f"{stage}.last.pt",
        metrics=MetricsLog(folder / "metrics.csv"),
        console=Console(quiet=True),
        **options,
    )
    return train_stage(stage, method, config, data, runtime, settings)  # fmt: skip


def test_metrics_log_unions_columns_and_truncates_on_resume(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.add({"stage": "teacher", "epoch": 1, "loss_ce": 1.0})
    log.add({"stage": "student", "epoch": 1, "loss_ce": 0.5, "loss_kd": 2.0})
    log.add({"stage": "student", "epoch": 2, "loss_ce": 0.4, "loss_kd": 1.0})
    reread = MetricsLog(tmp_path / "metrics.csv")
    assert reread.path.read_text().splitlines()[0] == "stage,epoch,loss_ce,loss_kd"
    reread.truncate("student", after_epoch=1)
    assert [(r["stage"], r["epoch"]) for r in MetricsLog(tmp_path / "metrics.csv").rows] == [
        ("teacher", "1"),
        ("student", "1"),
    ]


def test_atomic_save_leaves_nothing_behind_on_failure(tmp_path):
    atomic_save("first", tmp_path / "file.txt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save({"x": Unpicklable()}, tmp_path / "file.txt")
    assert (tmp_path / "file.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_schedules_run_their_length(schedule, optimizer):
    config = TrainConfig(epochs=3, lr=0.1, optimizer=optimizer, schedule=schedule, milestones=[2], gamma=0.1)
    opt = build_optimizer(list(nn.Linear(2, 2).parameters()), config)
    scheduler = build_scheduler(opt, config, steps_per_epoch=4)
    rates = []
    for _ in range(12):
        opt.step()
        scheduler.step()
        rates.append(opt.param_groups[0]["lr"])
    if schedule == "step":
        assert rates[6] == pytest.approx(0.1) and rates[7] == pytest.approx(0.01)
    if schedule == "constant":
        assert set(rates) == {0.1}
    if schedule in ("onecycle", "cosine"):  # the last of the 12 batches trains at the end of the schedule
        assert rates[-2] < 0.01 and max(rates) <= 0.1 + 1e-9


def test_recalibrated_batchnorm_holds_the_exact_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    images = torch.randn(40, 1, 4, 4) * 3 + 1
    loader = DataLoader(
        TensorDataset(images, torch.zeros(40, dtype=torch.long)), batch_size=8
    )  # equal batches: the cumulative average weights batches equally
    recalibrate_batchnorm(model, loader, Runtime(torch.device("cpu"), channels_last=False, amp=False))
    with torch.no_grad():
        activations = model[0](images)
    assert torch.allclose(model[1].running_mean, activations.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_batchnorm_statistics_of_class_sorted_data_span_every_class(tmp_path):
    """Precise BN after training must see batches mixed as training's were: with the images sorted by
    class, one-class batches would give the variance within a class (1 here), not over the set (10)."""

    from edgekd.data import DataBundle, TensorImages
    from edgekd.methods.plain import Plain
    from edgekd.recipe import TrainConfig

    torch.manual_seed(0)
    labels = torch.arange(2).repeat_interleave(64)  # 64 of class 0, then 64 of class 1
    images = torch.randn(128, 1, 2, 2) + (6 * labels - 3).view(-1, 1, 1, 1).float()  # means -3 and +3
    dataset = TensorImages(images, labels, lambda image: image, deterministic=True)
    data = DataBundle(dataset, dataset, dataset, dataset, 2, ["a", "b"], 1, 2, (0.0,), (1.0,))
    student = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(4, 2))
    train_quietly(
        "student", Plain(student), TrainConfig(epochs=1, lr=1e-6), data,
        Runtime(torch.device("cpu"), channels_last=False, amp=False), tmp_path,
    )  # fmt: skip
    assert student[0].running_var.item() == pytest.approx(images.var().item(), rel=0.25)


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    from edgekd import rundir
    from edgekd.errors import RunDirError

    state = {"weights": torch.zeros(1000)}
    atomic_save(state, tmp_path / "last.pt")
    real_save = torch.save

    def save_until_full(obj, path):  # what torch reports when the disk fills halfway through a write
        real_save(obj, path)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 278976 vs 278872")

    monkeypatch.setattr(torch, "save", save_until_full)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 100})())
    with pytest.raises(
        RunDirError, match=rf"no space left in {tmp_path} to write last.pt \(needs about 0.0 MB, 0.0 MB"
    ):
        atomic_save({"weights": torch.ones(1000)}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(tmp_path / "last.pt")["weights"].sum() == 0, "the previous checkpoint is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file left"


@pytest.mark.slow
def test_a_real_full_disk_stops_the_run_in_one_line(tmp_path, tiny_recipe, write_recipe):
    import subprocess
    import sys

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgekd.cli",
                "distill",
                str(write_recipe(tiny_recipe)),
                "--out",
                str(mount / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and f"no space left in {mount / 'run'}" in lines[0] and "MB free" in lines[0]


@pytest.mark.parametrize("unlabelled", [False, True])
def test_the_teacher_cache_leaves_the_student_bit_identical(tmp_path, unlabelled):
    """Cached teacher outputs (computed once, in dataset order, in bigger batches) must be exactly what the
    teacher computes step by step: the same student weights after two epochs, with or without the cache;
    also when half the images are unlabelled (the cache holds their soft targets too)."""
    import copy

    from edgekd.data import load_data, transfer_set
    from edgekd.datasets.synthetic import SyntheticConfig
    from edgekd.methods.kd import KD
    from edgekd.models import create_model
    from edgekd.recipe import TrainConfig

    config = SyntheticConfig(
        dataset="synthetic", image_size=32, channels=1, synthetic={"num_classes": 4, "samples_per_class": 40}
    )
    data = load_data(config, seed=0)
    if unlabelled:
        config = config.model_copy(update={"transfer_fraction": 0.5, "unlabelled": "rest"})
        data = transfer_set(data, config, seed=0).with_unlabelled()
    runtime = Runtime.from_recipe("cpu", True, False)
    torch.manual_seed(0)
    teacher = create_model("resnet10t", num_classes=4, in_chans=1).eval()
    students = {}
    for cache in (False, True):
        torch.manual_seed(1)
        student = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1)
        method = KD(student, copy.deepcopy(teacher), temperature=4.0, w_ce=0.1, w_kd=0.9)
        train_quietly(f"cache-{cache}", method, TrainConfig(epochs=2, lr=0.01), data, runtime, tmp_path,
                      teacher_cache=cache)  # fmt: skip
        students[cache] = student.state_dict()
    assert all(torch.equal(students[False][key], students[True][key]) for key in students[False])


@pytest.mark.slow
def test_torch_compile_trains_the_same_student(tmp_path):
    """`torch_compile: true` runs the step through torch.compile (graphs are compiled) and trains the
    same student as eager mode, up to the float rounding of fused kernels."""
    from torch import nn

    from edgekd.data import load_data
    from edgekd.datasets.synthetic import SyntheticConfig
    from edgekd.methods.kd import KD
    from edgekd.recipe import TrainConfig

    config = SyntheticConfig(
        dataset="synthetic", image_size=16, channels=1, synthetic={"num_classes": 4, "samples_per_class": 16}
    )
    data = load_data(config, seed=0)

    def small_network() -> nn.Module:  # compiles in seconds, unlike a whole MobileNetV2
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )  # fmt: skip

    torch.manual_seed(0)
    teacher = small_network().eval()
    students, losses = {}, {}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compiled in (False, True):
        torch.manual_seed(1)
        student = small_network()
        method = KD(student, teacher, temperature=4.0, w_ce=0.1, w_kd=0.9)
        runtime = Runtime(torch.device("cpu"), channels_last=False, amp=False, torch_compile=compiled)
        folder = tmp_path / f"compiled-{compiled}"
        train_quietly("student", method, TrainConfig(epochs=2, lr=0.01), data, runtime, folder)
        students[compiled] = student.state_dict()
        losses[compiled] = [
            float(row["train_loss"]) for row in MetricsLog(folder / "metrics.csv").stage_rows("student")
        ]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for key, eager in students[False].items():
        assert torch.allclose(eager.float(), students[True][key].float(), rtol=1e-3, atol=1e-4), key
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_channels_last_auto_measures_both_formats_once_per_machine_and_model(tmp_path):
    """`channels_last: auto`: a step is timed in both memory formats and the faster kept; the answer is
    cached, so the next run on this machine makes the same choice without measuring."""
    from edgekd.models import create_model
    from edgekd.runtime import choose_memory_format

    model = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1)
    images, labels = torch.rand(8, 1, 32, 32), torch.arange(8) % 4
    runtime = Runtime.from_recipe("cpu", "auto", False)
    assert runtime.channels_last is None
    before = {key: value.clone() for key, value in model.state_dict().items()}
    cache = tmp_path / "memory_format.json"
    first = choose_memory_format([(model, True)], images, labels, runtime, rounds=2, cache=cache)
    assert not first.cached and first.contiguous_ms > 0 and first.channels_last_ms > 0
    assert first.channels_last == (first.channels_last_ms * 1.1 <= first.contiguous_ms), "a near tie keeps contiguous"
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items()), "copies are timed"
    again = choose_memory_format([(model, True)], images, labels, runtime, cache=cache)
    assert again.cached and again.channels_last == first.channels_last
    assert ("channels_last" if first.channels_last else "contiguous") in again.describe().split(":")[0]
    other_batch = choose_memory_format([(model, True)], images[:4], labels[:4], runtime, rounds=1, cache=cache)
    assert not other_batch.cached, "another batch shape is measured anew"


# ---------------------------------------------------------------- data.balance


def test_class_balance_weights_classes_by_their_rarity():
    import numpy as np

    from edgekd.data import class_balance

    labels = np.array([0] * 90 + [1] * 10)
    per_class, per_image = class_balance(labels, num_classes=3)  # class 2 has no images
    assert per_class.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10), 0.0])
    assert per_image.mean().item() == pytest.approx(1.0)  # the loss keeps its scale
    assert per_image[0].item() == per_class[0].item() and per_image[-1].item() == per_class[1].item()


def test_the_balanced_sampler_draws_classes_equally_and_splits_one_draw_between_processes():
    from edgekd.data import Batches, TensorImages, class_balance

    labels = torch.tensor([0] * 900 + [1] * 100)
    dataset = TensorImages(torch.zeros(1000, 1, 2, 2), labels, lambda image: image, deterministic=True)
    _, per_image = class_balance(labels.numpy(), 2)
    drawn = torch.cat([y for _, y, _ in Batches(dataset, 50, shuffle=True, seed=3, draw_weights=per_image)])
    assert len(drawn) == 1000 and 0.45 < drawn.float().mean().item() < 0.55  # 10 % of the images, half the draw
    again = torch.cat([y for _, y, _ in Batches(dataset, 50, shuffle=True, seed=3, draw_weights=per_image)])
    assert torch.equal(drawn, again)  # seeded
    ranks = [Batches(dataset, 25, shuffle=True, seed=3, rank=r, world=2, draw_weights=per_image) for r in (0, 1)]
    order = [[i for batch in b.batches for i in batch] for b in ranks]
    single = [i for batch in Batches(dataset, 50, shuffle=True, seed=3, draw_weights=per_image).batches for i in batch]
    assert order[0] == single[0::2] and order[1] == single[1::2]


def test_weights_balance_the_hard_label_loss_of_every_stage(tmp_path):
    import torch.nn.functional as F

    from edgekd.data import DataBundle, TensorImages
    from edgekd.methods.plain import Plain

    labels = torch.tensor([0] * 48 + [1] * 16)
    dataset = TensorImages(torch.randn(64, 1, 2, 2), labels, lambda image: image, deterministic=True)
    data = DataBundle(dataset, dataset, dataset, dataset, 2, ["a", "b"], 1, 2, (0.0,), (1.0,))
    method = Plain(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    runtime = Runtime(torch.device("cpu"), channels_last=False, amp=False)
    train_quietly("student", method, TrainConfig(epochs=1, lr=1e-3), data, runtime, tmp_path, balance="weights")
    assert method.class_weights.tolist() == pytest.approx([64 / (2 * 48), 64 / (2 * 16)])
    logits, batch = torch.randn(8, 2), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    expected = F.cross_entropy(logits, batch, weight=method.class_weights)
    assert method.cross_entropy(logits, batch).item() == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(F.cross_entropy(logits, batch).item())
