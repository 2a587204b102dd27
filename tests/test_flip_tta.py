"""Flip test-time augmentation (`serving.flip_tta`): served and evaluated the same way."""

import numpy as np
import pytest

from components.train.model_folder import FlipAveraged, answering_model, load_model
from core.config import load_config
from tests.support import serving as testing


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return testing.make_model_dir(tmp_path_factory.mktemp("tta") / "model", seed=3)


def _photos(n=3):
    photos = np.random.default_rng(2).integers(0, 256, (n, 80, 60, 3), dtype=np.uint8)
    photos[:, :, :30] //= 4  # a dark left half: the mirror image is a different photo
    return photos


def test_flip_averaging_is_the_mean_of_the_photo_and_its_mirror(model_dir):
    model = load_model(model_dir)
    photos = _photos()
    averaged = FlipAveraged(model)(photos, training=False)
    plain = model(photos, training=False)
    mirrored = model(photos[:, :, ::-1].copy(), training=False)
    for level in ("category", "subcategory", "attributes"):
        expected = (np.asarray(plain[level]) + np.asarray(mirrored[level])) / 2
        np.testing.assert_allclose(np.asarray(averaged[level]), expected, rtol=1e-5, atol=1e-7)
        assert not np.allclose(np.asarray(plain[level]), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(averaged["category"]).sum(1), 1.0, rtol=1e-5)


def test_answering_model_follows_the_config(model_dir):
    model = load_model(model_dir)
    assert answering_model(model, load_config("ci")) is model
    on = answering_model(model, load_config("ci", overrides={"serving": {"flip_tta": True}}))
    assert isinstance(on, FlipAveraged) and on.model is model


def test_exported_model_with_flip_tta_answers_like_the_evaluated_one(model_dir, tmp_path, samples_dir):
    import json

    import tensorflow as tf

    from components.register import export
    from core import records
    from serving import contract as sig

    photos = [p.read_bytes() for p in sorted(samples_dir.glob("*.jpg"))[:4]]
    images = np.stack([records.decode_photo_tensor(tf.constant(p)).numpy() for p in photos])
    served = {}
    for flip in (False, True):
        cfg = load_config("ci", overrides={"serving": {"flip_tta": flip}})
        version = export.export_model(model_dir, str(tmp_path / str(int(flip)) / "1"), config=cfg)
        serve = tf.saved_model.load(version).signatures[sig.SIGNATURE_NAME]
        served[flip] = serve(image_bytes=tf.constant(photos))[sig.SUBCATEGORY_PROBABILITIES].numpy()
        info = json.loads((tmp_path / str(int(flip)) / "1" / export.EXPORT_INFO_FILE).read_text())
        assert info["flip_tta"] is flip
        evaluated = answering_model(load_model(model_dir), cfg)(images, training=False)["subcategory"]
        np.testing.assert_allclose(served[flip], np.asarray(evaluated), atol=1e-5)
    assert not np.allclose(served[False], served[True], atol=1e-6)
