"""Memory rewrites of the int8 graph: fewer bytes of arena, the same output bits."""

import numpy as np
import pytest
import torch
from timm.layers import create_conv2d

from edgekd.benchmarks import device
from edgekd.benchmarks.compute import layer_macs
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.profiles import load_device
from edgekd.exporters import memory_rewrite, tflite
from edgekd.exporters.runtimes import MicroRunner, measure_arena


class TwoBlocks(torch.nn.Module):
    """MobileNetV2 in small: a stem, an inverted residual that halves the map (its expanded tensor makes
    the peak), and one with a residual ADD."""

    def __init__(self):
        super().__init__()
        self.stem = create_conv2d(3, 8, 3, stride=2, padding="same")
        self.expand1, self.depthwise1, self.project1 = self._block(8, 24, stride=2, out=12)
        self.expand2, self.depthwise2, self.project2 = self._block(12, 36, stride=1, out=12)
        self.classifier = torch.nn.Linear(12, 5)

    @staticmethod
    def _block(channels: int, wide: int, stride: int, out: int):
        return (
            torch.nn.Conv2d(channels, wide, 1),
            create_conv2d(wide, wide, 3, stride=stride, padding="same", groups=wide),
            torch.nn.Conv2d(wide, out, 1),
        )

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = self.project1(torch.nn.functional.relu6(self.depthwise1(torch.nn.functional.relu6(self.expand1(x)))))
        x = x + self.project2(torch.nn.functional.relu6(self.depthwise2(torch.nn.functional.relu6(self.expand2(x)))))
        return self.classifier(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rewrite") / "two_blocks.int8.tflite"
    tflite.convert(TwoBlocks().eval(), torch.randn(32, 3, 40, 40), path, int8=True)
    return path


def outputs(path, images: np.ndarray) -> np.ndarray:
    micro = MicroRunner(path)
    return np.stack([micro.invoke(image) for image in images])


def macs(path) -> int:
    return sum(layer.macs for layer in layer_macs(path) if layer.op_class != "other")


def random_inputs(path, count: int = 12) -> np.ndarray:
    shape = MicroRunner(path).input_shape
    return np.random.default_rng(1).integers(-128, 128, size=(count, *shape), dtype=np.int8)


def test_sites_are_the_convs_only_a_depthwise_reads(model_path):
    sites = memory_rewrite.group_sites(model_path.read_bytes())
    assert [(s.conv, s.depthwise, s.channels) for s in sites] == [(1, 2, 24), (4, 5, 36)]


@pytest.mark.parametrize("groups", [{1: 2}, {1: 5}, {4: 3}, {1: 4, 4: 7}])
def test_groups_give_the_same_bits(model_path, tmp_path, groups):
    """Groups that divide the channels and groups that do not (24 in 5, 36 in 7), the residual block's too."""
    data = model_path.read_bytes()
    rewritten, origin = memory_rewrite.split_channel_groups(data, groups)
    path = tmp_path / "grouped.tflite"
    path.write_bytes(rewritten)
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))
    ops = tflite.op_counts(path)
    assert ops["CONCATENATION"] == len(groups)
    assert ops["CONV_2D"] == tflite.op_counts(model_path)["CONV_2D"] + sum(g - 1 for g in groups.values())
    assert len(origin) == len(tflite.read_graph(path)[1].operators)
    assert tflite.int8_violations(path) == []
    # No extra MACs; the unsliced weights are gone from the file (a few hundred bytes of structure added).
    assert macs(path) == macs(model_path)
    assert len(rewritten) < len(data) + 1200 * sum(groups.values())


def test_channel_slices_prefer_multiples_of_four():
    assert memory_rewrite.channel_slices(48, 4) == [(0, 12), (12, 24), (24, 36), (36, 48)]
    assert memory_rewrite.channel_slices(24, 5) == [(0, 8), (8, 12), (12, 16), (16, 20), (20, 24)]
    assert memory_rewrite.channel_slices(10, 3) == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.parametrize("channels, groups", [(3, 4), (48, 11), (48, 1)])
def test_groups_that_do_not_fit_are_named(channels, groups):
    with pytest.raises(memory_rewrite.RewriteError, match=f"{groups} groups do not fit a layer of {channels}"):
        memory_rewrite.channel_slices(channels, groups)


def test_plan_lowers_the_peak_block_by_block(model_path):
    data = model_path.read_bytes()
    before = analyse(data).peak_bytes
    chosen = memory_rewrite.plan_groups(data, groups=None, target=None)
    assert 1 in chosen  # the expanded 20×20×24 tensor made the peak
    after = analyse(memory_rewrite.split_channel_groups(data, chosen)[0]).peak_bytes
    assert after < before
    # The fewest groups that reach a target between the two.
    middle = (before + after) // 2
    reaching = memory_rewrite.plan_groups(data, groups=None, target=middle)
    assert analyse(memory_rewrite.split_channel_groups(data, reaching)[0]).peak_bytes <= middle
    assert reaching[1] <= chosen[1]


def test_auto_rewrites_only_above_the_budget_and_measures_both(model_path, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    arena = measure_arena(path)["total"]
    kept = memory_rewrite.rewrite_for_memory(path, "auto", None, sram_budget=arena)
    assert kept["rewrite"] == "none" and "fits the SRAM budget" in kept["reason"]
    assert path.read_bytes() == model_path.read_bytes()
    done = memory_rewrite.rewrite_for_memory(path, "auto", None, sram_budget=arena - 1000)
    assert done["rewrite"] == "groups" and done["arena_after"]["total"] < arena
    assert done["macs_after"] == done["macs_before"] == macs(model_path)
    assert (tmp_path / done["unrewritten"]).read_bytes() == model_path.read_bytes()
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))


def test_a_budget_no_rewrite_meets_keeps_the_smallest(model_path, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    found = memory_rewrite.rewrite_for_memory(path, "auto", None, sram_budget=1000)
    assert found["rewrite"] == "groups" and "still above the SRAM budget of 1,000 B" in found["reason"]
    smallest = memory_rewrite.plan_groups(model_path.read_bytes(), groups=None, target=None)
    assert found["static_peak_after"] == analyse(
        memory_rewrite.split_channel_groups(model_path.read_bytes(), smallest)[0]
    ).peak_bytes


@pytest.mark.slow
def test_the_rewritten_firmware_runs_bit_exact_in_qemu_with_less_arena(model_path, tmp_path, device_setup):
    """Through the C array and the firmware: the device run proves the outputs against the host bit for bit."""
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    memory_rewrite.rewrite_for_memory(path, "groups", None, sram_budget=0)
    figures = {}
    for name, model in (("before", model_path), ("after", path)):
        run = device.measure(model, "qemu-m4", load_device("cortex-m4"), project=None, build_root=tmp_path / name,
                             images=np.random.default_rng(0).standard_normal((4, 3, 40, 40)).astype(np.float32),
                             labels=np.zeros(4, dtype=int), count=4, tree_spec=None, log=lambda _: None)  # fmt: skip
        assert run.status == "measured" and run.bit_exact, run
        figures[name] = run
    assert figures["after"].arena_used_bytes < figures["before"].arena_used_bytes
