"""The `modelsync` command line. Thin: parse, call the engine, print, choose the exit code.

Exit codes (DESIGN.md): 0 ok, 1 error, 2 changes/drift (plan --detailed-exitcode, status).
Errors are one line each on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from reconciler.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Declare custom-model training data in YAML; plan and apply it to training services.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

TargetOpt = Annotated[list[str] | None, typer.Option("--target", help="Limit to this model (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _ws(ctx: typer.Context):
    from reconciler.workspace import Workspace

    if ctx.obj is None:
        ctx.obj = Workspace(Path(ctx.parent.params.get("directory") or "."), ctx.parent.params.get("file"))
    return ctx.obj


def _in_project(ctx: typer.Context, path: Path) -> Path:
    """A relative path given on the command line, taken from -C's directory (as git -C does,
    and as queries takes image paths from the workspace's workdir)."""
    return path if path.is_absolute() else _ws(ctx).workdir / path


@app.callback()
def main_options(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("-C", help="Run as if started in DIR.", metavar="DIR")] = Path("."),
    file: Annotated[str, typer.Option("-f", help="The spec file.", metavar="SPEC")] = "modelsync.yaml",
) -> None:
    if not directory.is_dir():
        raise UserError(f"-C: no such directory: {directory}")


def _stdout():
    from reconciler.render import console

    return console()


def _stderr():
    from reconciler.render import console

    return console(stderr=True)


def _targets(target: list[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(target or ()))


# --------------------------------------------------------------------------- validate / schema


@app.command()
def validate(ctx: typer.Context) -> None:
    """Check the spec: schema, semantics, provider capabilities. No network, no remote call."""
    from reconciler.engine import check_spec

    ws = _ws(ctx)
    check_spec(ws, sources=True)
    n = len(ws.spec.models)
    print(f"{ws.spec_path.name}: valid ({n} model{'s' if n != 1 else ''}).")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors)."""
    from specs import json_schema

    print(json.dumps(json_schema(), indent=2))


# --------------------------------------------------------------------------- plan / apply / destroy


def _progress_printer(json_mode: bool):
    if json_mode:
        return None
    err = _stderr()
    return lambda text: err.print(f"[dim]{text}…[/dim]")


@app.command()
def plan(
    ctx: typer.Context,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Save the plan to FILE for apply.")] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
    ] = False,
    target: TargetOpt = None,
    locked: Annotated[bool, typer.Option("--locked", help="Fail if a source differs from modelsync.lock.")] = False,
) -> None:
    """Refresh the remote, diff it against the spec, and show the plan."""
    from reconciler.engine import compute_plan
    from reconciler.render import render_plan

    ws = _ws(ctx)
    if out is not None:
        out = _plan_out(ws, _in_project(ctx, out))
    try:
        planned = compute_plan(ws, _targets(target), locked=locked, progress=_progress_printer(json_out))
    finally:
        ws.close()
    p = planned.plan
    if out is not None and not p.errors:  # a plan with errors is never saved: apply must not carry it out
        from reconciler.atomic import write_atomic

        try:
            write_atomic(out, (json.dumps(p.to_json(), indent=1) + "\n").encode())
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write the plan ({exc.strerror or exc})") from None
    if json_out:
        print(json.dumps(p.to_json(), indent=2))
    else:
        render_plan(p, _stdout())
        if out is not None and not p.errors:
            print(f"\nSaved the plan to {out}. Apply it with: modelsync apply {out}")
    if p.errors:
        raise UserError(*p.errors, *([f"--out {out}: not saved: the plan has errors"] if out is not None else []))
    if detailed_exitcode and p.changes:
        raise typer.Exit(2)


def _plan_out(ws: Any, out: Path) -> Path:
    """Check ``plan --out FILE`` before planning: its directory exists, and it is none of the
    project's own files (the spec, the lock file, anything in .modelsync/), which the plan's
    JSON would overwrite."""
    from reconciler.lockfile import LOCK_NAME
    from reconciler.state import state_dir

    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such directory: {out.parent}")
    where = out.resolve()
    if where in (ws.spec_path, ws.project_dir / LOCK_NAME):
        raise UserError(f"--out {out}: that is the project's {out.name}; name another file for the plan")
    if where.is_relative_to(state_dir(ws.project_dir).resolve()):
        raise UserError(f"--out {out}: inside .modelsync/, which holds modelsync's own state; name another file")
    return out


def _confirm(what: str, auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise UserError(f"refusing to {what} without --auto-approve: standard input is not a terminal")
    answer = input(f"\nDo you want to {what}? Only 'yes' will be accepted: ").strip()
    if answer != "yes":
        raise UserError(f"{what}: cancelled")


@app.command()
def apply(
    ctx: typer.Context,
    planfile: Annotated[Path | None, typer.Argument(help="A plan saved by `plan --out`.")] = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")] = False,
    parallelism: Annotated[int, typer.Option("--parallelism", min=1, max=256, help="Operations at once.")] = 10,
    target: TargetOpt = None,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Allow removing more than half of a model's samples.")
    ] = False,
) -> None:
    """Carry out a fresh plan, or a saved one (refused if stale)."""
    _apply_like(ctx, planfile, auto_approve, parallelism, _targets(target), allow_mass_delete, destroy=False)


@app.command()
def destroy(
    ctx: typer.Context,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")] = False,
    target: TargetOpt = None,
) -> None:
    """Delete the remote models this spec manages."""
    _apply_like(ctx, None, auto_approve, 10, _targets(target), True, destroy=True)


def _apply_like(
    ctx: typer.Context,
    planfile: Path | None,
    auto_approve: bool,
    parallelism: int,
    targets: tuple[str, ...],
    allow_mass_delete: bool,
    *,
    destroy: bool,
) -> None:
    from reconciler.apply import Applier, remember_lifecycle
    from reconciler.engine import check_fresh, compute_plan
    from reconciler.plan import Plan
    from reconciler.render import render_plan
    from reconciler.state import StateLock, reconcile_with_remote, save_state

    ws = _ws(ctx)
    out = _stdout()
    command = "destroy" if destroy else "apply"
    if planfile is not None and targets:
        raise UserError("--target: not with a saved plan, which keeps the targets it was made with")
    try:
        _ = ws.spec  # a missing or invalid spec fails here, before the lock creates .modelsync/
        with StateLock(ws.project_dir, command):
            if planfile is not None:
                planfile = _in_project(ctx, planfile)
                try:
                    plan_obj = Plan.from_json(json.loads(planfile.read_bytes()))
                except FileNotFoundError:
                    raise UserError(f"{planfile}: no such file") from None
                except OSError as exc:
                    raise UserError(f"{planfile}: cannot read the plan ({exc.strerror or exc})") from None
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise UserError(f"{planfile}: not a modelsync plan ({type(exc).__name__}: {exc})") from None
                if plan_obj.errors:  # printed by `plan --json` despite them: never carried out
                    raise UserError(*plan_obj.errors, f"{planfile}: the plan has errors; fix them and plan again")
                planned = check_fresh(ws, plan_obj, progress=_progress_printer(False))
            else:
                planned = compute_plan(ws, targets, destroy=destroy, progress=_progress_printer(False))
            p = planned.plan
            if reconcile_with_remote(planned.state, planned.refreshed.remotes):
                save_state(ws.project_dir, planned.state)  # intents from an interrupted run, settled
            if destroy and not p.operations and not p.errors:
                if not p.warnings:
                    out.print("Nothing to destroy: none of the models this spec manages is on the remote.")
                else:  # e.g. a model on a provider that cannot delete models: it is there, and stays
                    out.print("Nothing to destroy.")
                for warning in p.warnings:
                    out.print(f"[yellow]Warning:[/yellow] {_escape(warning)}")
            else:
                render_plan(p, out)
            if p.errors:
                raise UserError(*p.errors)
            if p.mass_deletes and not allow_mass_delete:
                raise UserError(
                    *(
                        f"{k}: the plan removes {d} of {n} samples (more than half); "
                        "re-run with --allow-mass-delete if that is intended"
                        for k, (d, n) in sorted(p.mass_deletes.items())
                    )
                )
            if not p.changes:
                adopted = not destroy and _remember_adopted(ws, planned)
                if remember_lifecycle(planned.state, ws.spec) or adopted:  # e.g. prevent_destroy just switched
                    save_state(ws.project_dir, planned.state)
                if not destroy:
                    _pin_sources(ws, planned)  # in sync: pin it (a deleted lock comes back)
                return
            if planfile is None:
                _confirm("destroy these models" if destroy else "perform these actions", auto_approve)
            if not destroy and _remember_adopted(ws, planned):
                remember_lifecycle(planned.state, ws.spec)
                save_state(ws.project_dir, planned.state)
            reporter = _reporter()
            result = Applier(ws, planned.state, planned.refreshed, parallelism=parallelism, reporter=reporter).run(p)
            _report_result(result, out, "Destroy" if destroy else "Apply")
            _report_calls(ws, out)
            if not result.ok:
                raise UserError(
                    *(f"{op.op} {_op_label(op)}: {msg}" for op, msg in result.failures),
                    f"apply failed: {len(result.failures)} operation(s) failed, "
                    f"{sum(result.done.values())} done, {result.skipped} not started; "
                    "the state records what landed: run apply again to converge",
                )
            if not destroy:
                _pin_sources(ws, planned)
    finally:
        ws.close()


def _remember_adopted(ws: Any, planned: Any) -> bool:
    from reconciler.apply import remember_adopted
    from reconciler.engine import capabilities

    return remember_adopted(planned.state, planned.resolved, planned.refreshed.remotes, capabilities(ws))


def _pin_sources(ws: Any, planned: Any) -> None:
    """Write modelsync.lock from what the plan saw (for a saved plan, check_fresh has checked that
    the sources still resolve to it); if they could not be resolved again, leave it and say so."""
    from reconciler.lockfile import LOCK_NAME, write_lock

    if planned.resolved is not None:
        write_lock(ws.project_dir, planned.resolved)
    elif planned.unverified:
        first = planned.unverified[0]
        more = f" (and {len(planned.unverified) - 1} more)" if len(planned.unverified) > 1 else ""
        _stderr().print(
            f"[yellow]Warning:[/yellow] {LOCK_NAME} not updated: the sources could not be checked against "
            f"the plan: {_escape(first)}{more}; run plan again"
        )


def _op_label(op: Any) -> str:
    parts = [op.model]
    if op.class_name:
        parts.append(op.class_name)
    if op.uid:
        parts.append(op.uid)
    return "/".join(parts) + (f" ({op.source})" if op.source else "")


def _reporter():
    from reconciler.progress import make_reporter

    return make_reporter()


def _report_calls(ws: Any, out: Any) -> None:
    """What the providers did over the network: requests, retries, 429s received."""
    for name, provider in sorted(ws.providers_in_use().items()):
        st = provider.stats
        if st.requests:
            out.print(
                f"{name}: {st.requests:,} requests, {st.retries:,} retries, {st.throttled:,} throttled (HTTP 429)"
            )


def _report_result(result: Any, out: Any, command: str) -> None:
    from reconciler.plan import plural

    d = result.done
    parts = []
    for op, noun, many, verb in (
        ("create_model", "model", None, "created"),
        ("delete_model", "model", None, "deleted"),
        ("upload_sample", "sample", None, "uploaded"),
        ("delete_sample", "sample", None, "deleted"),
        ("delete_class", "class", "classes", "deleted"),
        ("update_sample", "sample", None, "updated"),
        ("configure", "model", None, "configured"),
    ):
        if d[op]:
            parts.append(f"{plural(d[op], noun, many)} {verb}")
    for model, version in result.versions:
        parts.append(f"{model} trained as version {version}")
    status = f"{command} complete" if result.ok else f"{command} stopped"
    out.print(f"\n{status}: {', '.join(parts) if parts else 'nothing done'}.")


# --------------------------------------------------------------------------- status / versions


@app.command()
def status(ctx: typer.Context, json_out: JsonOpt = False, target: TargetOpt = None) -> None:
    """Drift between spec, state and remote, without planning. Exit 2 when anything drifted."""
    from reconciler.drift import compute_drift, render_drift

    ws = _ws(ctx)
    try:
        report = compute_drift(ws, _targets(target))
    finally:
        ws.close()
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        render_drift(report, _stdout())
    if not report["in_sync"]:
        raise typer.Exit(2)


@app.command()
def versions(ctx: typer.Context, model: str, json_out: JsonOpt = False) -> None:
    """A model's trained versions, newest first, with dataset digests and metrics."""
    from reconciler.queries import list_versions, render_versions

    ws = _ws(ctx)
    try:
        rows = list_versions(ws, model)
    finally:
        ws.close()
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        render_versions(model, rows, _stdout())


@app.command()
def predict(
    ctx: typer.Context,
    model: str,
    inputs: Annotated[list[str], typer.Argument(help="Image paths or URLs.")],
    version: Annotated[str | None, typer.Option("--version", help="A trained version (default: latest).")] = None,
    confidence_thresh: Annotated[float | None, typer.Option("--confidence-thresh", min=0.0, max=1.0)] = None,
    overlap_thresh: Annotated[float | None, typer.Option("--overlap-thresh", min=0.0, max=1.0)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a trained model on images."""
    from reconciler.queries import predict as run_predict
    from reconciler.queries import render_predictions

    ws = _ws(ctx)
    try:
        preds, detection = run_predict(ws, model, inputs, version, confidence_thresh, overlap_thresh)
    finally:
        ws.close()
    if json_out:
        print(json.dumps([p.to_json(detection) for p in preds], indent=2))
    else:
        render_predictions(preds, _stdout())


@app.command()
def infer(
    ctx: typer.Context,
    model: str,
    sources: Annotated[
        list[str] | None, typer.Option("--sources", help="Images (paths or URLs) to run on (repeatable).")
    ] = None,
    job: Annotated[
        str | None, typer.Option("--job", help="Follow a job started before (e.g. with --no-wait) instead.")
    ] = None,
    version: Annotated[str | None, typer.Option("--version")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Poll the job to its end.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds to wait at most.")] = 1800.0,
    json_out: JsonOpt = False,
) -> None:
    """Run an asynchronous batch inference job and poll it to its end."""
    from reconciler.queries import run_inference

    if bool(sources) == (job is not None):
        raise UserError("infer: give either --sources (to start a job) or --job (to follow one)")
    ws = _ws(ctx)
    try:
        status_ = run_inference(ws, model, sources or [], version, wait, timeout, None if json_out else _stderr(), job)
    finally:
        ws.close()
    body = {
        "job_id": status_.job_id,
        "status": status_.state,
        "done": status_.done,
        "total": status_.total,
        "results": [p.to_json() for p in status_.results],
        "error": status_.error,
    }
    if json_out:
        print(json.dumps(body, indent=2))
    else:
        out = _stdout()
        out.print(f"job {status_.job_id}: {status_.state} ({status_.done}/{status_.total})")
        for p in status_.results:
            out.print(f"  {p.input}: {p.label} ({p.confidence:.1%})")
    if status_.state == "Errored":
        raise UserError(f"infer {model}: job {status_.job_id} errored: {status_.error or 'no reason given'}")


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8700,
    data: Annotated[Path, typer.Option("--data", help="Data directory of the embedded service.")] = Path(
        ".modelsync/local"
    ),
    key: Annotated[list[str] | None, typer.Option("--key", help="An accepted API key (repeatable).")] = None,
    keys_file: Annotated[
        Path | None,
        typer.Option("--keys-file", help="JSON/YAML: {keys: [{key, owner, permissions, team_id, projects}]}."),
    ] = None,
    rate_limit: Annotated[
        int, typer.Option("--rate-limit", min=0, help="Requests a minute per endpoint (0: off).")
    ] = 90,
    total_rate_limit: Annotated[
        int | None,
        typer.Option(
            "--total-rate-limit", min=0, help="Requests a minute per key in all (0: off; default: twice --rate-limit)."
        ),
    ] = None,
    allow_private_urls: Annotated[
        bool, typer.Option("--allow-private-urls", help="Let URL inputs reach loopback and private addresses.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the embedded service over HTTP, answering the vendors' APIs (astica, Autogon, AnnoLab, Scenario)."""
    from reconciler.local.serve.auth import load_keys_file, normalize_keys
    from reconciler.local.serve.runner import run

    try:
        keys = normalize_keys(key or [])
        if keys_file is not None:
            keys.update(load_keys_file(keys_file))
    except (OSError, ValueError) as exc:
        raise UserError(f"--keys-file: {exc}") from None
    data = _in_project(ctx, data)
    if data.exists() and not data.is_dir():
        raise UserError(f"--data {data}: not a directory")
    sock = _listening_socket(host, port)
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sock.close()
        raise UserError(f"--data {data}: cannot create the data directory ({exc.strerror or exc})") from None
    if not os.access(data, os.W_OK):
        sock.close()
        raise UserError(f"--data {data}: the data directory is not writable")
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"modelsync serve: listening on http://{shown}:{bound} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    run(
        sock=sock,
        host=host,
        port=port,
        data_dir=str(data),
        keys=keys,
        rate_limit=rate_limit or None,
        total_rate_limit=(2 * rate_limit if total_rate_limit is None else total_rate_limit) or None,
        allow_private_urls=allow_private_urls,
        log_level=log_level,
        faults=None,
    )


def _listening_socket(host: str, port: int) -> Any:
    """The server's socket, bound and listening before anything is created, as uvicorn binds its
    own (IPv6 for a host with a colon, else IPv4): a port in use or an address this machine does
    not have is one Error: line and exit 1, not uvicorn's log and exit 3. Handed to uvicorn, so
    no other process can take the port in between."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except socket.gaierror as exc:
        sock.close()
        raise UserError(f"--host {host}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    import gc

    # A command at scale keeps a few million objects alive until it exits (a 100k-sample plan),
    # and with the default thresholds (700, 10, 10) the cyclic GC walks that growing heap again
    # and again for nothing: none of it is garbage. Freeze what the imports made and collect
    # the young generation every 100k allocations instead. Restored on return for callers that
    # run main() in-process (the tests); as the process's entry point (no argv), everything
    # is frozen again at the end instead, so that the interpreter's final collection does not
    # walk the heap once more (0.2 s of every command's exit on the bench machine, measured).
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 10)
    try:
        try:
            rv = app(args=argv, standalone_mode=False, prog_name="modelsync")
            if rv == INTERRUPTED_EXIT:  # typer (>= 0.29) answers Ctrl-C with Exit(130), before the handler below
                print(INTERRUPTED, file=sys.stderr)
        except UserError as exc:
            err = _stderr()
            for line in exc.lines:
                if _SPEC_POSITION.match(line):  # the contract: FILE:LINE:COL: message, as is
                    err.print(_escape(line))
                else:
                    err.print(f"[red]Error:[/red] {_escape(line)}")
            sys.exit(1)
        except _abort_types():
            print("Aborted.", file=sys.stderr)
            sys.exit(130)
        except _usage_error_types() as exc:
            print(f"Error: {exc.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(1)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)
        except BrokenPipeError:
            sys.exit(0)
        except Exception as exc:  # a bug: one line for the user, the traceback only on request
            if os.environ.get("MODELSYNC_DEBUG"):
                raise
            print(
                f"Error: internal error: {type(exc).__name__}: {exc} (set MODELSYNC_DEBUG=1 for a traceback)",
                file=sys.stderr,
            )
            sys.exit(1)
    finally:
        if argv is None:
            gc.freeze()
        else:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
    sys.exit(rv if isinstance(rv, int) else 0)


INTERRUPTED = "Interrupted; run the same command again to converge."
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C'd command

_SPEC_POSITION = __import__("re").compile(r"^[^\s:]+:\d+:\d+: ")


def _abort_types() -> tuple[type[BaseException], ...]:
    """click's Abort and typer's own copy (see _usage_error_types). Looked up only when an
    exception gets this far: importing click costs every command ~5 ms of its start."""
    import click

    return tuple(dict.fromkeys((click.exceptions.Abort, typer.Abort)))


def _usage_error_types() -> tuple[type[Exception], ...]:
    """click's ClickException and typer's bundled copy of it (typer >= 0.29 ships its own click),
    so a bad flag or argument is a usage message, not an internal error, whichever is installed."""
    import click

    found: list[type[Exception]] = [click.ClickException]
    found += [cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"]
    return tuple(dict.fromkeys(found))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


if __name__ == "__main__":
    main()
