"""The colour-statistics layer (`model.colour_levels`): what it measures, and the model that uses it."""

import dataclasses

import keras
import numpy as np
import pytest

from components.train.colour import ColourStatistics
from components.train.model import build_model
from core.config import load_config

SIZES = {"category": 5, "subcategory": 9, "attributes": 7}
CI_MODEL = load_config("ci").model


def _product_photo(colour, background=(255, 255, 255), box=(20, 60, 15, 45)) -> np.ndarray:
    photo = np.empty((1, 80, 60, 3), dtype=np.uint8)
    photo[...] = background
    top, bottom, left, right = box
    photo[0, top:bottom, left:right] = colour
    return photo


def _split(stats: np.ndarray, levels: int) -> dict:
    bins = levels**3
    return {
        "histogram": stats[:, :bins].reshape(-1, levels, levels, levels),
        "mean": stats[:, bins : bins + 3],
        "std": stats[:, bins + 3 : bins + 6],
        "background": stats[:, bins + 6 : bins + 9],
        "share": stats[:, bins + 9],
    }


def test_a_red_product_on_white_fills_the_red_bin_and_ignores_the_background():
    layer = ColourStatistics(levels=5)
    stats = _split(np.asarray(layer(_product_photo((230, 20, 20)))), 5)
    hist = stats["histogram"][0]
    assert hist.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.unravel_index(hist.argmax(), hist.shape) == (4, 0, 0)
    assert hist[4, 0, 0] > 0.5
    # White would be bin (4, 4, 4): the background is left out of the product's histogram.
    assert hist[4, 4, 4] < 0.01
    np.testing.assert_allclose(stats["mean"][0], np.array([230, 20, 20]) / 255.0, atol=0.01)
    np.testing.assert_allclose(stats["background"][0], [1.0, 1.0, 1.0], atol=0.2)
    assert stats["share"][0] == pytest.approx(40 * 30 / (80 * 60), abs=0.02)


def test_the_background_is_measured_not_assumed_white():
    layer = ColourStatistics(levels=4)
    stats = _split(np.asarray(layer(_product_photo((20, 20, 200), background=(128, 128, 128)))), 4)
    hist = stats["histogram"][0]
    assert np.unravel_index(hist.argmax(), hist.shape) == (0, 0, 3)
    assert hist[1:3, 1:3, 1:3].sum() < 0.01  # the grey background stays out


def test_a_blank_photo_still_gives_a_finite_histogram_of_unit_mass():
    layer = ColourStatistics(levels=5)
    blank = np.full((2, 80, 60, 3), 255, dtype=np.uint8)
    stats = np.asarray(layer(blank))
    assert np.isfinite(stats).all()
    np.testing.assert_allclose(_split(stats, 5)["histogram"].reshape(2, -1).sum(1), 1.0, atol=1e-4)
    assert stats.shape == (2, layer.features)


def test_statistics_are_float32_under_mixed_precision_and_match_float32():
    photo = np.random.default_rng(0).integers(0, 256, (3, 80, 60, 3), dtype=np.uint8)
    plain = np.asarray(ColourStatistics(levels=3)(photo))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = np.asarray(ColourStatistics(levels=3)(photo))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, plain, rtol=1e-5, atol=1e-6)


def test_fewer_than_two_levels_is_refused():
    with pytest.raises(ValueError, match="levels"):
        ColourStatistics(levels=1)


@pytest.mark.parametrize("head", ["unified", "independent"])
def test_colour_statistics_feed_only_the_attribute_branch(head):
    plain = build_model(dataclasses.replace(CI_MODEL, head=head), SIZES, (80, 60))
    cfg = dataclasses.replace(CI_MODEL, head=head, colour_levels=4)
    model = build_model(cfg, SIZES, (80, 60))
    stats = model.get_layer("colour_stats")
    consumers = [node.operation.name for node in stats._outbound_nodes]
    assert consumers == ["attr_features"]
    first_attr = "x_attr" if head == "unified" else "attributes_branch"
    extra = model.get_layer(first_attr).kernel.shape[0] - plain.get_layer(first_attr).kernel.shape[0]
    assert extra == ColourStatistics(levels=4).features
    assert model.count_params() - plain.count_params() == extra * CI_MODEL.branch_units


def test_model_with_colour_statistics_round_trips_through_its_file(tmp_path):
    from components.train.model_folder import load_model

    model = build_model(dataclasses.replace(CI_MODEL, colour_levels=4), SIZES, (80, 60))
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path)
    photos = np.random.default_rng(1).integers(0, 256, (2, 80, 60, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        np.asarray(model(photos)["attributes"]), np.asarray(loaded(photos)["attributes"]), rtol=1e-5, atol=1e-6
    )
    assert loaded.get_layer("colour_stats").levels == 4


def test_saved_model_export_of_a_colour_model_answers_like_keras(tmp_path, samples_dir):
    import tensorflow as tf

    from components.register import export
    from components.train.model_folder import load_model
    from core import records
    from serving import contract as sig
    from tests.support import serving as testing

    cfg = load_config("ci", overrides={"model": {"colour_levels": 4}})
    model_dir = testing.make_model_dir(tmp_path / "model", config=cfg)
    version_dir = export.export_model(model_dir, str(tmp_path / "base" / "1"))
    photos = [p.read_bytes() for p in sorted(samples_dir.glob("*.jpg"))[:4]]
    serve = tf.saved_model.load(version_dir).signatures[sig.SIGNATURE_NAME]
    served = serve(image_bytes=tf.constant(photos))[sig.ATTRIBUTE_PROBABILITIES].numpy()
    images = np.stack([records.decode_photo_tensor(tf.constant(p)).numpy() for p in photos])
    expected = load_model(model_dir).predict(images, verbose=0)["attributes"]
    np.testing.assert_allclose(served, expected, atol=1e-5)
