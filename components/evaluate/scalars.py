"""The flat metric names: the keys of `metrics.json` -> `scalars`, used by the gate, MLflow and kfp.

Every scalar is higher-is-better and lies in [0, 1], except `num_test_examples`. MLflow logs them
as `test.<name>`; the gate's `evaluate.floors` and `evaluate.tolerances` name them as they are
here. The unprefixed category/sub-category names and `hierarchy_consistency` follow the decoding
the configuration selects (`evaluate.hierarchical_decoding`); the `independent_` and `joint_`
names give both decodings always, so a gate can pin either one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

LEVEL_SCALARS = {
    "accuracy": "share of test products whose predicted class is the true one",
    "top5_accuracy": "share whose true class is among the five highest scores",
    "op": "precision averaged over classes, weighted by support (OP)",
    "or": "recall averaged over classes, weighted by support (OR)",
    "of1": "F1 averaged over classes, weighted by support (OF1)",
    "macro_f1": "unweighted mean F1 over the classes present in the truth or the predictions",
}

DECODED_SCALARS = ("accuracy", "of1", "macro_f1")

ATTRIBUTE_SCALARS = {
    "attributes_op": "micro precision of label decisions at the threshold (OP)",
    "attributes_or": "micro recall of label decisions at the threshold (OR)",
    "attributes_of1": "micro F1 of label decisions at the threshold (OF1)",
    "attributes_cp": "per-label precision at the threshold, averaged over labels (CP)",
    "attributes_cr": "per-label recall at the threshold, averaged over labels (CR)",
    "attributes_cf1": "harmonic mean of CP and CR (CF1)",
    "attributes_macro_f1": "mean per-label F1 at the threshold",
    "attributes_precision_at_k": "P@k, k = the product's number of true labels",
    "attributes_recall_at_k": "R@k (equal to P@k when k is the number of true labels)",
    "attributes_f1_at_k": "F1@k (equal to P@k when k is the number of true labels)",
    "attributes_map": "mean average precision over the labels with a positive test product (mAP)",
    "attributes_group_accuracy": "mean over attribute groups of the arg-max value accuracy",
}

HIERARCHY_SCALARS = {
    "hierarchy_consistency": "share of predicted (category, sub-category) pairs that occur in the tree",
}

COUNT_SCALARS = {"num_test_examples": "products in the test split"}


def group_key(group: str) -> str:
    """The scalar name of one attribute group's arg-max accuracy, e.g. `attributes_baseColour_accuracy`."""
    return f"attributes_{re.sub(r'[^0-9A-Za-z_]', '_', group)}_accuracy"


def describe() -> dict[str, str]:
    """Every scalar name (groups as a pattern) -> what it measures, for reports and documentation."""
    out: dict[str, str] = {}
    for level, label in (("category", "category"), ("subcategory", "sub-category")):
        for name, text in LEVEL_SCALARS.items():
            out[f"{level}_{name}"] = f"{label}: {text}"
    out.update(HIERARCHY_SCALARS)
    for prefix, how in (("independent", "arg-max of each level"), ("joint", "best allowed pair")):
        for level in ("category", "subcategory"):
            for name in DECODED_SCALARS:
                out[f"{prefix}_{level}_{name}"] = f"{level}_{name} with {how} decoding"
        out[f"{prefix}_hierarchy_consistency"] = f"hierarchy_consistency with {how} decoding"
    out.update(ATTRIBUTE_SCALARS)
    out["attributes_<group>_accuracy"] = "share of products whose highest-scoring value of the group is a true one"
    out.update(COUNT_SCALARS)
    return out


def known_metrics(attribute_groups: Sequence[str]) -> list[str]:
    """Every scalar name the evaluation writes for these attribute groups, sorted."""
    names = {k for k in describe() if "<group>" not in k}
    names.update(group_key(g) for g in attribute_groups)
    return sorted(names)


def unknown_gate_metrics(names: Iterable[str], attribute_groups: Sequence[str]) -> list[str]:
    """The names among `names` (floors, tolerances) that the evaluation never writes."""
    known = set(known_metrics(attribute_groups))
    return sorted(n for n in names if n not in known)
