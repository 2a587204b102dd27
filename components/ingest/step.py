"""The ingest step: from a catalogue source to a manifest of usable, labelled photos and a full report.

Every input row and every photo is accounted for in `ingest_report.json`: usable, or excluded
for a named reason with the offending ids. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.ingest.catalog import CatalogError, read_catalog
from components.ingest.checks import check_images, extract_and_check
from components.ingest.sources import ZipLimits, open_source
from core import layouts
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema, assign_split, build_schema
from core.progress import Progress

log = logging.getLogger(__name__)

MANIFEST_BASE_COLUMNS = [
    "id",
    "image_uri",
    "split",
    "category",
    "subcategory",
    "category_index",
    "subcategory_index",
    "attribute_indices",
]
# Exclusion reasons, in the order they are applied: a row is counted under the first that hits.
EXCLUSIONS = (
    "malformed_rows",
    "duplicate_ids",
    "rows_without_image",
    "corrupt_images",
    "missing_labels",
    "rare_classes",
)


@dataclass
class IngestResult:
    """What ingestion produced: paths and the report."""

    out_dir: Path
    manifest_path: Path
    report_path: Path
    labels_path: Path
    report: dict[str, Any]

    @property
    def usable(self) -> int:
        """Number of usable photos in the manifest."""
        return int(self.report["usable"]["count"])


def _entry(ids: list[str], **extra: Any) -> dict[str, Any]:
    return {"count": len(ids), "ids": ids, **extra}


def _apply_rare_policy(
    rows: list[dict[str, str]], columns: tuple[str, str], min_count: int, policy: str, other: str
) -> tuple[list[dict[str, str]], list[str], dict[str, dict[str, int]]]:
    """Exclude (or merge into `other`) classes with fewer than `min_count` rows, until stable."""
    excluded: list[str] = []
    rare: dict[str, dict[str, int]] = {c: {} for c in columns}
    while True:
        changed = False
        for column in columns:
            counts = Counter(r[column] for r in rows)
            small = {k: v for k, v in counts.items() if v < min_count and k != other}
            if not small:
                continue
            changed = True
            for k, v in small.items():
                rare[column][k] = rare[column].get(k, 0) + v
            if policy == "exclude":
                excluded += [r["id"] for r in rows if r[column] in small]
                rows = [r for r in rows if r[column] not in small]
            else:
                rows = [{**r, column: other} if r[column] in small else r for r in rows]
        if not changed:
            return rows, excluded, {c: dict(sorted(v.items())) for c, v in rare.items()}


def ingest_catalogue(source_uri: str, out_dir: str | Path, config: Config) -> IngestResult:
    """Read, check and label a catalogue; write manifest.csv, labels.json and ingest_report.json.

    Args:
        source_uri: a folder, a `.zip`, or a `gs://bucket/prefix` in the Kaggle layout.
        out_dir: output folder (created); a zip's photos are extracted to `out_dir/images`.
        config: the resolved run configuration (`data` and `labels` sections are used).

    Returns:
        The written paths and the report.

    Raises:
        StepError: the source is unreadable, or the usable share is below
            `config.data.min_usable_fraction` (the report is written first, so it can be read).

    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StepError(f"cannot create the output folder {out}: {err.strerror}; choose another --out") from err
    labels_cfg = config.labels
    data_cfg = config.data
    limits = ZipLimits(
        max_member_bytes=int(data_cfg.max_member_mb * 2**20),
        max_total_bytes=int(data_cfg.max_archive_gb * 2**30),
        max_compression_ratio=data_cfg.max_compression_ratio,
    )
    source = open_source(source_uri, out, limits)
    try:
        catalog = read_catalog(source.styles_text)
    except CatalogError as err:
        raise StepError(f"{source_uri}: {err}") from err
    label_columns = [labels_cfg.category, labels_cfg.subcategory, *labels_cfg.attributes]
    missing_columns = [c for c in label_columns if c not in catalog.columns]
    if missing_columns:
        raise StepError(
            f"{source_uri}: styles.csv has no column(s) {', '.join(missing_columns)} "
            f"(found: {', '.join(catalog.columns)}); fix labels.* in the config"
        )
    log.info("read %d rows from %s (%d repaired)", len(catalog.rows), source_uri, len(catalog.repaired))

    seen: set[str] = set()
    duplicate_ids: list[str] = []
    rows: list[dict[str, str]] = []
    for row in catalog.rows:
        if row["id"] in seen:
            duplicate_ids.append(row["id"])
            continue
        seen.add(row["id"])
        rows.append(row)

    without_image = [r["id"] for r in rows if r["id"] not in source.images]
    rows = [r for r in rows if r["id"] in source.images]
    images_without_row = sorted(set(source.images) - seen, key=_id_key)

    uris = [source.images[r["id"]] for r in rows]
    checking = Progress("checking photos", len(uris), "photos")

    def _progress(done: int, total: int, seconds: float) -> None:
        checking.update(done, f"{done / max(seconds, 1e-9):.0f} photos/s")

    if source.zip_path:
        log.info("extracting and checking %d photos from %s into %s", len(uris), source.zip_path, out / "images")
        checks = extract_and_check(
            source.zip_path,
            [(source.zip_members[u], u) for u in uris],
            min_side=config.data.min_image_side,
            workers=config.data.validation_workers,
            progress=_progress,
            max_member_bytes=limits.max_member_bytes,
        )
    else:
        checks = check_images(
            uris, min_side=config.data.min_image_side, workers=config.data.validation_workers, progress=_progress
        )
    checking.finish()
    corrupt = {r["id"]: c.error for r, c in zip(rows, checks, strict=True) if not c.ok}
    rows = [r for r in rows if r["id"] not in corrupt]

    by_column: dict[str, list[str]] = {c: [] for c in label_columns}
    for r in rows:
        for c in label_columns:
            if not r.get(c):
                by_column[c].append(r["id"])
    level_missing = set(by_column[labels_cfg.category]) | set(by_column[labels_cfg.subcategory])
    any_missing = sorted({i for ids in by_column.values() for i in ids}, key=_id_key)
    rows = [r for r in rows if r["id"] not in level_missing]

    rows, rare_excluded, rare = _apply_rare_policy(
        rows,
        (labels_cfg.category, labels_cfg.subcategory),
        labels_cfg.min_class_count,
        labels_cfg.rare_policy,
        labels_cfg.other_label,
    )
    schema = build_schema(
        rows,
        labels_cfg.category,
        labels_cfg.subcategory,
        labels_cfg.attributes,
        min_attribute_count=labels_cfg.min_class_count,
    )
    attribute_counts = {c: Counter(r[c] for r in rows if r.get(c)) for c in labels_cfg.attributes}
    rare_attribute_values = {
        c: {v: n for v, n in sorted(counts.items()) if n < labels_cfg.min_class_count}
        for c, counts in attribute_counts.items()
    }

    manifest_rows = _manifest_rows(rows, schema, source.images, config)
    report = {
        "source": source_uri,
        "rows": {"count": len(catalog.rows) + len(catalog.malformed)},
        "images": {"count": len(source.images) + len(source.duplicate_images)},
        "usable": {
            "count": len(manifest_rows),
            "splits": dict(Counter(m["split"] for m in manifest_rows)),
        },
        "malformed_rows": {
            "count": len(catalog.malformed),
            "ids": [],
            "lines": [{"line": n, "reason": why, "text": raw[:200]} for n, why, raw in catalog.malformed],
        },
        "repaired_rows": _entry(catalog.repaired, note="unquoted commas in the free-text column, re-joined"),
        "duplicate_ids": _entry(duplicate_ids, note="later rows with an id already seen are excluded"),
        "rows_without_image": _entry(without_image),
        "images_without_row": _entry(images_without_row, note="photos with no catalogue row are not used"),
        "duplicate_images": {"count": len(source.duplicate_images), "uris": source.duplicate_images},
        "corrupt_images": _entry(sorted(corrupt, key=_id_key), errors=corrupt),
        "missing_labels": _entry(
            any_missing,
            excluded=sorted(level_missing, key=_id_key),
            by_column={c: ids for c, ids in by_column.items() if ids},
            note="an empty category/sub-category excludes the row; an empty attribute leaves that group unset",
        ),
        "rare_classes": _entry(
            rare_excluded,
            min_count=labels_cfg.min_class_count,
            policy=labels_cfg.rare_policy,
            classes=rare,
            attribute_values_left_out=rare_attribute_values,
        ),
        "labels": {k: v for k, v in schema.sizes.items()},
        "styles_csv": {"encoding": source.encoding, "fallback": source.encoding_fallback},
        "ignored_files": _entry(
            [e["name"] for e in source.ignored],
            reasons={e["name"]: e["reason"] for e in source.ignored},
            note="files of the source that are not catalogue photos; none of them was extracted or read",
        ),
    }
    if source.zip_path:
        archive = dict(source.archive)
        images = archive.pop("candidates")
        report["archive"] = {
            **archive,
            "images": images,
            "ignored": source.ignored,
            "balanced": archive["members"] == archive["styles"] + images + archive["directories"] + len(source.ignored),
        }
    excluded = {
        "malformed_rows": len(catalog.malformed),
        "duplicate_ids": len(duplicate_ids),
        "rows_without_image": len(without_image),
        "corrupt_images": len(corrupt),
        "missing_labels": len(level_missing),
        "rare_classes": len(rare_excluded),
    }
    report["accounting"] = {
        "rows": report["rows"]["count"],
        "usable": len(manifest_rows),
        "excluded": excluded,
        "balanced": report["rows"]["count"] == len(manifest_rows) + sum(excluded.values()),
        "images": report["images"]["count"],
        "images_used": len(manifest_rows),
        "images_unused": {
            "images_without_row": len(images_without_row),
            "duplicate_images": len(source.duplicate_images),
            "corrupt_images": len(corrupt),
            "label_excluded": len(level_missing) + len(rare_excluded),
        },
    }
    report["usable_fraction"] = len(manifest_rows) / max(report["rows"]["count"], 1)

    _write_manifest(out / layouts.MANIFEST, manifest_rows, labels_cfg.attributes)
    schema.save(out / layouts.LABELS)
    config.save(out / layouts.CONFIG)
    report_path = out / layouts.INGEST_REPORT
    report_path.write_text(json.dumps(report, indent=2))
    log.info("usable %d of %d rows; report at %s", len(manifest_rows), report["rows"]["count"], report_path)
    if report["usable_fraction"] < config.data.min_usable_fraction:
        raise StepError(
            f"only {len(manifest_rows)} of {report['rows']['count']} rows are usable "
            f"({report['usable_fraction']:.1%} < data.min_usable_fraction "
            f"{config.data.min_usable_fraction:.0%}); see {report_path} for each excluded id"
        )
    return IngestResult(out, out / layouts.MANIFEST, report_path, out / layouts.LABELS, report)


def _id_key(item_id: str) -> tuple[int, str]:
    return (int(item_id), "") if item_id.isdigit() else (1 << 62, item_id)


def _manifest_rows(
    rows: list[dict[str, str]], schema: LabelSchema, images: dict[str, str], config: Config
) -> list[dict[str, str]]:
    labels_cfg = config.labels
    out = []
    for r in sorted(rows, key=lambda r: _id_key(r["id"])):
        cat, sub, attrs = schema.encode(r)
        out.append(
            {
                "id": r["id"],
                "image_uri": images[r["id"]],
                "split": assign_split(
                    r["id"],
                    r[labels_cfg.subcategory],
                    labels_cfg.train_fraction,
                    labels_cfg.validation_fraction,
                    labels_cfg.split_salt,
                ),
                "category": r[labels_cfg.category],
                "subcategory": r[labels_cfg.subcategory],
                "category_index": str(cat),
                "subcategory_index": str(sub),
                "attribute_indices": " ".join(map(str, attrs)),
                **{c: r.get(c, "") for c in labels_cfg.attributes},
            }
        )
    return out


def _write_manifest(path: Path, rows: list[dict[str, str]], attribute_columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_BASE_COLUMNS + list(attribute_columns))
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(manifest_dir: str | Path) -> list[dict[str, str]]:
    """The rows of an ingest output's manifest.csv."""
    path = Path(manifest_dir) / layouts.MANIFEST
    if not path.is_file():
        raise StepError(f"{path} not found: run `fashion ingest` first and pass its --out folder")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def summarize(report: dict[str, Any]) -> str:
    """A short human-readable account of an ingest report."""
    acc = report["accounting"]
    lines = [
        f"source: {report['source']}",
        f"rows: {acc['rows']}   photos: {acc['images']}   usable: {acc['usable']} ({report['usable_fraction']:.1%})",
        "splits: " + ", ".join(f"{k} {v}" for k, v in sorted(report["usable"]["splits"].items())),
        "labels: " + ", ".join(f"{k} {v}" for k, v in report["labels"].items()),
        "excluded rows: "
        + (", ".join(f"{k} {v}" for k, v in acc["excluded"].items() if v) or "none")
        + f"   (accounting {'balanced' if acc['balanced'] else 'NOT balanced'})",
    ]
    notes = [
        f"{k} {report[k]['count']}"
        for k in ("repaired_rows", "images_without_row", "duplicate_images")
        if report[k]["count"]
    ]
    if report["missing_labels"]["count"]:
        notes.append(f"rows with an empty label cell {report['missing_labels']['count']}")
    if report.get("ignored_files", {}).get("count"):
        notes.append(f"files that are not catalogue photos {report['ignored_files']['count']} (see ignored_files)")
    if report.get("styles_csv", {}).get("fallback"):
        notes.append("styles.csv is not UTF-8 and was read as Latin-1")
    if notes:
        lines.append("also: " + ", ".join(notes))
    return "\n".join(lines)
