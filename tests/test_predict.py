"""`fedalign predict`: a trained target model on any data set, labelled or not, through its pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from fedalign.config import FederationConfig
from fedalign.data import DatasetError
from fedalign.data.imagefolder import image_to_tensor, read_image
from fedalign.label_free import label_free_scores
from fedalign.predict import predict
from fedalign.simulate import simulate
from fedalign.trained_model import TargetModel, load_model, save_model

CLASSES = 3
# Images are stored at 16x16 and the model takes 12x12: the card's resize and normalisation both apply.
STORED, TAKEN = 16, 12
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
DATA_PLUGINS = Path(__file__).parent / "data_plugins"


def images(n: int, seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images (n, 16, 16, 3) whose brightest channel is the class, moved by ``shift``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0, 0.4, size=(n, STORED, STORED, 3)) + shift
    x[np.arange(n), :, :, y] += 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def image_federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FederationConfig, dict]:
    """A one-round federation of a plug-in CNN on npz images, its target's data unlabelled but for an
    evaluation split; returns the saved model, the config and the last round's metrics."""
    tmp = tmp_path_factory.mktemp("images")
    specs = {}
    for name, seed, shift in (("alpha", 1, 0.0), ("beta", 2, 0.1)):
        x, y = images(60, seed, shift)
        np.savez(tmp / f"{name}.npz", x=x, y=y)
        specs[name] = f"npz:{tmp / f'{name}.npz'}"
    x, _ = images(50, 3, 0.3)
    x_test, y_test = images(20, 4, 0.3)
    np.savez(tmp / "omega.npz", x=x, x_test=x_test, y_test=y_test)
    specs["omega"] = f"npz:{tmp / 'omega.npz'}"
    config = FederationConfig.model_validate(
        {
            "architecture": "fedalign_test_plugins.architectures:tiny_cnn",
            "model": {"num_classes": CLASSES, "input_shape": [3, TAKEN, TAKEN]},
            "preprocessing": {"resize": [TAKEN, TAKEN], "mean": MEAN, "std": STD},
            "rounds": 1,
            "seed": 2,
            "hyperparameters": {"local_steps": 3, "disc_steps": 2, "batch_size": 16},
            "nodes": [
                {"name": "alpha", "role": "source", "dataset": specs["alpha"]},
                {"name": "beta", "role": "source", "dataset": specs["beta"]},
                {"name": "omega", "role": "target", "dataset": specs["omega"]},
            ],
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).parent / "plugins"))
        result = simulate(config)
        path = tmp / "model.safetensors"
        save_model(path, result.models["target_model"], config)
    return path, config, result.rounds[-1].metrics


@pytest.fixture
def model(image_federation: tuple[Path, FederationConfig, dict], test_plugins: Path) -> TargetModel:
    return load_model(image_federation[0])


def test_predictions_on_the_targets_data_give_the_accuracy_its_node_reported(
    image_federation: tuple[Path, FederationConfig, dict], model: TargetModel
) -> None:
    _, config, metrics = image_federation
    predictions = predict(model, config.target.dataset)
    # Every sample once, in the file's order: the unlabelled x, then the labelled evaluation split.
    assert [str(o) for o in predictions.origins] == [f"x[{i}]" for i in range(50)] + [
        f"x_test[{i}]" for i in range(20)
    ]
    assert predictions.labelled == 20
    assert set(predictions.splits) == {"train", "val", "test"}
    # The node evaluated on the same samples through the same resize and normalisation: the same number.
    assert predictions.accuracy == metrics["target_acc"]
    assert np.allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_flat_folder_of_unlabelled_images_is_predicted_file_by_file(
    model: TargetModel, tmp_path: Path
) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    x, _ = images(6, 9, 0.2)
    for i, image in enumerate(x):  # larger than the model's input: resized as the folder is read
        Image.fromarray(image).resize((20, 20)).save(folder / f"photo-{i}.png")
    predictions = predict(model, f"imagefolder:{folder}")
    files = sorted(folder.glob("*.png"))
    assert [str(o) for o in predictions.origins] == [str(f) for f in files]
    assert predictions.accuracy is None and predictions.labelled == 0
    # What the command computes is the loaded model on each file read at its input size, in [0, 1].
    batch = torch.stack([image_to_tensor(read_image(f, (TAKEN, TAKEN))) for f in files])
    with torch.no_grad():
        expected = model(batch).argmax(dim=1).numpy()
    assert list(predictions.predicted) == list(expected)


def test_the_command_prints_the_accuracy_of_a_labelled_folder_and_writes_csv(
    image_federation: tuple[Path, FederationConfig, dict], test_plugins: Path, tmp_path: Path
) -> None:
    path = image_federation[0]
    folder = tmp_path / "labelled"
    x, y = images(18, 11, 0.3)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"class{label}" / f"{i:02d}.png")
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(
        app, ["predict", str(path), f"imagefolder:{folder}?size={TAKEN}", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 18 and list(rows[0]) == [
        "sample",
        "split",
        "label",
        "predicted",
        *(f"prob_{k}" for k in range(CLASSES)),
    ]
    right = sum(r["label"] == r["predicted"] for r in rows)
    assert f"accuracy {right / 18:.4f} on 18 labelled samples" in result.output
    # And the label-free scores of the same predictions, from their probabilities alone.
    p = predict(load_model(path), f"imagefolder:{folder}?size={TAKEN}").probabilities.astype(np.float64)
    mean_entropy = float(-(p * np.log(p)).sum(axis=1).mean())
    balance = float(-(p.mean(axis=0) * np.log(p.mean(axis=0))).sum())
    assert f"information {balance - mean_entropy:.4f} = class balance {balance:.4f}" in result.output
    assert (
        f"mean entropy {mean_entropy:.4f} (each at most log {CLASSES} = {np.log(CLASSES):.4f}"
        in result.output
    )
    assert f"18 samples of imagefolder:{folder}?size={TAKEN}" in result.output


def test_npz_without_labels_is_predicted_to_parquet(model: TargetModel, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")  # the parquet extra; `make setup` installs it
    x, _ = images(12, 5, 0.0)
    np.savez(tmp_path / "new.npz", x=x)
    predictions = predict(model, f"npz:{tmp_path / 'new.npz'}")
    assert predictions.write(tmp_path / "p.parquet") == "parquet"
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert table["sample"] == [f"x[{i}]" for i in range(12)]
    assert table["label"] == [None] * 12
    assert table["predicted"] == [int(p) for p in predictions.predicted]


def test_a_loader_plugins_items_are_named_by_their_index_in_its_dataset(
    vector_federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(DATA_PLUGINS))
    raw, data = vector_federation(rounds=1)
    config = FederationConfig.model_validate(raw)
    save_model(tmp_path / "m.safetensors", simulate(config, node_data=data).models["target_model"], config)
    model = load_model(tmp_path / "m.safetensors")
    predictions = predict(model, "python:fedalign_test_loaders:gaussians?labelled=no&n=40")
    # Its validation split is drawn from its "train" dataset: together they name every item once.
    assert [str(o) for o in predictions.origins] == [f"train[{i}]" for i in range(40)]
    assert predictions.accuracy is None
    labelled = predict(model, "python:fedalign_test_loaders:gaussians?n=40&test=yes")
    assert labelled.labelled == 40 + 24 and labelled.accuracy is not None


def test_data_the_model_does_not_take_are_refused_saying_what_it_takes(
    model: TargetModel, tmp_path: Path
) -> None:
    np.savez(tmp_path / "vectors.npz", x=np.zeros((4, 8), np.float32))
    with pytest.raises(DatasetError, match=r"takes inputs of shape \(3, 12, 12\).*samples have shape \(8,\)"):
        predict(model, f"npz:{tmp_path / 'vectors.npz'}")


def test_simulate_saves_the_targets_model_for_predict(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0.0), ("t", 1.0)):
        y = rng.integers(0, 3, 60)
        x = rng.normal(size=(60, 8)).astype(np.float32) + shift + np.eye(8, dtype=np.float32)[y] * 2
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    (tmp_path / "fed.toml").write_text(
        "\n".join(
            [
                'name = "vectors"',
                'architecture = "mlp"',
                "rounds = 1",
                "[model]",
                "num_classes = 3",
                "input_shape = [8]",
                "hidden = 8",
                "[[nodes]]",
                'name = "a"',
                'role = "source"',
                f'dataset = "npz:{tmp_path / "a.npz"}"',
                "[[nodes]]",
                'name = "t"',
                'role = "target"',
                f'dataset = "npz:{tmp_path / "t.npz"}"',
            ]
        )
    )
    model = tmp_path / "model.safetensors"
    simulated = CliRunner().invoke(app, ["simulate", str(tmp_path / "fed.toml"), "--save-model", str(model)])
    assert simulated.exit_code == 0, simulated.output
    assert f"target model written to {model}, with its card" in simulated.output
    predicted = CliRunner().invoke(
        app,
        [
            "predict",
            str(model),
            f"npz:{tmp_path / 't.npz'}",
            "-o",
            str(tmp_path / "p.csv"),
            "--split",
            "test",
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    assert "mlp from federation 'vectors' (1 round), 3 classes" in predicted.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows and {r["split"] for r in rows} == {"test"}
    right = sum(r["label"] == r["predicted"] for r in rows)
    assert f"accuracy {right / len(rows):.4f} on {len(rows)} labelled samples" in predicted.output


def test_label_free_scores_see_a_collapse_and_refuse_what_is_not_a_probability_matrix() -> None:
    balanced = label_free_scores(np.eye(CLASSES)[[0, 1, 2, 0, 1, 2]])
    assert balanced.information == pytest.approx(np.log(CLASSES)) == pytest.approx(balanced.most)
    collapsed = label_free_scores(np.eye(CLASSES)[[1] * 6])  # confident, every sample in one class
    assert collapsed.mean_entropy == pytest.approx(0.0) and collapsed.class_balance == pytest.approx(0.0)
    assert collapsed.information < balanced.information
    for bad in (np.zeros((0, CLASSES)), np.ones(CLASSES)):
        with pytest.raises(ValueError, match=r"\(N, K\) matrix"):
            label_free_scores(bad)
