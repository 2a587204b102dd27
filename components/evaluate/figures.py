"""The evaluation's PNG figures: confusion matrices, attribute precision-recall curves, sample photos.

matplotlib is imported inside each function with the non-interactive Agg backend, so importing
this module costs nothing and no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.evaluate import metrics as m

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def top_classes(confusion: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the `limit` classes with the most test products (ties by index), most frequent first."""
    support = confusion.sum(axis=1)
    order = np.argsort(-support, kind="stable")
    return order[: min(limit, int((support > 0).sum()) or len(order))]


def reduce_confusion(confusion: np.ndarray, names: Sequence[str], limit: int) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of the most frequent classes, the rest pooled into one `other classes` row/column."""
    keep = top_classes(confusion, limit)
    rest = np.setdiff1d(np.arange(len(names)), keep)
    labels = [names[i] for i in keep]
    index = list(keep)
    if rest.size and confusion[rest].sum() + confusion[:, rest].sum() > 0:
        labels.append(f"other {rest.size} classes")
        groups = [np.array([i]) for i in index] + [rest]
    else:
        groups = [np.array([i]) for i in index]
    pooled = np.array([[confusion[np.ix_(r, c)].sum() for c in groups] for r in groups], dtype=np.int64)
    return pooled, labels


def confusion_figure(
    confusion: np.ndarray, names: Sequence[str], path: str | Path, title: str, limit: int = 15
) -> Path:
    """Row-normalised confusion matrix of the most frequent classes, with counts in the cells."""
    plt = _pyplot()
    matrix, labels = reduce_confusion(confusion, names, limit)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    size = max(5.0, 0.45 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, [_short(n) for n in labels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [f"{_short(n)} ({int(r)})" for n, r in zip(labels, rows[:, 0], strict=True)], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (test products)")
    ax.set_title(title, fontsize=10)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    # Long class names can push the axis label past the edge that tight_layout computed.
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return Path(path)


def pr_curves_figure(
    true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    groups: Mapping[str, Sequence[int]],
    ap: np.ndarray,
    threshold: float,
    path: str | Path,
    per_group: int = 6,
) -> Path:
    """Precision-recall curves per attribute group: its most frequent values plus the group's micro curve."""
    plt = _pyplot()
    names = list(groups)
    cols = min(2, len(names)) or 1
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 5.6 * rows), squeeze=False)
    true = np.asarray(true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    for ax, group in zip(axes.flat, names, strict=False):
        idx = np.asarray(list(groups[group]), dtype=np.int64)
        support = true[:, idx].sum(axis=0)
        for j in idx[np.argsort(-support, kind="stable")][:per_group]:
            if not true[:, j].any():
                continue
            precision, recall = m.precision_recall_curve(true[:, j], scores[:, j])
            value = labels[j].split("=", 1)[-1]
            label = f"{_short(value, 16)} (AP {ap[j]:.2f}, n={true[:, j].sum()})"
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", lw=1.3, label=label)
        if idx.size and true[:, idx].any():
            precision, recall = m.precision_recall_curve(true[:, idx].ravel(), scores[:, idx].ravel())
            micro = {"color": "black", "lw": 2, "ls": "--", "label": "all values (micro)"}
            ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", **micro)
            # Where the decision threshold sits on the micro curve.
            decided = scores[:, idx] > threshold
            tp = (decided & true[:, idx]).sum()
            if decided.sum():
                ax.plot(
                    tp / true[:, idx].sum(), tp / decided.sum(), "o", color="crimson", label=f"threshold {threshold:g}"
                )
        ax.set_title(f"{group} ({idx.size} values)", fontsize=10)
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Attribute precision-recall on the test split", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


@dataclass(frozen=True)
class Sample:
    """One photo of the sample grid and what to write above it."""

    image: np.ndarray
    true: str
    predicted: str
    correct: bool
    score: float
    notes: tuple[str, ...] = ()
    ident: str = ""


def samples_figure(samples: Sequence[Sample], path: str | Path, columns: int = 6) -> Path:
    """A grid of test photos; above each, the true and predicted labels (red when wrong) and the score."""
    plt = _pyplot()
    columns = max(1, min(columns, len(samples)))
    rows = max(1, -(-len(samples) // columns))
    # Fixed geometry: every caption gets the same four lines of room above its photo.
    cell_w, text_h, margin = 1.75, 0.72, 0.08
    aspect = samples[0].image.shape[0] / samples[0].image.shape[1] if samples else 4 / 3
    image_h = cell_w * 0.94 * aspect
    height = rows * (image_h + text_h) + margin
    fig, axes = plt.subplots(rows, columns, figsize=(cell_w * columns, height), squeeze=False)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=margin / height, top=1 - text_h / height, wspace=0.06, hspace=text_h / image_h
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples, strict=False):
        ax.imshow(sample.image, interpolation="bilinear")
        colour = "#1a7f37" if sample.correct else "#c62828"
        last = f"score {sample.score:.2f}" + (f" · id {sample.ident}" if sample.ident else "")
        lines = [f"true: {sample.true}", f"pred: {sample.predicted}", *sample.notes[:1], last]
        ax.set_title("\n".join(_short(line, 27) for line in lines), fontsize=8, color=colour, loc="left", pad=3)
        ax.axis("on")
        for spine in ax.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(2.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if not samples:
        axes.flat[0].text(0.5, 0.5, "no test photos", ha="center", va="center")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
