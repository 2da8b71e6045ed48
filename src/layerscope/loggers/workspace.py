"""A W&B workspace for one sweep: each metric against layer, per model and method, plus the logged tables.

The library behind ``layerscope-dashboard`` (``cli/dashboard.py``). ``plan_workspace`` describes the workspace
as a plain, JSON-serialisable dict; ``build_workspace`` turns that into a ``wandb_workspaces`` ``Workspace``
object without saving it (neither touches the network); ``offline_reason`` says why it cannot be saved now.

It reads what ``layerscope.loggers.wandb_logger`` writes: one run per Hydra job, ``group`` = the sweep folder,
``job_type`` = the map method, the resolved (nested) Hydra config, history rows stepped by
``layer`` with ``<metric>/<head>`` and ``<metric>/top`` keys, and the tables ``maps`` and
``layer_summary``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # wandb_workspaces (and wandb) are imported lazily: the plan needs neither
    from wandb_workspaces.reports.v2 import PanelTypes
    from wandb_workspaces.workspaces import Workspace

from ..results.catalog import MAP_METRICS as LOGGED_METRICS  # what the W&B logger writes per layer
from ..results.catalog import DEFAULT_CURVES as DEFAULT_METRICS
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

