"""Score a finished run again from its saved maps, with new thresholds or metric options; no model runs.

The library behind ``layerscope-rescore`` (``cli/rescore.py``): a run folder's maps are rescored into a
table beside its ``results.csv``, with the same columns, so ``layerscope-report --results NAME`` ranks it,
and, where the maps have masks, into the dataset-level table under the new options (``upsample``,
``metrics.aupro_fpr_limit``, ``metrics.image_topk``), from the same accumulators a run feeds in its loop
(``analysis.pool_stream``). ``metrics.faithfulness*`` need the model and are not rescored (their columns
stay empty).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from .results.layout import CONFIG, MAPS, RESULTS, map_files
from .results.maps_io import check_same_layout, load_maps
from .analysis.pool import warn_missing_maps
from .analysis.pool_stream import PooledStream
from .protocol import stream_rows, write_table
from .runtime import score_threads
from .results.table import ResultsWriter
from .scoring import ScoreOptions, Target, image_rows

# every option ScoreOptions reads (the scoring of saved maps); faithfulness reruns the model, so it is not here
OPTIONS = ("threshold", "threshold_rule", "upsample", "metrics.aupro_fpr_limit", "metrics.image_topk",
           "metrics.pointing_tolerance", "metrics.sparseness")


def run_dirs(folder: Path) -> list[Path]:
    """Folders below ``folder`` (itself included) holding a finished run's config and maps."""
    candidates = [folder, *sorted(p.parent for p in folder.rglob(CONFIG))]
    return sorted({p for p in candidates if (p / CONFIG).exists() and (p / MAPS).is_dir()})


def rescore_dir(run_dir: Path, overrides: list[str], out_name: str, progress: bool = True) -> Path:
    """Rescore one run folder; returns the written table.

    Raises:
        ValueError: an override outside ``OPTIONS``, a bad value, an existing output file, or a damaged or
            edited map file (named).
    """
    cfg = OmegaConf.load(run_dir / CONFIG)
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or key not in OPTIONS:
            raise ValueError(f"{o}: rescoring can change only {', '.join(OPTIONS)} (as key=value)")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    opts = ScoreOptions.from_config(cfg)
    out = run_dir / out_name
    if out.exists() or out_name == RESULTS:
        raise ValueError(f"{out}: exists; pass another --out (results are never overwritten)")
    partial = out.with_suffix(".partial.csv")
    partial.unlink(missing_ok=True)  # a rescoring cut short earlier
    writer = ResultsWriter(partial)
    stream = PooledStream(".", opts.upsample, opts.fpr_limit, opts.topk)
    ok = False
    try:
        files = map_files(run_dir)
        warn_missing_maps(run_dir, files)
        first = load_maps(files[0]) if files else None
        for path in tqdm(files, desc=run_dir.name, disable=not progress):
            saved = load_maps(path)
            check_same_layout(saved, first, path, files[0])
            target = None
            if saved["mask"] is not None:
                valid = torch.from_numpy(saved["valid"]) if saved["valid"] is not None else None
                target = Target(torch.from_numpy(saved["mask"]), valid)
            maps = {layer: torch.from_numpy(m) for layer, m in saved["maps"].items()}
            try:
                rows = image_rows(saved["meta"], maps, saved["names"], target, opts, saved.get("columns"))
            except ValueError as e:  # checked maps should score; name the file if one does not
                raise ValueError(f"{path}: {e}") from None
            writer.write(rows)
            stream.add_loaded(path, saved, target.cells if target is not None else None)  # the scorer's cell counts
        if stream.image_rows and not stream.dropped:
            write_table(pd.DataFrame(stream_rows(stream, threads=score_threads())), dataset_table(out))
        ok = True
    finally:
        writer.close()
        if ok:
            partial.replace(out)  # complete or absent: a failed rescoring never blocks the next one
        else:
            partial.unlink(missing_ok=True)
    OmegaConf.save(cfg, run_dir / f"{Path(out_name).stem}.config.yaml")
    return out


def dataset_table(out: Path) -> Path:
    """The dataset-level table written beside a rescored table ``out``: ``<stem>.dataset_metrics.csv``."""
    return out.with_name(f"{out.stem}.dataset_metrics.csv")

