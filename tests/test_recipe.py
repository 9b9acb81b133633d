import pytest

from edgekd.errors import RecipeError
from edgekd.recipe import apply_override, bundled_recipes, load_recipe, parse_recipe


def test_every_bundled_recipe_parses():
    recipes = bundled_recipes()
    assert {"quickstart", "mnist5k_resnet50_to_mbv2tiny"} <= set(recipes)
    for path in recipes.values():
        recipe = load_recipe(path)
        assert recipe.description, f"{path.name} needs a one-line description for `edgekd recipes`"


def test_bundled_name_resolves_and_defaults_apply():
    recipe = load_recipe("quickstart")
    assert recipe.student.model == "mobilenetv2_tiny"
    assert recipe.distill.method == "kd"
    assert recipe.baseline.enabled


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["distill"].update(temprature=3), "unknown key 'distill.temprature'; did you mean 'temperature'?"),
        (lambda r: r.update(techer=r.pop("teacher")), "unknown key 'techer'; did you mean 'teacher'?"),
        (lambda r: r["data"].update(augmentaton={}), "did you mean 'augmentation'?"),
        (lambda r: r["teacher"]["train"].update(epoch=3), "unknown key 'teacher.train.epoch'; did you mean 'epochs'?"),
        (
            lambda r: r["data"].update(dataset="mnist"),
            "'data.dataset' is 'mnist'; expected one of cifar10, cifar100, digits",
        ),
        (lambda r: r["distill"].update(method="kdd"), "did you mean 'kd'?"),
        (lambda r: r["distill"].pop("epochs"), "missing required key 'distill.epochs'"),
        (lambda r: r["distill"].update(lr=-1), "'distill.lr': Input should be greater than 0"),
        (lambda r: r["teacher"].pop("train"), "teacher needs weights"),
        (lambda r: r["data"].update(dataset="imagefolder"), "data.root is required"),
        (lambda r: r.update(export={"memory": "patchez"}), "'export.memory' is 'patchez'; expected one of auto"),
        (lambda r: r.update(export={"memory_groups": 11}), "'export.memory_groups': Input should be less than"),
    ],
)
def test_schema_errors_name_the_key(tiny_recipe, mutate, expected):
    mutate(tiny_recipe)
    with pytest.raises(RecipeError) as error:
        parse_recipe(tiny_recipe)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_set_overrides_parse_yaml_values(tiny_recipe, write_recipe):
    path = write_recipe(tiny_recipe)
    recipe = load_recipe(path, ["distill.epochs=7", "data.augmentation.horizontal_flip=true", "baseline.lr=2e-3"])
    assert recipe.distill.epochs == 7
    assert recipe.data.augmentation.horizontal_flip is True
    assert recipe.baseline.lr == 0.002
    assert recipe.baseline_train_config().lr == 0.002
    assert recipe.baseline_train_config().epochs == 7
    # YAML 1.1 reads a bare on/off as a boolean; the key means the words.
    for word in ("on", "off", "auto"):
        assert load_recipe(path, [f"distill.cache_teacher={word}"]).distill.cache_teacher == word


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("distill.epochs", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("seed.x=1", "'seed' is a value, not a section"),
        ("distill.epoch=3", "did you mean 'epochs'?"),
    ],
)
def test_bad_overrides(tiny_recipe, override, expected):
    with pytest.raises(RecipeError, match=expected):
        apply_override(tiny_recipe, override)
        parse_recipe(tiny_recipe)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: {dataset: digits\nteacher: 3\n")
    with pytest.raises(RecipeError, match=r"malformed YAML at line \d+"):
        load_recipe(path)


def test_missing_recipe_suggests_bundled_names():
    with pytest.raises(RecipeError, match="did you mean 'quickstart'"):
        load_recipe("quickstrat")


def test_resolved_recipe_round_trips(tiny_recipe):
    import yaml

    recipe = parse_recipe(tiny_recipe)
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe


def test_the_readme_recipe_reference_is_a_valid_recipe():
    """The README's annotated recipe lists every key; it must stay one that edgekd accepts."""
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("## Recipes", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = parse_recipe(yaml.safe_load(block), source="README.md")
    assert recipe.name == "quickstart" and recipe.data.transfer_fraction == 1.0
