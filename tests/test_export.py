"""The SavedModel export: loads with plain TensorFlow and answers like the Keras model."""

from __future__ import annotations

import numpy as np
import pytest

from components.register import export
from components.train.model_folder import load_model
from core import records
from core.errors import StepError
from serving import contract as sig
from tests.support import serving as testing


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model_dir = testing.make_model_dir(root / "model")
    version_dir = export.export_model(model_dir, str(root / "base" / "1"), warmup_photos=testing.sample_photos(4))
    return model_dir, version_dir


def test_export_agrees_with_the_keras_model_on_real_photos(exported, samples_dir):
    import tensorflow as tf

    model_dir, version_dir = exported
    photos = [p.read_bytes() for p in sorted(samples_dir.glob("*.jpg"))]
    serve = tf.saved_model.load(version_dir).signatures[sig.SIGNATURE_NAME]
    out = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(photos)).items()}

    keras_model = load_model(model_dir)
    # The trainer reads the stored photos with the project's one TensorFlow decode (core.records).
    images = np.stack([records.decode_photo_tensor(tf.constant(p)).numpy() for p in photos])
    expected = keras_model.predict(images, verbose=0)
    schema = testing.tiny_schema()

    assert set(out) == set(sig.OUTPUT_KEYS)
    np.testing.assert_allclose(out[sig.CATEGORY_PROBABILITIES], expected["category"], atol=1e-5)
    np.testing.assert_allclose(out[sig.SUBCATEGORY_PROBABILITIES], expected["subcategory"], atol=1e-5)
    np.testing.assert_allclose(out[sig.ATTRIBUTE_PROBABILITIES], expected["attributes"], atol=1e-5)
    # Each level's own arg-max under its own names; the served pair is the joint one (tests/test_export_joint.py).
    assert [c.decode() for c in out[sig.CATEGORY_INDEPENDENT]] == [
        schema.categories[i] for i in expected["category"].argmax(1)
    ]
    assert [c.decode() for c in out[sig.SUBCATEGORY_INDEPENDENT]] == [
        schema.subcategories[i] for i in expected["subcategory"].argmax(1)
    ]
    np.testing.assert_allclose(out[sig.CATEGORY_INDEPENDENT_SCORE], expected["category"].max(1), atol=1e-5)
    pairs = zip(out[sig.CATEGORY], out[sig.SUBCATEGORY], strict=True)
    assert all(s.decode() in schema.tree[c.decode()] for c, s in pairs)
    # Attribute names come sorted by score, aligned with their scores.
    first = out[sig.ATTRIBUTE_NAMES][0]
    scores = out[sig.ATTRIBUTE_SCORES][0]
    assert list(scores) == sorted(scores, reverse=True)
    probs = dict(zip(schema.attributes, expected["attributes"][0], strict=True))
    for name, score in zip(first, scores, strict=True):
        assert score == pytest.approx(probs[name.decode()], abs=1e-5)


def test_export_decodes_greyscale_alpha_png_and_any_size(exported):
    import tensorflow as tf

    _, version_dir = exported
    serve = tf.saved_model.load(version_dir).signatures[sig.SIGNATURE_NAME]
    photos = export.synthetic_photos(80, 60)
    out = serve(image_bytes=tf.constant(photos))
    assert out[sig.CATEGORY].shape == (len(photos),)
    assert out[sig.CATEGORY_PROBABILITIES].numpy().sum(axis=1) == pytest.approx(np.ones(len(photos)), abs=1e-4)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty[sig.CATEGORY_PROBABILITIES].shape == (0, 4)


@pytest.mark.parametrize(
    ("size", "mode", "content_box"),
    [
        ((30, 40), "pad", (0, 0, 80, 60)),  # same aspect ratio: scaled up to fill
        ((60, 40), "pad", (20, 0, 60, 60)),  # wide photo: white bands above and below
        ((60, 40), "stretch", (0, 0, 80, 60)),
    ],
)
def test_fit_image_pads_or_stretches_like_the_preprocessing(size, mode, content_box):
    import tensorflow as tf

    red = np.zeros((size[1], size[0], 3), np.uint8)
    red[..., 0] = 200
    out = export.fit_image(tf.constant(red), 80, 60, mode, (255, 255, 255)).numpy()
    top, left, bottom, right = content_box
    assert out.shape == (80, 60, 3)
    assert (out[top + 1 : bottom - 1, left + 1 : right - 1] == [200, 0, 0]).all()
    if top:
        assert (out[: top - 1] == 255).all() and (out[bottom + 1 :] == 255).all()


def test_warmup_file_holds_predict_requests_for_the_signature(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    _, version_dir = exported
    records = list(tf.data.TFRecordDataset(f"{version_dir}/{sig.WARMUP_FILE}").as_numpy_iterator())
    assert 0 < len(records) <= sig.MAX_WARMUP_RECORDS
    sizes = set()
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        request = log.predict_log.request
        assert request.model_spec.signature_name == sig.SIGNATURE_NAME
        sizes.add(len(tf.make_ndarray(request.inputs[sig.INPUT_KEY])))
    assert 1 in sizes and max(sizes) > 1


def test_export_refuses_to_overwrite_a_version(exported):
    model_dir, version_dir = exported
    with pytest.raises(StepError, match="already exists"):
        export.export_model(model_dir, version_dir)


@pytest.mark.parametrize(("size", "mode"), [((150, 90), "pad"), ((45, 70), "pad"), ((150, 90), "stretch")])
def test_serving_resize_matches_the_preprocess_step(samples_dir, size, mode):
    """A photo of another size reaches the model as the Beam step would have stored it."""
    import io

    import tensorflow as tf
    from PIL import Image

    from core.images import resize_image

    photo = Image.open(next(iter(sorted(samples_dir.glob("*.jpg"))))).convert("RGB").resize(size)
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    decoded = tf.io.decode_image(buf.getvalue(), channels=3)
    served = export.fit_image(decoded, 80, 60, mode, (255, 255, 255)).numpy().astype(int)
    stored = np.asarray(resize_image(photo, 80, 60, mode, (255, 255, 255))).astype(int)
    assert np.abs(served - stored).mean() < 2.0
