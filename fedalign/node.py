"""One node's side of a federation: its data, its models and optimiser state, and how it runs a step.

The simulator, the Celery worker and the REST client all run FedAlign's steps through `NodeRuntime.run`
(a served node through `workers.reference_steps`, unless it runs a user's `workers.steps.Steps`), so a
step means the same everywhere. The helpers a user's steps need to compute the same numbers
(`training_batches`, `load_aggregate`, `full_model`, `check_step_result`) are functions here.

Nothing here touches the network: a step takes the aggregates it downloads as state dicts and returns
what it uploads as state dicts (shared tensors only) plus scalar metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedalign import data as datasets
from fedalign import optimizers, privacy
from fedalign.architecture_names import BUILTINS
from fedalign.architectures import ArchitectureContext
from fedalign.config import FederationConfig, Hyperparameters
from fedalign.data import BatchStream, NodeData
from fedalign.data.preprocessing import augmentation
from fedalign.device import CPU, Device
from fedalign.initial_parameters import build_initial
from fedalign.metrics import REPORTED_METRICS
from fedalign.model_manifest import ModelManifest, check
from fedalign.model_names import MODELS
from fedalign.models import ModelSet, build, local_names
from fedalign.phases import Schedule
from fedalign.protocol import StepSpec, derive_seed, effective_local_policy
from fedalign.schedules import scheduled_adv_weight, scheduled_lr
from fedalign.steps import (
    SOURCE,
    TARGET,
    Batches,
    adapt_source,
    adapt_target,
    discriminator_accuracy,
    refresh_statistics,
    set_lr,
    target_label_free,
    task_accuracy,
    train_discriminator,
)

State = dict[str, torch.Tensor]


class StepError(ValueError):
    """A step that cannot run as asked (a missing download, data that does not fit the model)."""


@dataclass
class StepResult:
    uploads: dict[str, State] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] | None = None


def model_shape(config: FederationConfig) -> ArchitectureContext:
    """The federation's `ArchitectureContext` (`ArchitectureContext.of`, under its older name)."""
    return ArchitectureContext.of(config)


def initial_models(config: FederationConfig) -> dict[str, State]:
    """Round 0's aggregates: every tensor (shared and local) of G, T and D, built from the federation's seed
    and its ``init_checkpoint`` (`fedalign.initial_parameters.build_initial`, as ``fedalign init-model``)."""
    return dict(build_initial(config).models)


def load_node_data(
    config: FederationConfig, name: str, spec: str | None = None, cache_dir: Path | None = None
) -> NodeData:
    """Node ``name``'s data for this federation, read on the node's own machine: its spec (or ``spec``)
    resolved with the federation's preprocessing, and a loader plug-in told the node's role and the model's
    input shape and classes (`fedalign.data.LoaderContext`)."""
    node = next((n for n in config.nodes if n.name == name), None)
    if spec is None:
        if node is None:
            raise StepError(f"node {name!r} is not part of federation {config.name!r}")
        spec = node.dataset
    context = datasets.LoaderContext(
        role=node.role if node is not None else None,
        input_shape=tuple(config.model.input_shape),
        num_classes=config.model.num_classes,
        preprocessing=config.preprocessing,
    )
    return datasets.load(spec, cache_dir, context)


def check_node_data(name: str, role: str, config: FederationConfig, data: NodeData) -> None:
    """Refuses data that cannot take this node's part: samples the model does not take, more classes than it
    has, or a source without labels."""
    shape = model_shape(config)
    if tuple(data.input_shape) != shape.input_shape:
        raise StepError(
            f"node {name!r}: dataset {data.spec!r} has inputs of shape {tuple(data.input_shape)}, "
            f"the federation's {config.architecture} model takes {shape.input_shape}"
        )
    if data.num_classes is not None and data.num_classes > shape.num_classes:
        raise StepError(
            f"node {name!r}: dataset {data.spec!r} has {data.num_classes} classes, "
            f"the federation's model has {shape.num_classes}"
        )
    if role == "source":
        unlabelled = [split for split in ("train", "val") if not getattr(data, split).labelled]
        if unlabelled:
            raise StepError(
                f"node {name!r} is a source, but its dataset {data.spec!r} has no labels in its "
                f"{' and '.join(unlabelled)} split: a source trains the task model T with its labels (the "
                f"task loss) and reports source_val_acc on its validation split. Give it labelled data "
                f"(npz 'y', one sub-folder per class, (x, y) items from a loader), or make it the target"
            )
    if len(data.test) and not data.test.labelled:
        raise StepError(
            f"node {name!r}: dataset {data.spec!r} has a test split without labels; the test split is the "
            f"labelled evaluation split"
        )


def shared_state(module: nn.Module, local: set[str]) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in local}


def load_aggregate(
    module: nn.Module,
    model: str,
    state: Mapping[str, torch.Tensor],
    local: set[str],
    *,
    every_tensor: bool = False,
) -> None:
    """Take an aggregate's tensors into `module` (model `model`, whose names in `local` stay on the node).

    An aggregate holds the shared tensors; round 0's hold every tensor. With `every_tensor` (setup),
    every tensor is required and loaded, local ones included (pretrained BatchNorm statistics). Otherwise
    only the shared ones are loaded, and the node's local tensors (BatchNorm statistics by default) stay,
    even when the aggregate also holds them (a later step that still starts from round 0's).
    """
    own = module.state_dict()
    everything = set(own)
    taken = everything if every_tensor else everything - local
    # What the aggregate must hold: every tensor at setup; later the shared ones, or every tensor when
    # the step still starts from round 0's.
    expected = everything if every_tensor or set(state) == everything else taken
    missing = expected - set(state)
    unexpected = set(state) - expected
    if missing or unexpected:
        raise StepError(
            f"aggregate for {model} does not fit the model: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        for k in taken:
            own[k].copy_(state[k])


def training_batches(
    config: FederationConfig, data: NodeData, step: StepSpec, node_privacy: privacy.NodePrivacy | None = None
) -> Batches:
    """A step's training batches of the node's train split, read lazily, augmented when configured: a
    stream seeded by the step's seed, so every node implementation draws the same batches."""
    augment = augmentation(config.preprocessing, derive_seed(step.seed, "augment"))
    if node_privacy is not None:
        # DP-SGD's accounting assumes Poisson sampling, not fixed-size shuffled batches.
        return node_privacy.batches(data.train, derive_seed(step.seed, "dp-batches"), augment)
    return BatchStream(data.train, config.hyperparameters.batch_size, seed=step.seed, augment=augment)


def check_step_result(step: StepSpec, result: StepResult) -> None:
    """Refuses a step's result that must not leave the node: an upload the step did not ask for, one it
    asked for and did not get, or a metric that is not in `REPORTED_METRICS`."""
    unexpected = set(result.uploads) - set(step.uploads)
    if unexpected:  # never send more than the step asked for
        raise StepError(f"step produced uploads {sorted(unexpected)} it was not asked for")
    missing = set(step.uploads) - set(result.uploads)
    if missing:
        raise StepError(f"a {step.kind} step must upload {sorted(missing)}; its result has no such upload")
    undeclared = set(result.metrics) - REPORTED_METRICS
    if undeclared:  # a new metric is declared in REPORTED_METRICS before it may leave the node
        raise StepError(f"step produced metrics {sorted(undeclared)} that are not in REPORTED_METRICS")


class NodeRuntime:
    def __init__(
        self,
        name: str,
        config: FederationConfig,
        data: NodeData,
        device: Device = CPU,
    ) -> None:
        spec = next((n for n in config.nodes if n.name == name), None)
        if spec is None:
            raise StepError(f"node {name!r} is not part of federation {config.name!r}")
        check_node_data(name, spec.role, config, data)
        context = ArchitectureContext.of(config)
        self.name = name
        self.role = spec.role
        self.config = config
        self.hp: Hyperparameters = config.hyperparameters
        self.schedule = Schedule.of(config)
        self.data = data
        # The federation decides the precision (some models need float32); the caller, the device.
        self.device = device.with_precision(config.model.precision)
        self.own_label = SOURCE if self.role == "source" else TARGET
        # Built from this machine's own copy of the architecture (a plug-in's installed package); setup
        # loads every tensor of round 0 into it, after `check_manifest` compared it with the federation's.
        models = build(config.architecture, context)
        policy = effective_local_policy(config)
        self.manifest = ModelManifest.of(config.architecture, models, policy)
        self.models: ModelSet = models.to(self.device.torch_device)
        self.local = {m: local_names(module, policy) for m, module in self.models.items()}
        if config.privacy.enabled and config.architecture not in BUILTINS:
            # The config checked the built-ins' layers; a plug-in's are known only here.
            from fedalign.privacy_layers import unsupported_in

            problems = unsupported_in(self.models)
            if problems:
                raise StepError(
                    f"node {name!r}: differential privacy cannot be used with architecture "
                    f"{config.architecture!r}: Opacus cannot compute per-example gradients of it "
                    f"({'; '.join(problems)})"
                )
        hp = self.hp
        # Optimiser state (momentum, Adam's moments) is local: it lives on the node between steps and never
        # travels.
        self.optimizers = {
            "D": optimizers.build_optimizer(hp, self.models.D.parameters(), hp.disc_lr),
            "GT": optimizers.build_optimizer(
                hp, [*self.models.G.parameters(), *self.models.T.parameters()], hp.lr
            ),
            "G": optimizers.build_optimizer(hp, self.models.G.parameters(), hp.lr),
        }
        # Differential privacy: every step that trains on the node's data is DP-SGD; the accountant's
        # history is (sigma, q, steps taken), and only the count changes.
        self.privacy = privacy.NodePrivacy.of(config, len(data.train)) if config.privacy.enabled else None
        self.dp_steps = privacy.StepCounter()

    # ----------------------------------------------------------------------------------------- I/O

    def check_manifest(self, document: ModelManifest | Mapping[str, object]) -> None:
        """Compare the federation's model manifest document with this node's own models.

        Raises `fedalign.model_manifest.ManifestMismatch` naming the first difference (architecture,
        version, a missing, extra, reshaped or retyped tensor), or `ManifestError` for a document that
        cannot be read. A node calls it at setup, before it loads round 0.
        """
        expected = document if isinstance(document, ModelManifest) else ModelManifest.from_json(document)
        check(expected, self.manifest)

    def load(self, model: str, state: Mapping[str, torch.Tensor], *, every_tensor: bool = False) -> None:
        """Take an aggregate's tensors into `model` (`load_aggregate`, with this node's local names)."""
        load_aggregate(self.models[model], model, state, self.local[model], every_tensor=every_tensor)

    def shared(self, model: str) -> State:
        return {k: v.cpu() for k, v in shared_state(self.models[model], self.local[model]).items()}

    def state_tensors(self) -> State:
        """Everything this node keeps between steps (models, local statistics, optimiser state) as tensors."""
        out: State = {}
        for m, module in self.models.items():
            out.update({f"model.{m}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()})
        for opt_name, opt in self.optimizers.items():
            out.update(optimizers.state_tensors(opt_name, opt))
        if self.privacy is not None:
            out[privacy.STEPS_KEY] = torch.tensor(self.dp_steps.steps, dtype=torch.int64)
        return out

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        for m, module in self.models.items():
            prefix = f"model.{m}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        for opt_name, opt in self.optimizers.items():
            optimizers.load_state_tensors(opt_name, opt, state)
        if privacy.STEPS_KEY in state:
            self.dp_steps.steps = int(state[privacy.STEPS_KEY])

    # ----------------------------------------------------------------------------------------- steps

    def _stream(self, step: StepSpec) -> Batches:
        return training_batches(self.config, self.data, step, self.privacy)

    def _private(
        self, step: StepSpec, optimizer: torch.optim.Optimizer, *modules: nn.Module
    ) -> contextlib.AbstractContextManager[torch.optim.Optimizer]:
        """`optimizer` as DP-SGD over `modules` (the ones the step trains) when privacy is on, else as is."""
        if self.privacy is None:
            return contextlib.nullcontext(optimizer)
        return self.privacy.step(
            modules, optimizer, derive_seed(step.seed, "dp-noise"), self.device.torch_device, self.dp_steps
        )

    def _privacy_metrics(self) -> dict[str, float]:
        if self.privacy is None:
            return {}
        return {"dp_epsilon": self.privacy.epsilon(self.dp_steps.steps)}

    def extend_to(self, rounds: int) -> None:
        """The federation was continued to `rounds` rounds: schedules over the run's length follow it."""
        self.config = self.config.model_copy(update={"rounds": rounds})
        self.schedule = Schedule.of(self.config)

    def run(self, step: StepSpec, downloads: Mapping[str, Mapping[str, torch.Tensor]]) -> StepResult:
        if step.node != self.name:
            raise StepError(f"step for node {step.node!r} sent to node {self.name!r}")
        missing = set(step.downloads) - set(downloads)
        if missing:
            raise StepError(f"step {step.round}/{step.phase} needs downloads {sorted(missing)}")
        for model in MODELS:
            if model in step.downloads:
                # Setup starts from round 0, which holds every tensor: the node takes all of them.
                self.load(model, downloads[model], every_tensor=step.kind == "setup")
        # Seed the global RNG too, for anything a model draws on its own (dropout).
        torch.manual_seed(step.seed)
        handler = {
            "setup": self._setup,
            "discriminator": self._discriminator,
            "adapt": self._adapt,
            "evaluate": self._evaluate,
            "publish": self._publish,
        }.get(step.kind)
        if handler is None:
            raise StepError(f"node runtime cannot run a step of kind {step.kind!r}")
        result = handler(step)
        for slot in step.uploads:
            if slot not in result.uploads:
                result.uploads[slot] = self.shared(slot)
        check_step_result(step, result)
        return result

    def _setup(self, step: StepSpec) -> StepResult:
        d = self.data
        return StepResult(samples={"train": len(d.train), "val": len(d.val), "test": len(d.test)})

    def _discriminator(self, step: StepSpec) -> StepResult:
        opt = self.optimizers["D"]
        set_lr(opt, self._lr(self.hp.disc_lr, step))
        with self._private(step, opt, self.models.D) as private_opt:
            metrics = train_discriminator(
                self.models.G,
                self.models.D,
                self._stream(step),
                private_opt,
                self.hp.disc_steps,
                self.own_label,
                self.device,
                condition_on=self._condition_on,
                weight_by=self.models.T if self.hp.entropy_conditioning else None,
            )
        return StepResult(metrics=metrics | self._privacy_metrics())

    @property
    def _condition_on(self) -> nn.Module | None:
        return self.models.T if self.hp.conditional else None

    def _lr(self, base: float, step: StepSpec) -> float:
        return scheduled_lr(self.hp, base, step.round, self.config.rounds)

    def _adv_weight(self, step: StepSpec) -> float:
        return scheduled_adv_weight(self.hp, step.round, self.config.rounds)

    def _adapt(self, step: StepSpec) -> StepResult:
        hp, m = self.hp, self.models
        metrics: dict[str, float] = {}
        fedalign = self.config.algorithm == "fedalign"
        if fedalign and step.round > 1 and self.schedule.evaluates(step.round - 1):
            # disc_acc_fresh of the last evaluated round: this round's D_all on the features it was
            # trained on, before they adapt.
            fresh = discriminator_accuracy(
                m.G, m.D, self.data.val, self.own_label, self.device, condition_on=self._condition_on
            )
            metrics["fresh_disc_acc_own"] = fresh["disc_acc_own"]
        stream = self._stream(step)
        adv = self._adv_weight(step) if fedalign else 0.0
        if self.role == "source":
            opt = self.optimizers["GT"]
            set_lr(opt, self._lr(hp.lr, step))
            with self._private(step, opt, m.G, m.T) as private_opt:
                metrics |= adapt_source(
                    m.G,
                    m.T,
                    m.D,
                    stream,
                    private_opt,
                    hp.local_steps,
                    adv,
                    hp.adv_loss,
                    self.device,
                    hp.conditional,
                    entropy_conditioning=hp.entropy_conditioning,
                )
        elif self.schedule.target_trains:
            # fedalign against D_all; fedavg with target terms trains on the target's own predictions alone.
            opt = self.optimizers["G"]
            set_lr(opt, self._lr(hp.lr, step))
            with self._private(step, opt, m.G) as private_opt:
                metrics |= adapt_target(
                    m.G,
                    m.T,
                    m.D if fedalign else None,
                    stream,
                    private_opt,
                    hp.local_steps,
                    adv if hp.adv_sides == "both" else 0.0,
                    hp.adv_loss,
                    entropy_weight=hp.entropy_weight,
                    diversity_weight=hp.diversity_weight,
                    pseudo_label_threshold=hp.pseudo_label_threshold,
                    pseudo_label_weight=hp.pseudo_label_weight,
                    device=self.device,
                    conditional=hp.conditional,
                    entropy_conditioning=hp.entropy_conditioning,
                )
        elif self.privacy is None:
            # fedavg: the target holds no labels; it keeps its own normalisation statistics current
            # (under privacy its GroupNorm keeps none).
            refresh_statistics(m.G, stream, hp.local_steps, self.device)
        return StepResult(metrics=metrics | self._privacy_metrics())

    def _evaluate(self, step: StepSpec) -> StepResult:
        m = self.models
        metrics: dict[str, float] = {}
        if self.config.algorithm == "fedalign":
            metrics |= discriminator_accuracy(
                m.G, m.D, self.data.val, self.own_label, self.device, condition_on=self._condition_on
            )
        if self.role == "source":
            acc, loss = task_accuracy(m.G, m.T, self.data.val, self.device)
            metrics |= {"source_val_acc": acc, "val_task_loss": loss}
        else:
            # The target's own predictions on its unlabelled training split: label-free scores that compare
            # two runs on the same target (docs: method, "When the adversarial term can add accuracy").
            metrics |= target_label_free(m.G, m.T, self.data.train, self.device)
            if len(self.data.test) > 0:
                # Reported only: no step and no model selection ever reads the target's labels. Without a
                # labelled evaluation split there is no target_acc at all (never a made-up one).
                acc, _ = task_accuracy(m.G, m.T, self.data.test, self.device)
                metrics["target_acc"] = acc
        return StepResult(metrics=metrics)

    def _publish(self, step: StepSpec) -> StepResult:
        """The target's final model: G and T with the shared *and* the node's local tensors."""
        return StepResult(uploads={"model": self.full_model()})

    def full_model(self) -> State:
        return full_model(self.models.G, self.models.T)


def full_model(G: nn.Module, T: nn.Module) -> State:
    """The target's published model: every tensor of G and T (shared and local), named ``G.<name>`` and
    ``T.<name>``, on the CPU."""
    return {
        f"{m}.{k}": v.detach().cpu().clone()
        for m, module in (("G", G), ("T", T))
        for k, v in module.state_dict().items()
    }
