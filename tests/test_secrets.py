"""Secrets kept secret: credentials in URIs never reach a log line, a message, a saved config or MLflow."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from core import secrets
from core.config import load_config
from pipeline.cli import main

SECRET_URI = "http://alice:s3cr3t-pw@127.0.0.1:9/"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://alice:s3cr3t@host:5000/x", "http://alice:***@host:5000/x"),
        ("postgresql://u:p%40ss@db:5432/mlflow and more", "postgresql://u:***@db:5432/mlflow and more"),
        ("https://token@host/", "https://token@host/"),
        ("plain text, no URI", "plain text, no URI"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_hides_only_the_password_of_a_uri(text, expected):
    assert secrets.redact(text) == expected


def test_a_saved_config_holds_no_password_and_is_readable_by_its_owner_only(tmp_path):
    config = load_config("ci", overrides={"registry": {"tracking_uri": SECRET_URI}})
    path = config.save(tmp_path / "config.yaml")
    text = path.read_text()
    assert "s3cr3t-pw" not in text and "alice:***@127.0.0.1" in text
    # The mode is checked on the file itself: root ignores permissions, so reading it proves nothing.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "s3cr3t-pw" not in config.to_yaml()


def test_cli_messages_and_log_lines_are_redacted(tmp_path, capsys, caplog):
    # Port 9 (discard) refuses at once: the reachability probe fails with a message naming the URI.
    code = main(
        [
            "register",
            "--preset=ci",
            f"--model={tmp_path / 'model'}",
            f"--eval={tmp_path / 'eval'}",
            f"--export={tmp_path / 'export'}",
            "--run-id=run-1",
            f"--tracking-uri={SECRET_URI}",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "alice:***@127.0.0.1:9" in err
    assert "s3cr3t-pw" not in err
    logging.getLogger("any.library").warning("connecting to %s", SECRET_URI)
    assert "alice:***@" in caplog.text and "s3cr3t-pw" not in caplog.text


def test_mlflow_params_carry_no_password():
    from components.register.tracking import flatten

    params = flatten({"registry": {"tracking_uri": SECRET_URI, "hosts": [SECRET_URI]}})
    assert params == {
        "registry.tracking_uri": "http://alice:***@127.0.0.1:9/",
        "registry.hosts": "http://alice:***@127.0.0.1:9/",
    }
