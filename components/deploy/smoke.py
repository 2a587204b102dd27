"""The deploy step's smoke check: a new version's served answers against the SavedModel and the evaluation.

Known photos are sent to the new version by number, on each replica. Its answers must equal the
registered SavedModel's own (the replica loaded what was registered), and agree with
the labels the evaluation step predicted for the same photos (what was registered is what was
evaluated).

Registration runs the SavedModel on the evaluation's smoke photos once, while it has TensorFlow
loaded for the export, and keeps its answers in the SavedModel's `assets.extra/` (`REFERENCE_FILE`,
which TF Serving does not read). Deploy compares the replicas with those, so it needs no
TensorFlow of its own; photos the reference was not made for are run in-process as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from core import storage
from core.errors import StepError
from serving import contract as sig
from serving.client import PredictionClient

log = logging.getLogger(__name__)

# Served and in-process scores are the same graph on the same bytes; more than this is a different model.
MAX_SCORE_DIFFERENCE = 1e-4
# How many of the evaluation's photos the smoke check sends.
SMOKE_PHOTOS = 16
# The registered SavedModel's own answers for the smoke photos, inside the SavedModel folder.
REFERENCE_FILE = "assets.extra/smoke_reference.json"


def load_expected(predictions_path: str | Path, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` records of the evaluation's predictions.jsonl that name a photo.

    Each usable record has the photo (`image_uri` or `image_path`) and the predicted labels: the
    tree-consistent `joint_category`/`joint_subcategory` the endpoint serves when the record has
    them, else `pred_category`/`pred_subcategory` or `predicted: {category, subcategory}`.

    Raises:
        StepError: no record names a photo and its predicted labels.
    """
    records = []
    for line in storage.read_bytes(str(predictions_path)).decode().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        predicted = record.get("predicted") if isinstance(record.get("predicted"), dict) else {}
        uri = record.get("image_uri") or record.get("image_path")
        # The endpoint serves the joint pair as `category`/`subcategory`; pred_* are each level's own arg-max.
        category = record.get("joint_category", record.get("pred_category", predicted.get("category")))
        subcategory = record.get("joint_subcategory", record.get("pred_subcategory", predicted.get("subcategory")))
        if uri and category is not None and subcategory is not None:
            records.append({"id": record.get("id"), "uri": uri, "category": category, "subcategory": subcategory})
        if len(records) >= limit:
            break
    if not records:
        raise StepError(
            f"{predictions_path} has no record with a photo and its predicted category and sub-category "
            "(keys image_uri, pred_category, pred_subcategory)"
        )
    return records


def expected_photos(expected: Sequence[dict[str, Any]]) -> list[bytes]:
    """The encoded photos of `load_expected`'s records, in order."""
    return [storage.read_bytes(e["uri"]) for e in expected]


def served_outputs(client: PredictionClient, photos: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Outputs of the client's version for photos (sent one at a time: no batch limit to respect).

    Raises:
        StepError: a Predict call failed.
    """
    rows: list[dict[str, np.ndarray]] = []
    for photo in photos:
        try:
            rows.append(client.predict_raw([photo]).outputs)
        except grpc.RpcError as err:
            raise StepError(
                f"smoke prediction on version {client.version} failed: {err.code().name}: {err.details()}"
            ) from err
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}


def _same(served: tuple[str, int], expected: str | int) -> bool:
    name, index = served
    return int(index) == expected if isinstance(expected, int) else name == str(expected)


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def reference_outputs(saved_model_dir: Path, photos: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The registered SavedModel's outputs for `photos`, run in-process: what every replica must answer.

    Raises:
        StepError: there are no photos.
    """
    import tensorflow as tf

    if not photos:
        raise StepError("no smoke photos: give known photos or the evaluation's predictions.jsonl")
    local = tf.saved_model.load(str(saved_model_dir)).signatures[sig.SIGNATURE_NAME]
    return {k: v.numpy() for k, v in local(image_bytes=tf.constant(list(photos))).items()}


def _sha256(photo: bytes) -> str:
    return hashlib.sha256(photo).hexdigest()


def _json_ready(value: Any) -> Any:
    """A nested list of numbers and strings, with TensorFlow's bytes strings decoded."""
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


def write_reference(saved_model_dir: str | Path, photos: Sequence[bytes]) -> Path:
    """Run the SavedModel on `photos` in-process and keep its answers in its `REFERENCE_FILE`.

    Returns:
        The file written.
    """
    outputs = reference_outputs(Path(saved_model_dir), photos)
    record = {
        "photo_sha256": [_sha256(p) for p in photos],
        "outputs": {key: _json_ready(value.tolist()) for key, value in outputs.items()},
    }
    path = Path(saved_model_dir) / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, separators=(",", ":")))
    return path


def stored_reference(saved_model_dir: str | Path, photos: Sequence[bytes]) -> dict[str, np.ndarray] | None:
    """The SavedModel's answers for exactly `photos` from its `REFERENCE_FILE`; None when it has none for them."""
    path = Path(saved_model_dir) / REFERENCE_FILE
    try:
        record = json.loads(path.read_text())
        made_for, outputs = record["photo_sha256"], record["outputs"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring %s: %s; running the SavedModel in-process instead", path, err)
        return None
    if made_for != [_sha256(p) for p in photos]:
        return None
    return {key: np.asarray(value) for key, value in outputs.items()}


def smoke_check(
    client: PredictionClient,
    reference: dict[str, np.ndarray],
    photos: Sequence[bytes],
    expected: Sequence[dict[str, Any]] = (),
    min_agreement: float = 0.9,
) -> dict[str, Any]:
    """Served answers must equal the SavedModel's in-process answers and agree with the evaluation.

    Args:
        client: a client bound to the version under test (by number) on one replica.
        reference: the registered SavedModel's outputs for `photos` (see `reference_outputs`).
        photos: encoded photos to send; the first `len(expected)` are the evaluation's.
        expected: the evaluation's records of those photos (see `load_expected`).
        min_agreement: least share of `expected` whose labels must match.

    Returns:
        Figures of the check (photos, agreement, largest score difference).

    Raises:
        StepError: the endpoint answers differently, or agrees with the evaluation on fewer than
            `min_agreement` of the photos.
    """
    where = f"version {client.version} on {client.target}"
    served = served_outputs(client, photos)
    if _strings(served[sig.CATEGORY]) != _strings(reference[sig.CATEGORY]) or _strings(
        served[sig.SUBCATEGORY]
    ) != _strings(reference[sig.SUBCATEGORY]):
        raise StepError(f"{where} answers differently from the registered SavedModel")
    diff = float(np.abs(served[sig.CATEGORY_PROBABILITIES] - reference[sig.CATEGORY_PROBABILITIES]).max(initial=0.0))
    if diff > MAX_SCORE_DIFFERENCE:
        raise StepError(f"{where} scores differ from the registered SavedModel by {diff:.2g}")
    result: dict[str, Any] = {"photos": len(photos), "max_score_difference": diff}
    if expected:
        # The evaluation may name classes or give their indices; compare like with like.
        cats = zip(_strings(served[sig.CATEGORY]), served[sig.CATEGORY_PROBABILITIES].argmax(-1), strict=True)
        subs = zip(_strings(served[sig.SUBCATEGORY]), served[sig.SUBCATEGORY_PROBABILITIES].argmax(-1), strict=True)
        agree = sum(
            _same(cat, e["category"]) and _same(sub, e["subcategory"])
            for cat, sub, e in zip(cats, subs, expected, strict=False)
        )
        agreement = agree / len(expected)
        result.update(evaluation_photos=len(expected), agreement=agreement)
        if agreement < min_agreement:
            raise StepError(
                f"{where} agrees with the evaluation's predictions on {agree}/{len(expected)} photos "
                f"({agreement:.0%} < {min_agreement:.0%}): the served model is not the evaluated one"
            )
    return result
