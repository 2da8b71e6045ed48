"""Where the configs are: one answer for the command line and for the option checks (no heavy imports)."""
from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The configs: ``layerscope/conf`` inside an installed wheel, else the checkout's top-level ``conf/``.

    Users add their own configs without editing either: ``--config-dir DIR`` (Hydra adds DIR to
    the search path, so ``DIR/model/my_model.yaml`` is ``model=my_model``) or
    ``hydra.searchpath=[file:///abs/dir]``. The schema of ``config.yaml`` (``layerscope.config.schema``) is
    stored in Hydra's ``ConfigStore`` on the way.
    """
    from .schema import register

    register()  # config.yaml's defaults list names the schema (base_config): stored before Hydra reads the folder
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise SystemExit(f"error: no configs found: expected {here / 'conf'} (installed) or {here.parents[1] / 'conf'} "
                     "(checkout); reinstall layerscope")
