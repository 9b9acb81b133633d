"""Memory rewrites of the int8 graph: fewer bytes of arena, the same output bits."""

import numpy as np
import pytest
import torch
from timm.layers import create_conv2d

from edgekd.benchmarks import device
from edgekd.benchmarks.compute import layer_macs
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.profiles import load_device
from edgekd.config import ExportConfig
from edgekd.exporters import channel_groups, memory_rewrite, spatial_patches, tflite
from edgekd.exporters.export import ExportSample
from edgekd.exporters.graph_edit import RewriteError
from edgekd.exporters.runtimes import MicroRunner, measure_arena


class TwoBlocks(torch.nn.Module):
    """MobileNetV2 in small: a stem, an inverted residual that halves the map (its expanded tensor makes
    the peak), and one with a residual ADD."""

    def __init__(self):
        super().__init__()
        self.stem = create_conv2d(3, 16, 3, stride=2, padding="same")
        self.expand1, self.depthwise1, self.project1 = self._block(16, 64, stride=2, out=16)
        self.expand2, self.depthwise2, self.project2 = self._block(16, 48, stride=1, out=16)
        self.classifier = torch.nn.Linear(16, 5)

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
    tflite.convert(TwoBlocks().eval(), torch.randn(32, 3, 80, 80), path, int8=True)
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
    sites = channel_groups.group_sites(model_path.read_bytes())
    assert [(s.conv, s.depthwise, s.channels) for s in sites] == [(1, 2, 64), (4, 5, 48)]


@pytest.mark.parametrize("groups", [{1: 2}, {1: 5}, {4: 3}, {1: 4, 4: 7}])
def test_groups_give_the_same_bits(model_path, tmp_path, groups):
    """Groups that divide the channels and groups that do not (64 in 5, 48 in 7), the residual block's too."""
    data = model_path.read_bytes()
    rewritten, origin = channel_groups.split_channel_groups(data, groups)
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
    assert channel_groups.channel_slices(48, 4) == [(0, 12), (12, 24), (24, 36), (36, 48)]
    assert channel_groups.channel_slices(24, 5) == [(0, 8), (8, 12), (12, 16), (16, 20), (20, 24)]
    assert channel_groups.channel_slices(10, 3) == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.parametrize("channels, groups", [(3, 4), (48, 11), (48, 1)])
def test_groups_that_do_not_fit_are_named(channels, groups):
    with pytest.raises(RewriteError, match=f"{groups} groups do not fit a layer of {channels}"):
        channel_groups.channel_slices(channels, groups)


def test_plan_lowers_the_peak_block_by_block(model_path):
    data = model_path.read_bytes()
    before = analyse(data).peak_bytes
    chosen = channel_groups.plan_groups(data, groups=None, target=None)
    assert 1 in chosen  # the expanded 40×40×64 tensor made the peak
    after = analyse(channel_groups.split_channel_groups(data, chosen)[0]).peak_bytes
    assert after < before
    # The fewest groups that reach a target between the two.
    middle = (before + after) // 2
    reaching = channel_groups.plan_groups(data, groups=None, target=middle)
    assert analyse(channel_groups.split_channel_groups(data, reaching)[0]).peak_bytes <= middle
    assert reaching[1] <= chosen[1]


def test_auto_rewrites_only_above_the_budget_and_measures_both(model_path, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    arena = measure_arena(path)["total"]
    kept = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory="auto"), sram_budget=arena)
    assert kept["rewrite"] == "none" and "fits the SRAM budget" in kept["reason"]
    assert path.read_bytes() == model_path.read_bytes()
    done = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory="auto"), sram_budget=arena - 1000)
    assert done["rewrite"] == "groups" and done["arena_after"]["total"] < arena
    assert done["macs_after"] == done["macs_before"] == macs(model_path)
    assert (tmp_path / done["unrewritten"]).read_bytes() == model_path.read_bytes()
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))


def test_a_budget_no_rewrite_meets_keeps_the_smallest(model_path, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    before = measure_arena(model_path)["total"]
    found = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory="auto"), sram_budget=1000)
    assert found["rewrite"] != "none" and "still above the SRAM budget of 1,000 B" in found["reason"]
    assert "no rewrite fits; the smallest arena" in found["reason"]
    assert found["arena_after"]["total"] < before
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))


# ---------------------------------------------------------------- spatial patches


def test_cut_points_end_where_a_prefix_tensor_is_read_later(model_path):
    """After op 3 (the first block's output) the graph can be cut; not inside the residual block (4-6:
    the block input is read by its ADD), and not past the pooling."""
    assert spatial_patches.cut_points(model_path.read_bytes()) == [0, 1, 2, 3, 7]


@pytest.mark.parametrize(
    "cut, grid",
    [(3, (2, 2)), (3, (3, 3)), (7, (3, 3)), (7, (2, 3)), (2, (1, 4)), (0, (5, 1))],
    ids=["block-2x2", "block-3x3", "residual-add-3x3", "residual-add-2x3", "mid-block-1x4", "stem-5x1"],
)
def test_patches_give_the_same_bits(model_path, tmp_path, cut, grid):
    """Patches at every border (a 3×3 grid has corner, edge and interior patches; the stride-2 convs pad
    bottom/right only), through a residual ADD, with grids that do not divide the map."""
    data = model_path.read_bytes()
    rewritten, origin = spatial_patches.split_spatial_patches(data, cut, grid)
    path = tmp_path / "patched.tflite"
    path.write_bytes(rewritten)
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))
    ops = tflite.op_counts(path)
    assert ops["CONCATENATION"] == (grid[0] > 1) + grid[0] * (grid[1] > 1)
    assert len(origin) == len(tflite.read_graph(path)[1].operators)
    assert macs(path) >= macs(model_path)  # the halos, computed by more than one patch


def test_patches_lower_the_peak_they_cut(model_path):
    data = model_path.read_bytes()
    before = analyse(data)
    rewritten, _ = spatial_patches.split_spatial_patches(data, 3, (2, 2))
    assert analyse(rewritten).peak_bytes < before.peak_bytes


@pytest.mark.parametrize(
    "cut, grid, message",
    [
        (4, (2, 2), "cannot be cut after operator 4 (cut points: 0, 1, 2, 3, 7)"),
        (9, (2, 2), "cannot be cut after operator 9"),
        (3, (21, 1), "21x1 patches do not fit a 20×20 cut"),
        (7, (1, 1), "1x1 patches do not fit"),
    ],
)
def test_patch_options_that_do_not_fit_are_named(model_path, cut, grid, message):
    with pytest.raises(RewriteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spatial_patches.split_spatial_patches(model_path.read_bytes(), cut, grid)


def test_patches_mode_searches_and_says_what_it_chose(model_path, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(model_path.read_bytes())
    found = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory="patches"), sram_budget=10**6)
    assert found["rewrite"] in ("patches", "patches+groups") and "spatial patches" in found["reason"]
    assert found["patches"]["cut"] in spatial_patches.cut_points(model_path.read_bytes())
    images = random_inputs(model_path)
    assert np.array_equal(outputs(path, images), outputs(model_path, images))
    given = ExportConfig(memory="patches", memory_cut=4, memory_grid=(2, 2))
    with pytest.raises(RewriteError, match="cannot be cut after operator 4"):
        memory_rewrite.rewrite_for_memory(tmp_path / done_copy(model_path, tmp_path), given, sram_budget=10**6)


def done_copy(model_path, folder):
    (folder / "copy.tflite").write_bytes(model_path.read_bytes())
    return "copy.tflite"


@pytest.mark.slow
def test_rewritten_firmware_runs_bit_exact_in_qemu_with_less_arena(model_path, tmp_path, device_setup):
    """Through the C array and the firmware (slices, pads, concatenations included): the device run proves
    the outputs against the host bit for bit, and the 32-bit arena shrinks as the host's does."""
    figures = {}
    for mode in ("none", "groups", "patches"):
        path = tmp_path / f"{mode}.tflite"
        path.write_bytes(model_path.read_bytes())
        found = memory_rewrite.rewrite_for_memory(path, ExportConfig(memory=mode), sram_budget=0)
        assert (found["rewrite"] == "none") == (mode == "none")
        run = device.measure(path, "qemu-m4", load_device("cortex-m4"), project=None, build_root=tmp_path / mode,
                             sample=ExportSample(np.random.default_rng(0).standard_normal((4, 3, 80, 80), np.float32),
                                                 np.zeros(4, dtype=int)),
                             count=4, tree_spec=None, log=lambda _: None)  # fmt: skip
        assert run.status == "measured" and run.bit_exact, run
        figures[mode] = run.arena_used_bytes
    assert figures["groups"] < figures["none"] and figures["patches"] < figures["none"]
