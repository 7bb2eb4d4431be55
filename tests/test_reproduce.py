"""`assay reproduce` for real: a project whose code is committed in a real git repository, a model
trained, scored and registered from it; the chain re-run from a temporary worktree at the
recorded commit, in its own process, logged to the same MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from assay.evaluation import evaluate
from assay.lineage import trace
from assay.registry import register
from assay.reproduce import rebuildable
from assay.training import train
from tests.conftest import REPO, tiny_config

MODEL = "models:/digits-cnn_tiny@champion"


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _assay(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["ASSAY_TEST_MARK"] = str(root / "mark.txt")
    return subprocess.run(
        ["assay", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def committed(project):
    """The project with Assay's code committed beside params.yaml (clean), and a tiny digits
    CNN trained from it, scored and registered: (project, original run id)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("platform", "models"):
        shutil.copytree(REPO / folder, project / folder, ignore=ignore)
    # a mark only the committed copy makes: it shows that the worktree's code ran, not the
    # installed Assay
    with open(project / "platform/assay/__init__.py", "a") as f:
        f.write(
            "\nimport os as _os\nif _os.environ.get('ASSAY_TEST_MARK'):\n"
            "    open(_os.environ['ASSAY_TEST_MARK'], 'a').write('committed code ran\\n')\n"
        )
    # as the repository's own .gitignore: what runs write (.assay/: the baselines evaluate keeps)
    ignored = ("data/", "mlflow.db*", "mlruns/", "outputs/", "wandb/", ".assay/", "mark.txt")
    (project / ".gitignore").write_text("\n".join(ignored) + "\n")
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    cfg = tiny_config(project, arch="cnn_tiny", wandb="disabled")
    run_id = train(cfg, project).run_id
    evaluate(cfg, project)
    register(cfg, project)
    return project, run_id


@pytest.mark.slow
def test_reproduce_reruns_the_chain_and_the_result_holds(committed):
    project, run_id = committed
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    original = client.get_run(run_id).data.metrics["test/acc"]

    done = _assay(project, "reproduce", MODEL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join(done.stdout.split())
    assert "holds" in text and "workspace's data/digits" in text, text
    (new,) = client.search_runs(
        [client.get_experiment_by_name("assay").experiment_id], f"tags.reproduces = '{run_id}'"
    )
    assert new.info.status == "FINISHED" and new.info.run_id != run_id
    assert abs(new.data.metrics["test/acc"] - original) <= 0.0056
    assert new.data.tags["reproduce.holds"] == "true"
    assert new.data.tags["eval.data_hash"] == client.get_run(run_id).data.tags["eval.data_hash"]
    assert new.data.tags["mlflow.source.git.commit"] == _git(project, "rev-parse", "HEAD")
    assert len(_git(project, "worktree", "list").splitlines()) == 1  # its worktree is gone
    assert "committed code ran" in (project / "mark.txt").read_text()  # the commit's, not ours
    assert _git(project, "status", "--porcelain") == ""  # nothing left in the project

    # a claim that does not reproduce: the original's test/acc, as MLflow holds it, put 0.2 off
    # (a later value of the metric): the re-run lands where it did before, 0.2 away: exit 1
    client.log_metric(run_id, "test/acc", original - 0.2)
    done = _assay(project, "reproduce", MODEL)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "does not hold" in " ".join(done.stdout.split())


@pytest.mark.slow
def test_reproduce_prepares_changed_data_again_and_refuses_a_dirty_or_unscored_chain(committed):
    project, run_id = committed
    # the prepared data changed since: prepared again from the pinned source, at that commit
    meta = project / "data/digits/meta.json"
    kept = meta.read_bytes()
    meta.write_bytes(kept + b"\n")
    done = _assay(project, "reproduce", f"runs:/{run_id}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "prepared again from its pinned source" in " ".join(done.stdout.split())
    assert meta.read_bytes() == kept + b"\n"  # the workspace's own data is left as it was
    meta.write_bytes(kept)

    # uncommitted changes to params.yaml alone (as `dvc exp run -S` makes): the run's config.json
    # records them, so the chain can still be rebuilt
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: ", "lr: 0.02 #", 1))
    cfg = tiny_config(project, arch="cnn_tiny", wandb="disabled", name="params_edited")
    edited = train(cfg, project).run_id
    chain = trace(f"runs:/{edited}", project, f"sqlite:///{project / 'mlflow.db'}")
    assert chain["git"]["dirty"] and chain["git"]["dirty_files"] == ["params.yaml"]
    assert chain["params"]["config"]["train"]["lr"] == 0.02
    assert rebuildable(chain)["id"] == edited  # not refused
    _git(project, "checkout", "--", "params.yaml")

    # a model trained from a dirty tree: refused before anything runs
    with open(project / "platform/assay/__init__.py", "a") as f:
        f.write("\n# uncommitted\n")
    cfg = tiny_config(project, arch="cnn_tiny", wandb="disabled", name="dirty")
    dirty = train(cfg, project).run_id
    done = _assay(project, "reproduce", f"runs:/{dirty}")
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and "dirty tree" in text, text
    assert "files: platform/assay/__init__.py" in text, text
    # a clean one never scored: nothing to compare with
    _git(project, "checkout", "--", "platform")
    train(tiny_config(project, arch="cnn_tiny", wandb="disabled", name="unscored"), project)
    done = _assay(project, "reproduce", "outputs/unscored")
    assert done.returncode == 2 and "never scored" in " ".join(done.stderr.split()), done.stderr
