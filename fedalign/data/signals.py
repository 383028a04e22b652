"""The built-in signals benchmark: one task, four sensors, generated with a known ground truth.

Every sample is a window of 64 readings of one of six waveforms (the class): sine, square, triangle,
sawtooth, pulse train, and a rising chirp, each with a random frequency, phase and amplitude. The four
domains are four sensors that record the same waveforms differently, each shift named and
controlled, so that what an adaptation method must undo is known:

=========== ========================================================================================
domain      how the sensor records a waveform
=========== ========================================================================================
lab         the reference: 1.5 to 4 cycles per window, little white noise
field       a slow baseline drift (up to the waveform's amplitude) and a gain that wanders along the window
fast        sampled at a lower rate: 3 to 7 cycles per window (the same waveforms, compressed in time)
smooth      a slow sensor: an exponential low-pass filter that rounds every edge, coarse quantisation
=========== ========================================================================================

Generated in milliseconds from fixed seeds (no download, no cache), the same on every machine: the
class labels are the generator's, so every split is labelled; `target_acc` reads the test split only.
A vector task: the ``mlp`` architecture with ``model.input_shape = [64]`` and ``model.num_classes = 6``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedalign.data.core import NodeData
from fedalign.data.splits import stratified_node_data

LENGTH = 64
CLASSES: tuple[str, ...] = ("sine", "square", "triangle", "sawtooth", "pulse", "chirp")
SAMPLES_PER_CLASS = 500
# Part of the seed: bump it whenever a generator changes, so no result mixes two versions of a domain.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Sensor:
    """How one domain records a waveform."""

    cycles: tuple[float, float] = (1.5, 4.0)  # cycles per window, drawn uniformly
    noise: float = 0.05  # white noise, times the amplitude
    drift: float = 0.0  # amplitude of a slow baseline wander (0.1 to 0.5 cycles per window)
    gain_spread: float = 0.0  # the gain varies along the window within 1 +- this
    lowpass: float = 0.0  # exponential filter: y_t = a * y_(t-1) + (1 - a) * x_t
    levels: int = 0  # quantised to this many levels over [-2, 2]; 0: not quantised


SENSORS: dict[str, Sensor] = {
    "lab": Sensor(),
    "field": Sensor(noise=0.1, drift=1.0, gain_spread=0.5),
    "fast": Sensor(cycles=(3.0, 7.0)),
    "smooth": Sensor(noise=0.1, lowpass=0.6, levels=12),
}
SIGNALS_DOMAINS: tuple[str, ...] = tuple(SENSORS)


def _waveform(kind: int, phase: np.ndarray) -> np.ndarray:
    """The clean waveform of class `kind` at phases (in cycles), values in [-1, 1]."""
    frac = phase % 1.0
    if CLASSES[kind] == "sine":
        return np.sin(2 * np.pi * phase)
    if CLASSES[kind] == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    if CLASSES[kind] == "triangle":
        return 4.0 * np.abs(frac - 0.5) - 1.0
    if CLASSES[kind] == "sawtooth":
        return 2.0 * frac - 1.0
    if CLASSES[kind] == "pulse":
        return np.where(frac < 0.2, 1.0, -0.25)
    # chirp: the frequency rises along the window (phase grows quadratically)
    return np.sin(2 * np.pi * phase * (0.5 + phase / max(float(phase.max()), 1e-6)))


def generate(domain: str, samples_per_class: int = SAMPLES_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): float32 windows (N, 64) and int64 classes (N,) of one domain, from its fixed seed."""
    sensor = SENSORS[domain]
    rng = np.random.default_rng([GENERATOR_VERSION, zlib.crc32(domain.encode())])
    t = np.arange(LENGTH) / LENGTH
    xs, ys = [], []
    for kind in range(len(CLASSES)):
        for _ in range(samples_per_class):
            cycles = rng.uniform(*sensor.cycles)
            phase = cycles * t + rng.uniform(0.0, 1.0)
            amplitude = rng.uniform(0.6, 1.4)
            x = amplitude * _waveform(kind, phase - phase[0] if CLASSES[kind] == "chirp" else phase)
            if sensor.gain_spread:
                wander = np.sin(2 * np.pi * (rng.uniform(0.1, 0.5) * t + rng.uniform()))
                x = x * (1.0 + sensor.gain_spread * wander)
            if sensor.drift:
                x = x + sensor.drift * rng.uniform(0.3, 1.0) * np.sin(
                    2 * np.pi * (rng.uniform(0.1, 0.5) * t + rng.uniform())
                )
            x = x + sensor.noise * amplitude * rng.standard_normal(LENGTH)
            if sensor.lowpass:
                y = np.empty_like(x)
                y[0] = x[0]
                for i in range(1, LENGTH):
                    y[i] = sensor.lowpass * y[i - 1] + (1.0 - sensor.lowpass) * x[i]
                x = y
            if sensor.levels:
                step = 4.0 / sensor.levels
                x = np.clip(np.round(x / step) * step, -2.0, 2.0)
            xs.append(x)
            ys.append(kind)
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64)


def load_signals(spec: str, domain: str) -> NodeData:
    """A signals domain as a node's data: class-stratified 70/15/15 splits, as every built-in data set."""
    return stratified_node_data(spec, *generate(domain), num_classes=len(CLASSES))
