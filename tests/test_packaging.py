"""The package as users get it: the wheel's contents, an installed copy running from another folder,
and the module graph (no import cycles, no module importing a command-line module)."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "src" / "layerscope"
# the command layer: the cli package and `python -m` entries


def is_command(module: str) -> bool:
    return module == "layerscope.cli" or module.startswith("layerscope.cli.") or module.endswith(".__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "src").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every layerscope module ``path`` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("layerscope")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("layerscope"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from .results import catalog`
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules} - {name}


def test_no_import_cycles_and_no_module_imports_a_command_line_module():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    assert {"layerscope.cli.report", "layerscope.cli.errors", "layerscope.view.page"} <= set(graph)  # the walk sees them
    for module, targets in graph.items():
        bad = sorted(t for t in targets if is_command(t) and not is_command(module))
        assert not bad, f"{module} imports command-line modules {bad}"

    def package_of(m: str) -> str:
        return m.rsplit(".", 1)[0] if not (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists() else m

    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph.get(m, ()):
            if package_of(m).startswith(t) or t.startswith(m + "."):
                continue  # a package re-exporting its own modules, or a module reading its package
            if state.get(t) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*stack, m, t])}")
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


# The pipeline's layers, lowest first, by the top-level name under layerscope/ (a package or a module, so
# ``layerscope.scoring`` counts the same as a module or a package). A module imports modules of its own
# layer and of the layers below it, never above. Where each sits, and why:
# - config, runtime: the schema and the run's settings (device, cores, threads); leaves any layer may import.
# - data -> backbones -> methods -> scoring: a run's stages in the order a batch meets them. ``metrics`` and
#   ``sanity`` are scoring (they measure maps); ``backbones`` compute attention from their own q and k.
# - results: the run folder and reading it back; it imports the stages below for their facts, never the study.
# - analysis (protocol, comparison, fewshot_choice, rescoring): built on saved results; the study calls the
#   dataset-level pass and the self-comparison at its end, so they sit below it.
# - presentation (figures, view, loggers): draw or send a run's results; the study hands its per-image grid
#   pictures and its rows to them, so they sit below the study and never call it.
# - study (plan, mapsource, batch_extras, study): the run itself, composing every layer below.
# - api (the package's own __init__ too): the Python entry points; bench: timing tools over the api's parts;
#   cli (and every ``__main__``): the commands.
LAYERS = (
    ("leaves", ("config", "runtime")),
    ("data", ("data",)),
    ("backbones", ("backbones",)),
    ("methods", ("methods",)),
    ("scoring", ("metrics", "scoring", "sanity")),
    ("results", ("results",)),
    ("analysis", ("analysis", "heldout", "protocol", "comparison", "fewshot_choice", "rescoring")),
    ("presentation", ("figures", "view", "loggers")),
    ("study", ("plan", "mapsource", "batch_extras", "study")),
    ("api", ("", "api")),
    ("bench", ("bench",)),
    ("cli", ("cli",)),
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of a module (``layerscope.analysis.pool`` -> results); commands are the cli's."""
    if is_command(module):
        return len(LAYERS) - 1
    top = module.split(".")[1] if "." in module else ""
    found = [i for i, (_, names) in enumerate(LAYERS) if top in names]
    assert found, f"{module}: no layer in LAYERS for layerscope.{top}; place it in the pipeline"
    return found[0]


def test_no_import_runs_backwards_through_the_pipeline():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    backwards = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                backwards.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                                 f"({LAYERS[layer_of(target)][0]})")
    assert not backwards, "imports against the pipeline:\n" + "\n".join(backwards)


def test_the_layering_sees_what_it_checks():
    """The rule is not empty: the layers are ordered as the pipeline, and a backward import is caught."""
    names = [name for name, _ in LAYERS]
    assert names.index("data") < names.index("backbones") < names.index("methods") < names.index("scoring") \
        < names.index("results") < names.index("study") < names.index("api") < names.index("cli")
    assert layer_of("layerscope.scoring") == layer_of("layerscope.scoring.scorer") == names.index("scoring")
    assert layer_of("layerscope.view.__main__") == names.index("cli")
    assert layer_of("layerscope.backbones.vit") < layer_of("layerscope.methods.cam")  # vit importing cam: caught
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    assert "layerscope.results.layout" in graph["layerscope.analysis.pool"] | graph["layerscope.analysis.saved"]


def test_the_leaves_import_only_leaves():
    """The schema and the run's settings import no other layer, so any layer may import them."""
    for path in [*(PACKAGE / "config").rglob("*.py"), PACKAGE / "runtime.py"]:
        other = sorted(t for t in _imports(path) if layer_of(t) != 0)
        assert not other, f"{_module_name(path)} imports {other}: a leaf must import only config and runtime"


def test_every_console_script_is_the_main_of_a_command_module_that_also_runs_with_python_m():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert is_command(module) and not module.endswith(".__main__"), f"{name} = {target}: not a command module"
        tree = ast.parse((PACKAGE / Path(*module.split(".")[1:])).with_suffix(".py").read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{name} = {target}"
        runs = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'"]
        assert runs, f"{module}: no `if __name__ == '__main__'`, so `python -m {module}` would do nothing"
        targets[module] = name
    commands = {_module_name(p) for p in (PACKAGE / "cli").glob("*.py")} - {"layerscope.cli", "layerscope.cli.errors"}
    assert commands <= set(targets), f"command modules without a console script: {sorted(commands - set(targets))}"


def test_an_unknown_option_is_one_line_and_exit_2_in_every_argparse_command():
    """Each command but ``layerscope`` (Hydra's own parsing) answers a mistyped option with
    ``error: ... (see <prog> --help)`` alone: no usage block, no traceback."""
    import importlib

    from .conftest import call_main

    commands = sorted(_module_name(p) for p in (PACKAGE / "cli").glob("*.py"))
    not_argparse = ("layerscope.cli", "layerscope.cli.errors", "layerscope.cli.run")
    argparse_commands = [m for m in commands if m not in not_argparse]
    assert len(argparse_commands) == 9
    for module in argparse_commands:
        done = call_main(importlib.import_module(module).main, ["--no-such-option", "x", "y"])
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (module, done.stderr)
        assert lines[0].startswith("error: ") and lines[0].endswith("--help)"), (module, lines[0])


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the checkout's package files (the checkout stays clean)."""
    src = tmp_path / "checkout"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "conf", src / "conf")
    shutil.copytree(PACKAGE, src / "src" / "layerscope", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "src" / "run.py", src / "src" / "run.py")  # present in a checkout, must stay out of the wheel
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("layerscope-*.whl"))


@pytest.mark.slow
def test_wheel_holds_the_package_and_its_configs_and_runs_from_another_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not any(n.startswith("src/") or n == "run.py" for n in names), sorted(names)[:20]
    configs = {f"layerscope/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs <= names, sorted(configs - names)
    modules = {f"layerscope/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "layerscope = layerscope.cli.run:main" in entry_points and "layerscope-report = layerscope.cli.report:main" in entry_points

    # install the wheel's files alone and run them from an empty folder, away from the checkout
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    where = subprocess.run([sys.executable, "-c", "import layerscope, layerscope.cli.run as r; print(layerscope.__file__);"
                            "print(r.config_dir())"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.split() == [str(site / "layerscope" / "__init__.py"), str(site / "layerscope" / "conf")]
    run = subprocess.run([sys.executable, "-m", "layerscope.cli.run", "data=synthetic", "model=tiny_vit", "progress=false",
                          "data.textures=[brick]", "data.defects=[spot]", "data.size=64", "hydra.run.dir=out"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (elsewhere / "out" / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 4  # header + 2 layers x (2 heads, mean, best)
    assert ",tiny_vit," in lines[1] and ",synthetic," in lines[1]  # names come from the config choices


@pytest.mark.slow
def test_user_config_dir_adds_a_model_without_editing_the_package(tmp_path):
    mine = tmp_path / "my_conf" / "model"
    mine.mkdir(parents=True)
    (mine / "my_vit.yaml").write_text("defaults:\n  - base/timm_vit@_here_\n  - _self_\n"
                                      "arch: vit_tiny_patch16_224\nimg_size: 32\npretrained: false\n"
                                      "model_kwargs: {depth: 1, embed_dim: 16, num_heads: 2, patch_size: 8}\n")
    from .conftest import run_main

    proc = run_main(["--config-dir", str(tmp_path / "my_conf"), "model=my_vit", "progress=false", "data.size=32",
                     "data.textures=[brick]", "data.defects=[spot]", f"hydra.run.dir={tmp_path / 'run'}"],
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 * 4 and ",my_vit," in rows[1]


@pytest.mark.slow
def test_design_card_command_works_from_the_repository_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "src.run", "model=dino_vits8", "layer=range(0,12)",
                           "model.pretrained=false", "model.img_size=64", "data.textures=[brick]", "data.defects=[spot]",
                           "data.size=64", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=dict(env, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 * 8 and ",dino_vits8," in rows[1]  # 12 layers x (6 heads, mean, best)


def test_every_subpackage_is_listed_for_the_wheel():
    """Each folder of the package with an ``__init__.py`` is in pyproject's ``packages`` (the slow wheel test
    finds a missing one too, minutes later)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
