import os

# An offline hub lookup otherwise retries for ~46 s before it fails.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_RECIPE = {
    "name": "tiny",
    "description": "a few seconds: synthetic data, small teacher, MobileNetV2-Tiny student",
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "image_size": 32,
        "channels": 1,
        "batch_size": 32,
        "synthetic": {"num_classes": 4, "samples_per_class": 40},
    },
    "teacher": {"model": "resnet10t", "train": {"epochs": 2, "lr": 0.003}},
    "student": {"model": "mobilenetv2_tiny"},
    "distill": {"method": "kd", "epochs": 2, "lr": 0.01},
}


@pytest.fixture
def tiny_recipe() -> dict:
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture
def write_recipe(tmp_path):
    import yaml

    def write(raw: dict, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
