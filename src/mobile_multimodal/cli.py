"""`mobile-mm`: a thin command line. Each command parses its options, then calls one function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, quantize, export and serve a small multimodal model.",
)
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
db_app = typer.Typer(no_args_is_help=True, help="The project's database.")
monitoring_app = typer.Typer(no_args_is_help=True, help="The monitoring stack beside the app.")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(monitoring_app, name="monitoring")


# ---- serve ---------------------------------------------------------------------------------
@app.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Interface to bind."),
    port: int = typer.Option(8080, help="Port to bind."),
    model: str = typer.Option("default", help="Model directory, or 'default' for the bundled model."),
    quantization: str = typer.Option("fp32", help="fp32, int8, int4 or int2."),
    workers: int = typer.Option(1, min=1, help="Worker processes (metrics are aggregated across them)."),
) -> None:
    """Serve the model over HTTP."""
    from mobile_multimodal.serving.server import run_server

    run_server(host=host, port=port, model=model, quantization=quantization, workers=workers)


# ---- train / eval --------------------------------------------------------------------------
@app.command()
def train(
    out: Path = typer.Option(Path("runs/default"), help="Output directory for the trained model."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same model."),
    steps: int | None = typer.Option(None, help="Optimizer steps (default: the preset's)."),
    preset: str = typer.Option("default", help="Model/training preset: default or tiny."),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoint.pt when it exists."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: int | None = typer.Option(
        None, help="CPU threads for torch; 1 is fastest on a 2-core machine that is doing other work."
    ),
    evaluate: bool = typer.Option(True, help="Evaluate on the held-out splits and store the report."),
) -> None:
    """Train the model on the procedural corpus (+ easy-VQA train split)."""
    from mobile_multimodal.training.train import TrainOptions, train_model

    train_model(
        TrainOptions(
            out=out,
            seed=seed,
            steps=steps,
            preset=preset,
            resume=resume,
            device=device,
            threads=threads,
            evaluate=evaluate,
        )
    )


@app.command("eval")
def evaluate(
    model: str = typer.Option("default", help="Model directory or 'default'."),
    quantization: str = typer.Option("fp32", help="fp32, int8, int4 or int2."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    limit: int | None = typer.Option(None, help="Evaluate at most N examples per task."),
) -> None:
    """Evaluate on the held-out splits and print the report."""
    from mobile_multimodal.training.evaluate import evaluate_model, format_report

    report = evaluate_model(model, quantization=quantization, limit=limit)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


# ---- keys ----------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    user: str = typer.Option(..., "--user", help="Who the key is for (audit identity, metrics label)."),
    key_type: str = typer.Option("free", "--type", help="Rate-limit tier: free or pro."),
    admin: bool = typer.Option(False, "--admin", help="Allow the admin routes with this key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the key is in 'key')."),
) -> None:
    """Create an API key and print it once (only its sha256 is stored)."""
    from mobile_multimodal.security.commands import keys_create as run

    try:
        typer.echo(run(user, key_type, admin, as_json))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@keys_app.command("list")
def keys_list(
    include_revoked: bool = typer.Option(True, "--all/--active", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List API keys (ids, users, prefixes; never the secrets)."""
    from mobile_multimodal.security.commands import keys_list as run

    typer.echo(run(include_revoked, as_json))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id shown by `keys list`.")) -> None:
    """Revoke an API key; requests with it get 401 REVOKED_API_KEY from then on."""
    from mobile_multimodal.security.commands import keys_revoke as run
    from mobile_multimodal.security.keys import KeyNotFoundError

    try:
        typer.echo(run(key_id))
    except KeyNotFoundError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


# ---- db --------------------------------------------------------------------------------------
@db_app.command("backup")
def db_backup(
    out: Path | None = typer.Option(None, "--out", help="Backup directory (default <data_dir>/backups)."),
    as_json: bool = typer.Option(False, "--json", help="Print the verification as JSON."),
) -> None:
    """Back up the database (SQLite online backup or pg_dump), then verify the copy."""
    from mobile_multimodal.store.commands import db_backup as run

    text, ok = run(out, as_json)
    typer.echo(text, err=not ok)
    if not ok:
        raise typer.Exit(1)


@db_app.command("verify")
def db_verify(
    path: Path = typer.Argument(..., help="A backup file written by `db backup`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a backup: integrity check, row counts, sha256 against its sidecar. Exit 1 if bad."""
    from mobile_multimodal.store.commands import db_verify as run

    text, ok = run(path, as_json)
    typer.echo(text)
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    app()


def _alias(command: str) -> None:
    sys.argv = [sys.argv[0], command, *sys.argv[1:]]
    app()


def train_alias() -> None:
    _alias("train")


def export_alias() -> None:
    _alias("export")


def benchmark_alias() -> None:
    _alias("bench")


if __name__ == "__main__":
    main()
