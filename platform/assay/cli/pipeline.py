"""The pipeline's stages and what sits around them: fetch, prepare, train, evaluate, register,
predict, explain, models, config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from assay.cli.common import (
    DATASET_HELP,
    Address,
    Arch,
    CpusPerWorker,
    Dataset,
    Experiment,
    GpusPerWorker,
    Refit,
    Run,
    Sets,
    Workers,
    app,
    fail,
    guarded,
    load,
    out,
    ray_sets,
)


@app.command()
def fetch(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Bring a data set's raw file into data/raw/DATASET (checked against its sha256)."""
    from assay.paths import find_root
    from assay.preparation import fetch as do_fetch

    cfg = load(require=("fetch",))
    path = guarded(do_fetch, dataset, cfg.fetch, find_root())
    out.print(f"fetched {dataset} -> {path}")


@app.command()
def prepare(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Write fixed-seed train/val/test splits and meta.json to data/DATASET."""
    from assay.paths import find_root
    from assay.preparation import prepare as do_prepare

    cfg = load(require=("prepare",))
    if dataset not in cfg.prepare.datasets:
        fail(f"prepare.datasets is {cfg.prepare.datasets}; {dataset!r} is not among them")
    path = guarded(do_prepare, dataset, cfg.prepare, find_root())
    out.print(f"prepared {dataset} -> {path}")


@app.command()
def train(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    cpus_per_worker: CpusPerWorker = None,
    address: Address = None,
    refit: Refit = None,
) -> None:
    """Train one model, logged to MLflow and W&B at once.

    With --workers N it runs on Ray Train: DDP over N workers, a checkpoint every epoch, and
    worker crashes recovered from it (train.max_failures); still one MLflow and one W&B run.
    With --refit, the epochs early stopping chose are trained again, from scratch, on train +
    val (in this process), and that model is the run's.
    """
    from assay.training import train as do_train

    flags = ray_sets(workers, gpus_per_worker, cpus_per_worker, address)
    if refit is not None:
        flags.append(("train.refit", refit))
    cfg = load(experiment, [*(sets or []), *flags], run, dataset, arch, require=("train",))
    result = guarded(do_train, cfg)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    out.print(
        f"trained {result.key} in {result.seconds:.0f} s: {scores}; "
        f"MLflow run {result.run_id}, W&B run {result.wandb_id}"
    )


@app.command()
def evaluate(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
) -> None:
    """Score a trained model on the test split; write DVC metrics and plots."""
    from assay.evaluation import evaluate as do_evaluate

    cfg = load(experiment, sets, run, dataset, arch, require=("train", "evaluate"))
    result = guarded(do_evaluate, cfg)
    out.print(f"{result.key}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))


@app.command()
def register(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="compare with the champion even if the two were scored on different data "
            "(without it, the champion stays and the new version is kept as candidate)",
        ),
    ] = False,
) -> None:
    """Register a trained model; move `champion` to it only if it beats the current one on the
    same test data."""
    from assay.registry import register as do_register

    cfg = load(experiment, sets, run, dataset, arch, require=("train", "register"))
    d = guarded(do_register, cfg, None, force, also=(KeyError,))
    verdict = "[green]promoted to champion[/]" if d.promoted else "[yellow]kept as candidate[/]"
    out.print(f"{d.name} v{d.version}: {verdict}: {d.reason}", soft_wrap=True)


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
        ),
    ],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="images .npy/.npz; texts .txt/.csv; series windows; rows; user,item pairs; "
            "GAN codes (see `assay predict --help` of the module doc)",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="write all predictions: .csv (a table) or .npy (arrays)")
    ] = None,
    samples: Annotated[int, typer.Option(help="GAN without --input: images to generate")] = 16,
    seed: Annotated[int, typer.Option(help="GAN without --input: seed of the random codes")] = 0,
    label: Annotated[
        int | None,
        typer.Option(help="conditional GAN without --input: the class to draw (default: each)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="rows to print (all go to --output)")] = 20,
) -> None:
    """Predict with a registered model of any family: classes, forecasts, anomaly scores,
    reconstructions, generated images or ratings (the model's assay.json says which)."""
    import numpy as np

    from assay.paths import find_root
    from assay.predict import predict as do_predict

    p = guarded(
        lambda: do_predict(model, input, find_root(), samples=samples, seed=seed, label=label)
    )
    table = Table(
        *p.columns[:9], title=f"{model} ({p.objective})" + (f" on {input}" if input else "")
    )
    for row in p.rows[:limit]:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row[:9]))
    out.print(table)
    if len(p.rows) > limit:
        out.print(f"... {len(p.rows) - limit} more rows" + ("" if output else " (use --output)"))
    if output is None and p.images:
        output = Path(f"{p.objective}.npy")
    if output is None:
        return
    if output.suffix == ".npy":
        np.save(output, p.array)
        if p.images:
            from assay import plots

            png = output.with_suffix(".png")
            plots.image_grid([p.array[:64]], png, f"{model}: {p.objective}")
            out.print(f"wrote {len(p.array)} images to {output} and a grid to {png}")
        else:
            out.print(f"wrote {p.array.shape} array to {output}")
    else:
        import csv

        with open(output, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(p.columns)
            w.writerows(p.rows)
        out.print(f"wrote {len(p.rows)} predictions to {output}")


@app.command()
def explain(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
        ),
    ],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="what `assay predict` takes: images .npy/.npz (raw pixels), texts .txt/.csv, "
            "series windows .npy/.npz/.csv",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="folder for explain.png, explain.html (text), attributions.npz"
        ),
    ] = Path("explain"),
    limit: Annotated[int, typer.Option(help="explain the first N examples of the input")] = 8,
) -> None:
    """Why a model answered as it did: captum's Integrated Gradients (and a saliency map) over
    the pixels of an image classifier's input, the tokens of a text classifier's, the steps and
    features of a forecaster's window. Red: towards the answer; blue: against it."""
    from assay.explain import explain as do_explain
    from assay.paths import find_root

    e = guarded(lambda: do_explain(model, input, find_root(), output, limit))
    table = Table(*e.columns, title=f"{model} ({e.objective}): Integrated Gradients on {input}")
    for row in e.rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    out.print(f"wrote {', '.join(str(f) for f in e.files)}")


@app.command()
def results(
    markdown: Annotated[bool, typer.Option(help="a Markdown table (the README's)")] = False,
    write_into: Annotated[
        Path | None,
        typer.Option(
            help="put the Markdown table into this file (README.md) between its "
            "`<!-- assay results --markdown: start/end -->` lines",
        ),
    ] = None,
    keep_rows: Annotated[
        bool,
        typer.Option(
            help="with --write-into: keep the rows of experiments this project has not scored "
            "(each row's `scored` date says when its numbers were measured)",
        ),
    ] = False,
) -> None:
    """Each evaluated experiment's test metric beside its classical baseline on the same split.

    Read from DVC (`dvc metrics show`: every pipeline's metrics.json). The lift is how far the
    model beats the baseline on the metric (> 0: it does; < 0: the baseline wins).
    """
    from assay.paths import find_root
    from assay.results import collect
    from assay.results import markdown as as_markdown

    rows = guarded(collect, find_root())
    if write_into is not None:
        from assay.results import write_into as put

        guarded(put, write_into, as_markdown(rows), keep_rows)
        out.print(f"wrote the results of {len(rows)} experiments into {write_into}")
        return
    if markdown:
        out.print(as_markdown(rows), highlight=False, soft_wrap=True, end="")
        return
    table = Table(title="assay results (test split; baseline: the same split)")
    for column in ("experiment", "metric", "model", "baseline", "", "lift"):
        right = column in ("model", "", "lift")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "baseline")
    table.add_column("champion")
    for r in rows:
        colour = "green" if (r.lift or 0) > 0 else "red" if r.lift is not None else "white"
        lift = "" if r.lift is None else f"[{colour}]{r.lift:+.4f}[/]"
        base = "" if r.baseline_value is None else f"{r.baseline_value:.4f}"
        arrow = "↑" if r.better == "max" else "↓"
        champ = {True: "yes", False: "[red]no[/]", None: ""}[r.champion]
        table.add_row(
            r.key, f"{r.metric} {arrow}", f"{r.value:.4f}", r.baseline or "", base, lift, champ
        )
    out.print(table)


@app.command("plots-template")
def plots_template(
    path: Annotated[Path, typer.Argument(help="where to write it")] = Path(
        "outputs/plots_template.html"
    ),
) -> None:
    """Write the page `dvc plots show` fills, with Vega inside it: the plots draw offline.

    DVC's own page loads Vega from a CDN. `dvc repro` runs this (the plots_page stage), and
    .dvc/config's plots.html_template names the file, so `dvc plots show` needs no network.
    """
    from assay.plotpage import write_template

    out.print(f"wrote {write_template(path)}", highlight=False)


@app.command("models")
def list_models_cmd() -> None:
    """List the registered architectures and their presets."""
    from assay.models import get_entry, list_models

    table = Table("name", "family", "class", "preset")
    for name in list_models():
        e = get_entry(name)
        table.add_row(name, e.family, e.module_cls.__name__, str(e.preset or "defaults"))
    out.print(table)


@app.command("config")
def show_config(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
) -> None:
    """Print the merged, validated configuration (what a command would run with)."""
    import yaml

    cfg = load(experiment, sets, run, dataset, arch)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
