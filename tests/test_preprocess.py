"""The preprocess step end to end: real photos in, shards/stats/rejects out, read back with TensorFlow."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    SetupOptions,
    StandardOptions,
)

from components.ingest.step import MANIFEST_BASE_COLUMNS
from components.preprocess.options import default_setup_file, pipeline_options
from components.preprocess.step import resize_images
from core import layouts
from core.config import load_config
from core.errors import StepError
from core.labels import SPLITS, LabelSchema, assign_split, build_schema
from core.layouts import read_stats
from core.records import read_split
from pipeline import cli

ATTRIBUTES = ("baseColour", "season", "usage", "gender")
COLUMNS = [*MANIFEST_BASE_COLUMNS, *ATTRIBUTES]


def write_manifest(rows: list[dict[str, str]], uris: dict[str, str], out_dir: Path) -> LabelSchema:
    """An ingest-style output folder (manifest.csv + labels.json) for catalogue rows and their photo URIs."""
    schema = build_schema(rows, "subCategory", "articleType", ATTRIBUTES)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema.save(out_dir / layouts.LABELS)
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            cat, sub, attrs = schema.encode(r)
            writer.writerow(
                {
                    "id": r["id"],
                    "image_uri": uris[r["id"]],
                    "split": assign_split(r["id"], r["articleType"], 0.7, 0.15, "test"),
                    "category": r["subCategory"],
                    "subcategory": r["articleType"],
                    "category_index": cat,
                    "subcategory_index": sub,
                    "attribute_indices": " ".join(map(str, attrs)),
                    **{c: r[c] for c in ATTRIBUTES},
                }
            )
    return schema


def demo_rows(demo_dir: Path, count: int, step: int = 1) -> list[dict[str, str]]:
    with open(demo_dir / "styles.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))[::step][:count]


def manifest_rows(manifest_dir: Path) -> dict[str, dict[str, str]]:
    with open(manifest_dir / "manifest.csv", encoding="utf-8") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def config(**preprocess):
    return load_config("ci", overrides={"preprocess": preprocess})


@pytest.fixture(scope="module")
def corrupt_run(demo_dir, tmp_path_factory):
    """300 real demo photos plus three broken ones (truncated, not an image, missing), preprocessed once."""
    root = tmp_path_factory.mktemp("e2e")
    rows = demo_rows(demo_dir, 303, step=3)
    uris = {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}
    bad = {rows[0]["id"]: "truncated", rows[1]["id"]: "text", rows[2]["id"]: "missing"}
    for item_id, kind in bad.items():
        path = root / "broken" / f"{item_id}.jpg"
        path.parent.mkdir(exist_ok=True)
        if kind == "truncated":
            path.write_bytes(Path(uris[item_id]).read_bytes()[:300])
        elif kind == "text":
            path.write_text("<html>404 not found</html>")
        uris[item_id] = str(path)
    write_manifest(rows, uris, root / "ingest")
    result = resize_images(str(root / "ingest"), str(root / "out"), config(num_shards=3))
    return {"root": root, "result": result, "bad": bad, "manifest": manifest_rows(root / "ingest")}


def test_every_manifest_row_is_written_or_rejected(corrupt_run):
    result = corrupt_run["result"]
    assert result.manifest_rows == 303
    assert result.records == 300 and result.rejected == 3
    assert result.stats["accounted"] is True
    good = [r for i, r in corrupt_run["manifest"].items() if i not in corrupt_run["bad"]]
    assert result.splits == {s: sum(r["split"] == s for r in good) for s in SPLITS}


def test_rejects_report_names_each_broken_photo(corrupt_run):
    out = corrupt_run["root"] / "out"
    rejects = [json.loads(line) for line in (out / layouts.REJECTS).read_text().splitlines()]
    stages = {r["id"]: r["stage"] for r in rejects}
    bad = corrupt_run["bad"]
    assert stages == {i: ("read" if kind == "missing" else "decode") for i, kind in bad.items()}
    assert all(r["image_uri"] and r["error"] for r in rejects)
    assert corrupt_run["result"].stats["rejects"]["by_stage"] == {"decode": 2, "read": 1}


def test_shards_read_back_with_labels_and_size(corrupt_run):
    out = corrupt_run["root"] / "out"
    manifest = corrupt_run["manifest"]
    schema = LabelSchema.load(out / layouts.LABELS)
    seen = {}
    for split in SPLITS:
        for ex in read_split(out, split).as_numpy_iterator():
            item_id = ex["id"].decode()
            row = manifest[item_id]
            assert row["split"] == split
            assert ex["image"].shape == (80, 60, 3)
            assert ex["category"] == int(row["category_index"])
            assert ex["subcategory"] == int(row["subcategory_index"])
            expected = [0] * len(schema.attributes)
            for a in row["attribute_indices"].split():
                expected[int(a)] = 1
            assert ex["attributes"].tolist() == expected
            seen[item_id] = split
    assert len(seen) == 300
    assert not set(seen) & set(corrupt_run["bad"])


def test_stats_hold_counts_weights_and_labels(corrupt_run):
    out = corrupt_run["root"] / "out"
    stats = read_stats(out)
    schema = LabelSchema.load(out / layouts.LABELS)
    assert stats["labels"] == schema.to_dict()
    assert (stats["image_height"], stats["image_width"], stats["image_format"]) == (80, 60, "jpeg")
    assert [len(stats["splits"][s]["files"]) for s in SPLITS] == [3, 3, 3]
    train_ids = [i for i, r in corrupt_run["manifest"].items() if r["split"] == "train" and i not in corrupt_run["bad"]]
    counts = stats["class_counts"]["subcategory"]["train"]
    assert sum(counts) == len(train_ids) == stats["splits"]["train"]["count"]
    for i in range(len(schema.subcategories)):
        n = sum(corrupt_run["manifest"][t]["subcategory_index"] == str(i) for t in train_ids)
        assert counts[i] == n
    weights = stats["class_weights"]["subcategory"]
    present = sum(1 for n in counts if n)
    assert all(w == pytest.approx(len(train_ids) / (present * n)) for w, n in zip(weights, counts, strict=True) if n)
    assert len(stats["class_weights"]["attributes"]["positive"]) == len(schema.attributes)
    assert set(stats["absent_from_train"]) == {"category", "subcategory", "attributes"}
    assert (out / "config.yaml").is_file()


def test_too_many_rejects_fail_with_a_clear_message(demo_dir, tmp_path):
    rows = demo_rows(demo_dir, 8)
    uris = {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}
    uris[rows[0]["id"]] = str(tmp_path / "gone.jpg")
    write_manifest(rows, uris, tmp_path / "ingest")
    with pytest.raises(StepError, match=r"1 of 8 photos rejected .*max_reject_fraction.*rejects.jsonl"):
        resize_images(str(tmp_path / "ingest"), str(tmp_path / "out"), config(max_reject_fraction=0.1))
    rejects = (tmp_path / "out" / layouts.REJECTS).read_text().splitlines()
    assert [json.loads(r)["id"] for r in rejects] == [rows[0]["id"]]


def test_missing_manifest_is_a_step_error(tmp_path, capsys):
    code = cli.main(["preprocess", "--manifest", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "manifest.csv not found" in capsys.readouterr().err


def test_cli_gzip_png_at_another_size(demo_dir, tmp_path, capsys):
    rows = demo_rows(demo_dir, 40)
    write_manifest(rows, {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}, tmp_path / "ingest")
    out = tmp_path / "out"
    argv = ["preprocess", "--manifest", str(tmp_path / "ingest"), "--out", str(out), "--preset", "ci"]
    argv += ["--image-size", "40x32", "--set", "preprocess.compression=gzip", "--set", "preprocess.image_format=png"]
    assert cli.main(argv) == 0
    assert "40 manifest rows: 40 records written" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("train-*")) == [
        "train-00000-of-00002.tfrecord.gz",
        "train-00001-of-00002.tfrecord.gz",
    ]
    images = list(read_split(out, "train").as_numpy_iterator())
    assert images and all(ex["image"].shape == (40, 32, 3) for ex in images)
    stats = read_stats(out)
    assert (stats["compression"], stats["image_format"], stats["image_height"]) == ("gzip", "png", 40)


@pytest.mark.slow
def test_same_input_same_bytes_whatever_the_workers(demo_dir, tmp_path):
    rows = demo_rows(demo_dir, 90, step=7)
    write_manifest(rows, {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}, tmp_path / "ingest")
    runs = {
        "one": config(direct_num_workers=1, direct_running_mode="in_memory"),
        "two": config(direct_num_workers=2, direct_running_mode="multi_processing"),
    }
    for name, cfg in runs.items():
        resize_images(str(tmp_path / "ingest"), str(tmp_path / name), cfg)
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.name != "config.yaml")
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir() if p.name != "config.yaml")
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    # A second run into the same folder with fewer shards leaves no shard of the first behind.
    resize_images(str(tmp_path / "ingest"), str(tmp_path / "one"), config(num_shards=1))
    assert sorted(p.name for p in (tmp_path / "one").glob("*.tfrecord")) == [
        f"{s}-00000-of-00001.tfrecord" for s in sorted(SPLITS)
    ]


@pytest.mark.gcs
def test_reads_photos_from_gcs(gcs_emulator, demo_dir, tmp_path):
    rows = demo_rows(demo_dir, 6)
    bucket = gcs_emulator.create_bucket("photos-preprocess")
    uris = {}
    for r in rows:
        bucket.blob(f"images/{r['id']}.jpg").upload_from_filename(str(demo_dir / "images" / f"{r['id']}.jpg"))
        uris[r["id"]] = f"gs://photos-preprocess/images/{r['id']}.jpg"
    uris[rows[-1]["id"]] = "gs://photos-preprocess/images/absent.jpg"
    write_manifest(rows, uris, tmp_path / "ingest")
    result = resize_images(str(tmp_path / "ingest"), str(tmp_path / "out"), config(max_reject_fraction=0.5))
    assert (result.records, result.rejected) == (5, 1)
    assert "object not found" in (tmp_path / "out" / layouts.REJECTS).read_text()


def test_local_runs_use_the_configured_workers():
    opts = pipeline_options([], config(direct_num_workers=2, direct_running_mode="multi_processing"))
    assert opts.view_as(StandardOptions).runner == "FnApiRunner"
    direct = opts.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (2, "multi_processing")

    explicit = pipeline_options(["--direct_num_workers=1", "--direct_running_mode", "in_memory"], config())
    assert explicit.view_as(DirectOptions).direct_num_workers == 1
    assert explicit.view_as(DirectOptions).direct_running_mode == "in_memory"


def test_dataflow_options_are_assembled_without_calling_dataflow():
    args = cli.build_parser().parse_args(
        [
            "preprocess",
            "--manifest",
            "gs://b/ingest",
            "--out",
            "gs://b/shards",
            "--runner",
            "DataflowRunner",
            "--project",
            "my-project",
            "--region",
            "europe-west1",
            "--temp_location",
            "gs://b/tmp",
            "--",
            "--max_num_workers=12",
            "--experiments=use_runner_v2",
        ]
    )
    from pipeline.commands.preprocess import beam_args_of

    opts = pipeline_options(beam_args_of(args), config())
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("my-project", "europe-west1", "gs://b/tmp")
    setup = Path(opts.view_as(SetupOptions).setup_file)
    assert setup == default_setup_file() and setup.is_file() and setup.name in ("setup.py", "pyproject.toml")
    assert opts.get_all_options()["max_num_workers"] == 12
    assert "use_runner_v2" in opts.get_all_options()["experiments"]

    own = pipeline_options(
        [
            "--runner=DataflowRunner",
            "--project=p",
            "--region=r",
            "--temp_location=gs://b/t",
            "--setup_file=/src/setup.py",
        ],
        config(),
    )
    assert own.view_as(SetupOptions).setup_file == "/src/setup.py"


def test_dataflow_run_without_required_flags_or_to_a_local_folder_is_refused(tmp_path, demo_dir):
    with pytest.raises(StepError, match="--region=... --temp_location="):
        pipeline_options(["--runner=DataflowRunner", "--project=p"], config())
    rows = demo_rows(demo_dir, 2)
    write_manifest(rows, {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}, tmp_path / "ingest")
    flags = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]
    with pytest.raises(StepError, match="use a gs:// prefix"):
        resize_images(str(tmp_path / "ingest"), str(tmp_path / "out"), config(), flags)


def test_beam_workers_import_neither_tensorflow_nor_keras(demo_dir, tmp_path):
    # One in-process worker runs every DoFn in this fresh interpreter, so what it imports is what
    # each worker process imports.
    rows = demo_rows(demo_dir, 30)
    write_manifest(rows, {r["id"]: str(demo_dir / "images" / f"{r['id']}.jpg") for r in rows}, tmp_path / "ingest")
    code = (
        "import sys\n"
        "from components.preprocess.step import resize_images\n"
        "from core.config import load_config\n"
        "one_worker = {'direct_num_workers': 1, 'direct_running_mode': 'in_memory'}\n"
        "cfg = load_config('ci', overrides={'preprocess': one_worker})\n"
        f"result = resize_images({str(tmp_path / 'ingest')!r}, {str(tmp_path / 'out')!r}, cfg)\n"
        "assert result.records == 30, result\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
