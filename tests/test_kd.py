import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.methods import Plain
from edgekd.methods.kd import KD, kd_loss


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computation():
    student = [[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]]
    teacher = [[3.0, 2.0, 1.0], [2.0, 0.0, 0.0]]
    temperature = 2.0
    per_sample = []
    for s, t in zip(student, teacher, strict=True):
        p_t, p_s = softmax(t, temperature), softmax(s, temperature)
        per_sample.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True)))
    # KL summed over classes, averaged over the batch ("batchmean"), times T².
    expected = temperature**2 * sum(per_sample) / len(per_sample)
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # "mean" would also divide by the 3 classes: make sure that is not what we compute.
    assert got != pytest.approx(expected / 3, rel=1e-3)


def test_kd_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def make_kd(w_ce=0.1, w_kd=0.9, temperature=4.0):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 5))
    return KD(student, teacher, temperature=temperature, w_ce=w_ce, w_kd=w_kd)


def test_kd_method_returns_weighted_named_losses():
    method = make_kd(w_ce=0.25, w_kd=0.75, temperature=3.0)
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0])
    logits, losses = method(images, labels)
    with torch.no_grad():  # teacher outputs pass through float16, as the teacher cache stores them
        teacher_logits = method.teacher(images).half().float()
    assert set(losses) == {"ce", "kd"}
    assert losses["ce"].item() == pytest.approx(0.25 * F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert losses["kd"].item() == pytest.approx(0.75 * kd_loss(logits, teacher_logits, 3.0).item(), rel=1e-6)


def test_gradients_reach_the_student_only():
    method = make_kd()
    method.train()
    assert not method.teacher.training, "the teacher must stay in eval mode"
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0])
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    _, losses = method(images, labels)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    # BatchNorm running statistics of the teacher do not move either.
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert list(method.trainable_modules()) == ["student"]


def test_plain_is_cross_entropy():
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    images, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    logits, losses = Plain(student)(images, labels)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
