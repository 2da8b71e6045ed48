"""The sweep dashboard: plan, Workspace objects and CLI, all without the network."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb_workspaces")
import wandb_workspaces.reports.v2 as wr  # noqa: E402
import wandb_workspaces.workspaces as ws  # noqa: E402

from layerscope.cli import dashboard  # noqa: E402
from layerscope.loggers import workspace as planner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROUP = "2024-06-01/12-00-00"  # the logger's group: the multirun folder DATE/TIME


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline W&B, no API key, and any attempt to open a connection or resolve a name fails the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"something tried to reach the network: {attempts}"


def panels(plan, section):
    return next(s for s in plan["sections"] if s["name"] == section)["panels"]


@pytest.mark.parametrize("metrics", [("auroc", "aupro", "iou", "entropy"), ("aupro",), ("iou_oracle", "pointing")])
def test_plan_has_one_metric_vs_layer_panel_per_metric(metrics):
    plan = planner.plan_workspace("team", "layerscope", GROUP, metrics)
    lines = panels(plan, "metric vs layer")
    assert [p["y"] for p in lines] == [[f"{m}/top"] for m in metrics]
    assert all(p["type"] == "line" and p["x"] == "layer" for p in lines)
    assert [p["title"] for p in lines] == [f"{m} vs layer (best map per layer)" for m in metrics]
    assert [p["y"] for p in panels(plan, "per-head")] == [[f"{m}/mean"] for m in metrics]
    assert panels(plan, "maps") == [{"type": "table", "table": "maps"}, {"type": "table", "table": "layer_summary"}]
    assert json.loads(json.dumps(plan)) == plan


def test_plan_filters_on_the_group_and_groups_by_model_and_method():
    plan = planner.plan_workspace(None, "layerscope", GROUP)
    assert plan["runset"]["filter"] == {"key": "Group", "op": "==", "value": GROUP}
    assert plan["runset"]["groupby"] == ["config:model.name", "run:JobType"]
    assert plan["name"] == f"layerscope · {GROUP}"
    assert plan["entity"] is None and plan["project"] == "layerscope"
    assert len(panels(plan, "metric vs layer")) == len(planner.DEFAULT_METRICS)


@pytest.mark.parametrize("kwargs, match", [({"metrics": ()}, "at least one metric"),
                                           ({"metrics": ("auroc", "accuracy")}, "unknown metric.*accuracy; choose from"),
                                           ({"group": ""}, "project and group must be non-empty"),
                                           ({"group": "it's"}, "quotes and backslashes are not supported"),
                                           ({"project": ""}, "project and group must be non-empty")])
def test_plan_rejects_bad_input(kwargs, match):
    args = {"entity": "e", "project": "p", "group": GROUP, "metrics": planner.DEFAULT_METRICS} | kwargs
    with pytest.raises(ValueError, match=match):
        planner.plan_workspace(**args)


def test_build_workspace_mirrors_the_plan():
    plan = planner.plan_workspace("team", "layerscope", GROUP, ("auroc", "entropy"))
    workspace = planner.build_workspace(plan)
    assert isinstance(workspace, ws.Workspace)
    assert (workspace.entity, workspace.project, workspace.name) == ("team", "layerscope", plan["name"])
    assert [s.name for s in workspace.sections] == [s["name"] for s in plan["sections"]]
    for section, spec in zip(workspace.sections, plan["sections"]):
        assert len(section.panels) == len(spec["panels"])
        for panel, p in zip(section.panels, spec["panels"]):
            if p["type"] == "line":
                assert type(panel) is wr.LinePlot
                assert (panel.x, panel.y, panel.title) == ("layer", p["y"], p["title"])
            else:
                assert type(panel) is wr.WeavePanelSummaryTable
                assert panel.table_name == p["table"]
    assert workspace.settings.x_axis == "layer"


def test_built_workspace_serialises_the_filter_grouping_and_panels():
    """What ``save()`` would send, checked offline: group filter, model x method grouping, panel keys."""
    workspace = planner.build_workspace(planner.plan_workspace("team", "layerscope", GROUP, ("auroc",)))
    spec = workspace._to_model().model_dump(by_alias=True, exclude_none=True)["spec"]["section"]
    runset = spec["runSets"][0]
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": GROUP, "disabled": False}]
    assert runset["grouping"] == [{"section": "config", "name": "model.value.name"},
                                  {"section": "run", "name": "jobType"}]
    assert spec["settings"]["useRunsTableGroupingInPanels"] is True
    sections = spec["panelBankConfig"]["sections"]
    line = sections[0]["panels"][0]
    assert line["viewType"] == "Run History Line Plot"
    assert (line["config"]["xAxis"], line["config"]["metrics"]) == ("layer", ["auroc/top"])
    table = sections[2]["panels"][0]
    assert table["viewType"] == "Weave"
    assert table["config"]["panel2Config"]["exp"]["fromOp"]["inputs"]["key"]["val"] == "maps"


def test_build_workspace_needs_an_entity():
    plan = planner.plan_workspace(None, "layerscope", GROUP)
    with pytest.raises(ValueError, match="entity"):
        planner.build_workspace(plan)
    assert planner.build_workspace(plan, entity="me").entity == "me"


def test_cli_offline_prints_the_plan_and_does_not_create(capsys):
    assert dashboard.main(["--project", "layerscope", "--group", GROUP, "--metrics", "auroc", "aupro"]) == 0
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert plan == planner.plan_workspace(None, "layerscope", GROUP, ("auroc", "aupro"))
    assert "not created: WANDB_MODE=offline" in err
    assert f"python -m layerscope.cli.dashboard --project layerscope --group {GROUP} --metrics auroc aupro" in err


@pytest.mark.parametrize("setup, reason", [("dry-run", "dry run"), ("no-key", "no W&B API key")])
def test_cli_says_why_it_did_not_create(setup, reason, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    argv = ["--project", "p", "--group", GROUP, "--entity", "team"]
    if setup == "dry-run":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        argv.append("--dry-run")
    else:  # no key in the environment and none stored where `wandb login` keeps it
        monkeypatch.setattr("wandb.login", lambda **kwargs: False)
    monkeypatch.setattr(ws.Workspace, "save", lambda self: pytest.fail("saved"))
    assert dashboard.main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["entity"] == "team"
    assert f"not created: {reason}" in err
    command = err.splitlines()[-1]
    assert "python -m layerscope.cli.dashboard" in command and "--entity team" in command and "--dry-run" not in command


def test_cli_online_saves_and_prints_the_url(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    saved = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    monkeypatch.setattr(ws.Workspace, "url", property(lambda self: f"https://wandb.test/{self.entity}/{self.project}"))
    assert dashboard.main(["--project", "p", "--group", GROUP, "--entity", "team", "--metrics", "iou"]) == 0
    assert capsys.readouterr().out.strip() == "https://wandb.test/team/p"
    assert [p.y for p in saved[0].sections[0].panels] == [["iou/top"]]


@pytest.mark.parametrize("argv", [["--group", GROUP], ["--project", "p", "--group", GROUP, "--metrics", "acc"],
                                  ["--project", "p", "--group", 'a"b'], ["--project", "p"]])
def test_cli_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit, match="^2$") as e:
        dashboard.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_module_entry_point_runs_offline():
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"WANDB_MODE": "offline",
                                                                            "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "layerscope.cli.dashboard", "--project", "p", "--group", GROUP, "--dry-run"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runset"]["filter"]["value"] == GROUP
    assert "not created" in r.stderr
