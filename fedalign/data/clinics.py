"""The built-in clinics benchmark: one diagnosis, four clinics, tabular records with a known ground truth.

Every record is one patient: 24 measurements, and one of five diagnoses (the class). The ground truth is the
same at every clinic: a patient's latent state is ``z = mu[diagnosis] + age * v + e`` in six dimensions
(``e`` standard normal, ``age`` in [0, 1] a nuisance that moves every state alike), and the measurements
are twelve linear read-outs of ``z`` and twelve saturating ones (``tanh``), plus measurement noise. The four
domains are four clinics whose records differ in named, controlled ways, so that what an adaptation method
must undo is known:

=========== ========================================================================================
domain      how the clinic's records differ from the reference
=========== ========================================================================================
city        the reference: patients of age 0.2 to 0.6, measurement noise 0.1
rural       an older population (age 0.5 to 1.0: every latent state moved) and noisier measurements
units       another laboratory: each measurement on its own scale (0.3 to 3 times) and offset (+-2)
legacy      an old analyser: readings rounded to steps of 0.5, a fifth of them missing and filled with
            the clinic's mean of that measurement
=========== ========================================================================================

The diagnoses are equally frequent at every clinic (a shift of the features, not of the labels). Generated in
milliseconds from fixed seeds (no download, no cache), the same on every machine; every split is labelled,
and `target_acc` reads the test split only. A vector task: the ``mlp`` architecture with
``model.input_shape = [24]`` and ``model.num_classes = 5``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedalign.data.core import NodeData
from fedalign.data.splits import stratified_node_data

LATENT = 6
LINEAR, SATURATING = 12, 12
FEATURES = LINEAR + SATURATING
CLASSES: tuple[str, ...] = ("healthy", "infection", "metabolic", "cardiac", "renal")
SAMPLES_PER_CLASS = 500
# Part of every seed: bump it whenever the generator changes, so no result mixes two versions of a domain.
GENERATOR_VERSION = 1
MEAN_SPREAD = 1.2  # the diagnoses' latent means are drawn N(0, MEAN_SPREAD^2)
AGE_EFFECT = 2.0  # the length scale of the age direction v (drawn N(0, AGE_EFFECT^2 / LATENT) per component)


@dataclass(frozen=True)
class Clinic:
    """How one domain's records are made."""

    age: tuple[float, float] = (0.2, 0.6)  # the patients' ages, drawn uniformly
    noise: float = 0.1  # measurement noise (standard deviation)
    recalibrated: bool = False  # each measurement scaled by 0.3..3 (log-uniform) and offset by -2..2
    step: float = 0.0  # readings rounded to multiples of this; 0: not rounded
    missing: float = 0.0  # the share of readings missing, filled with the clinic's mean of the measurement


CLINICS: dict[str, Clinic] = {
    "city": Clinic(),
    "rural": Clinic(age=(0.5, 1.0), noise=0.25),
    "units": Clinic(recalibrated=True),
    "legacy": Clinic(step=0.5, missing=0.2),
}
CLINICS_DOMAINS: tuple[str, ...] = tuple(CLINICS)


@dataclass(frozen=True)
class GroundTruth:
    """What every clinic shares: the diagnoses' latent means, the age direction, the read-outs."""

    means: np.ndarray  # (classes, LATENT)
    age_direction: np.ndarray  # (LATENT,)
    linear: np.ndarray  # (LINEAR, LATENT)
    saturating: np.ndarray  # (SATURATING, LATENT)


def ground_truth() -> GroundTruth:
    """The task itself, from its own fixed seed (the same for every clinic)."""
    rng = np.random.default_rng([GENERATOR_VERSION, zlib.crc32(b"clinics")])
    scale = 1.0 / np.sqrt(LATENT)  # each read-out of a unit-variance state has about unit variance
    return GroundTruth(
        means=MEAN_SPREAD * rng.standard_normal((len(CLASSES), LATENT)),
        age_direction=AGE_EFFECT * scale * rng.standard_normal(LATENT),
        linear=scale * rng.standard_normal((LINEAR, LATENT)),
        saturating=scale * rng.standard_normal((SATURATING, LATENT)),
    )


def generate(domain: str, samples_per_class: int = SAMPLES_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): float32 records (N, 24) and int64 diagnoses (N,) of one clinic, from its fixed seed."""
    clinic, truth = CLINICS[domain], ground_truth()
    rng = np.random.default_rng([GENERATOR_VERSION, zlib.crc32(domain.encode())])
    y = np.repeat(np.arange(len(CLASSES)), samples_per_class)
    age = rng.uniform(*clinic.age, size=len(y))
    z = truth.means[y] + age[:, None] * truth.age_direction + rng.standard_normal((len(y), LATENT))
    x = np.concatenate([z @ truth.linear.T, np.tanh(z @ truth.saturating.T)], axis=1)
    x = x + clinic.noise * rng.standard_normal(x.shape)
    if clinic.recalibrated:
        scale = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=FEATURES))
        x = scale * x + rng.uniform(-2.0, 2.0, size=FEATURES)
    if clinic.step:
        x = np.round(x / clinic.step) * clinic.step
    if clinic.missing:
        gone = rng.random(x.shape) < clinic.missing
        mean = np.nanmean(np.where(gone, np.nan, x), axis=0)
        x = np.where(gone, mean, x)
    return x.astype(np.float32), y.astype(np.int64)


def load_clinics(spec: str, domain: str) -> NodeData:
    """A clinic as a node's data: class-stratified 70/15/15 splits, as every built-in data set."""
    return stratified_node_data(spec, *generate(domain), num_classes=len(CLASSES))
