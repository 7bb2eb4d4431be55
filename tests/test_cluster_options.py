"""What a submitted job may carry and where a head may listen, without starting Ray (the real head
and jobs: tests/test_cluster_security.py)."""

from __future__ import annotations

from assay.cli import app


def test_a_host_that_is_not_an_address_is_refused(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["cluster", "up", "--host", "my-laptop"])
    assert result.exit_code == 2
    assert "--host: 'my-laptop' is not an IP address" in result.output
    assert not (tmp_path / ".assay").exists()
