"""Contrastive representation distillation, Tian, Krishnan & Isola, "Contrastive Representation
Distillation", ICLR 2020 (CRD+KD, the paper's best row; reference code: HobbitLong/RepDistiller).

Student and teacher penultimate features go through linear embedding heads onto the unit sphere
(128-d). A memory bank per side holds an embedding of every training image. For each image, its
teacher embedding is contrasted with the student-side memory of the same image (the positive) and of
K other images (negatives), and the other way round; the NCE loss with noise distribution 1/N
estimates the contrastive objective:

    h(v, u) = exp(v·u / τ) / Z          (Z fixed from the first batch: mean h · N)
    L_NCE   = − log h⁺/(h⁺ + K/N) − Σ_neg log (K/N)/(h⁻ + K/N)

Per step: w_ce · CE + w_kd · T² · KL (Hinton KD) + w_crd · (L_NCE student-anchored + L_NCE
teacher-anchored). The memories then move towards the batch's embeddings (momentum 0.5). The paper
draws 16,384 negatives from CIFAR-100's 50,000 images; here K is min(nce_k, N − 1), and negatives
never include the positive image itself. Under torchrun the memory bank is rank 0's (DDP broadcasts
buffers every step), so only rank 0's share of each batch moves it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgekd.config import DistillSettings
from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.kd import kd_loss
from edgekd.methods.registry import register_method


class CRDConfig(DistillSettings):
    """CRD (Tian et al. 2020): NCE between student and teacher embeddings over a memory bank, with KD."""

    method: Literal["crd"] = "crd"
    w_ce: float = Field(1.0, ge=0)
    w_kd: float = Field(1.0, ge=0, description="the paper's CRD+KD row: 1")
    w_crd: float = Field(0.8, ge=0, description="the paper's β")
    temperature: float = Field(4.0, gt=0, description="KD's")
    feat_dim: int = Field(128, ge=2, description="embedding size")
    nce_k: int = Field(16384, ge=1, description="negatives per image; capped at the training images − 1")
    nce_t: float = Field(0.07, gt=0, description="τ")
    nce_m: float = Field(0.5, ge=0, lt=1, description="memory momentum")


def pre_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled penultimate features) in one forward pass (timm's forward_features / forward_head)."""
    features = model.forward_features(images)
    return model.forward_head(features), model.forward_head(features, pre_logits=True)


def nce_loss(scores: torch.Tensor, bank_size: int) -> torch.Tensor:
    """NCE over (B, 1 + K) normalised scores, the positive in column 0, noise probability 1/bank_size."""
    negatives = scores.shape[1] - 1
    noise = negatives / bank_size  # K · Pn
    eps = 1e-7
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def draw_negatives(index: torch.Tensor, k: int, bank_size: int, generator: torch.Generator | None = None):
    """(B, K) uniform draws from the bank without each row's own index: draw from N − 1 slots and step
    over the positive."""
    draws = torch.randint(0, bank_size - 1, (index.shape[0], k), generator=generator, device=index.device)
    return draws + (draws >= index[:, None]).long()


class ContrastMemory(nn.Module):
    """The two memory banks, the normalising constants, and the contrast scores against them."""

    def __init__(self, feat_dim: int, bank_size: int, k: int, tau: float, momentum: float):
        super().__init__()
        self.bank_size, self.k, self.tau, self.momentum = bank_size, k, tau, momentum
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("student_memory", torch.rand(bank_size, feat_dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("teacher_memory", torch.rand(bank_size, feat_dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("z", torch.full((2,), -1.0))  # (student-anchored, teacher-anchored); -1: not set

    def scores(self, student: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor):
        """h for the student embedding against the teacher memory (row 0: the same image) and the
        teacher embedding against the student memory."""
        rows = torch.cat([index[:, None], negatives], dim=1)
        student_scores = torch.exp(torch.bmm(self.teacher_memory[rows], student[:, :, None]).squeeze(2) / self.tau)
        teacher_scores = torch.exp(torch.bmm(self.student_memory[rows], teacher[:, :, None]).squeeze(2) / self.tau)
        if self.z[0] < 0:  # Z from the first batch, fixed afterwards (as the reference code does)
            self.z.copy_(torch.stack([student_scores.mean(), teacher_scores.mean()]).detach() * self.bank_size)
        return student_scores / self.z[0], teacher_scores / self.z[1]

    @torch.no_grad()
    def update(self, student: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor) -> None:
        for memory, embedding in ((self.student_memory, student), (self.teacher_memory, teacher)):
            moved = memory[index] * self.momentum + embedding.detach() * (1 - self.momentum)
            memory[index] = F.normalize(moved, dim=1)


@register_method("crd", config=CRDConfig, accepts_unlabelled=True, recipe="mnist5k_crd")
class CRD(FrozenTeacherMethod):
    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        bank_size: int,
        student_dim: int,
        teacher_dim: int,
        w_ce: float,
        w_kd: float,
        w_crd: float,
        temperature: float,
        feat_dim: int,
        nce_k: int,
        nce_t: float,
        nce_m: float,
    ):
        super().__init__(student, teacher)
        if bank_size < 2:
            raise ValueError("CRD needs at least 2 training images")
        self.student_embed = nn.Linear(student_dim, feat_dim)
        self.teacher_embed = nn.Linear(teacher_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, bank_size, min(nce_k, bank_size - 1), nce_t, nce_m)
        self.w_ce, self.w_kd, self.w_crd, self.temperature = w_ce, w_kd, w_crd, temperature

    @classmethod
    def from_config(cls, config: CRDConfig, student: nn.Module, teacher: nn.Module, context) -> CRD:
        sizes = {"bank_size": context.train_images, "student_dim": student.num_features,
                 "teacher_dim": teacher.num_features}  # fmt: skip
        return cls(student, teacher, **sizes, **config.method_options())

    def teacher_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, features = pre_logits(self.teacher, images)
        return logits, [features]

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "student_embed": self.student_embed, "teacher_embed": self.teacher_embed}

    def extra_state(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])

    def forward(self, images, labels, index=None):
        student_logits, student_features = pre_logits(self.student, images)
        teacher_logits, (teacher_features,) = self.teacher_outputs(images, index)
        losses = {
            "ce": self.w_ce * self.cross_entropy(student_logits, labels),
            "kd": self.w_kd * kd_loss(student_logits, teacher_logits, self.temperature),
        }
        if self.training and index is not None:  # the bank is indexed by training images
            index = index.to(images.device)
            student_embedding = F.normalize(self.student_embed(student_features), dim=1)
            teacher_embedding = F.normalize(self.teacher_embed(teacher_features), dim=1)
            negatives = draw_negatives(index, self.memory.k, self.memory.bank_size)
            student_scores, teacher_scores = self.memory.scores(student_embedding, teacher_embedding, index, negatives)
            contrast = nce_loss(student_scores, self.memory.bank_size) + nce_loss(teacher_scores, self.memory.bank_size)
            losses["crd"] = self.w_crd * contrast
            self.memory.update(student_embedding, teacher_embedding, index)
        return student_logits, losses
