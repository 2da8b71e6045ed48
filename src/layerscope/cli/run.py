"""Entry point: ``layerscope model=dino_vits8 'layer=range(0,12)'`` (also ``python -m layerscope.cli.run``, and
``python -m src.run`` from a checkout).

In a single run, a sweep written for a list-valued key (``layer=range(0,12)``,
``head=0,1``, ``threshold=0.5,0.6``) means *all of them in one run*: one forward pass per
batch captures every requested layer. With ``-m``/``--multirun`` Hydra sweeps them as
separate jobs, as usual.
"""
from __future__ import annotations

import copy
import errno
import logging
import logging.handlers
import shutil
import sys
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..config.paths import config_dir
from ..results.layout import FAILED, HYDRA, HYDRA_CONFIG, HYDRA_OVERRIDES, HYDRA_SETTINGS, LOG, RESULTS

LIST_KEYS = ("layer", "head", "threshold")

log = logging.getLogger("layerscope.run")


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


EXTENSIBLE = ("model.model_kwargs.", "model.config.", "hydra.")  # where +key=value may add keys
REFUSED = ".refused"  # in a sweep folder: jobs refused because their folder holds another run (left untouched)
_failed_jobs: list[str] = []


def _flags(args: list[str]) -> tuple[list[str], list[str], bool]:
    """(overrides, extra config dirs, whether Hydra itself should answer: --help, --cfg, ...)."""
    overrides, dirs, own = [], [], False
    it = iter(args)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            dirs.append(next(it, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg in ("--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"):
            own = True
            next(it, None)
        elif arg in ("-m", "--multirun"):
            continue
        elif arg.startswith("-"):
            own = True  # --help, --hydra-help, --cfg job, --info, -c, --resolve, --run ...
        elif not arg.startswith(("hydra.", "hydra/", "~hydra")):
            overrides.append(arg)
    return overrides, dirs, own


def precheck(args: list[str]) -> str | None:
    """What Hydra would reject in many lines (an unknown config choice, an unknown key, bad syntax), as one
    line: ``error: ...``, or None when the overrides compose. Every value of a sweep is checked.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ValidationError

    overrides, dirs, own = _flags(args)
    if own:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        return f"error: cannot read the overrides ({str(e).splitlines()[0]}); {parse_advice(args)}"
    for o in parsed:
        key = o.key_or_group
        if o.is_add() and not any(f"{key}.".startswith(prefix) for prefix in EXTENSIBLE):
            return f"error: {o.input_line}: {key} is not an option of layerscope (the options are those of " \
                   "layerscope/config/schema.py; +key adds only inside model.model_kwargs)"
    singles = [o.input_line if not o.is_sweep_override() else None for o in parsed]
    firsts = [f"{o.get_key_element()}={_first(o)}" if o.is_sweep_override() else o.input_line for o in parsed]
    combos = [firsts]
    for i, o in enumerate(parsed):
        if singles[i] is None:
            combos += [[*firsts[:i], f"{o.get_key_element()}={v}", *firsts[i + 1:]] for v in o.sweep_string_iterator()]
    search = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in dirs)}]"] if dirs else []
    from omegaconf import open_dict

    from ..config.checks import check_config
    from ..config.compose import name_from_choices

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose("config", overrides=[*search, *combo], return_hydra_config=True)
            except MissingConfigException as e:
                first = str(e).splitlines()[0]
                wanted = first.split("Could not find '", 1)[-1].rstrip("'")
                group, _, value = wanted.rpartition("/")
                return f"error: {group}={value}: no such config; available: {', '.join(e.options or [])}"
            except ConfigCompositionException as e:
                if isinstance(e.__cause__, ValidationError) and getattr(e.__cause__, "full_key", None):
                    return f"error: {_type_error(e.__cause__, combo)}"  # metrics.image_topk=abc: the schema's type
                lines = str(e).splitlines()
                first = lines[0]
                if first.startswith("Could not override '"):
                    key = first.split("'")[1]
                    return f"error: {key}: no such option (the options are those of layerscope/config/schema.py and of " \
                           f"the chosen model/data/method configs)"
                return f"error: {' '.join(lines)[:300]}"
            except Exception as e:  # noqa: BLE001 - any other composition error, still one line
                return f"error: {' '.join(str(e).split())[:300]}"
            name_from_choices(cfg, cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                check_config(cfg, [Path(d) for d in dirs])  # unset data.root, save_maps=maybe: before Hydra writes
            except ValueError as e:
                return f"error: {e}"
    return None


def _type_error(error, overrides: list[str]) -> str:
    """``key=value: expected ...`` for a value of the wrong type, the value as the user wrote it."""
    from ..config.schema import type_error

    key = str(error.full_key)
    given = next((o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key), None)
    return type_error(error, given)


def _first(override) -> str:
    return next(iter(override.sweep_string_iterator()))


class SweepReport(Callback):
    """Hydra callback: after a sweep, name the jobs that failed (each wrote ``failed.txt``) and those
    refused because their folder belongs to another run (recorded in the sweep's ``.refused/``)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / REFUSED, ignore_errors=True)  # an earlier sweep's

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        lines = [(path.parent.name, f"job {path.parent.name}: {path.read_text().strip()}")
                 for path in sweep.glob(f"*/{FAILED}")]
        lines += [(path.stem, f"job {path.stem}: {path.read_text().strip()}")
                  for path in (sweep / REFUSED).glob("*.txt")]
        shutil.rmtree(sweep / REFUSED, ignore_errors=True)
        _failed_jobs.extend(line for _, line in sorted(lines, key=lambda x: (len(x[0]), x[0])))


class HeldLog:
    """The job's log file (``run.log``) held back until the run folder is known to be this run's.

    Hydra opens the log before the task starts; a run refused because its folder belongs to another
    run must not append to that run's log, so records wait here: written on ``release``, dropped on
    ``drop`` (the console shows them either way).
    """

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.files = [h for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        self.buffer = logging.handlers.BufferingHandler(sys.maxsize)
        for handler in self.files:
            self.root.removeHandler(handler)
        self.root.addHandler(self.buffer)
        self.held = True

    def release(self) -> None:
        """Write the held records and log to the file from now on."""
        if self.held:
            self.held = False
            self.root.removeHandler(self.buffer)
            for handler in self.files:
                for record in self.buffer.buffer:
                    if record.levelno >= handler.level:
                        handler.handle(record)
                self.root.addHandler(handler)

    def drop(self) -> None:
        """Forget the held records; the log file is left as it was."""
        if self.held:
            self.held = False
            self.root.removeHandler(self.buffer)
            for handler in self.files:
                handler.close()


def write_hydra_files(out_dir: Path, task_cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Hydra's record of the job (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), written by
    the run once its folder is checked (``hydra.output_subdir: null`` keeps Hydra from writing it earlier)."""
    from omegaconf import OmegaConf, read_write

    from ..results.rundir import write_atomic

    hydra_cfg = copy.deepcopy(hydra_cfg)
    with read_write(hydra_cfg.hydra):
        hydra_cfg.hydra.output_subdir = HYDRA  # Hydra's record of a job, written once the folder is the run's
    folder = Path(out_dir) / HYDRA
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in ((HYDRA_CONFIG, task_cfg), (HYDRA_SETTINGS, hydra_cfg),
                       (HYDRA_OVERRIDES, hydra_cfg.hydra.overrides.task)):
        write_atomic(folder / name, OmegaConf.to_yaml(node))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ..backbones.weights import WeightsError
    from ..config.compose import name_from_choices
    from ..study import run

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    record = copy.deepcopy(cfg), copy.deepcopy(HydraConfig.instance().cfg)  # what Hydra would have written
    held = HeldLog()
    accepted = False

    def accept(scoring: bool) -> None:
        nonlocal accepted
        accepted = True
        held.release()
        if scoring:  # a skipped finished run keeps the record of the run that wrote it
            (out_dir / FAILED).unlink(missing_ok=True)  # a job that failed before and now runs again
            write_hydra_files(out_dir, *record)

    def stop(message: str, code: int) -> None:  # a refused sweep job records why in the sweep, not the folder
        fail(message, code, None if sweep is None else out_dir / FAILED if accepted else
             sweep / REFUSED / f"{out_dir.name}.txt")

    name_from_choices(cfg, hydra_cfg.runtime.choices)
    try:
        results = run(cfg, out_dir, on_accept=accept)
    except (ValueError, WeightsError, FileNotFoundError) as e:
        stop(f"error: {e}", 2)
        return
    except KeyboardInterrupt:
        fail(f"interrupted: the images finished so far are in {out_dir / RESULTS}; "
             "run the same command again to resume", 130)
    except OSError as e:  # full disk, read-only folder, ...
        where = f" {e.filename}" if e.filename else ""
        stop(f"error: cannot write{where}: {e.strerror or e}; {os_advice(e)}; the finished images are kept", 2)
        return
    except Exception as e:  # in a sweep, one job's crash must not stop the others; alone, Hydra shows it
        if sweep is None:
            raise
        _to_log_file("job failed", exc_info=True)  # the traceback: in the job's log, not on the console
        where = f" (traceback in {out_dir / LOG})" if accepted else ""
        stop(f"error: {type(e).__name__}: {e}{where}", 1)
        return
    finally:
        held.drop()  # refused: the folder's own log is left as it was (a no-op once released)
    print(f"results: {results}")


def os_advice(e: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno == errno.ENAMETOOLONG:
        return "the name is longer than this file system allows; choose a shorter output folder (hydra.run.dir=...)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write (hydra.run.dir=...)"
    return "free space or choose another output folder (hydra.run.dir=...)"


def fail(message: str, code: int, record: Path | None = None) -> None:
    """One line on stderr (and in the log file, not again on the console), then exit with ``code``: never a traceback.

    In a sweep the job writes why into ``record`` and returns instead, so the sweep goes on past
    it and ends non-zero (``SweepReport``): its folder's ``failed.txt``, or, for a job refused
    because its folder belongs to another run, a file in the sweep's ``.refused/`` (that folder
    stays untouched).
    """
    _to_log_file(message)
    print(message, file=sys.stderr)
    if record is None:
        sys.exit(code)
    record.parent.mkdir(parents=True, exist_ok=True)
    from ..results.rundir import write_atomic

    write_atomic(record, message + "\n")


def _to_log_file(message: str, exc_info: bool = False) -> None:
    """``message`` (with the exception being handled, when ``exc_info``) as an ERROR record for the run's log
    file (or for the records ``HeldLog`` holds for it), not for the console: there a failure is one line, the
    one ``fail`` prints."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,),
                            sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if not console and record.levelno >= handler.level:
            handler.handle(record)


UNQUOTABLE = set("[]{}(),'\"\\")  # a value holding one of these is a list, a sweep or quoted already


def quote_non_ascii(args: list[str]) -> list[str]:
    """``key=/tmp/ünï`` as ``key='/tmp/ünï'``: Hydra's grammar takes letters outside ASCII only inside its own
    quotes, and a plain value (a path, a name) means the same quoted. Lists, sweeps, function calls and
    values quoted already are left as written (``parse_advice`` says how to quote them)."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if (eq and not arg.startswith("-") and not value.isascii() and not UNQUOTABLE & set(value)
                and not value.startswith(("'", '"'))):
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def parse_advice(args: list[str]) -> str:
    """How to quote what Hydra could not read."""
    if not all(arg.isascii() for arg in args):
        return ("Hydra reads letters outside ASCII only inside its own quotes, kept by bash's: "
                "'data.defects=[\"ünï\"]'")
    return "in bash, quote values with brackets or parentheses: 'layer=range(0,12)'"


def unwritable_output(args: list[str]) -> str | None:
    """The one-line error for a run folder that cannot be written (checked before Hydra creates it and opens
    its ``run.log``), or None. Only what is known before the run: a folder named with ``${...}`` is checked up
    to its first interpolation (the default ``outputs/runs/${now:...}``: ``outputs/runs``)."""
    import os

    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a for a in args if a.split("=", 1)[0] == key]
    try:
        value = str(OverridesParser.create().parse_overrides(given[-1:])[0].value()) if given else None
    except Exception:  # noqa: BLE001 - Hydra says what it cannot read
        return None
    if value is None:
        if any(a.startswith(("--config", "-c", "hydra/", "hydra.searchpath", "+hydra")) for a in args):
            return None  # a config of the user's may name another folder: Hydra says what it cannot write
        value = "outputs/multirun/" if multirun else "outputs/runs/"
    literal = value.split("${", 1)[0]
    folder = Path(literal) if "${" not in value else Path(literal).parent if not literal.endswith("/") else \
        Path(literal)
    folder = Path.cwd() / folder if not folder.is_absolute() else folder
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    named = f"{key}={value}"
    if not existing.is_dir():
        return f"error: {named}: {existing} is not a folder; choose another output folder ({key}=...)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"error: {named}: cannot write into {existing} (permission denied or a read-only file system); " \
               f"choose a folder you can write ({key}=...)"
    log_file = existing / LOG
    if existing == folder and not multirun and log_file.exists() and not os.access(log_file, os.W_OK):
        return f"error: {named}: cannot write {log_file} (permission denied); choose a folder you can write " \
               f"({key}=...)"
    return None


def _overrides(args: list[str]) -> list[str]:
    """The ``key=value`` arguments (not the values of ``--config-dir DIR`` and the like)."""
    out, it = [], iter(args)
    for arg in it:
        if arg in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--experimental-rerun"):
            next(it, None)
        elif not arg.startswith("-") and "=" in arg:
            out.append(arg)
    return out


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # honour Ctrl-C even when started with it ignored
    from hydra.errors import OverrideParseException

    given = quote_non_ascii(sys.argv[1:])
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        # every override, Hydra's own (hydra.run.dir=...) too, which precheck leaves to Hydra
        OverridesParser.create().parse_overrides(_overrides(given))
        args = listify_sweeps(given)
    except OverrideParseException as e:
        print(f"error: cannot read the overrides ({str(e).splitlines()[0]}); {parse_advice(given)}", file=sys.stderr)
        sys.exit(2)
    problem = precheck(args) or unwritable_output(args)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    import importlib

    # the callback is built by Hydra from "layerscope.cli.run", which is not "__main__" under python -m
    failed_jobs = importlib.import_module("layerscope.cli.run")._failed_jobs
    try:
        _main()
    except SystemExit as e:
        if e.code not in (0, None) or not failed_jobs:
            raise
    if failed_jobs:
        for line in failed_jobs:
            print(f"failed: {line}", file=sys.stderr)
        print(f"error: {len(failed_jobs)} job(s) of the sweep failed (listed above; the others finished); "
              "fix and run the same command again: finished jobs are skipped", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
