"""Weights & Biases: one W&B run per Hydra job, metric-vs-layer curves, tables, map images.

History rows use ``layer`` as their x-axis (``define_metric("*", step_metric="layer")``):
``{"layer": L, "<metric>/<head>": mean over images, "<metric>/top": best map at L}``.
Summary: ``best/<metric>`` with ``best/<metric>/layer`` and ``best/<metric>/head``, and ``map_axis``
(``heads`` or ``maps``: what the ``head`` keys name, ``results.axes``).
Tables: ``layer_summary`` (one row per layer and map) and ``maps`` (map images with the
ground truth and the thresholded mask as overlays, capped at ``max_images``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ..results import layout
from ..results.axes import map_axis, map_label
from ..results.catalog import CANDIDATE, DATASET, MAP_METRICS, lower_is_better
from ..results.table import METRICS, read_table
from .base import Logger

log = logging.getLogger(__name__)

LAYER_METRICS = MAP_METRICS  # logged per layer; the dashboard plots these


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` with an API key in the environment, else ``offline`` (air-gapped machines)."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode={mode}: expected auto, online, offline or disabled")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def sweep_group(out_dir: Path) -> str:
    """The W&B group of a job: its multirun folder (``DATE/TIME``), or ``single`` for a plain run."""
    parent = out_dir.parent
    if (parent / layout.MULTIRUN).exists() or out_dir.name.isdigit():
        return f"{parent.parent.name}/{parent.name}"
    return "single"


def layer_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per (layer, head) at the smallest threshold (``best``: the per-image oracle head)."""
    df = results[np.isclose(results["threshold"], results["threshold"].min())]
    metrics = [m for m in METRICS if m in df.columns]
    table = df.groupby(list(CANDIDATE), as_index=False)[metrics].mean(numeric_only=True)
    return table.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


class WandbLogger(Logger):
    """Logs one study to W&B; always finishes the run, also on error.

    Args:
        project, entity: W&B destination (entity None = the default of the API key).
        mode: ``auto`` (online with WANDB_API_KEY, else offline), ``online``, ``offline``, ``disabled``.
        group: W&B group; None = the multirun folder (see ``sweep_group``).
        tags: extra tags (the model, method and dataset are always added).
        max_images: map images logged per run (each with its overlays).
    """

    def __init__(self, project: str = "layerscope", entity: str | None = None, mode: str = "auto",
                 group: str | None = None, tags: Sequence[str] = (), max_images: int = 8):
        self.project, self.entity, self.mode = project, entity, resolve_mode(mode)
        self.group, self.tags, self.max_images = group, list(tags), int(max_images)
        self.run = None
        self.method = ""
        self._images: list[list[Any]] = []

    def start(self, config: Mapping[str, Any], out_dir: Path, model: str, method: str, dataset: str = "") -> None:
        import wandb

        self.run = wandb.init(
            project=self.project, entity=self.entity, mode=self.mode, dir=str(out_dir),
            group=self.group or sweep_group(out_dir), job_type=method, name=f"{model}·{method}·{out_dir.name}",
            tags=sorted({*self.tags, model, method, dataset} - {""}),
            config=OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config),
            reinit="finish_previous")
        self.run.define_metric("layer")
        self.run.define_metric("*", step_metric="layer")
        self.method = method
        self.run.summary["map_axis"] = map_axis(method)  # whether the ``head`` keys and columns name heads or maps
        log.info("W&B run %s (%s mode, group %s)", self.run.id, self.mode, self.run.group)

    def wants_maps(self) -> bool:
        return self.run is not None and len({row[0] for row in self._images}) < self.max_images

    def log_maps(self, image_id: str, category: str, image: np.ndarray, mask: np.ndarray | None,
                 maps: Mapping[int, np.ndarray], names: Mapping[int, Sequence[str]], kept: Mapping[int, np.ndarray]) -> None:
        """Queue one image's maps (until ``max_images`` images) as W&B images with mask overlays.

        Args:
            image: (S, S, 3) uint8; mask: (S, S) bool or None.
            maps: layer -> (K, h, w); kept: layer -> (K, S, S) bool thresholded masks.
        """
        import wandb
        from PIL import Image

        if not self.wants_maps():
            return
        size = image.shape[:2][::-1]
        for layer, layer_maps in maps.items():
            for k, name in enumerate(names[layer]):
                m = layer_maps[k]
                scaled = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
                heat = np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize(size, Image.NEAREST))
                overlays = {"kept": {"mask_data": kept[layer][k].astype(np.uint8), "class_labels": {1: "kept mass"}}}
                if mask is not None:
                    overlays["ground_truth"] = {"mask_data": mask.astype(np.uint8), "class_labels": {1: "defect"}}
                shown = (0.5 * image + 0.5 * heat[..., None]).astype(np.uint8)
                caption = f"{image_id} · layer {layer} · {map_label(self.method, name)}"
                self._images.append([image_id, category, layer, name, wandb.Image(shown, masks=overlays,
                                                                                 caption=caption)])

    def log_results(self, results_csv: Path) -> None:
        """Per-layer curves, summary bests and tables from the finished ``results.csv``."""
        import wandb

        if self.run is None:
            return
        results = read_table(results_csv)
        if results.empty:
            return
        table = layer_table(results)
        metrics = [m for m in LAYER_METRICS if m in table.columns and table[m].notna().any()]
        for layer, part in table.groupby("layer"):
            row: dict[str, Any] = {"layer": int(layer)}
            for metric in metrics:
                values = part.set_index("head")[metric].dropna()
                row.update({f"{metric}/{head}": float(v) for head, v in values.items()})
                values = values.drop("best", errors="ignore")  # an oracle per image, not a map one can pick
                if len(values):
                    row[f"{metric}/top"] = float(values.min() if lower_is_better(metric) else values.max())
            self.run.log(row)
        for metric in metrics:
            ranked = table[table["head"] != "best"].dropna(subset=[metric]).sort_values(metric, ascending=lower_is_better(metric))
            best = ranked.iloc[0]
            self.run.summary[f"best/{metric}"] = float(best[metric])
            self.run.summary[f"best/{metric}/layer"] = int(best["layer"])
            self.run.summary[f"best/{metric}/head"] = str(best["head"])
        self.run.log({"layer_summary": wandb.Table(dataframe=table)})
        if self._images:
            self.run.log({"maps": wandb.Table(columns=["image", "category", "layer", "head", "map"], data=self._images)})

    def log_dataset(self, table: pd.DataFrame) -> None:
        """``dataset/<metric>`` summaries (best candidate pooled over all images, with its layer and head)
        and the ``dataset_metrics`` table."""
        import wandb

        if self.run is None or table.empty:
            return
        pooled = table[table["category"] == "all"]
        for metric in DATASET:
            if metric not in pooled.columns or pooled[metric].isna().all():
                continue
            best = pooled.loc[pooled[metric].idxmax()]
            self.run.summary[f"dataset/{metric}"] = float(best[metric])
            self.run.summary[f"dataset/{metric}/layer"] = int(best["layer"])
            self.run.summary[f"dataset/{metric}/head"] = str(best["head"])
        self.run.log({"dataset_metrics": wandb.Table(dataframe=table.astype({"layer": int}))})

    def wants_comparison(self) -> bool:
        return self.run is not None

    def log_comparison(self, similarity: pd.DataFrame, probe: pd.DataFrame | None) -> None:
        """The similarity rows (``similarity``: every measure with its interval and null; ``cka``: the CKA
        rows) with one CKA heatmap image per model pair (``cka/<a>__<b>``, cells within the null hatched),
        each model's layer monotonicity per measure in the summary
        (``similarity/<measure>/<model>/monotonicity``), and the k-NN probe:
        ``probe/<label>/<kind>/<model>`` per layer (x-axis ``layer``), the ``probe`` table and
        ``probe/<label>/<kind>/<model>/best`` (+ ``/layer``, ``/p_value``) in the summary; per layer the
        label-permutation null beside each curve (``.../chance``, ``.../null_q05``, ``.../null_q95``) and the
        curves with their null bands as images (``probe/<label>_<kind>``)."""
        import tempfile

        import wandb

        from ..comparison import monotonicity_table
        from ..figures.comparison_plots import cka_heatmaps, cka_rows, probe_curves

        if self.run is None:
            return
        if not similarity.empty:
            self.run.log({"similarity": wandb.Table(dataframe=similarity),
                          "cka": wandb.Table(dataframe=cka_rows(similarity))})
            for r in monotonicity_table(similarity).itertuples():
                self.run.summary[f"similarity/{r.measure}/{r.model}/monotonicity"] = float(r.spearman)
            with tempfile.TemporaryDirectory() as tmp:
                for path in cka_heatmaps(similarity, Path(tmp), ("png",)):
                    pair = path.stem.removeprefix("cka_").rsplit("_", 2)[0]
                    self.run.log({f"cka/{pair}": wandb.Image(str(path))})
        if probe is None or probe.empty:
            return
        for layer, part in probe.groupby("layer"):
            row: dict[str, Any] = {"layer": int(layer)}
            row.update({f"probe/{r.label}/{r.kind}/{r.model}": float(r.accuracy) for r in part.itertuples()})
            for column in ("chance", "null_q05", "null_q95"):  # the permutation null's band beside each curve
                if column in part.columns:
                    row.update({f"probe/{r.label}/{r.kind}/{r.model}/{column}": float(getattr(r, column))
                                for r in part.itertuples() if pd.notna(getattr(r, column))})
            self.run.log(row)
        for (label, kind, model), part in probe.groupby(["label", "kind", "model"]):
            best = part.loc[part["accuracy"].idxmax()]
            key = f"probe/{label}/{kind}/{model}"
            self.run.summary[f"{key}/best"] = float(best["accuracy"])
            self.run.summary[f"{key}/best/layer"] = int(best["layer"])
            self.run.summary[f"{key}/chance"] = float(best["chance"])
            if "p_value" in part.columns:
                self.run.summary[f"{key}/best/p_value"] = float(best["p_value"])
        self.run.log({"probe": wandb.Table(dataframe=probe)})
        with tempfile.TemporaryDirectory() as tmp:  # the curves with their null bands, as the figure draws them
            for path in probe_curves(probe, Path(tmp), ("png",)):
                self.run.log({f"probe/{path.stem.removeprefix('probe_')}": wandb.Image(str(path))})

    def log_report(self, path: Path) -> None:
        """The offline report page (``layerscope-view``: ``report.html`` and its ``report_files/``) as a
        W&B artifact of type ``report``."""
        import wandb

        if self.run is None:
            return
        path = Path(path)
        artifact = wandb.Artifact(f"report-{self.run.id}", type="report", description="layerscope-view page")
        artifact.add_file(str(path))
        files = layout.page_files(path)
        if files.is_dir():
            artifact.add_dir(str(files), name=files.name)
        self.run.log_artifact(artifact)

    def finish(self, ok: bool) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.finish(exit_code=0 if ok else 1)
        if self.mode == "offline":
            print(f"W&B offline run saved; upload it with: wandb sync {run.dir.rsplit('/files', 1)[0]}")
