"""Shared test helpers: config composition, a private weights cache, tiny inputs."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
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


SMALL_RUN = ["model=tiny_vit", "progress=false", "figures.grid=false", "data.textures=[brick]",
             "data.defects=[scratch,spot]", "data.per_combination=2", "data.good_per_texture=2", "data.size=64"]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A finished 6-image run (tiny ViT, 4 defective and 2 good synthetic images, saved maps) made by
    ``layerscope SMALL_RUN`` once per session; tests only read it: one that changes it works on a copy
    (``shutil.copytree(small_run, tmp_path / "run")``)."""
    out = tmp_path_factory.mktemp("small_run") / "run"
    proc = run_main([*SMALL_RUN, f"hydra.run.dir={out}"], cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def compose(*overrides: str):
    """The run's config with ``overrides``, as ``python -m layerscope.cli.run`` would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from omegaconf import open_dict

    from layerscope.config.compose import name_from_choices

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: float = 600):
    """Run ``python -m layerscope.cli.run ARGS`` in a subprocess; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "layerscope.cli.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


def call_main(main, argv: list[str]) -> subprocess.CompletedProcess:
    """A command's ``main(argv)`` in this process, as a subprocess would report it: the returned (or
    ``sys.exit``) code, and what it printed on stdout and stderr. An exception other than SystemExit
    propagates (a subprocess would have shown it as a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
            code = 0 if code is None else code
        except SystemExit as e:
            code = _exit_code(e)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def run_main(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``layerscope ARGS`` (``layerscope.cli.run.main``) in this process, started in ``cwd``: no interpreter
    start-up (a subprocess costs 8-15 s, this ~1 s), same exit code and stderr lines. Hydra's global
    state, the sweep's failed-job list, the logging Hydra configures, ``sys.argv`` and the working
    directory are put back afterwards."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    run = importlib.import_module("layerscope.cli.run")  # the module, not the package's ``run`` attribute

    root = logging.getLogger()
    saved_root = root.level, list(root.handlers)
    saved = {name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
             for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    run._failed_jobs.clear()  # a sweep's failed jobs, kept by the process for its exit line
    try:
        sys.argv = ["layerscope", *map(str, args)]
        os.chdir(cwd)
        return call_main(lambda _: run.main(), args)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
        run._failed_jobs.clear()
        for handler in root.handlers:
            if handler not in saved_root[1]:
                handler.close()  # Hydra's run.log handler: its file stays closed, as after a process
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, (level, handlers, propagate, disabled) in saved.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled


def pytest_addoption(parser):
    parser.addoption("--check-modules", action="store_true",
                     help="fail the session when a module of src/layerscope was never imported by the tests that ran "
                          "(make test-fast: the fast tier must reach every module)")


def package_modules() -> list[str]:
    """Every module of the package, dotted (``layerscope.analysis.pool``), from the files under src/."""
    src = ROOT / "src"
    names = []
    for path in sorted((src / "layerscope").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--check-modules"):
        return
    missing = [name for name in package_modules() if name not in sys.modules]
    if missing:
        terminalreporter.write_line(f"error: {len(missing)} module(s) of layerscope never imported by these tests: "
                                    f"{', '.join(missing)}", red=True)
    else:
        terminalreporter.write_line(f"every module of layerscope imported ({len(package_modules())})")


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--check-modules") and exitstatus == 0 and \
            any(name not in sys.modules for name in package_modules()):
        session.exitstatus = 1


def tiny_hf_vit(layers: int = 3):
    """A randomly initialised transformers ViT (3 heads of 16 dims, patch 8, 64 px) wrapped as ``HFViT``."""
    import torch

    from layerscope.backbones import HFViT

    torch.manual_seed(0)
    cfg = dict(hidden_size=48, num_hidden_layers=layers, num_attention_heads=3, intermediate_size=96, patch_size=8,
               image_size=64, num_labels=10)
    return HFViT("h", img_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False, config=cfg)


def eager_reference(bb, x):
    """The output, with ``output_attentions``, of an eager-attention copy of ``tiny_hf_vit``'s model on ``x``:
    the reference attention written by transformers itself, not by the code under test."""
    from transformers import ViTForImageClassification

    eager = ViTForImageClassification(bb.model.config)
    eager.load_state_dict(bb.model.state_dict())
    eager.config._attn_implementation = "eager"
    eager.eval()
    return eager(pixel_values=bb.normalize(x), output_attentions=True, interpolate_pos_encoding=True)



def run_cut_after(monkeypatch, cut: int, start) -> None:
    """Run ``start()`` (a study into some folder) and stop it with Ctrl-C once ``cut`` images are recorded
    (``study._record`` is the one place an image becomes finished); the recorder is put back after."""
    from layerscope import study

    record, calls = study._record, {"n": 0}

    def stop_after(*args, **kwargs):
        if calls["n"] == cut:
            raise KeyboardInterrupt("stopped by the test")
        calls["n"] += 1
        return record(*args, **kwargs)

    monkeypatch.setattr(study, "_record", stop_after)
    with pytest.raises(KeyboardInterrupt, match="stopped by the test"):
        start()
    monkeypatch.setattr(study, "_record", record)
