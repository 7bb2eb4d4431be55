"""`assay lineage` (a model's chain back to its data, code and params, as a tree or JSON) and
`assay reproduce` (that chain re-run, and whether its result holds)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from assay.cli.common import fail, guarded, load, out

TARGET = typer.Argument(
    help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or an outputs/KEY folder",
    show_default=False,
)
# the settings a reader looks for first; the whole config is in --json
SHOWN = ("dataset", "arch", "lr", "batch_size", "max_epochs", "seed", "optimizer", "workers")


def lineage(
    target: Annotated[str | None, TARGET] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="the other way: every run and registered version trained on this prepared "
            "folder (data/NAME) or data hash",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the same, as JSON")] = False,
) -> None:
    """Trace a model back to everything it was made from.

    Registry version and aliases -> MLflow run (status, test metrics) -> W&B run -> git commit
    (dirty or clean) -> params (the merged config the run logged, and its digest) -> the DVC
    stage and hash of the prepared data -> the raw source it was prepared from (package,
    version, sha256) -> sweep study and trial -> Ray run. Each link is read from what was
    recorded when the model was made and checked against this workspace: whatever is missing
    or no longer matches (a dirty tree, data prepared again since, a deleted run) is listed
    under "problems", never left out.
    """
    from assay import lineage as lin

    if (target is None) == (data is None):
        fail("give a model, run or outputs/KEY folder to trace, or --data DATA (not both)")
    root, uri = _project()
    if data is not None:
        found = guarded(lin.trained_on, data, root, uri)
        if as_json:
            out.print_json(json.dumps(found))
        else:
            _print_trained_on(found)
        return
    chain = guarded(lin.trace, target, root, uri)
    if as_json:
        out.print_json(json.dumps(chain))
    else:
        out.print(tree(chain))
        _print_problems(chain["problems"])


def _project():
    """(the project root, its MLflow store's URI)."""
    from assay import tracking
    from assay.paths import find_root

    root = find_root()
    return root, tracking.tracking_uri(load().tracking, root)


def tree(chain: dict[str, Any]) -> Tree:
    """The chain as a rich Tree, one branch per link."""
    top = Tree(f"[bold]{escape(chain['target'])}[/]  [dim]{escape(chain['tracking_uri'])}[/]")
    mv = chain.get("model")
    if mv:
        aliases = ", ".join(mv["aliases"]) or "no alias"
        top.add(f"[cyan]registry[/]  {mv['name']} v{mv['version']}  ({aliases})")
    run = chain["run"]
    if run.get("missing"):
        top.add(f"[cyan]MLflow run[/]  {run['id']}  [red]not in the store[/]")
        return top
    metrics = "  ".join(f"{k} {v:.4g}" for k, v in run["metrics"].items() if k.startswith("test/"))
    node = top.add(
        f"[cyan]MLflow run[/]  {run['id']}  {escape(run['name'] or '')}  {run['status']}"
        + ("  [red]deleted[/]" if run["deleted"] else "")
    )
    if metrics:
        node.add(metrics)
    wb = chain["wandb"]
    top.add(
        f"[cyan]W&B run[/]  {wb['run_id']}  project {wb['project']}  {escape(wb['dir'] or '')}"
        if wb
        else "[cyan]W&B run[/]  none (W&B was disabled for this run)"
    )
    git = chain["git"]
    state = "[red]dirty[/]" if git["dirty"] else "clean"
    top.add(f"[cyan]git[/]  {git['commit']}  {state}")
    p = chain["params"]
    node = top.add(f"[cyan]params[/]  digest {p['digest']}")
    if p["config"]:
        train = p["config"].get("train", {})
        node.add("  ".join(f"{k}={train[k]}" for k in SHOWN if k in train))
    top.add(_data_node(chain["data"]))
    sw = chain["sweep"]
    if sw:
        top.add(
            f"[cyan]sweep[/]  study {sw['study']}, trial {sw['trial']}  parent {sw['parent_run']}"
        )
    ray = chain["ray"]
    if ray:
        node = top.add(
            f"[cyan]Ray run[/]  {ray['run_name']}  {ray['workers']} workers  {ray['storage_path']}"
        )
        if ray["checkpoint"]:
            node.add(f"best checkpoint  {escape(ray['checkpoint'])}")
    return top


def _data_node(d: dict[str, Any]) -> Tree:
    check = "[green]matches the workspace[/]" if d["matches"] else "[red]does not match[/]"
    node = Tree(f"[cyan]data[/]  {d['stage']}  {d['hash']} ({d['hash_source']})  {check}")
    src = d["source"] or {}
    if src:
        where = "recorded with the run" if d["source_recorded"] else "from the workspace"
        parts = [src.get("origin", ""), src.get("member") or src.get("file", "")]
        node.add(
            f"source  {'  '.join(p for p in parts if p)}  sha256 {src.get('sha256')}  ({where})"
        )
    if d["splits"]:
        node.add("  ".join(f"{s['name']} {s.get('rows', '?')} rows" for s in d["splits"]))
    return node


def _print_problems(problems: list[str]) -> None:
    if not problems:
        out.print("[green]no problems: every link is recorded and matches this workspace[/]")
        return
    out.print(f"[yellow]{len(problems)} problem(s):[/]")
    for p in problems:
        out.print(f"  [yellow]![/] {escape(p)}", highlight=False)


def _print_trained_on(found: dict[str, Any]) -> None:
    table = Table(title=f"trained on {found['data']} ({', '.join(found['hashes'])})")
    for column in ("run / version", "name", "status / aliases", "key"):
        table.add_column(column, overflow="fold")
    for v in found["versions"]:
        table.add_row(f"{v['name']} v{v['version']}", v["run_id"], ", ".join(v["aliases"]), "")
    for r in found["runs"]:
        trial = f" (trial {r['trial']})" if r.get("trial") else ""
        table.add_row(r["id"], (r["name"] or "") + trial, r["status"], r["key"] or "")
    out.print(table)
    out.print(f"{len(found['runs'])} run(s), {len(found['versions'])} registered version(s)")


def reproduce(
    target: Annotated[str, TARGET],
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="how far the primary metric may move (absolute); default: the objective's, "
            "from the seed-to-seed spread bench/seed_spread.py measured",
            min=0,
        ),
    ] = None,
) -> None:
    """Re-run a model's chain and say whether its result holds.

    The code at the recorded commit (a temporary git worktree), the recorded config, the data
    the run trained on (the workspace's when its hash matches, else prepared again from the
    pinned source and checked): trained and scored on the same test split, logged as its own
    MLflow run tagged reproduces=<run id>. Exit 0 when the primary metric lands within the
    tolerance of the original's, 1 when it does not, 2 when the chain can't be rebuilt (a dirty
    tree at training, a missing commit, config or source), each with the reason.
    """
    from assay import reproduce as rep

    root, uri = _project()
    r = guarded(rep.reproduce, target, root, uri, tolerance)
    verdict = "[green]holds[/]" if r.holds else "[red]does not hold[/]"
    out.print(
        f"reproduced run {r.original_run} as run {r.reproduced_run} at commit {r.commit[:12]} "
        f"with {r.data}, in {r.seconds:.0f} s:\n"
        f"  {r.metric} {r.original:.4f} -> {r.reproduced:.4f} (difference "
        f"{abs(r.reproduced - r.original):.4f}, tolerance {r.tolerance:.4f}): {verdict}",
        highlight=False,
    )
    raise typer.Exit(0 if r.holds else 1)
