"""Adversarial regularization (Nasr, Shokri & Houmansadr, "Machine Learning with Membership Privacy
using Adversarial Regularization", CCS 2018): the classifier f and an inference model h play

    min_f  [ L_D(f) + lambda * max_h G_f(h) ],
    G_f(h) = E_{(x,y) in D} log h(f(x), y) + E_{(x',y') in D'} log(1 - h(f(x'), y')),

where D are the training records (members), D' a reference set from the same distribution that f is
never trained on, and h(f(x), y) in (0, 1) is h's probability that (x, y) is a member.
Following the paper's Algorithm 1, every classifier step is preceded by k (``inference_steps``) steps of
h, each ascending G on a fresh batch of D and one of D' (with f fixed), and the classifier step descends

    (1/m) sum_{(x,y) in batch of D} [ l(f(x), y) + lambda * log h(f(x), y) ]

(only G's member term depends on the classifier's batch). Both objectives are written with h's logit z,
h = sigmoid(z): log h = logsigmoid(z), log(1 - h) = logsigmoid(-z), which is the same quantity computed
without overflow.

The inference model follows the paper's architecture (its Table/Figure "inference attack model" and the
authors' public ``InferenceAttack_HZ``): one fully connected branch on the prediction vector f(x)
(softmax probabilities), one on the one-hot label y, their outputs concatenated and fed to a fully
connected stack ending in one unit; weights N(0, 0.01^2), biases 0. Deliberately scaled down for the
small models fedmia trains: prediction branch C-128-64 (paper: C-1024-512-64), label branch C-64 (paper:
C-128-64), combining stack 128-64-1 (paper: 128-256-64-1); ReLU throughout.

Deviations, on purpose: the authors' public code trains h with a mean-squared error and penalizes the
classifier with lambda * (mean h - 0.5); we implement the paper's log-likelihood objectives above (the
equations of its Algorithm 1). The paper trains h with SGD-style updates; we use Adam with
``inference_lr`` (as the public code does). h's weights and its batches draw from the trainer's generator,
so a run is reproducible. The classifier is in eval mode while h trains (as in the public code), so
dropout does not perturb h's inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

if TYPE_CHECKING:
    from fedmia.training.train import AdversarialRegularization

Records = tuple[torch.Tensor, torch.Tensor]


class InferenceModel(nn.Module):
    """h(f(x), y): the membership logit z of a prediction vector and its label (h = sigmoid(z))."""

    def __init__(self, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.prediction = nn.Sequential(nn.Linear(num_classes, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.label = nn.Sequential(nn.Linear(num_classes, 64), nn.ReLU())
        self.combine = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, 0.01, generator=generator)
                    m.bias.zero_()

    def forward(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y.long(), self.num_classes).to(probs.dtype)
        return self.combine(torch.cat([self.prediction(probs), self.label(onehot)], dim=1)).squeeze(1)


def inference_gain(z_members: torch.Tensor, z_reference: torch.Tensor) -> torch.Tensor:
    """G = mean log h(members) + mean log(1 - h(reference)), from h's logits (h ascends it)."""
    return F.logsigmoid(z_members).mean() + F.logsigmoid(-z_reference).mean()


def classifier_objective(
    logits: torch.Tensor, y: torch.Tensor, z_members: torch.Tensor, strength: float, loss: torch.Tensor | None = None
) -> torch.Tensor:
    """The classifier's loss on a batch of members: l(f(x), y) + lambda * mean log h(f(x), y).

    ``loss`` is the batch's data loss when the caller already has it (default: mean cross-entropy)."""
    data = F.cross_entropy(logits, y) if loss is None else loss
    return data + strength * F.logsigmoid(z_members).mean()


class AdversarialGame:
    """The inference model h, its optimizer, and the two alternating steps of Algorithm 1."""

    def __init__(
        self, spec: AdversarialRegularization, num_classes: int, batch_size: int, generator: torch.Generator
    ) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.h = InferenceModel(num_classes, generator)
        self.optimizer = torch.optim.Adam(self.h.parameters(), lr=spec.inference_lr)

    def train_inference(
        self, model: nn.Module, members: Records, reference: Records, generator: torch.Generator
    ) -> None:
        """k steps of gradient ascent on G for h, f fixed (in eval mode, no gradient to f)."""
        was_training = model.training
        model.eval()
        self.h.train()
        for _ in range(self.spec.inference_steps):
            mi = torch.randperm(len(members[1]), generator=generator)[: self.batch_size]
            ri = torch.randperm(len(reference[1]), generator=generator)[: self.batch_size]
            with torch.no_grad():
                p_mem = torch.softmax(model(members[0][mi]), dim=1)
                p_ref = torch.softmax(model(reference[0][ri]), dim=1)
            gain = inference_gain(self.h(p_mem, members[1][mi]), self.h(p_ref, reference[1][ri]))
            self.optimizer.zero_grad(set_to_none=True)
            (-gain).backward()
            self.optimizer.step()
        model.train(was_training)
        self.h.eval()

    def state(self) -> dict[str, torch.Tensor]:
        """h's weights and its Adam state (moments and step count) as named tensors, so that a trainer whose
        training comes in pieces (an FL client, one ``train()`` per round) keeps playing the same game:
        Algorithm 1 trains h alongside f throughout, it does not restart it. Loaded by ``load_state``."""
        out = {f"h.{name}": value.detach().clone() for name, value in self.h.state_dict().items()}
        for i, param_state in self.optimizer.state_dict()["state"].items():
            for key, value in param_state.items():
                out[f"adam.{i}.{key}"] = torch.as_tensor(value).detach().clone()
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from ``state()`` of an earlier game (same spec and number of classes)."""
        self.h.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("h.")})
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in state.items():
            if name.startswith("adam."):
                _, i, key = name.split(".", 2)
                per_param.setdefault(int(i), {})[key] = value.clone()
        if per_param:
            saved = self.optimizer.state_dict()
            self.optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})

    def penalty(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """lambda * mean log h(f(x), y) on the classifier's batch; gradients flow to f only (h's
        parameters receive gradients here too, but h's optimizer zeroes them before its next step)."""
        z = self.h(torch.softmax(logits, dim=1), y)
        return self.spec.strength * F.logsigmoid(z).mean()
