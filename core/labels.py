"""The label schema: vocabularies of the three output levels, the category tree, and splits.

`LabelSchema` is built once from the ingested catalogue and travels with every later artifact
(shards' statistics, the model directory, the SavedModel), so that an index always means the
same label everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import StepError

SPLITS = ("train", "validation", "test")
ATTRIBUTE_SEPARATOR = "="


def attribute_label(group: str, value: str) -> str:
    """The attribute vocabulary entry for one (column, value) pair, e.g. `season=Summer`."""
    return f"{group}{ATTRIBUTE_SEPARATOR}{value}"


@dataclass
class LabelSchema:
    """Vocabularies and hierarchy of one catalogue.

    Attributes:
        category_column: styles.csv column of the top level (default `subCategory`).
        subcategory_column: column of the second level (default `articleType`).
        attribute_columns: columns whose values form the multi-hot attribute vector.
        categories: category vocabulary, index = class id.
        subcategories: sub-category vocabulary.
        attributes: attribute vocabulary, entries `column=value`, grouped by column in order.
        tree: category -> sorted sub-categories seen under it (a sub-category may occur under
            several categories: the data is not a clean tree).

    """

    category_column: str
    subcategory_column: str
    attribute_columns: tuple[str, ...]
    categories: list[str]
    subcategories: list[str]
    attributes: list[str]
    tree: dict[str, list[str]] = field(default_factory=dict)

    @property
    def attribute_groups(self) -> dict[str, list[int]]:
        """Column -> indices of its values in `attributes`."""
        groups: dict[str, list[int]] = {c: [] for c in self.attribute_columns}
        for i, label in enumerate(self.attributes):
            groups[label.split(ATTRIBUTE_SEPARATOR, 1)[0]].append(i)
        return groups

    @property
    def sizes(self) -> dict[str, int]:
        """Output units per level; their sum is the model's total output width."""
        return {
            "category": len(self.categories),
            "subcategory": len(self.subcategories),
            "attributes": len(self.attributes),
        }

    def allowed_pairs(self) -> list[tuple[int, int]]:
        """(category index, sub-category index) pairs that occur in the tree."""
        cat_index = {c: i for i, c in enumerate(self.categories)}
        sub_index = {s: i for i, s in enumerate(self.subcategories)}
        return sorted(
            (cat_index[c], sub_index[s])
            for c, subs in self.tree.items()
            if c in cat_index
            for s in subs
            if s in sub_index
        )

    def encode(self, row: Mapping[str, str]) -> tuple[int, int, list[int]]:
        """Class indices of one catalogue row: (category, sub-category, attribute indices).

        Raises:
            KeyError: the row's category or sub-category is not in the vocabulary.

        """
        cat = self.categories.index(row[self.category_column])
        sub = self.subcategories.index(row[self.subcategory_column])
        index = {a: i for i, a in enumerate(self.attributes)}
        attrs = sorted(
            index[key]
            for column in self.attribute_columns
            if (value := (row.get(column) or "").strip()) and (key := attribute_label(column, value)) in index
        )
        return cat, sub, attrs

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, including the derived attribute groups for readers."""
        return {
            "category_column": self.category_column,
            "subcategory_column": self.subcategory_column,
            "attribute_columns": list(self.attribute_columns),
            "categories": self.categories,
            "subcategories": self.subcategories,
            "attributes": self.attributes,
            "attribute_groups": self.attribute_groups,
            "tree": self.tree,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSchema:
        """Inverse of `to_dict` (derived keys are ignored)."""
        return cls(
            category_column=data["category_column"],
            subcategory_column=data["subcategory_column"],
            attribute_columns=tuple(data["attribute_columns"]),
            categories=list(data["categories"]),
            subcategories=list(data["subcategories"]),
            attributes=list(data["attributes"]),
            tree={k: list(v) for k, v in data.get("tree", {}).items()},
        )

    def save(self, path: str | Path) -> Path:
        """Write the schema as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelSchema:
        """Read a schema written by `save`.

        Raises:
            StepError: the file is not valid JSON or not a label schema (it names the file).
        """
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StepError(
                f"{path} is not a readable label schema ({type(err).__name__}: {err}): the folder is damaged; "
                "re-run the step that wrote it"
            ) from err


def build_schema(
    rows: Iterable[Mapping[str, str]],
    category_column: str,
    subcategory_column: str,
    attribute_columns: Sequence[str],
    min_attribute_count: int = 1,
) -> LabelSchema:
    """Derive vocabularies (sorted, so deterministic) and the category tree from labelled rows.

    Attribute values seen fewer than `min_attribute_count` times are left out of the vocabulary.
    """
    rows = list(rows)
    cats = sorted({r[category_column] for r in rows})
    subs = sorted({r[subcategory_column] for r in rows})
    tree: dict[str, set[str]] = {}
    for r in rows:
        tree.setdefault(r[category_column], set()).add(r[subcategory_column])
    attributes = []
    for column in attribute_columns:
        counts = Counter((r.get(column) or "").strip() for r in rows)
        counts.pop("", None)
        attributes += [attribute_label(column, v) for v in sorted(counts) if counts[v] >= min_attribute_count]
    return LabelSchema(
        category_column=category_column,
        subcategory_column=subcategory_column,
        attribute_columns=tuple(attribute_columns),
        categories=cats,
        subcategories=subs,
        attributes=attributes,
        tree={c: sorted(s) for c, s in sorted(tree.items())},
    )


def assign_split(item_id: str, stratum: str, train_fraction: float, validation_fraction: float, salt: str) -> str:
    """Deterministic split of one id, stable when other rows are added or removed.

    The id hashes to a point in [0, 1); the stratum (the sub-category) salts the hash so each
    class is spread over the splits in the configured proportions, independently of the others.
    """
    digest = hashlib.sha256(f"{salt}|{stratum}|{item_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < train_fraction:
        return "train"
    if point < train_fraction + validation_fraction:
        return "validation"
    return "test"
