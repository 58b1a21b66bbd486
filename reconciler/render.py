"""Plans and results as people read them: Terraform-style, grouped by model and class.

Colour only on a TTY and never with NO_COLOR (rich honours both); output is
otherwise plain text that scripts and CI logs can read.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from reconciler.plan import Operation, Plan, plural

SHOWN_PER_CLASS = 10


def console(stderr: bool = False) -> Any:
    import os

    from rich.console import Console

    # NO_COLOR means no escape codes at all: rich alone would still emit bold and dim.
    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False, **plain)


def _short(text: str | None, n: int = 19) -> str:
    if not text:
        return "none"
    return text if len(text) <= n else text[:n] + "…"


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def render_plan(plan: Plan, out: Any) -> None:
    if not plan.operations:
        out.print("No changes. The remote matches the spec." if not plan.errors else "No plan: it has errors.")
        _render_notes(plan, out)
        return
    out.print("modelsync will perform the following actions:\n")
    by_model: dict[str, list[Operation]] = defaultdict(list)
    for op in plan.operations:
        by_model[op.model].append(op)
    for model, ops in by_model.items():
        out.print(f"  [bold]# {_esc(model)}[/bold]")
        for op in ops:
            if op.op in ("create_model", "delete_model"):
                _model_line(op, out)
        _sample_lines(ops, out)
        for op in ops:
            if op.op == "configure":
                out.print(f"  [yellow]~[/yellow] configure {_esc(model)}")
                for change in op.changes or ():
                    out.print(f"      {_esc(change)}")
            elif op.op == "train":
                out.print(f"  [yellow]~[/yellow] train {_esc(model)} ({_esc(op.reason or '')})")
        out.print("")
    _render_notes(plan, out)
    out.print(summary_line(plan))


def _model_line(op: Operation, out: Any) -> None:
    if op.op == "create_model":
        out.print(f'  [green]+[/green] model "{_esc(op.title or op.model)}" (provider {_esc(op.provider or "")})')
    else:
        out.print(
            f'  [red]-[/red] model "{_esc(op.title or op.model)}" with {plural(op.samples or 0, "sample")}'
            f" ({_esc(op.reason or '')})"
        )


def _sample_lines(ops: list[Operation], out: Any) -> None:
    by_class: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        if op.op in ("upload_sample", "delete_sample", "update_sample", "delete_class"):
            by_class[op.class_name or ""].append(op)
    for cls in sorted(by_class):
        class_ops = by_class[cls]
        class_delete = next((o for o in class_ops if o.op == "delete_class"), None)
        if class_delete:
            out.print(
                f"  [red]-[/red] class {_esc(cls)} with {plural(class_delete.samples or 0, 'sample')} "
                f"({_esc(class_delete.reason or '')})"
            )
            class_ops = [o for o in class_ops if o is not class_delete]
            if not class_ops:
                continue
        out.print(f"    class {_esc(cls)}:")
        for op in class_ops[:SHOWN_PER_CLASS]:
            if op.op == "upload_sample":
                why = f" ({_esc(op.reason)})" if op.reason else ""
                out.print(f"      [green]+[/green] {_esc(op.source or '')} [dim]{_esc(op.uid or '')}[/dim]{why}")
            elif op.op == "delete_sample":
                out.print(f"      [red]-[/red] {_esc(op.uid or op.remote_id or '')} ({_esc(op.reason or '')})")
            else:
                out.print(f"      [yellow]~[/yellow] {_esc(op.uid or '')} (caption or boxes)")
        rest = class_ops[SHOWN_PER_CLASS:]
        if rest:
            counts = defaultdict(int)
            for op in rest:
                counts[op.op] += 1
            parts = []
            if counts["upload_sample"]:
                parts.append(f"{counts['upload_sample']:,} more to upload")
            if counts["delete_sample"]:
                parts.append(f"{counts['delete_sample']:,} more to delete")
            if counts["update_sample"]:
                parts.append(f"{counts['update_sample']:,} more to update")
            out.print(f"      … and {', '.join(parts)}")


def _render_notes(plan: Plan, out: Any) -> None:
    for key, n in sorted(plan.unmanaged.items()):
        out.print(
            f"[dim]Note: {_esc(key)} has {plural(n, 'remote sample')} modelsync did not upload; left alone.[/dim]"
        )
    for key, n in sorted(plan.no_longer_declared.items()):
        out.print(
            f"[dim]Note: {_esc(key)} has {plural(n, 'managed sample')} no longer declared; "
            "kept (prune: none).[/dim]"
        )
    for warning in plan.warnings:  # a mass delete's among them (plan.mass_delete_warning)
        out.print(f"[yellow]Warning:[/yellow] {_esc(warning)}")


def summary_line(plan: Plan) -> str:
    s = plan.summary()
    parts: list[str] = []
    if s.get("create_model"):
        parts.append(f"{plural(s['create_model'], 'model')} to create")
    if s.get("delete_model"):
        parts.append(f"{plural(s['delete_model'], 'model')} to delete")
    if s.get("delete_class"):
        parts.append(f"{plural(s['delete_class'], 'class', 'classes')} to delete")
    if s.get("upload_sample"):
        parts.append(f"{plural(s['upload_sample'], 'sample')} to upload")
        if s.get("delete_sample"):
            parts.append(f"{s['delete_sample']:,} to delete")
    elif s.get("delete_sample"):
        parts.append(f"{plural(s['delete_sample'], 'sample')} to delete")
    if s.get("update_sample"):
        parts.append(f"{plural(s['update_sample'], 'sample')} to update")
    if s.get("configure"):
        parts.append(f"{plural(s['configure'], 'config')} to change")
    if s.get("train"):
        parts.append(plural(s["train"], "training run"))
    return "Plan: " + ", ".join(parts) + "."
