"""A node's steps written from docs/protocol.md in plain torch: the method's defaults, step by step.

Run a node with them:

    PYTHONPATH=examples fedalign node run --steps custom_steps.plain_torch_steps:PlainTorchSteps

and compare them with FedAlign's own steps first:

    PYTHONPATH=examples fedalign node check --steps custom_steps.plain_torch_steps:PlainTorchSteps

They compute what FedAlign's reference node computes, bit for bit: the same batches (`node.batches`), the
same optimiser (`node.optimizer`), the same schedules, and the same order of floating-point operations.
Settings beyond the method's defaults (pseudo-labels, entropy terms, class-conditional D) are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedalign import optimizers
from fedalign.data import SplitDataset
from fedalign.label_free import live_indices
from workers.steps import Batches, Downloads, NodeContext, State, StepError, StepResult, Steps, StepSpec

SOURCE, TARGET = 1.0, 0.0  # D's label: its logit is the log-odds that a feature comes from a source


class PlainTorchSteps(Steps):
    def __init__(self, node: NodeContext) -> None:
        super().__init__(node)
        hp = node.hp
        unsupported = [
            name
            for name, used in {
                "algorithm other than fedalign": node.config.algorithm != "fedalign",
                "conditional": hp.conditional,
                "entropy_conditioning": hp.entropy_conditioning,
                "entropy_weight": hp.entropy_weight > 0,
                "diversity_weight": hp.diversity_weight > 0,
                "pseudo_label_threshold": hp.pseudo_label_threshold > 0,
            }.items()
            if used
        ]
        if unsupported:
            raise StepError(f"these steps implement the method's defaults only, not {', '.join(unsupported)}")
        # This node's domain label for D: every feature it sees in a discriminator step is labelled with it.
        self.label = SOURCE if node.role == "source" else TARGET
        self.models = node.build_models()
        self.G, self.T, self.D = self.models.G, self.models.T, self.models.D
        # One optimiser per set of parameters, kept between steps: its momentum is the node's own.
        self.opt_D = node.optimizer(self.D.parameters(), hp.disc_lr)
        self.opt_GT = node.optimizer([*self.G.parameters(), *self.T.parameters()], hp.lr)
        self.opt_G = node.optimizer(self.G.parameters(), hp.lr)

    # ------------------------------------------------------------------------------------ helpers

    def load(self, step: StepSpec, downloads: Downloads) -> None:
        """Each downloaded aggregate into its model: every tensor at setup, later the shared ones."""
        for model, state in downloads.items():
            self.node.load(self.models[model], model, state, every_tensor=step.kind == "setup")

    def domain_loss(self, logits: torch.Tensor, label: float) -> torch.Tensor:
        """BCE(D(f), label), D's logit for each example against one label for the whole batch."""
        z = logits.float().squeeze(1)
        return F.binary_cross_entropy_with_logits(z, torch.full_like(z, label))

    def adversarial_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """flip: BCE(D(f), 1 - d), make D take this node's features for the other domain; confusion:
        BCE(D(f), 1/2), push D to the boundary."""
        if self.node.hp.adv_loss == "flip":
            return self.domain_loss(logits, 1.0 - self.label)
        return self.domain_loss(logits, 0.5)

    def set_lr(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def batch(self, stream: Batches) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = stream.next()
        device = self.node.device.torch_device
        return x.to(device), y.to(device)

    def disc_accuracy(self, split: SplitDataset) -> dict[str, float]:
        """How often D tells this node's held-out features for what they are, and its loss on them."""
        self.G.eval()
        self.D.eval()
        correct, loss_sum = 0, 0.0
        label = self.label
        with torch.no_grad():
            for x, _y in self.node.evaluation_batches(split):
                with self.node.device.autocast:
                    logits = self.D(self.G(x.to(self.node.device.torch_device)).float())
                correct += int(((logits.squeeze(1) > 0).float() == label).sum())
                loss_sum += float(self.domain_loss(logits, label)) * len(x)
        n = max(len(split), 1)
        return {"disc_acc_own": correct / n, "disc_n": float(len(split)), "disc_eval_loss": loss_sum / n}

    def task_accuracy(self, split: SplitDataset) -> tuple[float, float]:
        self.G.eval()
        self.T.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for x, y in self.node.evaluation_batches(split):
                device = self.node.device.torch_device
                x, y = x.to(device), y.to(device)
                with self.node.device.autocast:
                    logits = self.T(self.G(x)).float()
                correct += int((logits.argmax(dim=1) == y).sum())
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        n = max(len(split), 1)
        return correct / n, loss_sum / n

    def target_label_free(self, split: SplitDataset) -> dict[str, float]:
        """Information and class balance of the predictions on an unlabelled split (no label is read), read on
        the protocol's fixed sample of at most 256 of its examples."""
        if len(split) == 0:
            return {}
        self.G.eval()
        self.T.eval()
        probabilities = []
        with torch.no_grad():
            for x, _y in self.node.evaluation_batches(split, live_indices(len(split))):
                with self.node.device.autocast:
                    logits = self.T(self.G(x.to(self.node.device.torch_device))).float()
                    probabilities.append(F.softmax(logits, dim=1).cpu())
        p = torch.cat(probabilities).double()

        def entropy(q: torch.Tensor) -> torch.Tensor:
            return -(q * q.clamp_min(1e-12).log()).sum(dim=-1)

        balance, mean_entropy = float(entropy(p.mean(dim=0))), float(entropy(p).mean())
        return {"target_information": balance - mean_entropy, "target_class_balance": balance}

    # -------------------------------------------------------------------------------------- steps

    def setup(self, step: StepSpec, downloads: Downloads) -> StepResult:
        self.load(step, downloads)
        data = self.node.data
        return StepResult(samples={"train": len(data.train), "val": len(data.val), "test": len(data.test)})

    def discriminator(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """D trains on this node's features, every one labelled with this node's domain; G is fixed but in
        training mode, so its BatchNorm statistics follow the node's data."""
        self.load(step, downloads)
        self.set_lr(self.opt_D, self.node.lr(self.node.hp.disc_lr, step))
        stream = self.node.batches(step)
        self.G.train()
        self.D.train()
        label = self.label
        loss_sum, correct, seen = 0.0, 0, 0
        for _ in range(self.node.hp.disc_steps):
            x, _y = self.batch(stream)
            with self.node.device.autocast:
                with torch.no_grad():
                    features = self.G(x).float()
                logits = self.D(features)
                loss = self.domain_loss(logits, label)
            self.opt_D.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_D.step()
            loss_sum += float(loss.detach()) * len(x)
            correct += int(((logits.detach().squeeze(1) > 0).float() == label).sum())
            seen += len(x)
        seen = max(seen, 1)
        metrics = {"disc_loss": loss_sum / seen, "disc_train_acc": correct / seen}
        return StepResult(uploads={"D": self.node.shared(self.D)}, metrics=metrics)

    def adapt(self, step: StepSpec, downloads: Downloads) -> StepResult:
        """Against the fixed D_all: a source trains G and T on CE + lambda * L_adv, the target G on
        lambda * L_adv."""
        self.load(step, downloads)
        metrics: dict[str, float] = {}
        if step.round > 1 and self.node.schedule.evaluates(step.round - 1):
            # disc_acc_fresh of the last evaluated round: D_all on the features it trained on, before they
            # adapt.
            metrics["fresh_disc_acc_own"] = self.disc_accuracy(self.node.data.val)["disc_acc_own"]
        stream = self.node.batches(step)
        adv_weight = self.node.adv_weight(step)
        if self.node.role == "source":
            metrics |= self.adapt_source(step, stream, adv_weight)
        elif self.node.schedule.target_trains:
            weight = adv_weight if self.node.hp.adv_sides == "both" else 0.0
            metrics |= self.adapt_target(step, stream, weight)
        else:
            with torch.no_grad():  # the target only moves its BatchNorm statistics to its data
                self.G.train()
                for _ in range(self.node.hp.local_steps):
                    x, _y = self.batch(stream)
                    with self.node.device.autocast:
                        self.G(x)
        uploads = {model: self.node.shared(self.models[model]) for model in step.uploads}
        return StepResult(uploads=uploads, metrics=metrics)

    def adapt_source(self, step: StepSpec, stream: Batches, adv_weight: float) -> dict[str, float]:
        self.set_lr(self.opt_GT, self.node.lr(self.node.hp.lr, step))
        self.G.train()
        self.T.train()
        self.D.eval()
        task_sum, adv_sum, seen = 0.0, 0.0, 0
        with frozen(self.D):
            for _ in range(self.node.hp.local_steps):
                x, y = self.batch(stream)
                with self.node.device.autocast:
                    features = self.G(x)
                    task = F.cross_entropy(self.T(features).float(), y)
                    adv = (
                        self.adversarial_loss(self.D(features.float())) if adv_weight > 0 else torch.zeros(())
                    )
                    loss = task + adv_weight * adv
                self.opt_GT.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_GT.step()
                task_sum += float(task.detach()) * len(x)
                adv_sum += float(adv.detach()) * len(x)
                seen += len(x)
        seen = max(seen, 1)
        metrics = {"task_loss": task_sum / seen}
        if adv_weight > 0:
            metrics["adv_loss"] = adv_sum / seen
        return metrics

    def adapt_target(self, step: StepSpec, stream: Batches, adv_weight: float) -> dict[str, float]:
        self.set_lr(self.opt_G, self.node.lr(self.node.hp.lr, step))
        self.G.train()
        self.T.eval()
        self.D.eval()
        adv_sum, seen = 0.0, 0
        with frozen(self.T, self.D):
            for _ in range(self.node.hp.local_steps):
                x, _y = self.batch(stream)  # the target's labels are never read
                with self.node.device.autocast:
                    features = self.G(x)
                    loss = torch.zeros((), device=self.node.device.torch_device)
                    if adv_weight > 0:
                        adv = self.adversarial_loss(self.D(features.float()))
                        loss = loss + adv_weight * adv
                        adv_sum += float(adv.detach()) * len(x)
                if loss.requires_grad:
                    self.opt_G.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt_G.step()
                seen += len(x)
        return {"adv_loss": adv_sum / max(seen, 1)} if adv_weight > 0 else {}

    def evaluate(self, step: StepSpec, downloads: Downloads) -> StepResult:
        self.load(step, downloads)
        metrics = self.disc_accuracy(self.node.data.val)
        if self.node.role == "source":
            acc, loss = self.task_accuracy(self.node.data.val)
            metrics |= {"source_val_acc": acc, "val_task_loss": loss}
        else:  # the target: label-free scores on its own training split, and its labelled evaluation split
            metrics |= self.target_label_free(self.node.data.train)
            if len(self.node.data.test) > 0:  # for reporting only
                metrics["target_acc"] = self.task_accuracy(self.node.data.test)[0]
        return StepResult(metrics=metrics)

    def publish(self, step: StepSpec, downloads: Downloads) -> StepResult:
        self.load(step, downloads)
        return StepResult(uploads={"model": self.node.full_model(self.G, self.T)})

    # ------------------------------------------------------------------------------ the node's state

    def state_tensors(self) -> State:
        state = {
            f"model.{name}.{k}": v.detach().cpu().clone()
            for name, module in self.models.items()
            for k, v in module.state_dict().items()
        }
        for name, opt in (("D", self.opt_D), ("GT", self.opt_GT), ("G", self.opt_G)):
            state |= optimizers.state_tensors(name, opt)
        return state

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, module in self.models.items():
            prefix = f"model.{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        for name, opt in (("D", self.opt_D), ("GT", self.opt_GT), ("G", self.opt_G)):
            optimizers.load_state_tensors(name, opt, state)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """No gradient for the parameters of `modules` inside the block (the gradient still flows through)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
