"""Bad input, tried as a new user would: every command answers with exit 2, at most two lines on stderr
(click's usage line and the error), no traceback, and nothing written under the output folder."""

import pickle

import pytest
import torch
import yaml
from conftest import run_cli

from edgekd.models import create_model


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Each case: (id, how to set up files under tmp, the command line, a fragment of the error). Setups get
# tmp (a Path) and a tiny valid recipe dict, and return nothing; "{recipe}" in a command is that recipe
# (after the setup changed it) written to tmp/recipe.yaml, "{tmp}" the folder.


def edit(**changes):
    """A setup that changes recipe keys: edit(distill__lr=".inf") sets recipe["distill"]["lr"]."""

    def setup(tmp, recipe):
        for dotted, value in changes.items():
            *path, key = dotted.split("__")
            node = recipe
            for part in path:
                node = node.setdefault(part, {})
            node[key] = value

    return setup


def write(name, content):
    def setup(tmp, recipe):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def both(*setups):
    def setup(tmp, recipe):
        for one in setups:
            one(tmp, recipe)

    return setup


def image_folder(classes=("cat", "dog"), bad=None, junk_only=None):
    """Class folders of 4 PNGs; `bad`: (name, bytes) one more file, None for a JPEG cut short (it passes PIL's
    header check); `junk_only`: a class whose folder holds only what a Mac leaves."""

    def setup(tmp, recipe):
        import io

        from PIL import Image

        for klass in classes:
            (tmp / "images" / klass).mkdir(parents=True, exist_ok=True)
            if klass == junk_only:
                (tmp / "images" / klass / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")
                continue
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp / "images" / klass / f"{i}.png")
        if bad:
            content = bad[1]
            if content is None:
                buffer = io.BytesIO()
                Image.new("RGB", (64, 64), (200, 30, 0)).save(buffer, format="JPEG")
                content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            (tmp / "images" / classes[0] / bad[0]).write_bytes(content)
        recipe["data"] = {"dataset": "imagefolder", "root": str(tmp / "images"), "image_size": 16}

    return setup


def unlabelled_folder(files):
    """A folder tmp/photos holding `files` ({name: bytes, or None for a real PNG}), named by data.unlabelled."""

    def setup(tmp, recipe):
        from PIL import Image

        for name, content in files.items():
            path = tmp / "photos" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                Image.new("RGB", (8, 8)).save(path)
            else:
                path.write_bytes(content)
        recipe["data"]["unlabelled"] = str(tmp / "photos")

    return setup


def teacher_checkpoint(content):
    def setup(tmp, recipe):
        path = tmp / "teacher.pt"
        if content == "dir":
            path.mkdir()
        elif content == "other-architecture":
            torch.save(create_model("resnet18", num_classes=4, in_chans=1).state_dict(), path)
        elif content == "pickle":

            class Payload:
                def __reduce__(self):
                    return (print, ("payload ran",))

            path.write_bytes(pickle.dumps({"state_dict": Payload()}))
        elif content is not None:
            path.write_bytes(content)
        recipe["teacher"] = {"model": "resnet10t", "checkpoint": str(path)}

    return setup


def foreign_folder(tmp, recipe):
    (tmp / "out").mkdir()
    (tmp / "out" / "recipe.yaml").write_text("name: my-own\n")
    (tmp / "out" / "src").mkdir()
    (tmp / "out" / "src" / "thesis.tex").write_text("\\documentclass{article}")


def nothing(tmp, recipe):
    pass


DISTILL = ["distill", "{recipe}", "--out", "{tmp}/out"]
CASES = [
    # ---- the recipe file
    ("recipe missing", nothing, ["distill", "{tmp}/none.yaml"], "recipe {tmp}/none.yaml not found"),
    ("recipe a folder", write("folder.yaml/x", "x"), ["distill", "{tmp}/folder.yaml"], "is not a file"),
    (
        "recipe binary",
        write("binary.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
        ["distill", "{tmp}/binary.yaml"],
        "is not a text file",
    ),
    ("recipe malformed", write("bad.yaml", "name: [unclosed\n"), ["distill", "{tmp}/bad.yaml"], "malformed YAML"),
    ("recipe a list", write("list.yaml", "- a\n- b\n"), ["distill", "{tmp}/list.yaml"], "a recipe is a YAML mapping"),
    # ---- the recipe's content
    ("misspelt key", edit(distill__temprature=2), DISTILL, "did you mean 'temperature'"),
    ("unknown method", edit(distill__method="kdd"), DISTILL, "'distill.method' is 'kdd'"),
    ("lr inf", edit(distill__lr=float("inf")), DISTILL, "'distill.lr'"),
    ("lr nan", edit(distill__lr=float("nan")), DISTILL, "'distill.lr'"),
    ("negative seed", edit(seed=-1), DISTILL, "'seed'"),
    ("negative epochs", edit(distill__epochs=0), DISTILL, "'distill.epochs'"),
    ("no teacher", edit(teacher=None), DISTILL, "missing required key 'teacher'"),
    ("unknown timm model", edit(teacher__model="resnet1888"), DISTILL, "unknown timm model 'resnet1888'"),
    ("teacher kwargs rejected", edit(teacher__kwargs={"no_such_argument": 3}), DISTILL, "rejects kwargs"),
    ("teacher kwargs wrong type", edit(teacher__kwargs={"drop_rate": "lots"}), DISTILL, "drop_rate"),
    ("student width negative", edit(student__kwargs={"width": -1}), DISTILL, "width must be a number in (0, 4]"),
    ("student width text", edit(student__kwargs={"width": "wide"}), DISTILL, "width must be a number"),
    ("exclude every class", edit(data__exclude_classes=[0, 1, 2, 3]), DISTILL, "fewer than 2 of the 4 classes"),
    ("exclude unknown class", edit(data__exclude_classes=[7]), DISTILL, "the dataset has classes 0..3"),
    ("transfer fraction tiny", edit(data__transfer_fraction=0.01), DISTILL, "leaves fewer than one"),
    ("cuda without a gpu", edit(device="cuda"), DISTILL, "torch sees no CUDA device"),
    ("unknown dataset", edit(data__dataset="mnist"), DISTILL, "did you mean 'mnist5k'"),
    ("channels 2", edit(data__channels=2), DISTILL, "'data.channels' is 2"),
    ("balance misspelt", edit(data__balance="sample"), DISTILL, "'data.balance' is 'sample'"),
    ("preset misspelt", edit(data__augmentation={"preset": "heavy"}), DISTILL, "'data.augmentation.preset'"),
    (
        "cache with random augmentation",
        edit(distill__cache_teacher="on", data__augmentation={"horizontal_flip": True}),
        DISTILL,
        "data.augmentation is random",
    ),
    (
        "cache with prokt",
        edit(distill={"method": "prokt", "epochs": 1, "lr": 0.01, "cache_teacher": "on"}),
        DISTILL,
        "method prokt trains its teacher",
    ),
    # ---- data on disk
    (
        "imagefolder missing",
        edit(data={"dataset": "imagefolder", "root": "/nonexistent/images"}),
        DISTILL,
        "is not a folder",
    ),
    ("imagefolder one class", image_folder(classes=("cat",)), DISTILL, "a classifier needs at least 2"),
    (
        "imagefolder corrupt png",
        image_folder(bad=("broken.png", b"\x89PNG\r\n\x1a\nnot really")),
        DISTILL,
        "broken.png is not a readable image",
    ),
    (
        "imagefolder text as jpeg",
        image_folder(bad=("notes.jpg", b"shopping list")),
        DISTILL,
        "notes.jpg is not a readable image",
    ),
    (
        "imagefolder class left empty by the junk filter",
        image_folder(classes=("cat", "dog", "bird"), junk_only="bird"),
        DISTILL,
        "class folder(s) bird in {tmp}/images hold no image",
    ),
    (
        "imagefolder jpeg cut short",
        image_folder(bad=("cut.jpg", None)),
        DISTILL,
        "cut.jpg is not a readable image",
    ),
    ("cifar missing", edit(data={"dataset": "cifar10", "root": "/nonexistent"}), DISTILL, "lacks data_batch_1"),
    # ---- unlabelled images
    ("unlabelled missing", edit(data__unlabelled="/nonexistent/photos"), DISTILL, "data.unlabelled: /nonexistent"),
    (
        "unlabelled only junk",
        unlabelled_folder({".DS_Store": b"Bud1", "trip/._0.png": b"\0\5\26\7", "Thumbs.db": b"\xd0"}),
        DISTILL,
        "photos holds no image files",
    ),
    (
        "unlabelled corrupt",
        unlabelled_folder({"a/0.png": None, "a/b/broken.jpg": b"not a jpeg"}),
        DISTILL,
        "data.unlabelled: {tmp}/photos/a/b/broken.jpg is not a readable image",
    ),
    ("unlabelled rest of everything", edit(data__unlabelled="rest"), DISTILL, "transfer_fraction keeps every"),
    (
        "unlabelled with a method that needs labels",
        edit(data__unlabelled="rest", data__transfer_fraction=0.5, distill={"method": "dkd", "epochs": 1, "lr": 0.01}),
        DISTILL,
        "method dkd needs every image's label",
    ),
    # ---- teacher weights
    ("checkpoint missing", teacher_checkpoint(None), DISTILL, "does not exist"),
    ("checkpoint a folder", teacher_checkpoint("dir"), DISTILL, "is a directory"),
    ("checkpoint garbage", teacher_checkpoint(b"garbage"), DISTILL, "cannot be read"),
    ("checkpoint crafted pickle", teacher_checkpoint("pickle"), DISTILL, "cannot be read"),
    ("checkpoint of another model", teacher_checkpoint("other-architecture"), DISTILL, "does not fit the model"),
    # ---- the command line
    ("set without value", nothing, [*DISTILL, "--set", "distill.epochs"], "expected KEY=VALUE"),
    ("set into a value", nothing, [*DISTILL, "--set", "seed.x=1"], "'seed' is a value"),
    ("resume and overwrite", nothing, [*DISTILL, "--resume", "--overwrite"], "contradict each other"),
    ("unknown option", nothing, [*DISTILL, "--nope"], "No such option: --nope"),
    ("value given to a flag", nothing, [*DISTILL, "--resume", "true"], "unexpected extra argument"),
    ("missing argument", nothing, ["distill"], "Missing argument"),
    ("unknown command", nothing, ["distil"], "No such command 'distil'"),
    ("overwrite a foreign folder", foreign_folder, [*DISTILL, "--overwrite"], "edgekd did not make"),
    ("out is a file", write("out", "a file"), DISTILL, "cannot write to run directory"),
    # ---- export
    ("export no run", write("empty/.keep", ""), ["export", "{tmp}/empty"], "not an edgekd run directory"),
    (
        "export unknown format",
        nothing,
        ["export", "{tmp}", "--formats", "onnx,tflite-int4"],
        "unknown export format tflite-int4",
    ),
    # ---- bench
    ("bench unknown device", nothing, ["bench", "{tmp}", "--device", "cortex-m44"], "did you mean 'cortex-m4'"),
    ("bench bad budget", nothing, ["bench", "{tmp}", "--budget", "sram=big"], "'big' is not a size"),
    ("bench bad accuracy budget", nothing, ["bench", "{tmp}", "--budget", "accuracy=most"], "accuracy budget"),
    (
        "bench binary profile",
        write("board.yaml", b"\x00\xff\xfe\x89"),
        ["bench", "{tmp}", "--device", "{tmp}/board.yaml"],
        "is not a text file",
    ),
    (
        "bench profile a list",
        write("board.yaml", "- 1\n"),
        ["bench", "{tmp}", "--device", "{tmp}/board.yaml"],
        "device profile",
    ),
    (
        "bench profile memory key misspelt",
        write(
            "board.yaml",
            "name: b\nsram_kb: 1\nflash_kb: 1\ncycle_model:\n  error: 0.1\n  error_source: x\n"
            "  flash:\n    source: x\n    wait_states: 3\n    line_size: 16\n",
        ),
        ["bench", "{tmp}", "--device", "{tmp}/board.yaml"],
        "'cycle_model.flash.line_size': Extra inputs are not permitted",
    ),  # fmt: skip
    ("bench unknown target", nothing, ["bench", "{tmp}", "--target", "qemu-m55"], "unknown target 'qemu-m55'"),
    (
        "bench not a model",
        write("notes.txt", "x"),
        ["bench", "{tmp}/notes.txt", "--target", "none"],
        "not an artefact edgekd benchmarks",
    ),
    ("bench no export", nothing, ["bench", "{tmp}", "--target", "none"], "no artefacts/export.json"),
    # ---- run
    (
        "run bad device",
        edit(bench={"device": "nowhere"}),
        ["run", "{recipe}", "--out", "{tmp}/out"],
        "unknown device 'nowhere'",
    ),
    (
        "run bad target",
        edit(bench={"target": "qemu-m55"}),
        ["run", "{recipe}", "--out", "{tmp}/out"],
        "'bench.target' is 'qemu-m55'",
    ),
    # ---- fit
    ("fit no classes", nothing, ["fit", "--device", "cortex-m4", "--classes", "0"], "--classes"),
    ("fit classes text", nothing, ["fit", "--device", "cortex-m4", "--classes", "ten"], "--classes"),
    ("fit two channels", nothing, ["fit", "--device", "cortex-m4", "--channels", "2"], "--channels"),
    ("fit unknown device", nothing, ["fit", "--device", "nowhere"], "unknown device 'nowhere'"),
]


@pytest.mark.parametrize(("setup", "command", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(capsys, tmp_path, tiny_recipe, setup, command, expected):
    setup(tmp_path, tiny_recipe)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe, sort_keys=False))
    before = listing(tmp_path)
    args = [part.replace("{recipe}", str(tmp_path / "recipe.yaml")).replace("{tmp}", str(tmp_path)) for part in command]
    code, _, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) <= 2, err
    assert expected.replace("{tmp}", str(tmp_path)) in " ".join(err.split()), err
    assert listing(tmp_path) == before, "bad input must not create or delete files"
    assert "payload ran" not in err


def test_the_suite_covers_every_command():
    commands = {case[2][0] for case in CASES}
    assert {"distill", "export", "bench", "run", "fit"} <= commands and len(CASES) >= 40
