"""Statistics of the written records: class counts per level and split, and the training class weights.

Weights follow the paper's inverse class frequency, computed on the train split only:
`w_c = N / (K * n_c)`, with N the train records and K the classes present in train, so the
average weight over the train records is 1. Classes absent from train get weight 0 and are listed.
Attributes are K=2 problems per label: a positive and a negative weight each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam

from core.labels import SPLITS, LabelSchema

LEVELS = ("category", "subcategory", "attributes")


class LabelRecord(NamedTuple):
    """The labels of one written record, as the statistics need them."""

    split: str
    category: int
    subcategory: int
    attributes: tuple[int, ...]


class CountLabels(beam.CombineFn):
    """Combine `LabelRecord`s into per-split record counts and per-class counts per level.

    Output: `{"records": {split: n}, "category": {split: [count per class]}, "subcategory": ...,
    "attributes": {split: [positives per label]}}` with every split of `SPLITS` present.
    """

    def __init__(self, sizes: Mapping[str, int]):
        self._sizes = dict(sizes)

    def create_accumulator(self) -> Counter:
        """An empty count."""
        return Counter()

    def add_input(self, acc: Counter, rec: LabelRecord) -> Counter:
        """Count one record: its split, its class per level and each positive attribute."""
        acc[(rec.split, "records", 0)] += 1
        acc[(rec.split, "category", rec.category)] += 1
        acc[(rec.split, "subcategory", rec.subcategory)] += 1
        for a in rec.attributes:
            acc[(rec.split, "attributes", a)] += 1
        return acc

    def merge_accumulators(self, accumulators: Iterable[Counter]) -> Counter:
        """Sum partial counts from several workers."""
        out: Counter = Counter()
        for acc in accumulators:
            out.update(acc)
        return out

    def extract_output(self, acc: Counter) -> dict[str, Any]:
        """Dense per-class lists, zero-filled for classes never seen."""
        out: dict[str, Any] = {"records": {s: acc[(s, "records", 0)] for s in SPLITS}}
        for level in LEVELS:
            out[level] = {s: [acc[(s, level, i)] for i in range(self._sizes[level])] for s in SPLITS}
        return out


def inverse_frequency(counts: Sequence[int]) -> list[float]:
    """`N / (K * n_c)` per class, K = classes with n_c > 0; 0 for absent classes."""
    total = sum(counts)
    present = sum(1 for n in counts if n > 0)
    return [total / (present * n) if n > 0 else 0.0 for n in counts]


def attribute_weights(positives: Sequence[int], total: int) -> dict[str, list[float]]:
    """Balanced binary weights per attribute label: `N / (2 * n_pos)` and `N / (2 * n_neg)`."""
    pos = [total / (2 * n) if n > 0 else 0.0 for n in positives]
    neg = [total / (2 * (total - n)) if total - n > 0 else 0.0 for n in positives]
    return {"positive": pos, "negative": neg}


def class_weights(counts: Mapping[str, Any], schema: LabelSchema) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Weights per level from the train split of `CountLabels`' output, and the classes absent from train.

    Returns:
        (`{"category": [...], "subcategory": [...], "attributes": {"positive": [...],
        "negative": [...]}}`, `{"category": [names], "subcategory": [names], "attributes": [labels
        without a positive train example]}`).
    """
    train_total = counts["records"]["train"]
    weights = {
        "category": inverse_frequency(counts["category"]["train"]),
        "subcategory": inverse_frequency(counts["subcategory"]["train"]),
        "attributes": attribute_weights(counts["attributes"]["train"], train_total),
    }
    names = {"category": schema.categories, "subcategory": schema.subcategories, "attributes": schema.attributes}
    absent = {level: [names[level][i] for i, n in enumerate(counts[level]["train"]) if n == 0] for level in LEVELS}
    return weights, absent
