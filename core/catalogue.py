"""The catalogue a model learnt from: its products' ids and labels, a fingerprint of them, and the drift between two.

A `CatalogueSnapshot` is read from the ingest manifest and stored with every model
(`catalogue.json` in the model folder, logged to MLflow with it), so the next run can say what
changed since the champion was trained: products that are new, vanished or relabelled, classes
that appeared or disappeared, and the largest shifts in class shares, per level (category,
sub-category and each attribute group). Only ids and label strings are compared, never indices,
so two catalogues with different vocabularies compare correctly. Photos are not part of it: a
photo replaced under the same id is not seen.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import layouts, storage
from core.errors import StepError

FORMAT = 1
# The two class levels, as the manifest names their columns; attribute groups follow under their own names.
CLASS_LEVELS = ("category", "subcategory")
LEVEL_NAMES = {"category": "category", "subcategory": "sub-category"}
TOP_SHIFTS = 5
EXAMPLES = 10


@dataclass(frozen=True)
class CatalogueSnapshot:
    """Every product of a catalogue with its labels, as strings.

    Attributes:
        levels: the label levels, in order: `category`, `subcategory`, then each attribute column.
        products: id -> one label per level (an empty string where the product has no value).
    """

    levels: tuple[str, ...]
    products: dict[str, tuple[str, ...]]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]], attribute_columns: Sequence[str]) -> CatalogueSnapshot:
        """A snapshot of manifest rows (`id`, `category`, `subcategory` and the attribute columns)."""
        levels = (*CLASS_LEVELS, *attribute_columns)
        products = {str(r["id"]): tuple((r.get(level) or "").strip() for level in levels) for r in rows}
        return cls(levels, products)

    @classmethod
    def from_manifest(cls, manifest_uri: str, attribute_columns: Sequence[str]) -> CatalogueSnapshot:
        """A snapshot of the ingest manifest at `manifest_uri` (`manifest.csv` or the ingest folder holding it).

        Raises:
            StepError: the manifest cannot be read or has no id/category/subcategory columns.
        """
        uri = str(manifest_uri)
        if not uri.endswith(".csv"):
            uri = storage.join(uri, layouts.MANIFEST)
        try:
            text = storage.read_bytes(uri).decode("utf-8")
        except (storage.StorageError, OSError, ValueError) as err:
            raise StepError(f"the ingest manifest {uri} cannot be read: {err}") from err
        reader = csv.DictReader(io.StringIO(text))
        missing = {"id", *CLASS_LEVELS} - set(reader.fieldnames or ())
        if missing:
            raise StepError(f"{uri} has no {', '.join(sorted(missing))} column: is it an ingest manifest?")
        return cls.from_rows(reader, attribute_columns)

    def fingerprint(self) -> str:
        """A hash of the ids and labels alone: equal for the same products with the same labels, in any order."""
        digest = hashlib.sha256("\t".join(self.levels).encode() + b"\n")
        for item_id in sorted(self.products):
            digest.update("\t".join((item_id, *self.products[item_id])).encode() + b"\n")
        return digest.hexdigest()

    def counts(self, level: str) -> Counter[str]:
        """Products per label of one level (products without a value left out)."""
        i = self.levels.index(level)
        return Counter(labels[i] for labels in self.products.values() if labels[i])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as `catalogue.json` holds it."""
        products = {k: list(v) for k, v in self.products.items()}
        return {"format": FORMAT, "levels": list(self.levels), "products": products}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CatalogueSnapshot:
        """Inverse of `to_dict`."""
        levels = tuple(str(x) for x in data["levels"])
        return cls(levels, {str(k): tuple(str(x) for x in v) for k, v in data["products"].items()})

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the snapshot as JSON, with `extra` top-level entries (e.g. the training fingerprint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**extra, **self.to_dict()}, separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CatalogueSnapshot:
        """Read a snapshot written by `save`.

        Raises:
            StepError: the file is not a catalogue snapshot.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise StepError(f"{path} is not a readable catalogue snapshot ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class LevelDrift:
    """How one level's classes changed.

    Attributes:
        level: `category`, `subcategory` or an attribute column.
        classes_before: distinct labels in the old catalogue.
        classes_after: distinct labels in the new one.
        appeared: label -> products in the new catalogue, for labels the old one did not have.
        disappeared: label -> products in the old catalogue, for labels the new one no longer has.
        relabelled: products in both catalogues whose label of this level changed.
        shifts: the largest changes of a label's share of the products, largest first:
            `{"label", "before", "after", "change"}` (shares in [0, 1]).
    """

    level: str
    classes_before: int
    classes_after: int
    appeared: dict[str, int] = field(default_factory=dict)
    disappeared: dict[str, int] = field(default_factory=dict)
    relabelled: int = 0
    shifts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogueDrift:
    """What changed between the catalogue a model learnt from (`before`) and a new one (`after`).

    Attributes:
        products_before: products in the old catalogue.
        products_after: products in the new one.
        new: products whose id the old catalogue did not have.
        vanished: products of the old catalogue the new one no longer has.
        relabelled: products in both whose labels differ at any level.
        levels: per level, in order.
        relabelled_examples: a few relabelled products: `{"id", "level", "before", "after"}`.
    """

    products_before: int
    products_after: int
    new: int
    vanished: int
    relabelled: int
    levels: list[LevelDrift]
    relabelled_examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether any product was added, removed or relabelled."""
        return bool(self.new or self.vanished or self.relabelled)

    def level(self, name: str) -> LevelDrift:
        """The drift of one level."""
        return next(d for d in self.levels if d.level == name)

    def summary(self) -> str:
        """One line for a console or a tag: products new, vanished and relabelled; classes that came and went."""
        if not self.changed:
            return f"no product added, removed or relabelled ({self.products_after:,} products)"
        parts = [
            f"{self.products_before:,} -> {self.products_after:,} products: +{self.new:,} new, "
            f"-{self.vanished:,} vanished, {self.relabelled:,} relabelled"
        ]
        for name in CLASS_LEVELS:
            drift = self.level(name)
            classes = []
            if drift.appeared:
                classes.append(f"+{len(drift.appeared)} ({_names(drift.appeared)})")
            if drift.disappeared:
                classes.append(f"-{len(drift.disappeared)} ({_names(drift.disappeared)})")
            if classes:
                parts.append(f"{LEVEL_NAMES[name]} classes " + ", ".join(classes))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "changed": self.changed, "summary": self.summary()}


def _names(labels: Mapping[str, int], limit: int = 3) -> str:
    names = sorted(labels, key=lambda k: (-labels[k], k))
    return ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "")


def _level_drift(level: str, i: int, before: CatalogueSnapshot, after: CatalogueSnapshot, top: int) -> LevelDrift:
    old, new = before.counts(level), after.counts(level)
    old_total, new_total = max(sum(old.values()), 1), max(sum(new.values()), 1)
    shifts = []
    for label in set(old) | set(new):
        share_before, share_after = old[label] / old_total, new[label] / new_total
        if share_before != share_after:
            before_, after_ = round(share_before, 6), round(share_after, 6)
            shifts.append({"label": label, "before": before_, "after": after_, "change": round(after_ - before_, 6)})
    shifts.sort(key=lambda s: (-abs(s["change"]), s["label"]))
    common = before.products.keys() & after.products.keys()
    return LevelDrift(
        level=level,
        classes_before=len(old),
        classes_after=len(new),
        appeared={k: new[k] for k in sorted(set(new) - set(old))},
        disappeared={k: old[k] for k in sorted(set(old) - set(new))},
        relabelled=sum(before.products[k][i] != after.products[k][i] for k in common),
        shifts=shifts[:top],
    )


def compare(before: CatalogueSnapshot, after: CatalogueSnapshot, top: int = TOP_SHIFTS) -> CatalogueDrift:
    """The drift from the catalogue `before` (the champion's training data) to `after` (the new one).

    Levels are compared by name: an attribute column only one of the two has counts as all new
    (or all gone) classes of that level.
    """
    levels = list(after.levels) + [level for level in before.levels if level not in after.levels]
    padded_before = _pad(before, levels)
    padded_after = _pad(after, levels)
    common = sorted(padded_before.products.keys() & padded_after.products.keys(), key=_id_key)
    relabelled = [k for k in common if padded_before.products[k] != padded_after.products[k]]
    examples = []
    for item_id in relabelled[:EXAMPLES]:
        for i, level in enumerate(levels):
            old, new = padded_before.products[item_id][i], padded_after.products[item_id][i]
            if old != new:
                examples.append({"id": item_id, "level": level, "before": old, "after": new})
                break
    return CatalogueDrift(
        products_before=len(before.products),
        products_after=len(after.products),
        new=len(after.products.keys() - before.products.keys()),
        vanished=len(before.products.keys() - after.products.keys()),
        relabelled=len(relabelled),
        levels=[_level_drift(level, i, padded_before, padded_after, top) for i, level in enumerate(levels)],
        relabelled_examples=examples,
    )


def _pad(snapshot: CatalogueSnapshot, levels: Sequence[str]) -> CatalogueSnapshot:
    """The snapshot with `levels` in that order, empty labels for the levels it lacks."""
    if tuple(levels) == snapshot.levels:
        return snapshot
    index = [snapshot.levels.index(level) if level in snapshot.levels else None for level in levels]
    products = {k: tuple("" if i is None else v[i] for i in index) for k, v in snapshot.products.items()}
    return CatalogueSnapshot(tuple(levels), products)


def _id_key(item_id: str) -> tuple[int, str]:
    return (int(item_id), "") if item_id.isdigit() else (1 << 62, item_id)
