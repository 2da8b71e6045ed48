"""A W&B workspace for one sweep: each metric against layer, per model and method, plus the logged tables.

    layerscope-dashboard --project P --group G [--entity E] [--metrics auroc aupro] [--dry-run]

``plan_workspace`` describes the workspace as a plain, JSON-serialisable dict; ``build_workspace``
turns that into a ``wandb_workspaces`` ``Workspace`` object without saving it (neither touches
the network). The CLI saves the workspace and prints its URL only when it can: a W&B API key is
configured, ``WANDB_MODE`` is not ``offline``/``disabled`` and ``--dry-run`` is not given.
Otherwise it prints the plan, says why nothing was created, and prints the command to run online.

It reads what ``layerscope.loggers.wandb_logger`` writes: one run per Hydra job, ``group`` = the sweep folder,
``job_type`` = the map method, the resolved (nested) Hydra config, history rows stepped by
``layer`` with ``<metric>/<head>`` and ``<metric>/top`` keys, and the tables ``maps`` and
``layer_summary``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # wandb_workspaces (and wandb) are imported lazily: the plan needs neither
    from wandb_workspaces.reports.v2 import PanelTypes
    from wandb_workspaces.workspaces import Workspace

from .results.catalog import MAP_METRICS as LOGGED_METRICS  # what the W&B logger writes per layer
from .results.catalog import DEFAULT_CURVES as DEFAULT_METRICS
TABLES = ("maps", "layer_summary")
# One line per (model, method): the runset groups by these; the line plots use the runset grouping.
GROUP_BY = ("config:model.name", "run:JobType")
MAX_RUNS = 100  # lines (groups) per panel; W&B's default of 10 would hide models in a large sweep


def _line_panel(metric: str, head: str, title: str) -> dict[str, Any]:
    return {"type": "line", "title": title, "x": "layer", "y": [f"{metric}/{head}"],
            "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}


def plan_workspace(entity: str | None, project: str, group: str,
                   metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """Describe the workspace for one sweep as a plain, JSON-serialisable dict.

    Args:
        entity: W&B entity (user or team); None means the API key's default entity,
            resolved only when the workspace is saved.
        project: W&B project the runs were logged to.
        group: the runs' W&B ``group``: the sweep's multirun folder ``DATE/TIME`` (``single`` for plain runs).
        metrics: logged metrics to plot, each one of ``LOGGED_METRICS``; duplicates are dropped.

    Returns:
        ``{"entity", "project", "name", "settings", "runset", "sections"}``; ``runset`` filters
        on the group and groups runs by model and method; ``sections`` is a list of
        ``{"name", "is_open", "columns", "panels"}`` with line panels
        (``{"type": "line", "title", "x", "y", ...}``) and table panels (``{"type": "table", "table"}``).

    Raises:
        ValueError: an empty project or group, a group with quotes or a backslash (the
            library's filter parser cannot hold them), no metrics, or an unknown metric.
    """
    if not project or not group:
        raise ValueError("project and group must be non-empty")
    if any(c in group for c in "'\"\\"):
        raise ValueError(f"group {group!r}: quotes and backslashes are not supported in a group filter")
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        raise ValueError("give at least one metric")
    unknown = [m for m in metrics if m not in LOGGED_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(LOGGED_METRICS)}")
    return {
        "entity": entity,
        "project": project,
        "name": f"layerscope · {group}",
        "settings": {"x_axis": "layer", "max_runs": MAX_RUNS},
        "runset": {"filter": {"key": "Group", "op": "==", "value": group}, "groupby": list(GROUP_BY)},
        "sections": [
            {"name": "metric vs layer", "is_open": True, "columns": 3,
             "panels": [_line_panel(m, "top", f"{m} vs layer (best map per layer)") for m in metrics]},
            {"name": "per-head", "is_open": True, "columns": 3,
             "panels": [_line_panel(m, "mean", f"{m} vs layer (attention head mean)") for m in metrics]},
            {"name": "maps", "is_open": False, "columns": 1,
             "panels": [{"type": "table", "table": t} for t in TABLES]},
        ],
    }


def _group_key(spec: str) -> Any:
    """``"config:model.name"`` -> ``expr.Config("model.name")``; ``"run:JobType"`` -> ``expr.Metric("JobType")``."""
    from wandb_workspaces import expr

    section, _, name = spec.partition(":")
    kinds = {"config": expr.Config, "run": expr.Metric, "summary": expr.Summary}
    if section not in kinds or not name:
        raise ValueError(f"group key {spec!r}: expected config:<key>, run:<attribute> or summary:<key>")
    return kinds[section](name)


def _panel(spec: dict[str, Any]) -> PanelTypes:
    import wandb_workspaces.reports.v2 as wr

    if spec["type"] == "line":
        return wr.LinePlot(title=spec["title"], x=spec["x"], y=list(spec["y"]),
                           groupby_aggfunc=spec.get("groupby_aggfunc"),
                           groupby_rangefunc=spec.get("groupby_rangefunc"))
    if spec["type"] == "table":
        return wr.WeavePanelSummaryTable(table_name=spec["table"])
    raise ValueError(f"unknown panel type {spec['type']!r}")


def build_workspace(plan: dict[str, Any], entity: str | None = None) -> Workspace:
    """Turn a plan from ``plan_workspace`` into an unsaved ``wandb_workspaces.workspaces.Workspace``.

    Builds only Python objects: nothing here reads credentials or touches the network (the
    tests hold the socket shut). Call ``.save()`` on the result to create it on W&B.

    Args:
        plan: the dict from ``plan_workspace``.
        entity: overrides ``plan["entity"]``; one of them must be set.

    Raises:
        ValueError: no entity, or a plan the builder does not understand.
    """
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    entity = entity or plan.get("entity")
    if not entity:
        raise ValueError("no entity: pass one (the CLI resolves the API key's default entity when online)")
    runset = plan["runset"]
    flt = runset["filter"]
    if flt["op"] != "==":
        raise ValueError(f"unsupported filter op {flt['op']!r}")
    settings = plan["settings"]
    sections = [
        ws.Section(
            name=s["name"],
            is_open=s["is_open"],
            panels=[_panel(p) for p in s["panels"]],
            layout_settings=ws.SectionLayoutSettings(columns=s["columns"]),
            panel_settings=ws.SectionPanelSettings(x_axis=settings["x_axis"]),
        )
        for s in plan["sections"]
    ]
    return ws.Workspace(
        entity=entity,
        project=plan["project"],
        name=plan["name"],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=settings["x_axis"], max_runs=settings["max_runs"]),
        runset_settings=ws.RunsetSettings(
            filters=expr.And(expr.Metric(flt["key"]) == flt["value"]),
            groupby=[_group_key(k) for k in runset["groupby"]],
        ),
    )


def offline_reason(dry_run: bool) -> str | None:
    """Why the workspace cannot be saved now, or None when it can.

    Checks, in order: ``--dry-run``; ``WANDB_MODE`` offline/disabled; an API key in
    ``WANDB_API_KEY`` or, failing that, wherever ``wandb login`` keeps it (read with
    ``wandb.login(prompt=False, verify=False)``, which does not contact the server).
    """
    if dry_run:
        return "dry run (--dry-run)"
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return None
    import wandb

    if wandb.login(prompt=False, verify=False):
        return None
    return "no W&B API key (set WANDB_API_KEY or run `wandb login`)"


def online_command(args: argparse.Namespace) -> str:
    """The command that creates the workspace once online (the same arguments, without --dry-run)."""
    cmd = ["python", "-m", "layerscope.dashboard", "--project", args.project, "--group", args.group]
    if args.entity:
        cmd += ["--entity", args.entity]
    cmd += ["--metrics", *args.metrics]
    return "WANDB_MODE=online WANDB_API_KEY=<your key> " + shlex.join(cmd)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="layerscope-dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--project", required=True, help="W&B project the runs were logged to")
    p.add_argument("--group", required=True,
                   help="the runs' W&B group: the multirun folder DATE/TIME, e.g. 2024-06-01/12-00-00")
    p.add_argument("--entity", default=None, help="W&B entity (default: the API key's default entity)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC",
                   help=f"metrics to plot, from: {', '.join(LOGGED_METRICS)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Create the sweep's workspace and print its URL, or print the plan when offline.

    Returns:
        0 when the workspace was saved or the plan printed, 1 when saving failed,
        2 for bad arguments (one line on stderr).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        plan = plan_workspace(args.entity, args.project, args.group, args.metrics)
        args.metrics = list(dict.fromkeys(args.metrics))
        reason = offline_reason(args.dry_run)
        if reason is not None:  # build it anyway (no network) so a dry run catches what saving would reject
            build_workspace(plan, entity=args.entity or "default-entity")
    except ValueError as e:
        parser.error(str(e))
    if reason is not None:
        print(json.dumps(plan, indent=2, ensure_ascii=False))
        print(f"Workspace not created: {reason}.", file=sys.stderr)
        print(f"To create it when online, run: {online_command(args)}", file=sys.stderr)
        return 0
    try:
        import wandb

        entity = args.entity or wandb.Api().default_entity
        workspace = build_workspace(plan, entity=entity).save()
        print(workspace.url)
    except Exception as e:  # noqa: BLE001 - network/auth failures end as one line, not a traceback
        print(f"{parser.prog}: error: could not save the workspace: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
