"""`mobile-mm`: a thin command line. Each command parses its options, then calls one function."""

from __future__ import annotations

import contextlib
import json
import signal
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
export_app = typer.Typer(
    invoke_without_command=True,
    help="Export a validated bundle for Android or iOS (`export check`: the toolchains).",
)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
users_app = typer.Typer(no_args_is_help=True, help="Users: export what is held about one, erase one.")
app.add_typer(users_app, name="users")
app.add_typer(monitoring_app, name="monitoring")
app.add_typer(export_app, name="export")
manifest_app = typer.Typer(no_args_is_help=True, help="Sign and verify model and export manifests.")
app.add_typer(manifest_app, name="manifest")
audit_app = typer.Typer(no_args_is_help=True, help="The security audit trail.")
app.add_typer(audit_app, name="audit")


@app.callback()
def _every_command() -> None:
    """Train, quantize, export and serve a small multimodal model."""
    # What a command audits also goes to <log dir>/audit.jsonl (security/audit_file.py).
    from mobile_multimodal.security.audit_file import configure_from_settings
    from mobile_multimodal.settings import get_settings

    get_settings.cache_clear()  # this command's environment (tests run many in one process)
    # invalid settings: the commands that read them say what is wrong
    with contextlib.suppress(ValueError):
        configure_from_settings(get_settings())


# ---- serve ---------------------------------------------------------------------------------
@app.command()
def serve(
    host: str | None = typer.Option(None, help="Interface to bind [env MOBILE_MM_HOST; default 0.0.0.0]."),
    port: int | None = typer.Option(None, help="Port to bind [env MOBILE_MM_PORT; default 8080]."),
    model: str | None = typer.Option(
        None,
        help="Model directory, or 'default' for the bundled model [env MOBILE_MM_MODEL; default default].",
    ),
    quantization: str | None = typer.Option(
        None, help="fp32, int8, int4 or int2 [env MOBILE_MM_QUANTIZATION; default fp32]."
    ),
    workers: int | None = typer.Option(
        None,
        min=1,
        help="Worker processes, metrics aggregated across them [env MOBILE_MM_WORKERS; default 1].",
    ),
    device: str | None = typer.Option(
        None, help="auto, cpu or cuda [env MOBILE_MM_DEVICE; default auto: cuda when torch sees a GPU]."
    ),
    runtime: str | None = typer.Option(
        None,
        help="pytorch, or onnxruntime: the export bundle's graphs, as a phone runs them "
        "[env MOBILE_MM_RUNTIME; default pytorch].",
    ),
    bundle: Path | None = typer.Option(
        None,
        help="The ONNX export bundle to serve with --runtime onnxruntime [env MOBILE_MM_BUNDLE; "
        "default: the model exported into <data dir>/bundles on first start].",
    ),
) -> None:
    """Serve the model over HTTP. A flag wins over its MOBILE_MM_* variable, which wins over the default."""
    from mobile_multimodal.serving.server import run_server

    # None = not given on the command line: the environment (or the default) decides.
    run_server(
        host=host,
        port=port,
        model=model,
        quantization=quantization,
        workers=workers,
        device=device,
        runtime=runtime,
        bundle=str(bundle) if bundle is not None else None,
    )


# ---- train / eval --------------------------------------------------------------------------
@app.command()
def train(
    out: Path = typer.Option(Path("runs/default"), help="Output directory for the trained model."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same model."),
    steps: int | None = typer.Option(None, help="Optimizer steps (default: the preset's)."),
    preset: str = typer.Option(
        "default",
        help="Training preset: default, user-style (printable-ASCII OCR, 32x512 letterboxed reader, "
        "data v2 with user-style scenes and text: issue 18's model), user-style-continue (the same "
        "recipe from a trained default model, reshaped to the wide ASCII reader; with --init-from), "
        "user-style-detail-continue (the same, with scenes read at 128 px; with --init-from), "
        "user-style-fonts-continue (a last phase of that model on lines in 25 more fonts; with "
        "--init-from), "
        "finetune-vqa (with --init-from), "
        "backbone-probe (default with an ImageNet-pretrained EfficientNet-Lite0 stem), tiny or "
        "tiny-user-style.",
    ),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoint.pt when it exists."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: int | None = typer.Option(
        None, help="CPU threads for torch; 1 is fastest on a 2-core machine that is doing other work."
    ),
    evaluate: bool = typer.Option(True, help="Evaluate on the held-out splits and store the report."),
    init_from: Path | None = typer.Option(None, help="Start from this trained model directory."),
    ocr_lm: bool = typer.Option(
        True, help="Fit the OCR reader's character language model and ship it with the weights."
    ),
    nproc: int = typer.Option(
        1,
        min=1,
        help="Data-parallel processes (torch.distributed: gloo on CPU, NCCL on GPU); the same steps, "
        "global batch and seed as one process.",
    ),
    data_workers: int | None = typer.Option(
        None,
        min=0,
        help="Processes drawing the next batches while the network trains (the same batches, "
        "sooner); 0 draws them in the training process. Default: 1 with --nproc 1 on 2 cores or "
        "more, else 0.",
    ),
) -> None:
    """Train the model on the procedural corpus (+ easy-VQA train split)."""
    from mobile_multimodal.training.distributed import launch
    from mobile_multimodal.training.train import TrainOptions

    launch(
        TrainOptions(
            out=out,
            seed=seed,
            steps=steps,
            preset=preset,
            resume=resume,
            device=device,
            threads=threads,
            evaluate=evaluate,
            init_from=init_from,
            ocr_lm=ocr_lm,
            data_workers=data_workers,
        ),
        nproc,
    )


@app.command("eval")
def evaluate(
    model: str = typer.Option("default", help="Model directory or 'default'."),
    quantization: str = typer.Option("fp32", help="fp32, int8, int4 or int2."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    limit: int | None = typer.Option(None, help="Evaluate at most N examples per task."),
    tasks: str | None = typer.Option(
        None, help="Comma-separated tasks (default: all, the user-style split's user_* tasks included)."
    ),
    ocr_decoding: str = typer.Option(
        "auto",
        help="How OCR reads text lines, as MOBILE_MM_OCR_DECODING: auto (the character language "
        "model the model ships, greedy when it ships none), lm (the shipped one, else one fitted "
        "on the training text) or greedy.",
    ),
) -> None:
    """Evaluate on the held-out splits and print the report."""
    from mobile_multimodal.training.evaluate import EVAL_TASKS, evaluate_model, format_report
    from mobile_multimodal.training.ocr_lm import OCR_DECODINGS

    chosen = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else EVAL_TASKS
    unknown = sorted(set(chosen) - set(EVAL_TASKS))
    if unknown:
        raise typer.BadParameter(f"unknown tasks {unknown}; choose from {', '.join(EVAL_TASKS)}")
    if ocr_decoding not in OCR_DECODINGS:
        raise typer.BadParameter(f"--ocr-decoding must be one of {', '.join(OCR_DECODINGS)}")
    report = evaluate_model(model, quantization, limit, chosen, ocr_decoding)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


# ---- quantize --------------------------------------------------------------------------------
@app.command()
def quantize(
    bits: int = typer.Option(..., help="Target width: 8, 4 or 2."),
    out: Path = typer.Option(
        ..., help="Variant directory to write (e.g. MODEL/int2, where --quantization finds it)."
    ),
    method: str = typer.Option("gptq", help="rtn (round to nearest), gptq (calibrated) or qat (distilled)."),
    model: str = typer.Option("default", help="The fp32 model directory, or 'default'."),
    group_size: int = typer.Option(80, help="Weights per scale/zero point at INT4/INT2."),
    report: Path | None = typer.Option(None, help="Also write the JSON report here."),
    limit: int | None = typer.Option(None, help="Evaluate at most N examples per task (default: all)."),
    calibration_batches: int = typer.Option(16, help="Training batches for GPTQ calibration."),
    zero_points: str = typer.Option(
        "auto",
        help="Zero points below 8 bits: whole, free (any float16), quarter (multiples of 1/4, which "
        "the ONNX Runtime backend serves at 2 bits with no correction), decoder-quarter (quarter in "
        "the text decoder, free elsewhere) or auto: at 2 bits decoder-quarter with gptq (how the "
        "bundled INT2 is built, see the README) and free with rtn, else whole.",
    ),
    gptq_min_rows: int | None = typer.Option(
        None,
        help="GPTQ: round to nearest any Linear with fewer calibration rows than this per input "
        "column (0: GPTQ everywhere). Default: 8 at 2 bits with gptq (measured best with free zero "
        "points), else 0.",
    ),
    qat_steps: int = typer.Option(600, help="QAT steps (method qat)."),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
) -> None:
    """Quantize the model (weight-only, packed), evaluate it against fp32 and write a report."""
    from mobile_multimodal.quantization.qat import QATOptions
    from mobile_multimodal.quantization.report import format_report as format_quant_report
    from mobile_multimodal.training.quantize import QuantizeOptions, quantize_model

    try:
        opts = QuantizeOptions(
            bits=bits,
            out=out,
            method=method,
            model=model,
            group_size=group_size,
            report=report,
            eval_limit=limit,
            calibration_batches=calibration_batches,
            zero_points=zero_points,
            gptq_min_rows=gptq_min_rows,
            qat=QATOptions(steps=qat_steps),
            threads=threads,
        )
        opts.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(format_quant_report(quantize_model(opts, log=lambda line: typer.echo(line, err=True))))


# ---- export ----------------------------------------------------------------------------------
# refused requests exit 2 (as a bad option does), an export that failed 1, an interrupted one 130
_EXPORT_USAGE_CODES = {
    "UNKNOWN_PLATFORM",
    "UNKNOWN_FORMAT",
    "UNSUPPORTED_PLATFORM_FORMAT",
    "UNKNOWN_QUANTIZATION",
    "EXPORT_OUTPUT_EXISTS",
}


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@export_app.callback()
def export(
    ctx: typer.Context,
    platform: str | None = typer.Option(None, help="android or ios."),
    fmt: str | None = typer.Option(
        None, "--format", help="onnx, executorch, coreml or tflite (default: onnx on android, coreml on ios)."
    ),
    quantization: str = typer.Option("fp32", help="fp32, int8, int4 or int2."),
    model: str = typer.Option("default", help="Model directory, or 'default' for the bundled model."),
    out: Path | None = typer.Option(None, help="Bundle directory to create."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle at --out."),
    examples: int = typer.Option(32, min=1, help="Held-out examples per task for the validation."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export the model as a bundle for a phone, validated in its own runtime."""
    if ctx.invoked_subcommand is not None:
        return
    if platform is None or out is None:
        raise typer.BadParameter("--platform and --out are required (see `mobile-mm export --help`)")
    from mobile_multimodal.errors import ExportError
    from mobile_multimodal.export.formats import check_quantization, resolve_format
    from mobile_multimodal.export.summary import format_manifest
    from mobile_multimodal.security.export_audit import audited_cli_export

    # SIGTERM (a container stop, a job runner) ends the export as Ctrl-C does: cleaned up, no bundle
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        # a request that makes no sense is refused before anything (telemetry, database) starts
        check_quantization(quantization)
        resolve_format(platform, fmt)
        # recorded in export_records and pushed to MOBILE_MM_PUSHGATEWAY_URL (a short-lived process)
        manifest = audited_cli_export(  # recorded, pushed, and audited (export.run)
            model=model,
            platform=platform,
            fmt=fmt,
            quantization=quantization,
            out=out,
            progress=True,
            validation_examples=examples,
            overwrite=overwrite,
        )
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2 if exc.code in _EXPORT_USAGE_CODES else 130 if exc.code == "EXPORT_INTERRUPTED" else 1
        raise typer.Exit(code) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(json.dumps(manifest, indent=2) if as_json else format_manifest(manifest, out))


@export_app.command("check")
def export_check(
    formats: list[str] | None = typer.Option(
        None, "--format", help="Formats that must be ready (repeatable); default: list all."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List each export toolchain and runtime with its version; exit 1 if a requested one is missing."""
    from mobile_multimodal.errors import ExportError
    from mobile_multimodal.export.check import check_toolchains

    try:
        report = check_toolchains(formats or [])
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.json() if as_json else report.text())
    if not report.ok:
        raise typer.Exit(1)


# ---- keys ----------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    user: str = typer.Option(..., "--user", help="Who the key is for (audit identity, metrics label)."),
    key_type: str = typer.Option("free", "--type", help="Rate-limit tier: free or pro."),
    admin: bool = typer.Option(False, "--admin", help="Allow the admin routes with this key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the key is in 'key')."),
) -> None:
    """Create an API key and print it once (only its sha256 is stored)."""
    from mobile_multimodal.ops.key_commands import keys_create as run
    from mobile_multimodal.store import DatabaseError

    try:
        typer.echo(run(user, key_type, admin, as_json))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except DatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@keys_app.command("list")
def keys_list(
    include_revoked: bool = typer.Option(True, "--all/--active", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List API keys (ids, users, prefixes; never the secrets)."""
    from mobile_multimodal.ops.key_commands import keys_list as run
    from mobile_multimodal.store import DatabaseError

    try:
        typer.echo(run(include_revoked, as_json))
    except DatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id shown by `keys list`.")) -> None:
    """Revoke an API key; requests with it get 401 REVOKED_API_KEY from then on."""
    from mobile_multimodal.ops.key_commands import keys_revoke as run
    from mobile_multimodal.security.api_keys import KeyNotFoundError
    from mobile_multimodal.store import DatabaseError

    try:
        typer.echo(run(key_id))
    except (KeyNotFoundError, DatabaseError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


# ---- manifest ---------------------------------------------------------------------------------
@manifest_app.command("sign")
def manifest_sign(
    directory: str = typer.Argument(..., help="A model, variant or export bundle directory, or 'default'."),
    quantization: str = typer.Option("fp32", help="With a model: sign its fp32, int8, int4 or int2 variant."),
) -> None:
    """HMAC-sign DIR/manifest.json with MOBILE_MM_MANIFEST_SIGNING_KEY (its files are checked first)."""
    from mobile_multimodal.security.manifest_commands import ManifestError, sign_command

    try:
        typer.echo(sign_command(directory, quantization))
    except ManifestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@manifest_app.command("verify")
def manifest_verify(
    directory: str = typer.Argument(..., help="A model, variant or export bundle directory, or 'default'."),
    quantization: str = typer.Option("fp32", help="With a model: its fp32, int8, int4 or int2 variant."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every file's sha256 and (with a signing key set) the signature; exit 1 if either fails."""
    from mobile_multimodal.security.manifest_commands import ManifestError, verify_command

    try:
        text, ok = verify_command(directory, quantization, as_json)
    except ManifestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(text)
    if not ok:
        raise typer.Exit(1)


# ---- audit ------------------------------------------------------------------------------------
@audit_app.command("query")
def audit_query(
    user: str | None = typer.Option(None, "--user", help="Only this user id (exact)."),
    action: str | None = typer.Option(None, "--action", help="This action, or a prefix with '*' (auth.*)."),
    since: str | None = typer.Option(None, "--since", help="An age (30m, 12h, 7d) or an ISO 8601 time."),
    result: str | None = typer.Option(None, "--result", help="success or failure."),
    limit: int = typer.Option(1000, min=1, help="At most this many (the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print audit events from the database, oldest first (the query itself is audited)."""
    from mobile_multimodal.ops.cli_actor import cli_actor
    from mobile_multimodal.security.audit_query import audit_query_command
    from mobile_multimodal.store import Database, DatabaseError

    try:
        db = Database()
        typer.echo(
            audit_query_command(
                db,
                actor=cli_actor(),
                user=user,
                action=action,
                since=since,
                result=result,
                limit=limit,
                as_json=as_json,
            )
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except DatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


# ---- db --------------------------------------------------------------------------------------
def _print_outcome(text: str, ok: bool) -> None:
    typer.echo(text, err=not ok)
    if not ok:
        raise typer.Exit(1)


@db_app.command("backup")
def db_backup(
    out: Path | None = typer.Option(None, "--out", help="Backup directory (default <data_dir>/backups)."),
    as_json: bool = typer.Option(False, "--json", help="Print the verification as JSON."),
) -> None:
    """Back up the database (SQLite online backup or pg_dump), verify the copy, prune old backups."""
    from mobile_multimodal.ops.db_commands import db_backup as run

    _print_outcome(*run(out, as_json))


@db_app.command("verify")
def db_verify(
    path: Path = typer.Argument(..., help="A backup file written by `db backup`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    scratch_restore: bool = typer.Option(
        True, "--restore/--no-restore", help="Also restore it into a scratch database and compare row counts."
    ),
) -> None:
    """Check a backup: integrity, sha256 and row counts against its sidecar, then a scratch restore."""
    from mobile_multimodal.ops.db_commands import db_verify as run

    text, ok = run(path, as_json, scratch_restore)
    typer.echo(text)
    if not ok:
        raise typer.Exit(1)


@db_app.command("restore")
def db_restore(
    path: Path = typer.Argument(..., help="A backup file written by `db backup`."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replace the database's contents with a verified backup (then migrate it to this release)."""
    from mobile_multimodal.ops.db_commands import db_restore as run

    if not yes:
        typer.confirm(f"Replace every row of the configured database with {path}?", abort=True)
    _print_outcome(*run(path, as_json))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision (default: the newest).")) -> None:
    """Apply the schema migrations (the service also does this at start)."""
    from mobile_multimodal.ops.db_commands import db_upgrade as run

    _print_outcome(*run(revision))


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, -1, or base.")) -> None:
    """Revert the schema to an older revision (before running an older release)."""
    from mobile_multimodal.ops.db_commands import db_downgrade as run

    _print_outcome(*run(revision))


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and this release's newest."""
    from mobile_multimodal.ops.db_commands import db_current as run

    _print_outcome(*run())


@db_app.command("cleanup")
def db_cleanup(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Apply the retention policy now (MOBILE_MM_RETENTION_DAYS); the service runs it daily."""
    from mobile_multimodal.ops.db_commands import db_cleanup as run

    _print_outcome(*run(as_json))


# ---- users -----------------------------------------------------------------------------------
@users_app.command("export")
def users_export(
    user: str = typer.Argument(..., help="The user id keys were created for."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSON here (default: print it)."),
) -> None:
    """Write everything held about a user as JSON (GDPR access request)."""
    from mobile_multimodal.ops.user_commands import users_export as run

    _print_outcome(*run(user, out))


@users_app.command("delete")
def users_delete(
    user: str = typer.Argument(..., help="The user id keys were created for."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Erase a user: keys deleted, audit rows anonymised, the erasure itself audited."""
    from mobile_multimodal.ops.user_commands import users_delete as run

    if not yes:
        typer.confirm(f"Erase {user}, their keys and their identity in the audit trail?", abort=True)
    _print_outcome(*run(user))


# ---- monitoring ------------------------------------------------------------------------------
@monitoring_app.command("check")
def monitoring_check(
    root: Path | None = typer.Option(None, help="Project directory (default: found from the cwd)."),
    strict: bool = typer.Option(False, help="Fail when a check is skipped because its tool is missing."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every tool's output."),
) -> None:
    """Offline checks: promtool, amtool, docker-compose, hadolint, dashboards vs Grafana's schema."""
    from mobile_multimodal.observability.stack import StackError, find_root, format_result, run_checks

    try:
        results = run_checks(find_root(root), on_result=lambda r: typer.echo(format_result(r, verbose)))
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    failed = [r for r in results if not r.ok and (strict or not r.skipped)]
    skipped = sum(r.skipped for r in results)
    typer.echo(f"{len(results) - len(failed) - skipped} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        raise typer.Exit(1)


@monitoring_app.command("k8s-rules")
def monitoring_k8s_rules(
    alerts: Path = typer.Option(Path("monitoring/alerts.yml"), help="The Prometheus rule file."),
    out: Path | None = typer.Option(None, help="Write the PrometheusRule here (default: print it)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if OUT differs from what would be written."),
) -> None:
    """The alert rules as a Prometheus Operator PrometheusRule (deploy/kubernetes/prometheusrule.yaml)."""
    from mobile_multimodal.observability.prometheus_rule import render_prometheus_rule

    try:
        text = render_prometheus_rule(alerts)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if out is None:
        typer.echo(text, nl=False)
    elif check:
        if not out.exists() or out.read_text() != text:
            typer.echo(f"{out} differs from {alerts}: rerun with --out {out} (without --check)", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is up to date with {alerts}")
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@monitoring_app.command("test-alert")
def monitoring_test_alert(
    alertmanager_url: str = typer.Option("http://localhost:9093", "--alertmanager-url", help="Alertmanager."),
    severity: str = typer.Option("info", help="critical (PagerDuty), warning (Slack) or info (email)."),
    duration: float = typer.Option(300.0, help="Seconds until the test alert resolves by itself."),
) -> None:
    """Send a test alert through a running Alertmanager (the guide's weekly notification test)."""
    from mobile_multimodal.observability.stack import TEST_ALERT_NAME, StackError, send_test_alert_outcome

    try:
        outcome = send_test_alert_outcome(alertmanager_url, severity=severity, duration_s=duration)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    routed = ", ".join(outcome.receivers)
    if not outcome.notifies:
        # Routed is not notified: an inhibited or silenced alert never reaches its receiver.
        why = "; ".join(
            [f"inhibited by {', '.join(outcome.inhibited_by)}"] * bool(outcome.inhibited_by)
            + [f"silenced by {', '.join(outcome.silenced_by)}"] * bool(outcome.silenced_by)
        )
        typer.echo(
            f"error: {TEST_ALERT_NAME} ({severity}) routed to {routed} but Alertmanager holds it "
            f"{outcome.state} ({why or 'no reason given'}): no notification is sent",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(
        f"{TEST_ALERT_NAME} ({severity}) accepted by {alertmanager_url}; routed to: {routed} "
        f"(state: {outcome.state}, notifying)"
    )


@app.command()
def bench(
    names: list[str] | None = typer.Argument(
        None, help="Benchmarks to run (serving, telemetry, quantization, ocr_baseline); default all."
    ),
) -> None:
    """Run the benchmarks of a source checkout (benchmarks/, results written beside each script)."""
    import subprocess

    if not (Path.cwd() / "benchmarks" / "run_all.py").is_file():
        typer.echo(
            "error: run `mobile-mm bench` from the root of a source checkout (benchmarks/ not found)",
            err=True,
        )
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "benchmarks.run_all", *(names or [])]))


def _run_app() -> None:
    """Run the CLI; settings from the environment that do not parse end in one clear line."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        if exc.title != "Settings":  # any other model failing is a bug: keep its traceback
            raise
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        typer.echo(
            f"error: invalid settings (MOBILE_MM_* environment or settings file): {problems}", err=True
        )
        raise SystemExit(2) from None


def main() -> None:
    _run_app()


def _alias(command: str) -> None:
    sys.argv = [sys.argv[0], command, *sys.argv[1:]]
    _run_app()


def train_alias() -> None:
    _alias("train")


def export_alias() -> None:
    _alias("export")


def benchmark_alias() -> None:
    _alias("bench")


if __name__ == "__main__":
    main()
