"""The typed options: one schema holds every default and type (``layerscope.config.schema``), each part reads
its own options from it, and a value of the wrong type is one line naming the option."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from omegaconf import OmegaConf

from layerscope.config.schema import CacheOptions, FigureOptions, MetricsOptions, StudyConfig, typed

from .conftest import CONF, compose, run_cli


def _defaults(cls) -> dict:
    """Field -> default of a dataclass, nested option classes as dicts."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def test_each_default_is_declared_once_in_the_schema():
    """config.yaml holds the defaults list and Hydra's settings only; a composed config is the schema's defaults."""
    text = yaml.safe_load((CONF / "config.yaml").read_text())
    assert set(text) == {"defaults", "hydra"} and text["defaults"][0] == "base_config"
    cfg = OmegaConf.to_container(compose(), resolve=True)
    groups = ("model", "data", "method", "logger")
    assert list(cfg) == [f.name for f in dataclasses.fields(StudyConfig)]
    assert {k: v for k, v in cfg.items() if k not in groups} == \
        {k: v for k, v in _defaults(StudyConfig).items() if k not in groups}
    assert cfg["metrics"]["pointing_tolerance"] == 15.0 and cfg["cache"] == _defaults(CacheOptions)


def test_score_options_take_their_defaults_from_the_schema():
    from layerscope.scoring import ScoreOptions

    plain = ScoreOptions([0.5])
    m = MetricsOptions()
    assert (plain.rule, plain.upsample, plain.fpr_limit, plain.topk, plain.pointing_tolerance) == \
        (StudyConfig.threshold_rule, StudyConfig.upsample, m.aupro_fpr_limit, m.image_topk, m.pointing_tolerance)
    changed = ScoreOptions.of(0.4, "minmax", "bilinear", MetricsOptions(aupro_fpr_limit=0.1, image_topk=0.5,
                                                                       pointing_tolerance=3))
    assert changed == ScoreOptions([0.4], "minmax", "bilinear", 0.1, 0.5, 3.0)
    assert ScoreOptions.from_config({"threshold": [0.3], "metrics": {"image_topk": 0.2}}) == \
        ScoreOptions([0.3], topk=0.2)  # a saved config: the missing keys take the schema's defaults
    with pytest.raises(ValueError, match=r"^metrics.image_topk=2: expected a fraction in \(0, 1\]$"):
        ScoreOptions.of([0.5], "keep_mass", "nearest", MetricsOptions(image_topk=2.0))


def test_typed_reads_a_part_with_defaults_types_and_booleans_checked():
    got = typed(MetricsOptions, {"faithfulness": "yes", "faithfulness_steps": "12", "an_old_key": 1}, "metrics.")
    assert got == MetricsOptions(faithfulness=True, faithfulness_steps=12)
    assert typed(FigureOptions, None) == FigureOptions()
    with pytest.raises(ValueError, match=r"^metrics.image_topk=abc: expected a fraction in \(0, 1\]$"):
        typed(MetricsOptions, {"image_topk": "abc"}, "metrics.")
    with pytest.raises(ValueError, match=r"^metrics.faithfulness=1: expected true or false"):
        typed(MetricsOptions, {"faithfulness": 1}, "metrics.")
    with pytest.raises(ValueError, match=r"^cache.max_gb=big: expected a size in GB > 0$"):
        typed(StudyConfig, {"cache": {"max_gb": "big"}})
    opts = typed(StudyConfig, compose("model=tiny_vit", "metrics.faithfulness=on", "cache.enabled=off"))
    assert isinstance(opts, StudyConfig) and isinstance(opts.metrics, MetricsOptions)
    assert opts.metrics.faithfulness is True and opts.cache.enabled is False and opts.model["name"] == "tiny_vit"
    assert opts.data["seed"] == opts.seed == 0  # interpolations resolved


@pytest.mark.parametrize("args,line", [
    (["metrics.image_topk=abc"], "error: metrics.image_topk=abc: expected a fraction in (0, 1]"),
    (["batch_size=abc"], "error: batch_size=abc: expected an int >= 1"),
    (["figures.max_images=2.5"], "error: figures.max_images=2.5: expected an int >= 0"),
    (["cache.max_gb=big"], "error: cache.max_gb=big: expected a size in GB > 0"),
    (["cache.dir=[a]"], "error: cache.dir=[a]: expected a string or null"),
    (["device=[a]"], "error: device=[a]: expected auto, cpu or cuda"),  # the schema's Literal names the values
    (["metrics.faithfulness_baseline=1"], None),  # an int is a fine string: the plan names the baselines
    (["seed=x"], "error: seed=x: expected an int >= 0"),
    (["-m", "metrics.faithfulness_steps=4,abc"], "error: metrics.faithfulness_steps=abc: expected an int >= 2"),
    (["save_maps=1"], "error: save_maps=1: expected true or false (yes/no and on/off work too)"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option(args, line):
    from layerscope.cli.run import precheck

    assert precheck(args) == line


def test_the_accepted_values_are_the_schemas_and_every_part_that_uses_one_accepts_the_same():
    """A choice option's values are declared once, as its ``Literal`` type; the parts that act on it
    (threshold rule, upsampling, baselines, randomisation, attention-distance conventions) list the same."""
    import typing

    from layerscope.backbones import distance
    from layerscope.config.schema import check_choice, choices
    from layerscope.methods.threshold import RULES as THRESHOLD_RULES
    from layerscope.methods.upsample import MODES as UPSAMPLE_MODES
    from layerscope.metrics import faithfulness, randomisation

    hints = typing.get_type_hints(StudyConfig)
    metrics = typing.get_type_hints(MetricsOptions)
    implemented = {"threshold_rule": tuple(THRESHOLD_RULES), "upsample": UPSAMPLE_MODES,
                   "metrics.faithfulness_baseline": faithfulness.BASELINES, "metrics.randomisation": randomisation.MODES,
                   "metrics.randomisation_seeding": randomisation.SEEDINGS,
                   "metrics.random_logit_rule": randomisation.LOGIT_RULES,
                   "metrics.attention_distance_rule": distance.RULES, "metrics.attention_distance_unit": distance.UNITS}
    for key, values in implemented.items():
        kind = metrics[key.split(".")[1]] if key.startswith("metrics.") else hints[key]
        assert choices(kind) == tuple(values), key
    assert choices(hints["precision"]) == ("fp32", "bf16", "fp16") and choices(hints["on_bad_image"]) == ("skip", "fail")
    assert check_choice("precision", "bf16") == "bf16"
    with pytest.raises(ValueError, match=r"^precision=fp64: expected fp32, bf16 or fp16$"):
        check_choice("precision", "fp64")
    with pytest.raises(ValueError, match=r"^metrics.randomisation=full: expected none, cascading or independent$"):
        check_choice("metrics.randomisation", "full")


def test_a_wrong_type_on_the_command_line_exits_2_with_one_line(tmp_path):
    proc = run_cli(["metrics.image_topk=abc", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: metrics.image_topk=abc: expected a fraction in (0, 1]"
    assert not (tmp_path / "run").exists()


def test_the_pool_reads_a_saved_config_through_the_schema(tmp_path):
    from layerscope.results import layout
    from layerscope.analysis.pool import _run_options

    assert _run_options(tmp_path) == ("nearest", 0.3, 0.01)  # no config.yaml: the schema's defaults
    (tmp_path / layout.CONFIG).write_text("upsample: bilinear\nmetrics:\n  image_topk: 0.05\n")
    assert _run_options(tmp_path) == ("bilinear", 0.3, 0.05)


# --------------------------------------------------------------------------------------------- datasets


def test_builtin_datasets_are_datasets_and_say_what_they_offer(tmp_path):
    from PIL import Image

    from layerscope.data.base import Dataset
    from layerscope.data.folder import Folder
    from layerscope.data.samples import Samples
    from layerscope.data.synthetic import SyntheticDefects

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "normal").mkdir()
    Image.new("RGB", (8, 8), "white").save(tmp_path / "normal" / "n.png")  # a test image is never a reference
    synthetic, samples = SyntheticDefects(size=32), Samples()
    plain, normal = Folder(str(tmp_path)), Folder(str(tmp_path), normal_dir=str(tmp_path / "normal"))
    assert all(isinstance(d, Dataset) for d in (synthetic, samples, plain, normal))
    assert (synthetic.has_references, samples.has_references, plain.has_references, normal.has_references) == \
        (True, False, False, True)
    assert samples.name_of(3) == "item 3" and plain.name_of(0) == str(tmp_path / "a.png")
    assert [s.category for s in normal.references(1)] == ["good"]
    with pytest.raises(ValueError, match="Samples has no defect-free reference images"):
        samples.references(1)


def test_a_dataset_of_ones_own_lacking_the_interface_is_one_line():
    from layerscope.plan import build_dataset

    cfg = OmegaConf.create({"data": {"_target_": "collections.UserList", "name": "mine"}})
    with pytest.raises(ValueError, match=r"^data: UserList is not a dataset: it lacks has_references, name_of, "
                                         r"references; subclass layerscope.data.base.DatasetBase"):
        build_dataset(cfg)


def test_the_synthetic_defaults_hold_everywhere():
    """The dataset class, its config and the exporter paint with the same defaults (contrast 0.5)."""
    from layerscope.data import mvtec_export as export
    from layerscope.data.synthetic import SyntheticDefects

    own = {k: p.default for k, p in inspect.signature(SyntheticDefects).parameters.items()}
    config = yaml.safe_load((CONF / "data" / "synthetic.yaml").read_text())
    shared = set(own) & set(config) - {"seed"}  # seed: ${seed}, the run's
    assert shared >= {"contrast", "size", "scale", "per_combination", "good_per_texture"}
    assert {k: config[k] for k in shared} == {k: list(own[k]) if isinstance(own[k], tuple) else own[k] for k in shared}
    exported = {k: p.default for k, p in inspect.signature(export.export_mvtec).parameters.items()}
    assert own["contrast"] == exported["contrast"] == 0.5 and exported["size"] == own["size"]
