"""The published model's card: derived by the server, served beside the model and, asked for, inside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from api_support import Api, run_federation

from fedalign import params
from fedalign.model_card import CARD_KEY, ModelCard
from fedalign.predict import predict
from fedalign.trained_model import load_model


def test_the_model_downloads_with_its_card_and_predicts_as_the_target_evaluated(
    api: Api, vector_specs: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    specs = vector_specs()
    fid = run_federation(api, specs)
    plain = api.request("GET", f"/api/v1/federations/{fid}/model")
    published = api.ok("GET", f"/api/v1/federations/{fid}/model/card")
    card = ModelCard.model_validate(published["card"])
    assert card.provenance.federation_id == fid and card.provenance.target == "omega"
    assert card.tensor_names() == [t["name"] for t in published["manifest"]]

    response = api.request("GET", f"/api/v1/federations/{fid}/model", params={"card": "true"})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["etag"] != plain.headers["etag"]
    # The same tensors as the target uploaded them, with the card in the header's metadata.
    tensors, uploaded = params.from_bytes(response.content), params.from_bytes(plain.content)
    assert tensors.keys() == uploaded.keys()
    assert all(torch.equal(tensors[k], uploaded[k]) for k in uploaded)
    assert ModelCard.from_json_text(params.read_metadata(response.content)[CARD_KEY], "download") == card

    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(response.content)
    predictions = predict(load_model(path), specs["omega"], splits=("test",))
    series = api.ok("GET", f"/api/v1/federations/{fid}/metrics")["series"]
    target_acc = next(s for s in series if s["name"] == "target_acc" and s["node"] is None)["points"]
    # The target's labelled evaluation split, through the card's pipeline: the accuracy it reported last.
    assert predictions.accuracy == max(target_acc, key=lambda p: p["round"])["value"]
