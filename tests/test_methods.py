"""Distillation methods beyond KD: each loss against a hand computation, and gradients only where due."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distributed import World
from edgekd.errors import RecipeError
from edgekd.methods import METHODS, MethodContext, build_method
from edgekd.methods.at import AttentionTransfer, attention_loss, attention_map
from edgekd.methods.dkd import DKD, dkd_terms
from edgekd.methods.hints import Hints
from edgekd.methods.kd import kd_loss
from edgekd.methods.prokt import ProKT, teacher_loss
from edgekd.models import create_model
from edgekd.recipe import parse_recipe


def pair(seed=0):
    torch.manual_seed(seed)
    student = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1)
    teacher = create_model("resnet10t", num_classes=4, in_chans=1)
    return student, teacher


def batch():
    torch.manual_seed(1)
    return torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])


def make_hints(student, teacher, **overrides):
    options = dict(
        in_chans=1,
        image_size=32,
        student_stage=1,
        teacher_stage=1,
        w_ce=1.0,
        w_hint=1.0,
        w_kd=0.0,
        temperature=4.0,
        stagewise=False,
        hint_epochs=0,
    )
    return Hints(student, teacher, **{**options, **overrides})


def grads(module):
    return [p.grad for p in module.parameters()]


def test_hint_connector_matches_any_stage_pair():
    student, teacher = pair()
    # resnet10t stage 2: 128 ch at 1/8 (4×4 at 32 px) ← mobilenetv2_tiny stage 1: 8 ch at 1/4 (8×8): strided 3×3.
    method = make_hints(student, teacher, teacher_stage="layer2", w_hint=2.0)
    assert method.connector.conv.in_channels == 8 and method.connector.conv.out_channels == 128
    assert method.connector.conv.stride == (2, 2) and method.connector.conv.kernel_size == (3, 3)
    images, labels = batch()
    method.eval()  # BatchNorm with running statistics: an exact, repeatable value
    with torch.no_grad():
        _, (student_features,) = student.forward_intermediates(images, indices=[1])
        _, (teacher_features,) = teacher.forward_intermediates(images, indices=[2])
        expected = 2.0 * F.mse_loss(method.connector(student_features), teacher_features)
        assert method(images, labels)[1]["hint"].item() == pytest.approx(expected.item(), rel=1e-5)
    method.train()
    _, losses = method(images, labels)
    assert set(losses) == {"ce", "hint"}
    sum(losses.values()).backward()
    assert all(g is not None for g in grads(method.connector))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert set(method.trainable_modules()) == {"student", "connector"}


def test_stagewise_hints_train_only_the_lower_student():
    student, teacher = pair()
    method = make_hints(student, teacher, student_stage=2, teacher_stage=2, stagewise=True, hint_epochs=2)
    images, labels = batch()
    method.train()
    method.start_epoch(1, 5)
    _, losses = method(images, labels)
    assert set(losses) == {"hint"}
    losses["hint"].backward()
    assert student.conv_stem.weight.grad is not None
    assert student.classifier.weight.grad is None and student.conv_head.weight.grad is None
    method.start_epoch(3, 5)
    assert set(method(images, labels)[1]) == {"ce"}


def test_attention_map_by_hand():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # 1×2×1×2
    raw = torch.tensor([(1 + 9) / 2, (4 + 0) / 2])
    assert torch.allclose(attention_map(features), (raw / raw.norm()).unsqueeze(0))
    assert attention_loss(features, features * 3).item() == pytest.approx(0.0, abs=1e-7)  # scale-free


def test_attention_transfer_losses_and_gradients():
    student, teacher = pair()
    method = AttentionTransfer(
        student, teacher, stages=[(2, 2), (3, 3)], w_ce=1.0, w_at=1000.0, w_kd=0.5, temperature=4.0, p=2.0
    )
    images, labels = batch()
    method.train()
    _, losses = method(images, labels)
    assert set(losses) == {"ce", "at", "kd"} and losses["at"].item() > 0
    sum(losses.values()).backward()
    assert student.conv_stem.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_dkd_terms_by_hand():
    student = torch.tensor([[2.0, 1.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.5, 0.5]])
    labels = torch.tensor([0])
    T = 2.0

    def softmax(values):
        exps = [math.exp(v / T) for v in values]
        return [e / sum(exps) for e in exps]

    p_s, p_t = softmax(student[0].tolist()), softmax(teacher[0].tolist())
    b_s, b_t = [p_s[0], 1 - p_s[0]], [p_t[0], 1 - p_t[0]]
    tckd = sum(t * math.log(t / s) for t, s in zip(b_t, b_s, strict=True)) * T**2
    q_s = [p / (1 - p_s[0]) for p in p_s[1:]]
    q_t = [p / (1 - p_t[0]) for p in p_t[1:]]
    nckd = sum(t * math.log(t / s) for t, s in zip(q_t, q_s, strict=True)) * T**2
    got_tckd, got_nckd = dkd_terms(student, teacher, labels, T)
    assert got_tckd.item() == pytest.approx(tckd, rel=1e-5) and got_nckd.item() == pytest.approx(nckd, rel=1e-5)
    # The decomposition DKD rests on: KD = TCKD + (1 − p_t(target)) · NCKD.
    assert kd_loss(student, teacher, T).item() == pytest.approx(tckd + (1 - p_t[0]) * nckd, rel=1e-5)


def test_dkd_warms_up():
    student, teacher = pair()
    method = DKD(student, teacher, w_ce=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=4)
    images, labels = batch()
    method.start_epoch(1, 10)
    quarter = method(images, labels)[1]["nckd"].item()
    method.start_epoch(6, 10)
    full = method(images, labels)[1]["nckd"].item()
    assert quarter == pytest.approx(full / 4, rel=1e-5)


def test_prokt_teacher_loss_by_hand():
    teacher_logits, student_logits, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    p_t, q_s = torch.softmax(teacher_logits, 1)[0], torch.softmax(student_logits, 1)[0]
    kl = float((q_s * (q_s / p_t).log()).sum())
    ce = -math.log(float(p_t[0]))
    assert teacher_loss(teacher_logits, student_logits, labels, 0.4).item() == pytest.approx(
        0.6 * ce + 0.4 * kl, rel=1e-5
    )


def test_prokt_teacher_moves_by_its_own_optimiser_only():
    student, teacher = pair()
    method = ProKT(student, teacher, teacher_lr=0.01, kl_weight=0.4, temperature=1.0, w_ce=0.0)
    images, labels = batch()
    before = [p.detach().clone() for p in teacher.parameters()]
    method.train()
    _, losses = method(images, labels)
    assert any(not torch.equal(b, p) for b, p in zip(before, teacher.parameters(), strict=True)), "teacher stepped"
    teacher.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()), "the student's loss does not reach the teacher"
    assert student.classifier.weight.grad is not None
    assert set(method.trainable_modules()) == {"student"} and set(method.extra_state()) == {
        "teacher",
        "teacher_optimizer",
    }
    frozen = [p.detach().clone() for p in teacher.parameters()]
    method.eval()
    method(images, labels)
    assert all(torch.equal(f, p) for f, p in zip(frozen, teacher.parameters(), strict=True)), "no teacher step in eval"


def test_prokt_teacher_chases_the_students_train_mode_outputs_from_one_forward(monkeypatch):
    """The teacher's target is the student's output as the student's own loss sees it (train mode, batch
    statistics), as in the authors' loop; eval-mode outputs from untrained running statistics are noise."""
    student, teacher = pair()
    modes, targets = [], []
    student.register_forward_pre_hook(lambda module, args: modes.append(module.training))

    def spy(teacher_logits, student_logits, labels, kl_weight, weight=None):
        targets.append(student_logits)
        return teacher_loss(teacher_logits, student_logits, labels, kl_weight, weight)

    monkeypatch.setattr("edgekd.methods.prokt.teacher_loss", spy)
    method = ProKT(student, teacher, teacher_lr=0.01, kl_weight=0.4, temperature=1.0, w_ce=0.0).train()
    logits, _ = method(*batch())
    assert modes == [True], "one student forward per step, in train mode"
    assert torch.equal(targets[0], logits.detach()) and not targets[0].requires_grad


def test_prokt_teacher_optimiser_state_survives_resume():
    """--resume restores the teacher and its AdamW moments: the next step is the one an unbroken run takes."""
    images, labels = batch()

    def method(seed):
        student, teacher = pair(seed)
        optimizer = torch.optim.AdamW(teacher.parameters(), lr=0.01)
        return ProKT(student, teacher, teacher_optimizer=optimizer, teacher_lr=0.01, kl_weight=0.4,
                     temperature=1.0, w_ce=0.0).train()  # fmt: skip

    unbroken = method(0)
    for _ in range(3):
        unbroken(images, labels)
    saved = copy.deepcopy(unbroken.extra_state())
    resumed = method(1)  # other weights: everything must come from the saved state
    resumed.student.load_state_dict(unbroken.student.state_dict())
    resumed.load_extra_state(saved)
    assert resumed.teacher_optimizer.state_dict()["state"][0]["step"] == 3
    unbroken(images, labels)
    resumed(images, labels)
    for kept, restored in zip(unbroken.teacher.parameters(), resumed.teacher.parameters(), strict=True):
        assert torch.allclose(kept, restored, atol=1e-6)


def test_prokt_on_a_toy_problem_teacher_learns_and_stays_reachable():
    """Linear teacher and student on separable 2-D data: the teacher's CE falls while KL(student ‖ teacher) stays
    bounded, because the teacher is pulled toward the student."""
    torch.manual_seed(0)
    points = torch.randn(256, 2)
    labels = (points[:, 0] + 0.5 * points[:, 1] > 0).long()
    student, teacher = nn.Linear(2, 2), nn.Linear(2, 2)
    method = ProKT(student, teacher, teacher_lr=0.1, kl_weight=0.4, temperature=1.0, w_ce=0.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    method.train()
    teacher_ce, kls = [], []
    for _ in range(200):
        _, losses = method(points, labels)
        optimizer.zero_grad()
        losses["kd"].backward()
        optimizer.step()
        with torch.no_grad():
            teacher_ce.append(F.cross_entropy(teacher(points), labels).item())
            kls.append(kd_loss(teacher(points), student(points), 1.0).item())
    assert teacher_ce[-1] < 0.5 * teacher_ce[0]
    assert max(kls) < 0.5


def test_recipe_selects_each_method(tiny_recipe):
    student, teacher = pair()
    for method, extra, cls in [
        ("hints", {"hint_schedule": "stagewise", "hint_epochs": 1}, Hints),
        ("prokt", {"kl_weight": 0.3}, ProKT),
        ("dkd", {}, DKD),
        ("at", {}, AttentionTransfer),
    ]:
        tiny_recipe["distill"] = {"method": method, "epochs": 2, "lr": 0.01, **extra}
        config = parse_recipe(tiny_recipe).distill
        context = MethodContext(in_chans=1, image_size=32, new_student=None, world=World())
        assert isinstance(build_method(config, student, teacher, context), cls)


@pytest.mark.parametrize(
    ("distill", "expected"),
    [
        (
            {"method": "dkdd"},
            f"'distill.method' is 'dkdd'; expected one of {', '.join(METHODS.names())}; did you mean 'dkd'?",
        ),
        ({"method": "prokt", "lamda": 0.4}, "unknown key 'distill.lamda'"),
        ({"method": "hints", "hint_schedule": "stagewise"}, "needs 0 < hint_epochs < epochs"),
        ({"method": "dkd", "temprature": 4}, "unknown key 'distill.temprature'; did you mean 'temperature'?"),
    ],
)
def test_method_schema_errors(tiny_recipe, distill, expected):
    tiny_recipe["distill"] = {"epochs": 2, "lr": 0.01, **distill}
    with pytest.raises(RecipeError) as error:
        parse_recipe(tiny_recipe)
    assert expected in str(error.value)


def test_bad_stage_name():
    student, teacher = pair()
    with pytest.raises(RecipeError, match="no feature stage 'layer9'"):
        make_hints(student, teacher, teacher_stage="layer9")


def test_ensemble_rules():
    from edgekd.ensemble import TeacherEnsemble, combine

    torch.manual_seed(0)
    logits = [torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)]
    T = 2.0
    probs = torch.stack([torch.softmax(z / T, 1) for z in logits])
    arithmetic = torch.softmax(combine(logits, T, "arithmetic") / T, 1)
    assert torch.allclose(arithmetic, probs.mean(0), atol=1e-6)
    geometric = torch.softmax(combine(logits, T, "geometric") / T, 1)
    expected = torch.softmax(torch.stack([torch.log_softmax(z / T, 1) for z in logits]).mean(0), 1)
    assert torch.allclose(geometric, expected, atol=1e-6)
    teachers = [nn.Linear(4, 5), nn.Linear(4, 5)]
    x = torch.randn(2, 4)
    assert torch.allclose(
        TeacherEnsemble(teachers, T, "geometric")(x), combine([t(x) for t in teachers], T, "geometric")
    )


def test_ensemble_only_with_logit_methods(tiny_recipe):
    tiny_recipe["teacher"] = [tiny_recipe["teacher"], {"model": "resnet18", "train": {"epochs": 1, "lr": 0.01}}]
    assert len(parse_recipe(tiny_recipe).teachers) == 2
    tiny_recipe["distill"] = {"method": "hints", "epochs": 2, "lr": 0.01}
    with pytest.raises(RecipeError, match="works with methods dkd, kd, not hints"):
        parse_recipe(tiny_recipe)


def test_bias_shift_matches_the_prior():
    from edgekd.mythical import bias_shift

    torch.manual_seed(0)
    logits = torch.randn(200, 4)
    logits[:, 2] -= 8  # a class the model never predicts
    delta = bias_shift(logits, 2, 0.25)
    shifted = logits.clone()
    shifted[:, 2] += delta
    assert torch.softmax(shifted, 1)[:, 2].mean().item() == pytest.approx(0.25, abs=1e-4)


def test_transfer_set_drops_classes_and_keeps_a_stratified_share_of_training_only():
    from edgekd.data import labels_of, load_data, transfer_set
    from edgekd.errors import DataError
    from edgekd.recipe import DataConfig

    config = DataConfig(dataset="digits", image_size=8, channels=1)
    data = load_data(config, seed=0)
    assert transfer_set(data, config, seed=0) is data
    transfer = transfer_set(data, config.model_copy(update={"exclude_classes": [3]}), seed=0)
    assert 3 not in set(labels_of(transfer.train)) and 3 not in set(labels_of(transfer.train_eval))
    assert 3 in set(labels_of(transfer.test)) and 3 in set(labels_of(transfer.val))
    assert len(transfer.train) == len(data.train) - int((labels_of(data.train) == 3).sum())

    few = transfer_set(data, config.model_copy(update={"transfer_fraction": 0.1}), seed=0)
    counts = np.bincount(labels_of(few.train), minlength=10)
    assert len(few.train) == int(0.1 * len(data.train)) and counts.min() >= counts.max() - 1  # stratified
    assert labels_of(few.train).tolist() == labels_of(few.train_eval).tolist()
    assert len(few.val) == len(data.val) and len(few.test) == len(data.test)
    other_seed = transfer_set(data, config.model_copy(update={"transfer_fraction": 0.1}), seed=1)
    assert few.train.indices != other_seed.train.indices

    with pytest.raises(DataError, match="classes 0..9"):
        transfer_set(data, config.model_copy(update={"exclude_classes": [12]}), seed=0)
    with pytest.raises(DataError, match="fewer than one .* per class"):
        transfer_set(data, config.model_copy(update={"transfer_fraction": 0.001}), seed=0)


def test_codistillation_peer_targets_and_gradients():
    from edgekd.methods.codistill import CoDistillation, peer_targets

    logits = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])]
    targets = peer_targets(logits, 1.0)
    p = [torch.softmax(z, 1) for z in logits]
    assert torch.allclose(targets[0].exp(), (p[1] + p[2]) / 2, atol=1e-6)
    torch.manual_seed(0)
    students = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(3)]
    method = CoDistillation(students, w_ce=1.0, w_kd=1.0, temperature=2.0, warmup_epochs=1)
    images, labels = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    method.train()
    method.start_epoch(1, 3)
    assert set(method(images, labels)[1]) == {"ce"}, "warm-up: labels alone"
    method.start_epoch(2, 3)
    _, losses = method(images, labels)
    assert set(losses) == {"ce", "kd"}
    sum(losses.values()).backward()
    assert all(s[1].weight.grad is not None for s in students)
    assert set(method.trainable_modules()) == {"student", "peer_1", "peer_2"}
    assert method.ensemble_logits(images).shape == (5, 3)


def test_codistill_needs_no_teacher(tiny_recipe):
    del tiny_recipe["teacher"]
    tiny_recipe["distill"] = {"method": "codistill", "students": 3, "epochs": 2, "lr": 0.01}
    assert parse_recipe(tiny_recipe).teachers == []
    tiny_recipe["distill"] = {"method": "kd", "epochs": 2, "lr": 0.01}
    with pytest.raises(RecipeError, match="missing required key 'teacher'"):
        parse_recipe(tiny_recipe)


# ---------------------------------------------------------------- unlabelled images


def test_the_hard_label_loss_skips_unlabelled_images():
    """CE over the labelled images of the batch only (weighted or not); a batch without one gives 0, in the graph."""
    from edgekd.data import UNLABELLED, class_balance
    from edgekd.methods.base import labelled_cross_entropy

    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, UNLABELLED, 2, UNLABELLED, 1])
    weight = torch.tensor([0.5, 1.0, 2.0])
    known = labels >= 0
    assert torch.allclose(labelled_cross_entropy(logits, labels), F.cross_entropy(logits[known], labels[known]))
    assert torch.allclose(
        labelled_cross_entropy(logits, labels, weight), F.cross_entropy(logits[known], labels[known], weight=weight)
    )
    none = labelled_cross_entropy(logits, torch.full((5,), UNLABELLED))
    none.backward()
    assert none.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    # balance: weights from the labelled images only; an unlabelled image is drawn with the mean weight
    per_class, per_image = class_balance(np.array([0, 0, 0, 1, UNLABELLED]), 2)
    assert per_class.tolist() == pytest.approx([2 / 3, 2.0]) and per_image[-1].item() == 1.0


def test_kd_learns_from_unlabelled_images_by_the_soft_targets_alone():
    """An unlabelled image has a KD term and no CE term: its gradient equals that of the KD term alone."""
    from edgekd.data import UNLABELLED
    from edgekd.methods.kd import KD

    student, teacher = pair()
    method = KD(student, teacher, temperature=4.0, w_ce=0.1, w_kd=0.9).train()
    images = torch.randn(3, 1, 32, 32)
    logits, losses = method(images, torch.tensor([1, UNLABELLED, 2]))
    expected_ce = F.cross_entropy(logits[[0, 2]], torch.tensor([1, 2]))
    assert torch.allclose(losses["ce"], 0.1 * expected_ce)
    with torch.no_grad():
        teacher_logits = teacher(images)
    assert torch.allclose(losses["kd"], 0.9 * kd_loss(logits, teacher_logits.half().float(), 4.0), atol=1e-6)


def test_only_methods_whose_losses_need_no_label_take_unlabelled_images(tiny_recipe):
    able = {name for name, entry in METHODS if entry.accepts_unlabelled}
    assert {"kd", "hints", "prokt", "mean-teacher"} <= able and not able & {"dkd", "tfkd", "specialists"}
    tiny_recipe["data"].update(transfer_fraction=0.5, unlabelled="rest")
    tiny_recipe["distill"] = {"method": "tfkd", "epochs": 1, "lr": 0.01}
    with pytest.raises(RecipeError, match="method tfkd needs every image's label; methods that learn from"):
        parse_recipe(tiny_recipe)


def test_a_distilled_student_learns_from_unlabelled_images_the_baseline_never_sees(capsys, tmp_path, tiny_recipe):
    """Through the CLI: the summary counts the images, the baseline trains on the labelled half only."""
    import json

    import yaml
    from conftest import run_cli

    tiny_recipe["data"].update(transfer_fraction=0.5, unlabelled="rest")
    tiny_recipe["baseline"] = {"enabled": True, "epochs": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    code, out, err = run_cli(capsys, "distill", path, "--out", tmp_path / "run")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_images"] == {"teacher": 112, "students": 56, "unlabelled": 56}
    assert summary["baseline"]["epochs"] == 1 and summary["student"]["epochs"] == 2
    assert "the distilled student also from 56 unlabelled images" in " ".join(out.split())
