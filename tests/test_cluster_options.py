"""What a submitted job may carry and where a head may listen, without starting Ray (the real head
and jobs: tests/test_cluster_security.py)."""

from __future__ import annotations

from assay.cli import app
from assay.cluster import _no_secrets


def test_credentials_and_url_passwords_are_kept_out_of_a_job():
    notes: list[str] = []
    env = {
        "MLFLOW_TRACKING_URI": "postgresql://alice:s3cret@db.example:5432/mlflow",
        "MLFLOW_TRACKING_PASSWORD": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "HF_TOKEN": "s3cret",
        "WANDB_API_KEY": "s3cret",
        "WANDB_PROJECT": "assay",
    }
    args = ["--set", "tracking.uri=http://bob:s3cret@mlflow.example:5000", "--run", "x"]
    kept, safe = _no_secrets(env, args, notes.append)
    assert kept == {
        "MLFLOW_TRACKING_URI": "postgresql://alice@db.example:5432/mlflow",
        "WANDB_PROJECT": "assay",
    }
    assert safe == ["--set", "tracking.uri=http://bob@mlflow.example:5000", "--run", "x"]
    assert len(notes) == 6 and all("their own credentials" in n for n in notes)
    assert not any("s3cret" in n for n in notes)


def test_urls_without_a_password_are_left_alone():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "X": "sqlite:////tmp/a:b@c.db"}
    notes: list[str] = []
    kept, _ = _no_secrets(env, ["--set", "tracking.uri=http://host:5000/a@b"], notes.append)
    assert kept["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and not notes


def test_a_host_that_is_not_an_address_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["cluster", "up", "--host", "my-laptop"])
    assert result.exit_code == 2
    assert "--host: 'my-laptop' is not an IP address" in result.output
    assert not (tmp_path / ".assay").exists()
