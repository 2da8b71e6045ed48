"""Shared test helpers: config composition, a private weights cache, tiny inputs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session", autouse=True)
def _offline_and_private_cache(tmp_path_factory):
    """Tests never touch the network, and converted weights go to a cache of their own."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("LAYERSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


def compose(*overrides: str):
    """The run's config with ``overrides``, as ``python -m layerscope.cli.run`` would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from omegaconf import open_dict

    from layerscope.plan import name_from_choices

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: float = 600):
    """Run ``python -m layerscope.cli.run ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "layerscope.cli.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
