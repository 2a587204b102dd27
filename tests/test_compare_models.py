"""The paired recipe comparison (bench/compare_models.py): attribute groups scored on known answers."""

import numpy as np

from bench.compare_heads import compare
from bench.compare_models import NAMES, correct_per_group
from components.evaluate import metrics as m
from tests.support.serving import tiny_schema


def _prediction(schema, attributes):
    n = len(attributes)
    truth = np.zeros((n, len(schema.attributes)), dtype=np.int64)
    truth[0, schema.attributes.index("baseColour=Blue")] = 1
    truth[1, schema.attributes.index("baseColour=Black")] = 1
    # Photo 2 has no colour: it must not count in the baseColour group.
    truth[:, schema.attributes.index("season=Summer")] = 1
    return {
        "true_category": np.zeros(n, dtype=np.int64),
        "true_subcategory": np.zeros(n, dtype=np.int64),
        "category": np.tile([[0.7, 0.1, 0.1, 0.1]], (n, 1)),
        "subcategory": np.tile([[0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]], (n, 1)),
        "attributes": np.asarray(attributes, dtype=np.float32),
        "true_attributes": truth,
    }


def test_an_attribute_group_is_scored_by_its_arg_max_on_the_photos_that_have_a_value():
    schema = tiny_schema()
    allowed = m.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    width = len(schema.attributes)
    black, blue, white = (schema.attributes.index(f"baseColour={c}") for c in ("Black", "Blue", "White"))
    summer, winter = schema.attributes.index("season=Summer"), schema.attributes.index("season=Winter")

    def row(colour, season):
        r = np.full(width, 0.05)
        r[colour], r[season] = 0.9, 0.8
        return r

    # Baseline: photo 0 blue (right), photo 1 white (wrong); candidate gets both right.
    baseline = _prediction(schema, [row(blue, summer), row(white, winter), row(black, summer)])
    candidate = _prediction(schema, [row(blue, summer), row(black, summer), row(white, winter)])
    a, b = correct_per_group(baseline, allowed, schema), correct_per_group(candidate, allowed, schema)
    assert len(a["baseColour"]) == len(b["baseColour"]) == 2
    rows = compare(a, b, names=NAMES)
    assert rows["baseColour"]["baseline"] == 0.5 and rows["baseColour"]["candidate"] == 1.0
    assert (rows["baseColour"]["only_baseline"], rows["baseColour"]["only_candidate"]) == (0, 1)
    # Season is on all three photos: baseline misses photo 1, candidate photo 2.
    assert rows["season"]["baseline"] == rows["season"]["candidate"] == round(2 / 3, 4)
    assert (rows["season"]["only_baseline"], rows["season"]["only_candidate"]) == (1, 1)
    assert rows["category"]["baseline"] == 1.0 and "subcategory_joint" in rows
    assert "usage" not in rows  # no photo has a usage value: the group is left out, not scored 0/0
