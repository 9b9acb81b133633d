"""Specialists, Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", §5 — and
their knowledge distilled into one small student, which is what makes them useful on a microcontroller.

1. Clusters of confusable classes: the covariance of the generalist teacher's predicted class
   probabilities over the training set, one row per class, grouped by k-means (the paper clusters the
   same covariance matrix), so that classes the generalist predicts together share a specialist.
2. A specialist per cluster S^m: the generalist's network and weights (the paper initialises
   specialists from the generalist), its classifier replaced by |S^m| + 1 outputs — the cluster's
   classes and a dustbin for every other class — trained on the cluster's images plus as many others
   (the paper's half-and-half enrichment), labelled with the dustbin.
3. The combined teacher, as in the paper (its eq. 5): for each image, the specialists whose classes
   include the generalist's top-n classes are active, and the full distribution q is the one that
   minimises KL(p^g ‖ q) + Σ_active KL(p^m ‖ q^m), where q^m is q seen through specialist m (its
   classes, and the rest summed into the dustbin). There is no closed form: q = softmax(z) is found
   by L-BFGS from z = log p^g.
4. KD from the combined teacher into the student (w_ce · CE + w_kd · T² · KL). The combined teacher is
   frozen, so its outputs are computed once when the teacher cache is on (they are the costly part).

The summary reports the accuracy of the generalist, of the combined teacher and of the student.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.cluster import KMeans
from torch import nn
from torch.utils.data import Dataset, Subset

from edgekd.config import DistillSettings, TrainConfig
from edgekd.data import Batches, labels_of
from edgekd.errors import RecipeError
from edgekd.methods.base import FrozenTeacherMethod
from edgekd.methods.kd import kd_loss
from edgekd.methods.plain import Plain
from edgekd.methods.registry import register_method
from edgekd.runtime import evaluate


class SpecialistsConfig(DistillSettings):
    """Specialists (Hinton et al. 2015 §5): specialists of confusable classes, combined, then distilled."""

    method: Literal["specialists"] = "specialists"
    specialists: int = Field(3, ge=1, description="clusters of confusable classes, one specialist each")
    specialist_train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, lr=0.002, weight_decay=0.05),
        description="how each specialist is trained (from the generalist's weights)",
    )
    top_classes: int = Field(1, ge=1, description="the generalist's top-n classes that activate specialists")
    combine_iterations: int = Field(50, ge=1, description="L-BFGS iterations per batch for the combined q")
    temperature: float = Field(4.0, gt=0)
    w_ce: float = Field(0.1, ge=0)
    w_kd: float = Field(0.9, ge=0)


def confusable_clusters(probabilities: np.ndarray, count: int, seed: int) -> list[list[int]]:
    """k-means over the rows of the covariance of predicted class probabilities (N × K)."""
    classes = probabilities.shape[1]
    if not 1 <= count <= classes:
        raise RecipeError(f"distill.specialists: {count} clusters of {classes} classes; give 1 to {classes}")
    covariance = np.cov(probabilities, rowvar=False)
    labels = KMeans(n_clusters=count, n_init=10, random_state=seed).fit(covariance).labels_
    return [sorted(int(c) for c in np.flatnonzero(labels == m)) for m in range(count) if (labels == m).any()]


def combination_objective(
    logits: torch.Tensor, generalist: torch.Tensor, specialists: list[torch.Tensor], clusters, active: torch.Tensor
) -> torch.Tensor:
    """Σ over the batch of KL(p^g ‖ q) + Σ_active KL(p^m ‖ q^m), without the constant entropies of p:
    −Σ p^g log q − Σ_m active_m (Σ_{c∈S^m} p^m_c log q_c + p^m_dustbin log Σ_{c∉S^m} q_c)."""
    log_q = F.log_softmax(logits, dim=1)
    total = -(generalist * log_q).sum(1)
    for m, (probabilities, classes) in enumerate(zip(specialists, clusters, strict=True)):
        inside = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        inside[classes] = True
        own = (probabilities[:, :-1] * log_q[:, inside]).sum(1)
        dustbin = probabilities[:, -1] * torch.logsumexp(log_q[:, ~inside], dim=1) if (~inside).any() else 0
        total = total - active[:, m] * (own + dustbin)
    return total.sum()


def combine(generalist: torch.Tensor, specialists: list[torch.Tensor], clusters, active, iterations: int):
    """log q minimising the objective per image, by L-BFGS from log p^g (probabilities in, log q out)."""
    with torch.inference_mode(False), torch.enable_grad():
        generalist = generalist.detach().clone().float()
        specialists = [p.detach().clone().float() for p in specialists]
        active = active.detach().clone().float()
        logits = torch.log(generalist.clamp_min(1e-12)).requires_grad_(True)
        optimiser = torch.optim.LBFGS([logits], max_iter=iterations, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = combination_objective(logits, generalist, specialists, clusters, active)
            loss.backward()
            return loss

        optimiser.step(closure)
        return F.log_softmax(logits.detach(), dim=1)


class CombinedTeacher(nn.Module):
    """The generalist and its specialists as one teacher whose logits are log q."""

    def __init__(self, generalist: nn.Module, specialists: list[nn.Module], clusters, top: int, iterations: int):
        super().__init__()
        self.generalist, self.specialists = generalist, nn.ModuleList(specialists)
        self.clusters, self.top, self.iterations = clusters, top, iterations

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        generalist = F.softmax(self.generalist(images).float(), dim=1)
        top = generalist.topk(min(self.top, generalist.shape[1]), dim=1).indices
        member = torch.zeros(len(self.clusters), generalist.shape[1], dtype=torch.bool, device=images.device)
        for m, classes in enumerate(self.clusters):
            member[m, classes] = True
        active = member[:, top].any(dim=2).T  # (batch, specialists)
        specialists = [F.softmax(model(images).float(), dim=1) for model in self.specialists]
        return combine(generalist, specialists, self.clusters, active, self.iterations)


class _Relabelled(Dataset):
    """A dataset seen by one specialist: its classes 0..|S|−1, every other class the dustbin |S|."""

    def __init__(self, dataset: Dataset, classes: list[int], num_classes: int):
        self.dataset = dataset
        self.mapping = torch.full((num_classes,), len(classes), dtype=torch.long)
        self.mapping[classes] = torch.arange(len(classes))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, int(self.mapping[int(label)])


def _enriched(data, classes: list[int], seed: int):
    """The cluster's training images and as many others (the dustbin), relabelled; val and test relabelled."""
    labels = labels_of(data.train)
    own = np.flatnonzero(np.isin(labels, classes))
    others = np.flatnonzero(~np.isin(labels, classes))
    rng = np.random.default_rng(seed)
    picked = rng.choice(others, size=min(len(own), len(others)), replace=False) if len(others) else others
    keep = np.sort(np.concatenate([own, picked])).tolist()
    relabel = lambda dataset: _Relabelled(dataset, classes, data.num_classes)  # noqa: E731
    return replace(
        data,
        train=relabel(Subset(data.train, keep)),
        train_eval=relabel(Subset(data.train_eval, keep)),
        val=relabel(data.val),
        test=relabel(data.test),
        num_classes=len(classes) + 1,
    )


@register_method("specialists", config=SpecialistsConfig, recipe="mnist5k_specialists")
class Specialists(FrozenTeacherMethod):
    results_key = "specialists"

    def __init__(self, student: nn.Module, teacher: CombinedTeacher, *, temperature: float, w_ce: float, w_kd: float):
        super().__init__(student, teacher)
        self.temperature, self.w_ce, self.w_kd = temperature, w_ce, w_kd

    @classmethod
    def check(cls, config: SpecialistsConfig, student: nn.Module, teacher: nn.Module) -> None:
        classes = getattr(teacher, "num_classes", None)
        if not hasattr(teacher, "reset_classifier") or classes is None:
            raise RecipeError(f"specialists: the teacher {type(teacher).__name__} is not a timm model "
                              "(specialists replace its classifier with reset_classifier)")  # fmt: skip
        if config.specialists > classes:
            raise RecipeError(f"distill.specialists: {config.specialists} clusters of {classes} classes; "
                              f"give 1 to {classes}")  # fmt: skip

    @classmethod
    def from_config(cls, config: SpecialistsConfig, student: nn.Module, teacher: nn.Module, context) -> Specialists:
        data, runtime = context.data, context.runtime
        generalist = teacher.eval()
        with torch.no_grad():
            batches = Batches(data.train_eval, 256, shuffle=False)
            probabilities = torch.cat(
                [F.softmax(generalist(runtime.batch(x, y)[0]).float(), 1).cpu() for x, y, _ in batches]
            )
        clusters = confusable_clusters(probabilities.numpy(), config.specialists, context.seed)
        specialists = []
        for m, classes in enumerate(clusters):
            model = copy.deepcopy(generalist).train().requires_grad_(True)
            model.reset_classifier(len(classes) + 1)
            model = runtime.place(model)
            context.train(f"specialist_{m + 1}", Plain(model), config.specialist_train, _enriched(data, classes, m))
            specialists.append(model.eval().requires_grad_(False))
        combined = CombinedTeacher(generalist, specialists, clusters, config.top_classes, config.combine_iterations)
        return cls(student, combined, temperature=config.temperature, w_ce=config.w_ce, w_kd=config.w_kd)

    def forward(self, images, labels, index=None):
        logits = self.student(images)
        return logits, {
            "ce": self.w_ce * self.cross_entropy(logits, labels),
            "kd": self.w_kd * kd_loss(logits, self.teacher_logits(images, index), self.temperature),
        }

    def results(self, batches, runtime) -> dict[str, Any]:
        """Test accuracy of the generalist alone and of the combined teacher, and the clusters."""
        return {
            "clusters": self.teacher.clusters,
            "generalist_accuracy": evaluate(self.teacher.generalist, batches, runtime)[1],
            "combined_accuracy": evaluate(self.teacher, batches, runtime)[1],
        }

    @classmethod
    def results_markdown(cls, results: dict[str, Any]) -> list[str]:
        found = results.get(cls.results_key)
        if not found:
            return []
        clusters = "; ".join("{" + ", ".join(map(str, c)) + "}" for c in found["clusters"])
        return [f"Specialists for the class clusters {clusters}: the generalist alone scores "
                f"{found['generalist_accuracy']:.2%} on the test split, generalist and specialists combined "
                f"{found['combined_accuracy']:.2%}; the student learnt from the combination."]  # fmt: skip
