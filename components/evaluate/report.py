"""The readable evaluation report: one document, rendered as self-contained HTML and as Markdown.

The content is built once, one function per section, as a list of blocks (headings, paragraphs,
tables, figures), and each renderer writes it in its format: the HTML page embeds the figures as
base64 PNGs so it is one file a browser, kfp's HTML viewer or MLflow can show; the Markdown links
the PNGs next to it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.evaluate.evaluation import WORST_MIN_SUPPORT, Evaluation
from components.evaluate.gate import GateDecision
from components.evaluate.scalars import describe, group_key

if TYPE_CHECKING:
    from components.evaluate.champion import ChampionScore
    from core.catalogue import CatalogueDrift


@dataclass(frozen=True)
class Heading:
    """A section title (level 1 or 2)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A line of prose; `tone` (`good`/`bad`) colours it in HTML."""

    text: str
    tone: str = ""


@dataclass(frozen=True)
class Table:
    """A table; cells are already formatted strings."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG next to the report."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Tiles:
    """Headline figures, (label, value) pairs: tiles in HTML, a one-row table in Markdown."""

    items: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Row:
    """Blocks shown side by side in HTML (one after another in Markdown)."""

    blocks: Sequence[Any]


@dataclass(frozen=True)
class Details:
    """A collapsible block (HTML) / a plain section (Markdown)."""

    summary: str
    blocks: Sequence[Any] = field(default_factory=list)


FIGURE_CAPTIONS = {
    "confusion_subcategory": "Sub-category confusion matrix of the most frequent classes "
    "(rows: true class, normalised)",
    "confusion_category": "Category confusion matrix of the most frequent classes (rows: true class, normalised)",
    "attribute_pr_curves": "Attribute precision-recall curves per group, with the decision threshold",
    "samples": "Test photos, mistakes first (red: category or sub-category wrong, green: both right)",
}


def pct(value: float | None) -> str:
    """0.8731 -> `87.3%`; None -> `n/a`."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


# The levels in the order the report shows them: the finer, harder one first.
SHOWN_LEVELS = (("subcategory", "sub-categories"), ("category", "categories"))


def _cell(value: Any) -> str:
    """A detail record's value as a table cell: names as they are, counts as integers, ratios as percentages."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return pct(value)


def _record_table(records: Sequence[dict], columns: Sequence[tuple[str, str]], caption: str = "") -> Table:
    """One row per detail record (a class, a label, a mistake); `columns` are (heading, record key) pairs."""
    return Table([heading for heading, _ in columns], [[_cell(r[key]) for _, key in columns] for r in records], caption)


def _scalar_rows(scalars: dict[str, float], prefixes: Sequence[str], metrics: Sequence[tuple[str, str]]) -> list:
    """One row per (label, scalar name) pair of `metrics`: the label, then the scalar under each prefix."""
    return [[label, *(pct(scalars[prefix + key]) for prefix in prefixes)] for label, key in metrics]


def _fixed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() and value > 1 else f"{value:.4f}"


# -- sections -------------------------------------------------------------------------------------


def _title_blocks(evaluation: Evaluation, context: dict[str, str]) -> list[Any]:
    s = evaluation.scalars
    decoding = "hierarchy-aware joint decoding" if evaluation.decoding == "joint" else "independent arg-max per level"
    summary = (
        f"{evaluation.details['num_test_examples']:,} test products. Headline figures use {decoding}; attributes "
        f"are predicted when their score is above {evaluation.threshold:g}."
    )
    tiles = [
        ("category accuracy", "category_accuracy"),
        ("sub-category accuracy", "subcategory_accuracy"),
        ("sub-category OF1", "subcategory_of1"),
        ("attributes OF1", "attributes_of1"),
        ("attributes mAP", "attributes_map"),
        ("hierarchy consistency", "hierarchy_consistency"),
    ]
    return [
        Heading("Model evaluation on the test split", 1),
        *(Paragraph(f"{k}: {v}") for k, v in context.items()),
        Paragraph(summary),
        Tiles([(label, pct(s[key])) for label, key in tiles]),
    ]


def _gate_blocks(gate: GateDecision) -> list[Any]:
    verdict = "BLESSED: may replace the champion" if gate.blessed else "NOT BLESSED: production keeps the champion"
    blocks: list[Any] = [
        Heading(f"Gate: {verdict}"),
        Paragraph(gate.reason.split("; ")[0], "good" if gate.blessed else "bad"),
    ]
    if gate.checks:
        rows = [
            [
                c.metric,
                c.kind,
                _fixed(c.value),
                _fixed(c.reference),
                _fixed(c.bound),
                "skipped" if c.skipped else ("pass" if c.passed else "FAIL"),
                c.message,
            ]
            for c in gate.checks
        ]
        columns = ["metric", "check", "value", "floor / champion", "least passing", "result", "detail"]
        blocks.append(Table(columns, rows))
    return blocks


# The metrics the champion comparison shows, after the gated ones.
COMPARED = (
    ("category accuracy", "category_accuracy"),
    ("sub-category accuracy", "subcategory_accuracy"),
    ("category OF1", "category_of1"),
    ("sub-category OF1", "subcategory_of1"),
    ("sub-category macro-F1", "subcategory_macro_f1"),
    ("sub-category top-5 accuracy", "subcategory_top5_accuracy"),
    ("attributes OF1", "attributes_of1"),
    ("attributes mAP", "attributes_map"),
    ("attribute groups accuracy", "attributes_group_accuracy"),
    ("hierarchy consistency", "hierarchy_consistency"),
)


def _few(counts: dict[str, int] | list[str], limit: int = 5) -> str:
    """`Shirts (12), Tops (3), +2 more` from label counts, or the first labels of a list."""
    if isinstance(counts, dict):
        names = [f"{k} ({v:,})" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        names = list(counts)
    return ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "") or "none"


def _champion_blocks(evaluation: Evaluation, gate: GateDecision, champion: ChampionScore) -> list[Any]:
    ours, theirs = evaluation.scalars, champion.scalars
    n = evaluation.details["num_test_examples"]
    gated = [c.metric for c in gate.checks if c.kind == "champion" and not c.skipped]
    labels = dict((key, label) for label, key in COMPARED)
    keys = [*gated, *(key for _, key in COMPARED if key not in gated)]
    rows = [
        [
            labels.get(key, key) + (" (gated)" if key in gated else ""),
            pct(ours[key]),
            pct(theirs[key]),
            f"{100 * (ours[key] - theirs[key]):+.1f} pts",
        ]
        for key in keys
        if key in ours and key in theirs
    ]
    prose = [
        Paragraph(
            f"Both models answered the same {n:,} test photos in this step; the gate's tolerances apply to "
            f"this comparison. Champion: {champion.champion.description}."
        )
    ]
    if champion.unknown_products:
        unknown, count = champion.unknown, champion.unknown_products
        photos = "1 test photo is of a class" if count == 1 else f"{count:,} test photos are of classes"
        prose.append(
            Paragraph(
                f"{photos} the champion does not know (sub-categories: {_few(unknown.get('subcategory', {}))}; "
                f"categories: {_few(unknown.get('category', {}))}): "
                f"{'it counts as its error' if count == 1 else 'they count as its errors'}."
            )
        )
    retired = {level: labels for level, labels in champion.retired.items() if labels and level != "attributes"}
    if retired:
        listed = "; ".join(f"{level}: {_few(names)}" for level, names in retired.items())
        prose.append(
            Paragraph(
                f"The champion also knows classes the catalogue no longer has ({listed}): "
                "answering one of them is always wrong."
            )
        )
    if champion.resized:
        prose.append(Paragraph(f"The test photos were resized for the champion's input ({champion.resized})."))
    table = Table(["metric", "challenger", "champion", "challenger - champion"], rows)
    return [Heading("Challenger vs champion on the same test photos"), *prose, table]


def _drift_blocks(drift: CatalogueDrift | None, note: str) -> list[Any]:
    heading = Heading("Catalogue drift since the champion's training data")
    if drift is None:
        return [heading, Paragraph(note)] if note else []
    tiles = Tiles(
        [
            ("products then -> now", f"{drift.products_before:,} -> {drift.products_after:,}"),
            ("new products", f"{drift.new:,}"),
            ("vanished products", f"{drift.vanished:,}"),
            ("relabelled products", f"{drift.relabelled:,}"),
        ]
    )
    names = {"category": "category", "subcategory": "sub-category"}
    rows = []
    for level in drift.levels:
        shifts = "; ".join(
            f"{s['label']} {pct(s['before'])} -> {pct(s['after'])} ({100 * s['change']:+.1f} pts)"
            for s in level.shifts[:3]
        )
        rows.append(
            [
                names.get(level.level, level.level),
                f"{level.classes_before} -> {level.classes_after}",
                _few(level.appeared),
                _few(level.disappeared),
                f"{level.relabelled:,}",
                shifts or "none",
            ]
        )
    columns = ["level", "classes then -> now", "appeared", "disappeared", "relabelled products", "largest share shifts"]
    blocks: list[Any] = [heading, Paragraph(drift.summary()), tiles, Table(columns, rows)]
    if drift.relabelled_examples:
        examples = [
            [e["id"], names.get(e["level"], e["level"]), e["before"], e["after"]] for e in drift.relabelled_examples
        ]
        blocks.append(Table(["product", "level", "was", "is now"], examples, "Some relabelled products"))
    return blocks


def unchanged_blocks(message: str, champion: str, force: str) -> list[Any]:
    """The report of a run whose training was skipped: why, and how to retrain anyway."""
    blocks: list[Any] = [
        Heading("Not retrained: nothing new to learn", 1),
        Paragraph(f"NOT EVALUATED: {message}", "bad"),
        Paragraph(
            "No model was trained, so there is nothing to evaluate or deploy: production keeps "
            f"{'the champion (' + champion + ')' if champion else 'the champion'}."
        ),
    ]
    if force:
        blocks.append(Paragraph(f"To retrain anyway: {force}."))
    return blocks


def _level_blocks(evaluation: Evaluation, fig: dict[str, Figure]) -> list[Any]:
    s = evaluation.scalars
    d = evaluation.details
    metrics = [
        ("accuracy", "accuracy"),
        ("top-5 accuracy", "top5_accuracy"),
        ("OP (precision, support-weighted)", "op"),
        ("OR (recall, support-weighted)", "or"),
        ("OF1 (F1, support-weighted)", "of1"),
        ("macro-F1", "macro_f1"),
    ]
    classes = [
        "classes in the test split / in the model",
        *(f"{d[level]['classes_in_test']} / {d[level]['classes']}" for level in ("category", "subcategory")),
    ]
    rows = [*_scalar_rows(s, ("category_", "subcategory_"), metrics), classes]
    blocks: list[Any] = [Heading("Category and sub-category"), Table(["metric", "category", "sub-category"], rows)]
    worst_columns = [
        ("class", "name"),
        ("F1", "f1"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("test products", "support"),
        ("predicted", "predicted"),
    ]
    for level, label in SHOWN_LEVELS:
        pair = []
        if d[level]["worst"]:
            caption = f"Weakest {label}: lowest F1 among classes with at least {WORST_MIN_SUPPORT} test products"
            pair.append(_record_table(d[level]["worst"], worst_columns, caption))
        if d[level]["top_confusions"]:
            columns = [("true", "true"), ("predicted as", "predicted"), ("products", "count")]
            pair.append(_record_table(d[level]["top_confusions"], columns, f"Most frequent mistakes between {label}"))
        if pair:
            blocks += [Heading(f"Where the {label} go wrong"), Row(pair)]
        if f"confusion_{level}" in fig:
            blocks.append(fig[f"confusion_{level}"])
    return blocks


def _decoding_blocks(evaluation: Evaluation) -> list[Any]:
    n = evaluation.details["num_test_examples"]
    h = evaluation.details["hierarchy"]
    prose = (
        f"Joint decoding picks the (category, sub-category) pair with the highest product of "
        f"probabilities among the {h['allowed_pairs']} pairs of the category tree; it changed the "
        f"answer for {h['joint_changed_products']:,} of {n:,} products. Independent decoding gave "
        f"{h['independent_inconsistent_products']:,} pairs that the tree does not contain."
    )
    metrics = [
        ("category accuracy", "category_accuracy"),
        ("sub-category accuracy", "subcategory_accuracy"),
        ("category OF1", "category_of1"),
        ("sub-category OF1", "subcategory_of1"),
        ("sub-category macro-F1", "subcategory_macro_f1"),
        ("hierarchy consistency", "hierarchy_consistency"),
    ]
    rows = _scalar_rows(evaluation.scalars, ("independent_", "joint_"), metrics)
    pair = [Table(["metric", "independent", "joint"], rows)]
    if h["top_inconsistent_pairs"]:
        columns = [("predicted category", "category"), ("predicted sub-category", "subcategory"), ("products", "count")]
        caption = "Most frequent pairs outside the tree (independent decoding)"
        pair.append(_record_table(h["top_inconsistent_pairs"], columns, caption))
    return [Heading("Independent vs hierarchy-aware decoding"), Paragraph(prose), Row(pair)]


def _attribute_blocks(evaluation: Evaluation, fig: dict[str, Figure]) -> list[Any]:
    a = evaluation.details["attributes"]
    t = f"{evaluation.threshold:g}"
    metrics = [
        (f"OP (micro precision at {t})", "op"),
        (f"OR (micro recall at {t})", "or"),
        (f"OF1 (micro F1 at {t})", "of1"),
        ("CP (per-label precision, mean)", "cp"),
        ("CR (per-label recall, mean)", "cr"),
        ("CF1", "cf1"),
        ("P@k (k = true labels of the product)", "precision_at_k"),
        ("R@k", "recall_at_k"),
        ("F1@k", "f1_at_k"),
        ("mAP (mean average precision)", "map"),
    ]
    groups = [
        [group, str(len(evaluation.schema.attribute_groups[group])), pct(g["accuracy"]), f"{g['evaluated']:,}"]
        for group, g in a["groups"].items()
    ]
    group_table = Table(
        ["attribute group", "values", "arg-max accuracy", "products with a value"],
        groups,
        "Per attribute group: is the highest-scoring value a true one?",
    )
    blocks: list[Any] = [
        Heading("Attributes"),
        Row([Table(["metric", "value"], _scalar_rows(evaluation.scalars, ("attributes_",), metrics)), group_table]),
    ]
    skipped = a["at_k"]["skipped_without_labels"]
    if skipped:
        blocks.append(Paragraph(f"{skipped:,} products without any true attribute are not scored at k."))
    labels = [r for r in a["per_label"] if r["ap"] is not None and r["support"] >= WORST_MIN_SUPPORT]
    if labels:
        columns = [
            ("value", "name"),
            ("AP", "ap"),
            (f"precision at {t}", "precision"),
            ("recall", "recall"),
            ("test products", "support"),
        ]
        caption = (
            f"Weakest attribute values: lowest average precision among values with at least "
            f"{WORST_MIN_SUPPORT} test products"
        )
        blocks.append(_record_table(sorted(labels, key=lambda r: (r["ap"], -r["support"]))[:10], columns, caption))
    if "attribute_pr_curves" in fig:
        blocks.append(fig["attribute_pr_curves"])
    return blocks


def _per_class_blocks(evaluation: Evaluation) -> list[Any]:
    d = evaluation.details
    counts = [("test products", "support"), ("predicted", "predicted")]
    ratios = [("precision", "precision"), ("recall", "recall"), ("F1", "f1")]
    tables = [
        (f"All {label}", d[level]["per_class"], [("class", "name"), *counts, *ratios]) for level, label in SHOWN_LEVELS
    ]
    label_columns = [
        ("value", "name"),
        ("test products", "support"),
        (f"predicted at {evaluation.threshold:g}", "predicted"),
        *ratios,
        ("AP", "ap"),
    ]
    tables.append(("All attribute values", d["attributes"]["per_label"], label_columns))
    blocks: list[Any] = [Heading("Per class")]
    for title, records, columns in tables:
        rows = sorted(records, key=lambda r: (-r["support"], r["name"]))
        blocks.append(Details(f"{title} ({len(rows)}), by test products", [_record_table(rows, columns)]))
    return blocks


def _glossary_blocks(evaluation: Evaluation) -> list[Any]:
    glossary = describe()
    for group in evaluation.schema.attribute_groups:
        glossary[group_key(group)] = f"{group}: share of products whose highest-scoring {group} value is a true one"
    glossary.pop("attributes_<group>_accuracy", None)
    rows = [[k, _fmt(evaluation.scalars.get(k)), v] for k, v in glossary.items()]
    summary = "Metric names (metrics.json scalars, MLflow test.<name>, gate floors and tolerances)"
    return [Details(summary, [Table(["name", "value", "meaning"], rows)])]


def build_blocks(
    evaluation: Evaluation,
    gate: GateDecision,
    figures: dict[str, Path],
    context: dict[str, str],
    champion: ChampionScore | None = None,
    drift: CatalogueDrift | None = None,
    drift_note: str = "",
) -> list:
    """The report's content.

    Args:
        evaluation: the metrics.
        gate: the gate decision.
        figures: figure name (`confusion_category`, `confusion_subcategory`, `attribute_pr_curves`,
            `samples`) -> PNG path; missing ones are left out.
        context: `model`, `data` and other lines to show under the title.
        champion: the champion scored on the same test photos, shown side by side with the model.
        drift: how the catalogue changed since the champion's training data.
        drift_note: why the drift is unknown, when there is a champion but no `drift`.

    Returns:
        The list of blocks.

    """
    fig = {k: Figure(figures[k], caption) for k, caption in FIGURE_CAPTIONS.items() if k in figures}
    samples = [Heading("Test photos"), fig["samples"]] if "samples" in fig else []
    return [
        *_title_blocks(evaluation, context),
        *_gate_blocks(gate),
        *(_champion_blocks(evaluation, gate, champion) if champion is not None else []),
        *_drift_blocks(drift, drift_note),
        *_level_blocks(evaluation, fig),
        *_decoding_blocks(evaluation),
        *_attribute_blocks(evaluation, fig),
        *samples,
        *_per_class_blocks(evaluation),
        *_glossary_blocks(evaluation),
    ]


# -- renderers ------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A pipe table: the heading row, its rule, then the rows."""
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def to_markdown(blocks: Sequence[Any]) -> str:
    """Markdown with pipe tables; figures are links to the PNGs next to the file."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [f"**{block.text}**" if block.tone else block.text, ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"*{block.caption}*", ""]
            out += [*_md_table(block.columns, block.rows), ""]
        elif isinstance(block, Figure):
            out += [f"![{block.caption}]({block.path.name})", "", f"*{block.caption}*", ""]
        elif isinstance(block, Tiles):
            labels = [label for label, _ in block.items]
            out += [*_md_table(labels, [[f"**{value}**" for _, value in block.items]]), ""]
        elif isinstance(block, Row):
            out.append(to_markdown(block.blocks))
        elif isinstance(block, Details):
            out += [f"### {block.summary}", ""]
            out.append(to_markdown(block.blocks))
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
  max-width: 1100px; padding: 0 1.2em; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: top; text-align: left; font-style: italic; color: #57606a; padding-bottom: .3em; }
p.good { background: #dafbe1; border-left: 4px solid #1a7f37; padding: .5em .8em; font-weight: 600; }
p.bad { background: #ffebe9; border-left: 4px solid #c62828; padding: .5em .8em; font-weight: 600; }
td.pass { color: #1a7f37; font-weight: 600; } td.FAIL { color: #c62828; font-weight: 700; }
td.skipped { color: #9a6700; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-style: italic; }
.tiles { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.tile { border: 1px solid #d0d7de; border-radius: 6px; padding: .6em 1em; min-width: 9em; background: #f6f8fa; }
.tile .value { font-size: 1.5em; font-weight: 700; } .tile .label { color: #57606a; font-size: .85em; }
.row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
details summary { cursor: pointer; font-weight: 600; margin: 1.5em 0 .5em; }
"""


def _is_number(text: str) -> bool:
    core = str(text).rstrip("%").replace(",", "").replace("+", "").replace("-", "", 1)
    return core.replace(".", "", 1).isdigit()


def _html_blocks(blocks: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            tone = f' class="{block.tone}"' if block.tone else ""
            out.append(f"<p{tone}>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            out.append("<table>")
            if block.caption:
                out.append(f"<caption>{html.escape(block.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns) + "</tr>")
            for row in block.rows:
                cells = []
                for cell in row:
                    cls = "num" if _is_number(cell) else cell if cell in ("pass", "FAIL", "skipped") else ""
                    attr = f' class="{cls}"' if cls else ""
                    cells.append(f"<td{attr}>{html.escape(str(cell))}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            alt = html.escape(block.caption)
            out.append(
                f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
            )
        elif isinstance(block, Tiles):
            tiles = "".join(
                f'<div class="tile"><div class="value">{html.escape(v)}</div>'
                f'<div class="label">{html.escape(k)}</div></div>'
                for k, v in block.items
            )
            out.append(f'<div class="tiles">{tiles}</div>')
        elif isinstance(block, Row):
            cells = "".join("<div>" + "\n".join(_html_blocks([b])) + "</div>" for b in block.blocks)
            out.append(f'<div class="row">{cells}</div>')
        elif isinstance(block, Details):
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>")
            out += _html_blocks(block.blocks)
            out.append("</details>")
    return out


def to_html(blocks: Sequence[Any], title: str = "Model evaluation") -> str:
    """One self-contained HTML page (inline CSS, figures embedded as base64 PNG)."""
    body = "\n".join(_html_blocks(blocks))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
