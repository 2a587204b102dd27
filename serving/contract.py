"""The serving contract's names: signature, input and outputs, shared by export, server and client."""

from __future__ import annotations

# Attribute labels read `<group><separator><value>`, e.g. `baseColour=Blue`; clients split them with it.
from core.labels import ATTRIBUTE_SEPARATOR as ATTRIBUTE_SEPARATOR

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "image_bytes"

CATEGORY = "category"
CATEGORY_SCORE = "category_score"
SUBCATEGORY = "subcategory"
SUBCATEGORY_SCORE = "subcategory_score"
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
)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# TF Serving's gRPC default would be 4 MB on the client side; real photos and batches need more.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
