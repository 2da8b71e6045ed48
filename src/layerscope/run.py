"""Entry point: ``layerscope model=dino_vits8 'layer=range(0,12)'`` (also ``python -m layerscope.run``, and
``python -m src.run`` from a checkout).

In a single run, a sweep written for a list-valued key (``layer=range(0,12)``,
``head=0,1``, ``threshold=0.5,0.6``) means *all of them in one run*: one forward pass per
batch captures every requested layer. With ``-m``/``--multirun`` Hydra sweeps them as
separate jobs, as usual.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

LIST_KEYS = ("layer", "head", "threshold")

log = logging.getLogger("layerscope.run")


def config_dir() -> str:
    """The configs: ``layerscope/conf`` inside an installed wheel, else the checkout's top-level ``conf/``.

    Users add their own configs without editing either: ``--config-dir DIR`` (Hydra adds DIR to
    the search path, so ``DIR/model/my_model.yaml`` is ``model=my_model``) or
    ``hydra.searchpath=[file:///abs/dir]``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise SystemExit(f"error: no configs found: expected {here / 'conf'} (installed) or {here.parents[1] / 'conf'} "
                     "(checkout); reinstall layerscope")


def listify_sweeps(args: list[str]) -> list[str]:
    """Rewrite ``key=range(..)`` / ``key=a,b`` for ``LIST_KEYS`` to ``key=[...]`` unless multirun."""
    if any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args):
        return args
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for arg in args:
        if not arg.startswith("-") and "=" in arg and arg.split("=", 1)[0].lstrip("+~") in LIST_KEYS:
            override = parser.parse_overrides([arg])[0]
            if override.is_sweep_override():
                values = ",".join(repr(v) if isinstance(v, float) else str(v) for v in override.sweep_iterator())
                arg = f"{arg.split('=', 1)[0]}=[{values}]"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .backbones.weights import WeightsError
    from .study import run

    from .plan import name_from_choices

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    name_from_choices(cfg, hydra_cfg.runtime.choices)
    try:
        results = run(cfg, out_dir)
    except (ValueError, WeightsError, FileNotFoundError) as e:
        fail(f"error: {e}", 2)
    except KeyboardInterrupt:
        fail(f"interrupted: the images finished so far are in {out_dir / 'results.csv'}; "
             "run the same command again to resume", 130)
    except OSError as e:  # full disk, read-only folder, ...
        where = f" {e.filename}" if e.filename else ""
        fail(f"error: cannot write{where}: {e.strerror or e}; free space or choose another output folder "
             f"(hydra.run.dir=...); the finished images are kept", 2)
    print(f"results: {results}")


def fail(message: str, code: int) -> None:
    """One line on stderr (and in the log), then exit with ``code``: never a traceback."""
    log.error("%s", message)
    print(message, file=sys.stderr)
    sys.exit(code)


def main() -> None:
    sys.argv = [sys.argv[0], *listify_sweeps(sys.argv[1:])]
    _main()


if __name__ == "__main__":
    main()
