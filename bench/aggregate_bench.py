"""Benchmark: our streaming aggregation against loading everything first, and against Flower's aggregate.

Run with the project's interpreter::

    .venv/bin/python -m bench.aggregate_bench --json bench/out/aggregate.json

It writes N inputs of a ~25M-parameter float32 model (160 tensors) as safetensors files, then measures
each method in its own subprocess, so that each peak resident set size (``ru_maxrss``) belongs to one
method alone:

- ours: ``fedalign.aggregate.StreamingAverage`` reading the files (memory-mapped, one at a time);
- naive: read every file into memory, then average tensor by tensor with torch;
- Flower: ``flwr.server.strategy.aggregate.aggregate`` on lists of numpy arrays. Flower pins an older
  FastAPI than the project, so it runs from its own virtualenv (``bench/.venv-flwr``, created on first
  use). Only the aggregate call is timed; loading the inputs into numpy is reported apart.

Methods run interleaved over several rounds, so that load from other processes on a shared machine falls
on all of them alike; the main rows use one thread (numpy's element-wise ops are single-threaded, and
``fedalign.aggregate.FOLD_THREADS`` explains why ours are), and a row with torch's two threads shows why.
The machine's memory bandwidth is measured in the same run, and so is whether the inputs sit in the
page cache (they do, having just been written; a cold-cache row drops them first with
``posix_fadvise(DONTNEED)`` to show what a disk read costs). This module (and `bench.harness`) imports only
the standard library at the top, because its Flower worker runs under the other virtualenv.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import REPO, stamped, write_json

FLWR_VENV = REPO / "bench" / ".venv-flwr"
FLWR_REQUIREMENTS = ["flwr>=1.8,<2", "numpy", "safetensors"]

# The model: LAYERS square linear layers (weight and bias) whose widths cycle through WIDTHS, about 25.4M
# float32 parameters in 160 tensors, a mix of sizes like a real network's.
LAYERS = 80
WIDTHS = (320, 512, 640, 704)
INPUTS = 10
SEED = 20240601
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# Helpers that every worker may use (standard library only)


def model_layout(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    layout: list[tuple[str, tuple[int, ...]]] = []
    for i in range(layers):
        width = WIDTHS[i % len(WIDTHS)]
        layout += [(f"layer{i:03d}.weight", (width, width)), (f"layer{i:03d}.bias", (width,))]
    return layout


def input_paths(directory: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(directory.glob("node*.safetensors"))}


def sample_counts(nodes: list[str]) -> dict[str, int]:
    """Deterministic, unequal sample counts, so weighting by samples is not uniform in disguise."""
    return {node: 1000 + 137 * i for i, node in enumerate(sorted(nodes))}


def rss_bytes() -> int:
    """The current resident set size (the baseline a method's peak is measured against)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def resident_fraction(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache, asked of the kernel with mincore(2).

    Mapping a file without touching it reads nothing, so asking does not change the answer.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            pages = (size + page - 1) // page
            vector = (ctypes.c_ubyte * pages)()
            try:
                if libc.mincore(addr, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            finally:
                libc.munmap(addr, size)
            flags = bytes(vector)
            resident += pages - flags.count(0)
            total += pages
        finally:
            os.close(fd)
    return resident / total if total else 0.0


def drop_from_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to forget the files' clean pages, so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(run: Callable[[], Any], repeats: int, before: Callable[[], None] | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        del result
    return times


def report(payload: dict[str, Any]) -> None:
    payload["loadavg_at_end"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(payload), flush=True)


# ---------------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one RESULT line


def worker_generate(directory: Path, layers: int, inputs: int) -> None:
    import torch

    from fedalign.params import save_file

    layout = model_layout(layers)
    for index in range(inputs):
        generator = torch.Generator().manual_seed(SEED + index)
        state = {name: torch.randn(shape, generator=generator) for name, shape in layout}
        save_file(state, directory / f"node{index:02d}.safetensors")
    report({"params": sum(_numel(shape) for _, shape in layout), "tensors": len(layout)})


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def worker_bandwidth(nbytes: int, repeats: int) -> None:
    """Memory bandwidth as large copies (STREAM 'Copy', read + write bytes counted), and torch's add_.

    numpy copies with one thread, torch with two; the higher is the machine's bandwidth here. add_ of
    in-memory tensors is what a fold does without any I/O: the ceiling of any fold's rate.
    """
    import numpy as np
    import torch

    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    numpy_copy = statistics.median(timed(lambda: np.copyto(dst, src), repeats))
    acc, addend = torch.from_numpy(dst), torch.from_numpy(src)
    figures: dict[str, Any] = {"copy_bytes": src.nbytes, "numpy_copy_gbs": 2 * src.nbytes / numpy_copy / 1e9}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        copy = statistics.median(timed(lambda: acc.copy_(addend), repeats))
        add = statistics.median(timed(lambda: acc.add_(addend, alpha=0.5), repeats))
        figures[f"torch_copy_gbs_{threads}t"] = 2 * src.nbytes / copy / 1e9
        figures[f"add_input_gbs_{threads}t"] = src.nbytes / add / 1e9
    figures["bandwidth_gbs"] = max(figures["numpy_copy_gbs"], figures["torch_copy_gbs_2t"])
    report(figures)


def _checksums(tensors: dict[str, Any]) -> dict[str, float]:
    return {name: float(t.double().sum()) for name, t in tensors.items()}


def worker_ours(directory: Path, repeats: int, threads: int | None, cold: bool) -> None:
    import torch

    from fedalign.aggregate import FOLD_THREADS, StreamingAverage
    from fedalign.manifest import Manifest, TensorSpec
    from fedalign.params import read_header
    from fedalign.weighting import Contribution, weights

    paths = input_paths(directory)
    header = read_header(next(iter(paths.values())))
    manifest = Manifest("bench", tuple(TensorSpec(n, e.shape, e.dtype) for n, e in header.items()))
    contributions = [Contribution(n, "source", s) for n, s in sample_counts(list(paths)).items()]
    node_weights = weights("samples", contributions)

    def run() -> dict[str, torch.Tensor]:
        streaming = StreamingAverage(manifest, node_weights, **({"threads": threads} if threads else {}))
        for node in reversed(list(paths)):  # the worst arrival order: every early one waits
            streaming.offer(node, paths[node])
        return streaming.result()

    drop = (lambda: drop_from_page_cache(list(paths.values()))) if cold else None
    if drop:
        drop()
    residency = resident_fraction(list(paths.values()))
    baseline = rss_bytes()
    times = timed(run, repeats, before=drop)
    peak = peak_rss_bytes()
    report(
        {
            "times": times,
            "baseline_rss": baseline,
            "peak_rss": peak,
            "resident_before": residency,
            "torch_threads": threads or FOLD_THREADS,
            "checksums": _checksums(run()),
        }
    )


def worker_naive(directory: Path, repeats: int) -> None:
    """Read every input into memory, then average: what a server holding the uploads in RAM does."""
    import safetensors.torch
    import torch

    torch.set_num_threads(1)  # like ours and numpy: see FOLD_THREADS in fedalign/aggregate.py
    paths = input_paths(directory)
    counts = sample_counts(list(paths))
    total = sum(counts.values())

    def load() -> dict[str, dict[str, torch.Tensor]]:
        return {node: safetensors.torch.load(path.read_bytes()) for node, path in paths.items()}

    def average(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        result = {}
        for name in next(iter(states.values())):
            acc = torch.zeros_like(states[next(iter(states))][name])
            for node, state in states.items():
                acc += (counts[node] / total) * state[name]
            result[name] = acc
        return result

    residency = resident_fraction(list(paths.values()))
    baseline = rss_bytes()
    load_times, total_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        states = load()
        loaded = time.perf_counter()
        result = average(states)
        total_times.append(time.perf_counter() - start)
        load_times.append(loaded - start)
        del states, result
    peak = peak_rss_bytes()
    report(
        {
            "times": total_times,
            "load_times": load_times,
            "baseline_rss": baseline,
            "peak_rss": peak,
            "resident_before": residency,
            "torch_threads": torch.get_num_threads(),
            "checksums": _checksums(average(load())),
        }
    )


def worker_flower(directory: Path, repeats: int) -> None:
    """Flower's own aggregate on numpy lists; only the aggregate call is timed."""
    import flwr
    import numpy as np
    import safetensors.numpy
    from flwr.server.strategy.aggregate import aggregate

    paths = input_paths(directory)
    counts = sample_counts(list(paths))
    residency = resident_fraction(list(paths.values()))
    baseline = rss_bytes()
    start = time.perf_counter()
    loaded = {node: safetensors.numpy.load(path.read_bytes()) for node, path in paths.items()}
    load_time = time.perf_counter() - start
    names = list(next(iter(loaded.values())))
    results = [([loaded[node][n] for n in names], counts[node]) for node in paths]
    times = timed(lambda: aggregate(results), repeats)
    peak = peak_rss_bytes()
    averaged = aggregate(results)
    report(
        {
            "times": times,
            "load_times": [load_time],
            "baseline_rss": baseline,
            "peak_rss": peak,
            "resident_before": residency,
            "flwr_version": flwr.__version__,
            "numpy_version": np.__version__,
            "checksums": {n: float(a.sum(dtype=np.float64)) for n, a in zip(names, averaged, strict=True)},
        }
    )


# ---------------------------------------------------------------------------------------------------------
# The driver


def run_worker(python: Path | str, args: list[str]) -> dict[str, Any]:
    command = [str(python), "-m", "bench.aggregate_bench", "worker", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def flower_python() -> Path:
    """The Flower virtualenv's interpreter, creating the virtualenv on first use."""
    python = FLWR_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {FLWR_VENV} for Flower (first run only) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FLWR_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *FLWR_REQUIREMENTS], check=True)
    return python


def merge_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's rounds as one record: every time, the highest peak, the lowest residency."""
    merged = dict(samples[0])
    merged["times"] = [t for s in samples for t in s["times"]]
    if "load_times" in merged:
        merged["load_times"] = [t for s in samples for t in s["load_times"]]
    merged["peak_rss"] = max(s["peak_rss"] for s in samples)
    merged["baseline_rss"] = min(s["baseline_rss"] for s in samples)
    merged["resident_before"] = min(s["resident_before"] for s in samples)
    merged["loadavg"] = [s["loadavg_at_end"] for s in samples]
    return merged


def summarise(name: str, raw: dict[str, Any], model_bytes: int, input_bytes: int, bandwidth: float) -> dict:
    seconds = statistics.median(raw["times"])
    throughput = input_bytes / seconds / 1e9
    return {
        "method": name,
        "time_s": seconds,
        "best_s": min(raw["times"]),
        "times_s": raw["times"],
        "load_s": statistics.median(raw["load_times"]) if "load_times" in raw else None,
        "peak_rss_mib": raw["peak_rss"] / MIB,
        "baseline_rss_mib": raw["baseline_rss"] / MIB,
        "peak_rss_models": raw["peak_rss"] / model_bytes,
        "peak_over_baseline_models": (raw["peak_rss"] - raw["baseline_rss"]) / model_bytes,
        "throughput_gbs": throughput,
        "bandwidth_fraction": throughput / bandwidth,
        "inputs_in_page_cache": raw["resident_before"],
        "raw": {k: v for k, v in raw.items() if k != "checksums"},
    }


def max_relative_difference(a: dict[str, float], b: dict[str, float]) -> float:
    scale = max(abs(v) for v in a.values()) or 1.0
    return max(abs(a[n] - b[n]) for n in a) / scale


def markdown_table(rows: list[dict[str, Any]], ours_time: float) -> str:
    lines = [
        "| method | time (s) | best (s) | ratio vs ours | peak RSS (MiB) | peak RSS / model "
        "| (peak − baseline) / model | throughput (GB/s) | fraction of mem. bandwidth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['time_s']:.3f} | {r['best_s']:.3f} | {r['time_s'] / ours_time:.2f} "
            f"| {r['peak_rss_mib']:.0f} | {r['peak_rss_models']:.2f} | {r['peak_over_baseline_models']:.2f} "
            f"| {r['throughput_gbs']:.2f} | {r['bandwidth_fraction']:.2f} |"
        )
    return "\n".join(lines)


def main_driver(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="aggregate-bench-", dir=args.workdir) as tmp:
        directory = Path(tmp)
        generated = run_worker(
            sys.executable, ["generate", str(directory), str(args.layers), str(args.inputs)]
        )
        paths = list(input_paths(directory).values())
        model_bytes = generated["params"] * 4
        input_bytes = sum(p.stat().st_size for p in paths)
        flower = None if args.skip_flower else flower_python()

        common = [str(directory), str(args.repeats)]
        methods: list[tuple[str, Path | str, list[str]]] = [
            ("ours (StreamingAverage, files)", sys.executable, ["ours", *common]),
            ("ours, 2 torch threads", sys.executable, ["ours", *common, "--threads", "2"]),
            ("ours, cold page cache", sys.executable, ["ours", *common, "--cold"]),
            ("naive (load all, then average)", sys.executable, ["naive", *common]),
        ]
        if flower is not None:
            methods.append(("Flower aggregate (in memory)", flower, ["flower", *common]))
        bandwidth_args = ["bandwidth", str(max(model_bytes, 1 << 30)), str(args.repeats)]
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in methods}
        bandwidths = []
        for round_ in range(args.rounds):
            # Rounds interleave the methods (and rotate their order), so that load from other processes
            # on a shared machine falls on every method alike rather than on whichever ran at a bad time.
            bandwidths.append(run_worker(sys.executable, bandwidth_args))
            for name, python, worker_args in methods[round_:] + methods[:round_]:
                samples[name].append(run_worker(python, worker_args))
        bw = {key: max(b[key] for b in bandwidths) for key in bandwidths[0] if key != "loadavg_at_end"}
        raws = [(name, merge_samples(samples[name])) for name, _, _ in methods]
        residency_after = resident_fraction(paths)

    rows = [summarise(n, r, model_bytes, input_bytes, bw["bandwidth_gbs"]) for n, r in raws]
    ours = raws[0][1]["checksums"]
    agreement = {n: max_relative_difference(ours, r["checksums"]) for n, r in raws[1:]}
    print_report(args, generated, model_bytes, input_bytes, bw, rows, agreement, residency_after)
    if args.json:
        payload = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
            "model": {"params": generated["params"], "tensors": generated["tensors"], "bytes": model_bytes},
            "inputs": args.inputs,
            "input_bytes": input_bytes,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "memory": bw,
            "rows": rows,
            "checksum_agreement_vs_ours": agreement,
        }
        write_json(args.json, stamped(payload), allow_nan=True)


def print_report(
    args: argparse.Namespace,
    generated: dict[str, Any],
    model_bytes: int,
    input_bytes: int,
    bw: dict[str, Any],
    rows: list[dict[str, Any]],
    agreement: dict[str, float],
    residency_after: float,
) -> None:
    print(
        f"{args.inputs} inputs x {generated['params'] / 1e6:.1f}M float32 parameters in "
        f"{generated['tensors']} tensors ({model_bytes / MIB:.0f} MiB per model, "
        f"{input_bytes / MIB:.0f} MiB of inputs); "
        f"{os.cpu_count()} CPUs; median of {args.rounds} rounds x {args.repeats} runs per method, "
        "each method in its own process, methods interleaved round by round."
    )
    print(
        f"Memory bandwidth (copy of {bw['copy_bytes'] / MIB:.0f} MiB, read + write counted): "
        f"{bw['bandwidth_gbs']:.1f} GB/s (numpy 1 thread {bw['numpy_copy_gbs']:.1f}, torch 2 threads "
        f"{bw['torch_copy_gbs_2t']:.1f}). torch add_ of in-memory tensors, the ceiling of any fold (it moves "
        f"3 bytes per input byte): {bw['add_input_gbs_1t']:.1f} GB/s of input with 1 thread, "
        f"{bw['add_input_gbs_2t']:.1f} with 2."
    )
    print()
    print(markdown_table(rows, rows[0]["time_s"]))
    print()
    for r in rows:
        cache = f"{100 * r['inputs_in_page_cache']:.0f}% of input pages in page cache before timing"
        extra = f"; load into memory {r['load_s']:.3f} s (not in its time)" if "Flower" in r["method"] else ""
        extra = f"; of which loading {r['load_s']:.3f} s" if r["method"].startswith("naive") else extra
        print(
            f"- {r['method']}: {cache}; import baseline RSS {r['baseline_rss_mib']:.0f} MiB; "
            f"{r['raw'].get('torch_threads', 1)} thread(s); load average "
            f"{'/'.join(f'{x:.1f}' for x in r['raw']['loadavg'])}"
            f"{extra}."
        )
    print(
        f"- Page cache: the inputs were just written, so the warm rows read them from the page cache "
        f"(RAM), not from disk; the cold row drops them before each run. {100 * residency_after:.0f}% "
        "resident at the end."
    )
    print(
        "- Results agree with ours (max relative difference of per-tensor sums): "
        + ", ".join(f"{n}: {d:.1e}" for n, d in agreement.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="internal: run one measurement in this process")
    worker.add_argument("name", choices=["generate", "bandwidth", "ours", "naive", "flower"])
    worker.add_argument("args", nargs="*")
    worker.add_argument("--threads", type=int, default=None)
    worker.add_argument("--cold", action="store_true")
    parser.add_argument("--json", help="also write the figures as JSON to this path")
    parser.add_argument("--inputs", type=int, default=INPUTS)
    parser.add_argument("--layers", type=int, default=LAYERS, help="model size: 2 tensors per layer")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all methods, interleaved")
    parser.add_argument(
        "--workdir", default=None, help="where the temporary inputs go (default: system temp)"
    )
    parser.add_argument("--skip-flower", action="store_true")
    args = parser.parse_args()
    if args.command == "worker":
        run_named_worker(args)
    else:
        main_driver(args)


def run_named_worker(args: argparse.Namespace) -> None:
    a = args.args
    if args.name == "generate":
        worker_generate(Path(a[0]), int(a[1]), int(a[2]))
    elif args.name == "bandwidth":
        worker_bandwidth(int(a[0]), int(a[1]))
    elif args.name == "ours":
        worker_ours(Path(a[0]), int(a[1]), args.threads, args.cold)
    elif args.name == "naive":
        worker_naive(Path(a[0]), int(a[1]))
    elif args.name == "flower":
        worker_flower(Path(a[0]), int(a[1]))


if __name__ == "__main__":
    main()
