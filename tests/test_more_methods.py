"""CRD, NST, teacher-free KD, label smoothing, mixup/CutMix KD, mean teacher and specialists: each loss
against a hand computation on a tiny tensor, and the mechanics the papers rely on."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from edgekd.distributed import World
from edgekd.errors import RecipeError
from edgekd.methods import MethodContext, Plain, build_method
from edgekd.methods.crd import CRD, ContrastMemory, draw_negatives, nce_loss
from edgekd.methods.kd import KD
from edgekd.methods.mean_teacher import MeanTeacher, consistency_loss
from edgekd.methods.mixing import mix_batch
from edgekd.methods.nst import nst_loss
from edgekd.methods.specialists import combination_objective, combine, confusable_clusters
from edgekd.methods.tfkd import SelfKD, TeacherFreeKD, tfkd_regularisation, virtual_teacher
from edgekd.models import create_model
from edgekd.recipe import parse_recipe


def pair(num_classes: int = 4):
    torch.manual_seed(0)
    student = create_model("mobilenetv2_tiny", num_classes=num_classes, in_chans=1)
    teacher = create_model("resnet10t", num_classes=num_classes, in_chans=1)
    return student, teacher


def context(**extra) -> MethodContext:
    return MethodContext(in_chans=1, image_size=32, new_student=None, world=World(), **extra)


# ---------------------------------------------------------------- CRD


def test_nce_loss_matches_hand_computation():
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.9, 0.3, 0.05]])  # positive first, K = 2 negatives
    bank = 10
    noise = 2 / bank
    expected = 0.0
    for row in scores.tolist():
        expected -= math.log(row[0] / (row[0] + noise))
        expected -= sum(math.log(noise / (s + noise)) for s in row[1:])
    assert nce_loss(scores, bank).item() == pytest.approx(expected / 2, rel=1e-5)


def test_crd_negatives_never_include_the_positive():
    index = torch.tensor([0, 5, 9, 3])
    generator = torch.Generator().manual_seed(0)
    negatives = draw_negatives(index, 2000, 10, generator)
    assert negatives.shape == (4, 2000)
    assert not (negatives == index[:, None]).any()
    assert negatives.min() >= 0 and negatives.max() <= 9
    for row, own in zip(negatives, index.tolist(), strict=True):  # every other image is drawn
        assert set(row.tolist()) == set(range(10)) - {own}


def test_crd_memory_moves_towards_the_batch_and_z_is_fixed_once():
    torch.manual_seed(0)
    memory = ContrastMemory(feat_dim=4, bank_size=6, k=3, tau=0.07, momentum=0.5)
    student = F.normalize(torch.randn(2, 4), dim=1)
    teacher = F.normalize(torch.randn(2, 4), dim=1)
    index = torch.tensor([1, 4])
    before_student, before_teacher = memory.student_memory.clone(), memory.teacher_memory.clone()
    negatives = draw_negatives(index, 3, 6)
    memory.scores(student, teacher, index, negatives)
    z = memory.z.clone()
    assert (z > 0).all()
    memory.update(student, teacher, index)
    assert torch.allclose(memory.student_memory[index], F.normalize(0.5 * before_student[index] + 0.5 * student, dim=1))
    assert torch.allclose(memory.teacher_memory[index], F.normalize(0.5 * before_teacher[index] + 0.5 * teacher, dim=1))
    untouched = [0, 2, 3, 5]
    assert torch.equal(memory.student_memory[untouched], before_student[untouched])
    memory.scores(student, teacher, index, negatives)
    assert torch.equal(memory.z, z), "Z is estimated on the first batch only"
    # The positive's score is the student embedding against the teacher memory of the same image.
    s_scores, _ = memory.scores(student, teacher, index, negatives)
    expected = torch.exp((memory.teacher_memory[1] * student[0]).sum() / 0.07) / z[0]
    assert s_scores[0, 0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_crd_trains_its_embedding_heads_and_reports_the_contrast_loss():
    student, teacher = pair()
    config = parse_recipe(crd_recipe()).distill
    method = build_method(config, student, teacher, context(train_images=20))
    assert isinstance(method, CRD) and method.memory.k == 19  # capped at the bank size − 1
    assert set(method.trainable_modules()) == {"student", "student_embed", "teacher_embed"}
    method.train()
    logits, losses = method(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 7, 19]))
    assert set(losses) == {"ce", "kd", "crd"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert method.student_embed.weight.grad is not None and method.teacher_embed.weight.grad is not None


def crd_recipe() -> dict:
    return {
        "name": "t",
        "data": {"dataset": "synthetic", "image_size": 32, "channels": 1},
        "teacher": {"model": "resnet10t", "train": {"epochs": 1, "lr": 0.01}},
        "distill": {"method": "crd", "epochs": 1, "lr": 0.01, "nce_k": 64},
    }


# ---------------------------------------------------------------- NST


def test_nst_loss_matches_hand_computation():
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # B=1, 2 channels, 1×2 positions
    teacher = torch.tensor([[[[0.0, 2.0]]]])  # 1 channel
    s = [np.array([1.0, 0.0]), np.array([1.0, 1.0]) / math.sqrt(2)]
    t = [np.array([0.0, 1.0])]

    def k(a, b):
        return float(a @ b) ** 2

    mmd = (
        np.mean([k(a, b) for a in t for b in t])
        + np.mean([k(a, b) for a in s for b in s])
        - 2 * np.mean([k(a, b) for a in s for b in t])
    )
    assert nst_loss(student, teacher).item() == pytest.approx(mmd, rel=1e-6)
    assert nst_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_nst_pools_the_larger_map():
    torch.manual_seed(0)
    big, small = torch.rand(2, 3, 8, 8), torch.rand(2, 5, 4, 4)
    assert nst_loss(big, small).item() == pytest.approx(nst_loss(F.adaptive_avg_pool2d(big, 4), small).item())


def test_a_stage_pair_that_does_not_exist_is_one_line_naming_the_stages(capsys, tmp_path, tiny_recipe, write_recipe):
    tiny_recipe["distill"] = {"method": "nst", "stages": [[1, 9]], "epochs": 1, "lr": 0.01}
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "feature stage 9 out of range: ResNet has 5 (act1, layer1, layer2, layer3, layer4)" in err
    assert not (tmp_path / "run").exists(), "rejected before anything is trained or written"


def test_more_specialists_than_classes_is_one_line_before_training(capsys, tmp_path, tiny_recipe, write_recipe):
    tiny_recipe["distill"] = {"method": "specialists", "specialists": 9, "epochs": 1, "lr": 0.01}
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "distill.specialists: 9 clusters of 4 classes; give 1 to 4" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- teacher-free KD and label smoothing


def test_virtual_teacher_and_its_regularisation_match_hand_computation():
    labels = torch.tensor([1])
    assert virtual_teacher(labels, 3, 0.9).tolist() == [[pytest.approx(0.05), pytest.approx(0.9), pytest.approx(0.05)]]
    logits, temperature = torch.tensor([[1.0, 2.0, 0.0]]), 2.0
    soft = np.exp(np.array([0.05, 0.9, 0.05]) / temperature)
    soft /= soft.sum()
    z = np.array([1.0, 2.0, 0.0]) / temperature
    log_p = z - np.log(np.exp(z).sum())
    expected = float((soft * (np.log(soft) - log_p)).sum() / 3)  # mean over batch × classes
    assert tfkd_regularisation(logits, labels, 0.9, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_teacher_free_kd_needs_no_teacher_and_self_kd_learns_from_the_baseline(tiny_recipe):
    student, _ = pair()
    del tiny_recipe["teacher"]
    tiny_recipe["distill"] = {"method": "tfkd", "epochs": 1, "lr": 0.01}
    method = build_method(parse_recipe(tiny_recipe).distill, student, None, context())
    assert isinstance(method, TeacherFreeKD)
    logits, losses = method(torch.randn(2, 1, 32, 32), torch.tensor([0, 1]))
    assert losses["ce"].item() == pytest.approx(0.9 * F.cross_entropy(logits, torch.tensor([0, 1])).item(), rel=1e-5)

    tiny_recipe["distill"] = {"method": "tfkd-self", "epochs": 1, "lr": 0.01}
    baseline = copy.deepcopy(student)
    method = build_method(parse_recipe(tiny_recipe).distill, student, None, context(baseline=baseline))
    assert isinstance(method, SelfKD) and method.teacher is baseline and not baseline.training
    tiny_recipe["baseline"] = {"enabled": False}
    with pytest.raises(RecipeError, match="learns from the baseline student; set baseline.enabled: true"):
        parse_recipe(tiny_recipe)


def test_label_smoothing_baseline():
    logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    _, losses = Plain(nn.Identity(), label_smoothing=0.1)(logits, labels)
    log_p = F.log_softmax(logits, 1)[0]
    expected = -(0.9 + 0.1 / 3) * log_p[0] - (0.1 / 3) * (log_p[1] + log_p[2])
    assert losses["ce"].item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- mixup / CutMix inside KD


def test_mixup_and_cutmix_batches():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 8, 8)
    mixed, partner, lam = mix_batch(images, "mixup", 1.0, generator)
    assert 0 <= lam <= 1 and torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
    mixed, partner, lam = mix_batch(images, "cutmix", 1.0, generator)
    from_partner = (mixed != images).float().mean().item()
    assert (mixed == images).logical_or(mixed == images[partner]).all()
    assert 1 - lam >= from_partner - 1e-6  # λ: the share of each image's own pixels (some may equal the partner's)


def test_kd_with_mixup_labels_mixed_images_by_the_teacher_and_refuses_the_cache(tiny_recipe):
    student, teacher = pair()
    tiny_recipe["distill"].update(mix="mixup")
    method = build_method(parse_recipe(tiny_recipe).distill, student, teacher, context())
    assert isinstance(method, KD) and "mixup" in method.cache_refusal
    method.train()
    torch.manual_seed(1)
    _, losses = method(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), torch.arange(4))
    assert set(losses) == {"kd"}, "the teacher's soft targets replace the mixed hard labels"
    tiny_recipe["distill"].update(mix_hard_labels=True)
    method = build_method(parse_recipe(tiny_recipe).distill, student, teacher, context())
    method.train()
    assert set(method(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))[1]) == {"ce", "kd"}
    tiny_recipe["distill"].update(cache_teacher="on")
    with pytest.raises(RecipeError, match="distill.mix: mixup shows the teacher new images every step"):
        parse_recipe(tiny_recipe)


# ---------------------------------------------------------------- mean teacher


def mean_teacher(decay: float, ramp: bool, input_noise: float = 0.0) -> MeanTeacher:
    student = nn.Linear(2, 2, bias=False)
    return MeanTeacher(student, decay=decay, ramp_decay=ramp, w_ce=1.0, w_consistency=1.0, rampup_epochs=0,
                       temperature=1.0, input_noise=input_noise)  # fmt: skip


def test_mean_teacher_input_noise_is_drawn_apart_for_student_and_teacher_and_only_in_training():
    """The paper's input noise: each model sees its own draw while training; evaluation sees the image."""
    seen = {}
    method = mean_teacher(0.9, ramp=False, input_noise=0.5)
    method.student.register_forward_hook(lambda _, args, out: seen.__setitem__("student", args[0]))
    method.teacher.register_forward_hook(lambda _, args, out: seen.__setitem__("teacher", args[0]))
    images = torch.zeros(64, 2)
    method.train()
    method.start_epoch(1, 1)
    method(images, torch.zeros(64, dtype=torch.long))
    assert not torch.equal(seen["student"], seen["teacher"])
    for drawn in (seen["student"], seen["teacher"]):
        assert 0.4 < float(drawn.std()) < 0.6
    method.eval()
    method(images, torch.zeros(64, dtype=torch.long))
    assert torch.equal(seen["student"], images)


def test_mean_teacher_ema_after_k_steps_equals_the_closed_form():
    decay, steps = 0.9, 5
    method = mean_teacher(decay, ramp=False)
    theta0 = method.teacher.weight.detach().clone()
    history = [torch.full((2, 2), float(i + 1)) for i in range(steps)]
    for values in history:
        method.student.weight.data.copy_(values)
        method.after_step()
    weighted = sum((1 - decay) * decay ** (steps - i) * history[i - 1] for i in range(1, 1 + steps))
    closed = decay**steps * theta0 + weighted
    assert torch.allclose(method.teacher.weight, closed, atol=1e-6)

    ramped = mean_teacher(0.999, ramp=True)  # d = min(1 − 1/(step + 1), decay): 0.5 at the first step
    start = ramped.teacher.weight.detach().clone()
    ramped.student.weight.data.fill_(2.0)
    ramped.after_step()
    assert torch.allclose(ramped.teacher.weight, 0.5 * start + 0.5 * 2.0)


def test_mean_teacher_consistency_loss_by_hand():
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    p = 1 / (1 + math.exp(-1.0))
    expected = ((p - 0.5) ** 2 + ((1 - p) - 0.5) ** 2) / 2
    assert consistency_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- specialists


def true_objective(q: np.ndarray, generalist, specialist, classes) -> float:
    """KL(p^g ‖ q) + KL(p^m ‖ q^m) as the paper writes it."""
    kl = float(np.sum(generalist * np.log(generalist / q)))
    q_m = np.append(q[classes], q[[c for c in range(len(q)) if c not in classes]].sum())
    return kl + float(np.sum(specialist * np.log(specialist / q_m)))


def test_the_specialists_combination_is_the_paper_objectives_minimum():
    generalist = np.array([0.5, 0.3, 0.2])
    specialist = np.array([0.2, 0.7, 0.1])  # classes {0, 1} and the dustbin
    classes = [0, 1]
    found = combine(torch.tensor(generalist[None]), [torch.tensor(specialist[None])], [classes], torch.ones(1, 1), 100)
    q = found.exp()[0].numpy()
    # Brute force over the simplex in steps of 0.002.
    grid = [(a, b, 1 - a - b) for a in np.arange(0.001, 1, 0.002) for b in np.arange(0.001, 1 - a, 0.002)]
    best = min(grid, key=lambda point: true_objective(np.array(point), generalist, specialist, classes))
    assert true_objective(q, generalist, specialist, classes) <= true_objective(np.array(best), generalist,
                                                                                specialist, classes) + 1e-6  # fmt: skip
    assert np.abs(q - np.array(best)).max() < 0.005
    # With the specialist inactive the answer is the generalist itself.
    alone = combine(torch.tensor(generalist[None]), [torch.tensor(specialist[None])], [classes], torch.zeros(1, 1), 100)
    assert np.allclose(alone.exp()[0].numpy(), generalist, atol=1e-4)
    # The objective the optimiser minimises differs from the paper's only by the entropies of p.
    logits = torch.log(torch.tensor(q[None]))
    entropies = float(-(generalist * np.log(generalist)).sum() - (specialist * np.log(specialist)).sum())
    ours = combination_objective(logits, torch.tensor(generalist[None]), [torch.tensor(specialist[None])], [classes],
                                 torch.ones(1, 1)).item()  # fmt: skip
    assert ours - entropies == pytest.approx(true_objective(q, generalist, specialist, classes), abs=1e-6)


def test_confusable_classes_cluster_together():
    rng = np.random.default_rng(0)
    n = 600
    pair_mass = rng.random(n)  # classes 0 and 1 trade probability; 2 and 3 trade probability
    other_mass = rng.random(n)
    side = rng.random(n) < 0.5
    probabilities = np.zeros((n, 4))
    probabilities[side, 0], probabilities[side, 1] = pair_mass[side], 1 - pair_mass[side]
    probabilities[~side, 2], probabilities[~side, 3] = other_mass[~side], 1 - other_mass[~side]
    clusters = confusable_clusters(probabilities, 2, seed=0)
    assert sorted(clusters) == [[0, 1], [2, 3]]


# ---------------------------------------------------------------- each method through `edgekd distill`


@pytest.mark.slow
@pytest.mark.parametrize(
    ("distill", "teacher"),
    [
        ({"method": "crd", "nce_k": 32}, True),
        ({"method": "nst", "stages": [[2, 2], [3, 3]], "w_kd": 0.5}, True),
        ({"method": "tfkd"}, False),
        ({"method": "tfkd-self"}, False),
        ({"method": "mean-teacher", "rampup_epochs": 1}, False),
        ({"method": "specialists", "specialists": 2, "specialist_train": {"epochs": 1, "lr": 0.003}}, True),
        ({"method": "kd", "mix": "cutmix", "mix_hard_labels": True}, True),
    ],
    ids=lambda value: value["method"] + ("+mix" if "mix" in value else "") if isinstance(value, dict) else "",
)
def test_each_method_distils_end_to_end(capsys, tmp_path, tiny_recipe, write_recipe, distill, teacher):
    from edgekd.rundir import RunDir

    if not teacher:
        del tiny_recipe["teacher"]
    tiny_recipe["distill"] = {**distill, "epochs": 2, "lr": 0.01}
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert code == 0, err
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary.method == distill["method"] and 0 <= summary.student.accuracy <= 1
    assert (summary.teacher is None) != teacher
    if distill["method"] == "specialists":
        found = summary.method_results["specialists"]
        assert sorted(c for cluster in found["clusters"] for c in cluster) == [0, 1, 2, 3]
        assert 0 <= found["generalist_accuracy"] <= 1 and 0 <= found["combined_accuracy"] <= 1
        assert "teacher cache on" in err  # the combined teacher's outputs are computed once
    if distill["method"] == "mean-teacher":
        assert summary.method_results["mean_teacher"]["steps"] > 0
    if "mix" in distill:
        assert "teacher cache off (distill.mix: cutmix shows the teacher new images every step)" in " ".join(
            err.split()
        )
