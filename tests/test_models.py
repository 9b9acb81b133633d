import time

import pytest
import timm
import torch
from torch import nn

from edgekd.errors import ModelError
from edgekd.models import count_macs, count_parameters, create_model, load_weights


def test_mobilenetv2_tiny_matches_the_mcu_reference():
    """MCUNet's TinyMobileNetV2: 0.75 M parameters, 23.5 M MACs at 144×144, 1000 classes."""
    model = create_model("mobilenetv2_tiny", num_classes=1000, in_chans=3)
    assert count_parameters(model) == pytest.approx(0.75e6, rel=0.02)
    assert count_macs(model, 3, 144) == pytest.approx(23.5e6, rel=0.02)
    assert model.num_features == 448
    assert [info["num_chs"] for info in model.feature_info] == [8, 8, 16, 32, 112]
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]


def test_mobilenetv2_tiny_is_a_timm_name():
    assert "mobilenetv2_tiny" in timm.list_models("mobilenetv2*")
    model = timm.create_model("mobilenetv2_tiny", num_classes=10, in_chans=1)
    features = model.forward_intermediates(torch.zeros(2, 1, 64, 64), indices=[2], intermediates_only=True)
    assert features[0].shape == (2, 16, 8, 8)


@pytest.mark.parametrize(("name", "suggestion"), [("mobilenetv2_tny", "mobilenetv2_tiny"), ("resnet5", "resnet50")])
def test_unknown_model_suggests_close_names(name, suggestion):
    with pytest.raises(ModelError, match=f"unknown timm model '{name}'.*'{suggestion}'"):
        create_model(name, num_classes=10, in_chans=1)


def test_pretrained_offline_fails_fast_with_one_line():
    started = time.perf_counter()
    with pytest.raises(ModelError) as error:
        create_model("resnet18", num_classes=10, in_chans=3, pretrained=True)
    assert time.perf_counter() - started < 10
    assert "cannot load pretrained weights for 'resnet18'" in str(error.value)
    assert "checkpoint" in str(error.value) and "\n" not in str(error.value)


def test_model_without_published_weights():
    with pytest.raises(ModelError, match="cannot load pretrained weights for 'mobilenetv2_035'"):
        create_model("mobilenetv2_035", num_classes=10, in_chans=3, pretrained=True)


def test_checkpoint_round_trip_bare_and_wrapped(tmp_path):
    source = create_model("mobilenetv2_tiny", num_classes=10, in_chans=1)
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "bare.pt")
    torch.save({"model": "mobilenetv2_tiny", "state_dict": source.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("bare.pt", "wrapped.pt"):
        model = create_model("mobilenetv2_tiny", num_classes=10, in_chans=1, checkpoint=tmp_path / name)
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)


def test_checkpoint_errors(tmp_path):
    model = create_model("mobilenetv2_tiny", num_classes=10, in_chans=1)
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(model, tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be read"):
        load_weights(model, tmp_path / "corrupt.pt")
    other = create_model("mobilenetv2_tiny", num_classes=5, in_chans=1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not fit the model"):
        load_weights(model, tmp_path / "other.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ModelError, match="missing keys"):
        load_weights(model, tmp_path / "linear.pt")
