"""The federation config: one schema for the TOML file and the API.

The defaults of `Hyperparameters` are the method's defaults (DESIGN.md section 1: the patented steps with
nothing added). Everything the method leaves open is a named setting here, so an experiment is a config,
never an edit to a training loop.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fedalign import presets
from fedalign.architecture_names import ARCHITECTURE_PATTERN, BUILTINS, ENTRY_POINT_GROUP
from fedalign.secagg_limits import (
    DEFAULT_THRESHOLD_FRACTION,
    MAX_THRESHOLD_FRACTION,
    MIN_THRESHOLD,
    MIN_THRESHOLD_FRACTION,
    threshold,
)
from fedalign.trackers import TRACKER_NAMES, TrackerName

Algorithm = Literal["fedalign", "fedavg", "source_only"]
Role = Literal["source", "target"]
Aggregator = Literal["server", "target"]
Weighting = Literal["samples", "uniform", "balanced"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# model.options as compact JSON: a factory's settings, not data.
MAX_OPTIONS_BYTES = 16_384
# A failed step offered again more often than this is a node that cannot run it.
MAX_STEP_RETRIES = 10
# A phase (or setup) that waits longer than a year is a typo; the bound also keeps every deadline a date
# the server can compute (1e308 seconds overflows one).
MAX_DEADLINE_S = 366 * 24 * 3600
# One input's shape: at most four axes, each at most this long, and this many values in all (a
# 3x4096x4096 image is 50 million), so that no setting asks a node or the server for petabytes.
MAX_INPUT_AXES = 4
MAX_INPUT_AXIS = 1_000_000
MAX_INPUT_VALUES = 2**26
# More sources than any deployment registers: a bound, not a limit anyone meets.
MAX_NODES = 10_000
# The names of fedalign.presets; listed as a choice (an enum) even while there is only one.
PresetName = Annotated[
    Literal[tuple(presets.PRESETS)],  # type: ignore[valid-type]
    WithJsonSchema({"type": "string", "enum": list(presets.PRESETS)}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hyperparameters(_Strict):
    """Local-step and aggregation settings. Defaults reproduce the method as patented; a preset
    (`fedalign.presets`) gives named values instead, and what is set explicitly overrides it."""

    preset: Annotated[
        PresetName | None,
        Field(
            description="Named hyperparameter values (fedalign.presets; 'digits_recipe': the recipe that "
            "works on the digits benchmark). A hyperparameter set explicitly beside it overrides the "
            "preset's value."
        ),
    ] = None
    batch_size: Annotated[int, Field(ge=1, le=4096, description="Minibatch size of every local step.")] = 64
    optimizer: Annotated[
        Literal["sgd", "adam", "adamw"],
        Field(
            description="Every local optimiser (of D, and of G and T): 'sgd' (with momentum), 'adam' "
            "(Kingma and Ba, 2015; weight_decay as an L2 term in the gradient) or 'adamw' (Loshchilov and "
            "Hutter, 2019; weight_decay decoupled). Its state (momentum, or Adam's moments and step "
            "count) stays on the node; lr_schedule applies to each."
        ),
    ] = "sgd"
    lr: Annotated[float, Field(gt=0, le=10, description="Learning rate of G and T.")] = 0.01
    momentum: Annotated[
        float,
        Field(
            ge=0,
            lt=1,
            description="SGD momentum of every local optimiser; its buffers stay on the node. Not used by "
            "'adam' and 'adamw' (their betas are adam_betas).",
        ),
    ] = 0.9
    adam_betas: Annotated[
        tuple[
            Annotated[float, Field(ge=0, lt=1)],
            Annotated[float, Field(ge=0, lt=1)],
        ],
        Field(
            description="Adam's and AdamW's coefficients of the running averages of the gradient and its "
            "square (torch's defaults)."
        ),
    ] = (0.9, 0.999)
    weight_decay: Annotated[
        float, Field(ge=0, le=1, description="Weight decay of every local optimiser (see optimizer).")
    ] = 5e-4
    lr_schedule: Annotated[
        Literal["constant", "dann"],
        Field(description="'dann': lr / (1 + 10 p)^0.75 over training progress p (Ganin et al.)."),
    ] = "constant"
    local_steps: Annotated[int, Field(ge=1, le=100_000, description="k_G: extractor steps per round.")] = 10
    disc_steps: Annotated[
        int, Field(ge=1, le=100_000, description="k_D: discriminator steps per exchange.")
    ] = 10
    disc_exchanges: Annotated[
        int, Field(ge=1, le=1000, description="Discriminator train-and-average exchanges per round.")
    ] = 1
    disc_lr: Annotated[float, Field(gt=0, le=10, description="Learning rate of D.")] = 0.01
    adv_weight: Annotated[
        float, Field(ge=0, le=100, description="lambda: weight of the adversarial loss.")
    ] = 1.0
    adv_schedule: Annotated[
        Literal["constant", "dann"],
        Field(description="'dann': lambda * (2 / (1 + exp(-10 p)) - 1), ramping up over training."),
    ] = "constant"
    adv_loss: Annotated[
        Literal["flip", "confusion"],
        Field(
            description="'flip': make D take a node's features for the other domain (the method); "
            "'confusion': push D's output to 1/2 for every feature, which cannot overshoot."
        ),
    ] = "flip"
    conditional: Annotated[
        bool,
        Field(
            description="Class-conditional discrimination (CDAN, Long et al., NeurIPS 2018): D sees the "
            "outer product of G's features and T's class probabilities instead of the features alone."
        ),
    ] = False
    entropy_conditioning: Annotated[
        bool,
        Field(
            description="Entropy conditioning (CDAN+E, Long et al., NeurIPS 2018): every domain loss (D's, "
            "and each extractor's adversarial term) weights an example by 1 + exp(-H(p)), H the entropy of "
            "T's prediction, scaled to mean 1 per batch, so that confidently classified examples count more."
        ),
    ] = False
    adv_sides: Annotated[
        Literal["both", "sources"],
        Field(
            description="Which extractors train against D: 'both' (the method), or 'sources' only "
            "(source-side alignment: the target's extractor trains on its own predictions' terms alone, if "
            "any)."
        ),
    ] = "both"
    target_warmup_rounds: Annotated[
        int,
        Field(
            ge=0,
            le=100_000,
            description="In rounds 1..N the target's adapted G stays out of G_agg (it still trains from "
            "G_agg each round), so that its early, unreliable steps do not move the shared extractor.",
        ),
    ] = 0
    disc_weighting: Annotated[
        Weighting,
        Field(
            description="How the copies of D are averaged: 'balanced' (the target's copy carries half the "
            "weight, the sources share the other half by sample count), 'samples' (by sample count) or "
            "'uniform'."
        ),
    ] = "balanced"
    extractor_weighting: Annotated[
        Weighting,
        Field(description="How the copies of G (and T) are averaged: 'samples', 'uniform' or 'balanced'."),
    ] = "samples"
    source_extractor: Annotated[
        Literal["keep", "restart"],
        Field(
            description="'keep': sources keep their own G and T between rounds (the method); "
            "'restart': every round starts from the aggregates, as in FedAvg."
        ),
    ] = "keep"
    target_extractor: Annotated[
        Literal["average", "local", "none"],
        Field(
            description="'average': the target's adapted G enters G_agg (the method); 'local': the "
            "target keeps its adapted G and G_agg averages the sources; 'none': the target does not "
            "train G (the sources' adversarial term does all the aligning)."
        ),
    ] = "average"
    server_step: Annotated[
        Literal["none", "target_share"],
        Field(
            description="'target_share': G_agg steps past the average of the copies of G, G_prev + eta "
            "(average - G_prev) with eta = 1 / (1 - the target's weight in that average), so that averaging "
            "in the target's copy, which takes no labelled step, does not shrink the sources' step (it "
            "reaches G_agg at full size, as in FedAvg); where the target's copy is not in the average, eta "
            "is 1. Needs sources that restart from the aggregates. 'none': G_agg is the average."
        ),
    ] = "none"
    local_params: Annotated[
        Literal["bn_stats", "bn", "none"],
        Field(description="What stays on the node: BatchNorm statistics, all of BatchNorm, or nothing."),
    ] = "bn_stats"
    pseudo_label_threshold: Annotated[
        float,
        Field(
            ge=0, le=1, description="Target pseudo-labels above this confidence train G; 0 turns them off."
        ),
    ] = 0.0
    pseudo_label_weight: Annotated[
        float,
        Field(
            ge=0, le=100, description="Weight of the target's pseudo-label loss, when pseudo-labels are on."
        ),
    ] = 1.0
    entropy_weight: Annotated[
        float, Field(ge=0, le=100, description="Weight of target entropy minimisation; 0 is off.")
    ] = 0.0
    diversity_weight: Annotated[
        float,
        Field(
            ge=0,
            le=100,
            description="Weight of the target's batch-marginal entropy, maximised (with entropy_weight: "
            "information maximisation); 0 is off.",
        ),
    ] = 0.0
    eval_every: Annotated[int, Field(ge=1, le=100_000, description="Evaluate every this many rounds.")] = 1

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        # The preset's values under the explicit ones; the validated model keeps the preset's name.
        return presets.expand(data) if isinstance(data, Mapping) else data

    @property
    def target_terms(self) -> bool:
        """Whether the target trains on its own predictions (entropy, diversity or pseudo-labels)."""
        return self.entropy_weight > 0 or self.diversity_weight > 0 or self.pseudo_label_threshold > 0


class ModelOptions(_Strict):
    """The networks' shapes: G (the feature extractor), T (the task model) and D (the discriminator)."""

    num_classes: Annotated[int, Field(ge=2, le=10_000, description="Classes the task model T predicts.")] = 10
    input_shape: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_AXIS)], ...],
        Field(
            min_length=1,
            max_length=MAX_INPUT_AXES,
            description="Shape of one input: channels, height, width for images; one length for vectors. "
            f"At most {MAX_INPUT_AXES} axes of at most {MAX_INPUT_AXIS} each, {MAX_INPUT_VALUES} values "
            "in all.",
        ),
    ] = (3, 28, 28)
    hidden: Annotated[
        int, Field(ge=1, le=65_536, description="Width of the hidden layers (the mlp's, and D's).")
    ] = 128
    normalization: Annotated[
        Literal["batch", "group"],
        Field(
            description="G's normalisation layers: 'batch' (BatchNorm, the architectures of the literature) "
            "or 'group' (GroupNorm, each example on its own; what differential privacy needs)."
        ),
    ] = "batch"
    options: Annotated[
        dict[str, JsonValue],
        Field(
            description="The architecture's own settings, passed to its factory as context.options "
            f"(JSON scalars, lists and tables, at most {MAX_OPTIONS_BYTES} bytes as JSON). The built-in "
            "architectures take none."
        ),
    ] = {}  # pydantic copies the default for every instance
    init_checkpoint: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=4096,
            description="A safetensors file of pretrained tensors named 'G.<name>' (and optionally "
            "'T.<name>', 'D.<name>') to start from, on the machine that builds the initial parameters "
            "(`fedalign init-model`, or the simulator); a relative path is relative to the config file. "
            "Each model it names must be complete; a model it does not name keeps its seeded "
            "initialisation. `fedalign convert-checkpoint` makes one from a torchvision or timm state dict.",
        ),
    ] = None
    precision: Annotated[
        Literal["bf16", "fp32"],
        Field(
            description="'bf16': local steps on a CUDA device run under bfloat16 autocast (on a CPU they "
            "run in float32); 'fp32': never autocast, for models that need float32 throughout."
        ),
    ] = "bf16"

    @field_validator("input_shape")
    @classmethod
    def _bounded_input(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        values = math.prod(shape)
        if values > MAX_INPUT_VALUES:
            raise ValueError(
                f"model.input_shape {list(shape)} holds {values} values per input, more than "
                f"{MAX_INPUT_VALUES}: give the shape of one example (channels, height, width, or a length)"
            )
        return shape

    @field_validator("options")
    @classmethod
    def _bounded_options(cls, options: dict[str, JsonValue]) -> dict[str, JsonValue]:
        size = len(json.dumps(options, separators=(",", ":")).encode())
        if size > MAX_OPTIONS_BYTES:
            raise ValueError(
                f"model.options takes {size} bytes as JSON, more than {MAX_OPTIONS_BYTES}: the options are "
                "an architecture's settings; pass large data through files the factory reads"
            )
        return options


class Preprocessing(_Strict):
    """How image samples are prepared, the same on every node and in the exported model (fedalign.data).

    Applied by the built-in image formats (``imagefolder:``, ``npz:`` images, and ``digits:`` when set) to
    every split: images are resized to ``resize``, scaled to [0, 1], then normalised per channel,
    (x - mean) / std. ``augment`` changes training batches only, drawn from the step's seed. A dataset
    plug-in receives these settings in its `fedalign.data.LoaderContext` and applies ``resize``, ``mean``
    and ``std`` itself (``LoaderContext.preprocess`` does it); ``augment`` is applied to its training
    batches like any other's. Vector data takes no preprocessing.
    """

    resize: Annotated[
        tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None,
        Field(
            description="[height, width] every image is resized to (bilinear, stretched, not cropped); "
            "default: images keep their size (imagefolder: 28x28 unless its spec says ?size=)."
        ),
    ] = None
    mean: Annotated[
        tuple[Annotated[float, Field(ge=-1e3, le=1e3)], ...] | None,
        Field(
            min_length=1,
            max_length=3,
            description="Per-channel mean subtracted from images in [0, 1] (one value, or one per "
            "channel); set with std, e.g. ImageNet's [0.485, 0.456, 0.406]. Default: no normalisation.",
        ),
    ] = None
    std: Annotated[
        tuple[Annotated[float, Field(gt=0, le=1e3)], ...] | None,
        Field(
            min_length=1,
            max_length=3,
            description="Per-channel standard deviation images are divided by after the mean (one value, "
            "or one per channel), e.g. ImageNet's [0.229, 0.224, 0.225].",
        ),
    ] = None
    augment: Annotated[
        Literal["none", "flip", "crop_flip"],
        Field(
            description="Augmentation of training batches (never of evaluation): 'flip' mirrors each "
            "image left-right with probability 1/2; 'crop_flip' also shifts it, a random crop of the "
            "image padded by an eighth of its size on every side (reflected). Drawn from the step's seed, "
            "so a run repeats exactly."
        ),
    ] = "none"

    @model_validator(mode="after")
    def _check_normalisation(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("preprocessing.mean and preprocessing.std go together: set both or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"preprocessing.mean has {len(self.mean)} values and preprocessing.std {len(self.std)}; "
                "give both one value per channel (or one value each for every channel)"
            )
        return self

    @property
    def transforms(self) -> bool:
        """Whether samples are resized or normalised (augmentation aside)."""
        return self.resize is not None or self.mean is not None


class Privacy(_Strict):
    """Differential privacy of one training example of a node (DP-SGD in its local steps; fedalign.privacy).

    Every local optimiser step that reads a node's data (training D on its features, the sources' and the
    target's adaptation) clips each example's gradient to `max_grad_norm` and adds Gaussian noise of
    standard deviation `noise_multiplier * max_grad_norm`, on a Poisson sample of the node's training set
    (each example in with probability batch_size / n_train). Opacus's RDP accountant composes every such
    step of every round into epsilon at `delta`, per node. Metrics a node reports are not privatised.
    """

    noise_multiplier: Annotated[
        float,
        Field(ge=0, le=1000, description="sigma: noise std over the clip norm; 0 turns privacy off."),
    ] = 0.0
    max_grad_norm: Annotated[
        float, Field(gt=0, le=1e6, description="C: every example's gradient is clipped to this L2 norm.")
    ] = 1.0
    delta: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="The delta epsilon is reported at; keep it below 1 / n_train of every node (a "
            "node with 1 / delta training examples or more gets a warning when the run starts).",
        ),
    ] = 1e-5
    epsilon_budget: Annotated[
        float | None,
        Field(gt=0, le=1e6, description="Epsilon (at delta) a node may spend; default: no budget."),
    ] = None
    budget_action: Annotated[
        Literal["stop", "warn"],
        Field(
            description="'stop': the run finishes before a round that would take a node past the budget; "
            "'warn': it records a warning once and goes on."
        ),
    ] = "stop"
    randomness: Annotated[
        Literal["secret", "seeded"],
        Field(
            description="'secret': a node draws its noise and its Poisson batches from the operating "
            "system's randomness (not reproducible); 'seeded': from the step's seed, so a run repeats "
            "exactly, but whoever knows the federation's seed (the server, every node) can recompute the "
            "noise and the batches, and the guarantee holds only against those who do not."
        ),
    ] = "secret"

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


class NodeSpec(_Strict):
    """One node of the federation (in a TOML file; the API registers nodes one by one instead)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Unique within the federation.")]
    role: Annotated[
        Role,
        Field(description="'source' (labelled data) or 'target' (unlabelled; exactly one per federation)."),
    ]
    dataset: Annotated[
        str,
        Field(min_length=1, max_length=1024, description="Dataset spec, resolved on the node's own machine."),
    ]


class FederationConfig(_Strict):
    """A federation: who takes part, which models, for how many rounds, with which settings."""

    name: Annotated[str, Field(min_length=1, max_length=200, description="A name for people to read.")] = (
        "federation"
    )
    algorithm: Annotated[
        Algorithm,
        Field(
            description="'fedalign' (adversarial alignment); baselines 'fedavg' (FedAvg with BatchNorm "
            "statistics kept on each node, no discriminator) and 'source_only' (FedAvg over the sources, "
            "every tensor shared; the target applies the sources' model)."
        ),
    ] = "fedalign"
    architecture: Annotated[
        str,
        Field(
            max_length=300,
            pattern=ARCHITECTURE_PATTERN,
            description="The models G, T and D: a built-in ('digits_cnn', the LeNet-style network of digit "
            "adaptation; 'mlp', for vectors; 'resnet18', 'resnet50', 'mobilenet_v3_small', torchvision "
            "backbones for images of 32x32 and up), an import path 'package.module:factory' of a factory "
            f"installed where models are built, or a name an installed package registers in the "
            f"entry-point group '{ENTRY_POINT_GROUP}' (docs: Bring your own model).",
            # The built-ins, offered as suggestions by the dashboard's form.
            examples=list(BUILTINS),
        ),
    ] = "digits_cnn"
    model: ModelOptions = ModelOptions()
    rounds: Annotated[int, Field(ge=1, le=100_000, description="Rounds of training.")] = 10
    seed: Annotated[
        int,
        Field(
            ge=0,
            le=2**31 - 1,
            description="Every random choice (initialisation, batch order) derives from it, with the node's "
            "name, the round and the phase: a served run repeats a simulated one exactly.",
        ),
    ] = 0
    aggregator: Annotated[
        Aggregator,
        Field(
            description="Who computes the averages: 'server' (a third party), or 'target' (the target "
            "node). Both give the same numbers."
        ),
    ] = "server"
    min_sources: Annotated[
        int | None,
        Field(ge=1, le=MAX_NODES, description="Sources a phase needs at its deadline; default: all."),
    ] = None
    phase_deadline_s: Annotated[
        float | None,
        Field(
            gt=0,
            le=MAX_DEADLINE_S,
            description="Seconds a phase waits for its nodes before the quorum rule applies; "
            "default: wait indefinitely.",
        ),
    ] = None
    setup_deadline_s: Annotated[
        float | None,
        Field(
            gt=0,
            le=MAX_DEADLINE_S,
            description="Seconds the setup phase (nodes joining) waits before the quorum rule applies: a "
            "source that has not finished setup by then takes no part in the run. Default: "
            "phase_deadline_s (joining often takes longer than a phase: set it apart).",
        ),
    ] = None
    max_step_retries: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_STEP_RETRIES,
            description="How many times a step a node reports as failed with 'retryable' (out of memory, a "
            "file that could not be read) is offered to it again before the phase goes on without it under "
            "the quorum rule (min_sources; the run stalls with the node's reason when it is the target). A "
            "failure that is not retryable applies the quorum rule at once.",
        ),
    ] = 2
    publish_model: Annotated[
        bool,
        Field(description="The target uploads its final model (shared and local tensors) for download."),
    ] = True
    checkpoint_every: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description="The target also uploads its model every this many rounds (a checkpoint: evaluated "
            "that round, downloadable on its own); of all checkpoints, the one with the best source "
            "validation accuracy is marked selected, a choice made without target labels. Needs "
            "publish_model. Unset: only the final model.",
        ),
    ] = None
    secure_aggregation: Annotated[
        bool,
        Field(
            description="Secure aggregation (Bonawitz et al., CCS 2017): nodes upload their parameters "
            "masked, so whoever aggregates (the server or the target node) learns only the weighted "
            "average of each phase's uploads, never one node's parameters. Protects against an "
            "honest-but-curious aggregator that colludes with no node. Needs at least two sources in "
            "every average (two source nodes, min_sources >= 2) and no shared integer tensor (so not "
            "local_params 'none', nor algorithm 'source_only': both share BatchNorm's batch counters); "
            "parameter values must stay within +-2^20."
        ),
    ] = False
    secure_aggregation_threshold: Annotated[
        float | None,
        Field(
            ge=MIN_THRESHOLD_FRACTION,
            lt=MAX_THRESHOLD_FRACTION,
            description="With secure_aggregation: the fraction of a masked phase's nodes that must answer "
            "to unmask its sum, as threshold t = the fewest nodes that are more than this fraction (at "
            f"least {MIN_THRESHOLD}). Every node hands the others threshold shares of its masking seeds, "
            "so any t survivors unmask the phase even when a node vanishes after uploading; fewer than t "
            "colluding nodes learn nothing from their shares. At least 0.5 (a majority, so two groups told "
            "different dropout lists cannot both reach t), below 1 (t = every node tolerates no loss). "
            f"Unset: {DEFAULT_THRESHOLD_FRACTION}, a strict majority (2 of 3, 3 of 4, 3 of 5).",
        ),
    ] = None
    trackers: Annotated[
        list[TrackerName] | None,
        Field(
            description="Experiment trackers (mlflow, tensorboard) that this federation's per-round metrics "
            "and config stream to, among those configured where it runs (the deployment's "
            "FEDALIGN_MLFLOW_TRACKING_URI and FEDALIGN_TENSORBOARD_DIR, or `fedalign simulate --mlflow "
            "--tensorboard`); unset: every configured one; []: none.",
            max_length=len(TRACKER_NAMES),
        ),
    ] = None
    privacy: Privacy = Privacy()
    preprocessing: Preprocessing = Preprocessing()
    hyperparameters: Hyperparameters = Hyperparameters()
    nodes: list[NodeSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_privacy(self) -> FederationConfig:
        if not self.privacy.enabled:
            if self.privacy.epsilon_budget is not None:
                raise ValueError(
                    "privacy.epsilon_budget is set but privacy.noise_multiplier is 0, which turns "
                    "differential privacy off (epsilon is unbounded); set a noise multiplier above 0"
                )
            return self
        if self.model.normalization != "group":
            raise ValueError(
                "differential privacy needs model.normalization 'group': BatchNorm normalises each example "
                "with its batch's statistics, so one example's gradient depends on the others and clipping "
                "it per example bounds nothing (and its running statistics record the node's data "
                "without noise)"
            )
        if self.hyperparameters.diversity_weight > 0:
            raise ValueError(
                "differential privacy cannot be used with diversity_weight > 0: the batch-marginal entropy "
                "couples the examples of a batch, so clipping each example's gradient bounds nothing; "
                "set diversity_weight to 0"
            )
        if self.hyperparameters.entropy_conditioning:
            raise ValueError(
                "differential privacy cannot be used with entropy_conditioning: its weights are scaled over "
                "the batch, which couples the examples of a batch, so clipping each example's gradient "
                "bounds nothing; set entropy_conditioning to false"
            )
        from fedalign.privacy_layers import (
            unsupported_layers,  # torch and Opacus load only when privacy is on
        )

        problems = unsupported_layers(self)
        if problems:
            raise ValueError(
                f"differential privacy cannot be used with architecture {self.architecture!r}: Opacus "
                f"cannot compute per-example gradients of it ({'; '.join(problems)})"
            )
        return self

    @model_validator(mode="after")
    def _check_server_step(self) -> FederationConfig:
        hp = self.hyperparameters
        if hp.server_step == "none":
            return self
        if self.algorithm == "fedalign" and hp.source_extractor == "keep":
            raise ValueError(
                "hyperparameters.server_step 'target_share' needs source_extractor 'restart': the step is "
                "taken from the G_agg every copy of G started from, and sources that keep their own G do not "
                "start from it"
            )
        return self

    @model_validator(mode="after")
    def _check_preprocessing(self) -> FederationConfig:
        p, shape = self.preprocessing, tuple(self.model.input_shape)
        images = len(shape) == 3
        if not images and (p.transforms or p.augment != "none"):
            raise ValueError(
                f"preprocessing applies to images, but model.input_shape {list(shape)} is a vector; "
                "leave [preprocessing] unset for vector data"
            )
        if p.resize is not None and shape[1:] != tuple(p.resize):
            raise ValueError(
                f"preprocessing.resize is {list(p.resize)} but model.input_shape is {list(shape)}; the "
                f"model takes the resized images: set model.input_shape to {[shape[0], *p.resize]}"
            )
        if p.mean is not None and len(p.mean) not in (1, shape[0]):
            raise ValueError(
                f"preprocessing.mean and std have {len(p.mean)} values for images of {shape[0]} "
                "channel(s); give one value per channel, or one for all"
            )
        return self

    @model_validator(mode="after")
    def _check_checkpoints(self) -> FederationConfig:
        if self.checkpoint_every is not None and not self.publish_model:
            raise ValueError(
                "checkpoint_every needs publish_model = true: a checkpoint is the target's model, uploaded"
            )
        return self

    @model_validator(mode="after")
    def _check_secure_aggregation(self) -> FederationConfig:
        if not self.secure_aggregation:
            if self.secure_aggregation_threshold is not None:
                raise ValueError(
                    "secure_aggregation_threshold is set but secure_aggregation is off: set "
                    "secure_aggregation = true, or leave the threshold unset"
                )
            return self
        # The policy protocol.effective_local_policy applies; under "none" every architecture shares
        # BatchNorm's integer num_batches_tracked, which is combined by a maximum in the clear and cannot
        # be masked (secagg.masked_manifest; tests/test_simulate_secagg.py checks this against the
        # manifests of every architecture).
        if self.algorithm == "source_only":
            raise ValueError(
                "secure_aggregation cannot be used with algorithm 'source_only': it shares BatchNorm's "
                "integer batch counters, which are combined by a maximum and cannot be masked"
            )
        if self.hyperparameters.local_params == "none":
            raise ValueError(
                "secure_aggregation cannot be used with local_params 'none': it shares BatchNorm's "
                "integer batch counters, which are combined by a maximum and cannot be masked; "
                "keep them local with 'bn_stats' or 'bn'"
            )
        # The sources' T (and their G, when the target's stays out of G_agg) is averaged over the sources
        # alone: over one source, the "average" would be that source's own upload.
        if self.min_sources is not None and self.min_sources < 2:
            raise ValueError(
                f"secure_aggregation needs min_sources of at least 2 (it is {self.min_sources}): the "
                "sources' models are averaged over the sources alone, and an average over one source is "
                "its own upload"
            )
        return self

    @model_validator(mode="after")
    def _check_nodes(self) -> FederationConfig:
        if not self.nodes:
            return self  # the API registers nodes one by one after creation
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        targets = [n.name for n in self.nodes if n.role == "target"]
        if len(targets) != 1:
            raise ValueError(f"a federation has exactly one target node, got {len(targets)}")
        sources = len(self.nodes) - 1
        if sources < 1:
            raise ValueError("a federation needs at least one source node")
        if self.min_sources is not None and self.min_sources > sources:
            raise ValueError(f"min_sources is {self.min_sources} but there are only {sources} sources")
        if self.secure_aggregation and sources < 2:
            raise ValueError(
                f"secure_aggregation needs at least two source nodes, got {sources}: the sources' models "
                "are averaged over the sources alone, and an average over one source is its own upload"
            )
        return self

    @property
    def target(self) -> NodeSpec:
        return next(n for n in self.nodes if n.role == "target")

    @property
    def sources(self) -> list[NodeSpec]:
        return sorted((n for n in self.nodes if n.role == "source"), key=lambda n: n.name)

    def secure_threshold(self, roster_size: int) -> int:
        """Secure aggregation's threshold t for a masked phase of ``roster_size`` nodes."""
        fraction = self.secure_aggregation_threshold
        return threshold(roster_size, DEFAULT_THRESHOLD_FRACTION if fraction is None else fraction)


class ConfigError(ValueError):
    """A config file that cannot be used, with every problem listed."""


def set_setting(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to a config's raw tables, in place:
    ``model.normalization=group``, ``hyperparameters.lr=0.03``. The value is read as a TOML value (``0.1``,
    ``true``, ``"text"``, ``[1, 2]``), and taken as a string where it is none (``group``); missing tables are
    created. Whether the key exists and the value fits is the schema's to say, when the config is
    validated."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(
            f"--set {assignment!r}: expected key=value, the key dotted (model.normalization=group)"
        )
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    table = raw
    for depth, part in enumerate(parts[:-1]):
        inner = table.setdefault(part, {})
        if not isinstance(inner, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"--set {assignment!r}: {where} is not a table, so it has no {parts[depth + 1]!r}"
            )
        table = inner
    table[parts[-1]] = value


def load_config(path: Path, settings: Sequence[str] = ()) -> FederationConfig:
    """A config file, validated, with ``settings`` (``dotted.key=value``, `set_setting`) applied first."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    for assignment in settings:
        set_setting(raw, assignment)
    # A relative init_checkpoint names a file beside the config, wherever the command runs.
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("init_checkpoint"), str):
        checkpoint = Path(model["init_checkpoint"]).expanduser()
        model["init_checkpoint"] = str(checkpoint if checkpoint.is_absolute() else path.parent / checkpoint)
    # TOML reads more naturally with [[nodes]] tables; pydantic takes the same structure.
    try:
        return FederationConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
