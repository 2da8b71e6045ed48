"""A W&B workspace for one sweep: each metric against layer, per model and method, plus the logged tables.

    layerscope-dashboard --project P --group G [--entity E] [--metrics auroc aupro] [--dry-run]

Saves the workspace (``loggers.workspace``) and prints its URL only when it can: a W&B API key is
configured, ``WANDB_MODE`` is not ``offline``/``disabled`` and ``--dry-run`` is not given.
Otherwise it prints the plan, says why nothing was created, and prints the command to run online.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence

from ..loggers.workspace import DEFAULT_METRICS, LOGGED_METRICS, build_workspace, offline_reason, plan_workspace
from .errors import Parser, command


def online_command(args: argparse.Namespace) -> str:
    """The command that creates the workspace once online (the same arguments, without --dry-run)."""
    cmd = ["python", "-m", "layerscope.cli.dashboard", "--project", args.project, "--group", args.group]
    if args.entity:
        cmd += ["--entity", args.entity]
    cmd += ["--metrics", *args.metrics]
    return "WANDB_MODE=online WANDB_API_KEY=<your key> " + shlex.join(cmd)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="layerscope-dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--project", required=True, help="W&B project the runs were logged to")
    p.add_argument("--group", required=True,
                   help="the runs' W&B group: the multirun folder DATE/TIME, e.g. 2024-06-01/12-00-00")
    p.add_argument("--entity", default=None, help="W&B entity (default: the API key's default entity)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC",
                   help=f"metrics to plot, from: {', '.join(LOGGED_METRICS)}")
    p.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    return p


# bad arguments end through argparse (``layerscope-dashboard: error: ...``); the wrapper adds Ctrl-C
@command(errors=())
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
