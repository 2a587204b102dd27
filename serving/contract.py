"""The serving contract's names: signature, input and outputs, shared by export, server and client."""

from __future__ import annotations

# Attribute labels read `<group><separator><value>`, e.g. `baseColour=Blue`; clients split them with it.
from core.labels import ATTRIBUTE_SEPARATOR as ATTRIBUTE_SEPARATOR

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image_bytes"

# The served pair: the (category, sub-category) pair the category tree stored in the model allows
# with the highest p(category) * p(sub-category) (joint decoding); each score is its level's
# probability of the named label, `joint_score` their product.
CATEGORY = "category"
CATEGORY_SCORE = "category_score"
SUBCATEGORY = "subcategory"
SUBCATEGORY_SCORE = "subcategory_score"
JOINT_SCORE = "joint_score"
# Each level's own arg-max, blind to the tree: the pair may be one the catalogue does not contain.
# These five are missing from versions exported before joint decoding; clients read them when present.
CATEGORY_INDEPENDENT = "category_independent"
CATEGORY_INDEPENDENT_SCORE = "category_independent_score"
SUBCATEGORY_INDEPENDENT = "subcategory_independent"
SUBCATEGORY_INDEPENDENT_SCORE = "subcategory_independent_score"
CATEGORY_PROBABILITIES = "category_probabilities"
SUBCATEGORY_PROBABILITIES = "subcategory_probabilities"
ATTRIBUTE_PROBABILITIES = "attribute_probabilities"
# Attribute names and scores sorted by descending score, one row per image.
ATTRIBUTE_NAMES = "attribute_names"
ATTRIBUTE_SCORES = "attribute_scores"

OUTPUT_KEYS = (
    CATEGORY,
    CATEGORY_SCORE,
    SUBCATEGORY,
    SUBCATEGORY_SCORE,
    CATEGORY_PROBABILITIES,
    SUBCATEGORY_PROBABILITIES,
    ATTRIBUTE_PROBABILITIES,
    ATTRIBUTE_NAMES,
    ATTRIBUTE_SCORES,
    JOINT_SCORE,
    CATEGORY_INDEPENDENT,
    CATEGORY_INDEPENDENT_SCORE,
    SUBCATEGORY_INDEPENDENT,
    SUBCATEGORY_INDEPENDENT_SCORE,
)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# TF Serving's gRPC default would be 4 MB on the client side; real photos and batches need more.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
