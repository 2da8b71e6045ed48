"""Publication figures that show maps themselves (``figures.paper``): layer x map grids per image, a ViT and a
CNN at comparable depths, and the best map per defect type over examples."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..results import catalog
from ..results.axes import HEADS, map_axis, map_label
from ..results.layout import image_stem
from ..analysis.saved import SEP, Study, per_image, smallest_threshold
from .grid import grid_figure
from .figure_inputs import as_study, figure_dir, pick_images
from .style import CMAP, OUTLINE, bare, colorbar, minmax, save, show_input, show_map, slug, styled, upsample

log = logging.getLogger(__name__)


DEPTHS = (0.25, 0.5, 0.75, 1.0)


@styled
def layer_head_grids(source: Study | Path | str, out: Path | str | None = None,
                     formats: Sequence[str] = ("png", "pdf"), max_images: int = 4) -> list[Path]:
    """Per (model, method) and up to ``max_images`` images: layers (rows) x maps (columns).

    Drawn by ``grid.grid_figure``, the same renderer as a run's per-image grid.
    """
    study = as_study(source)
    out = figure_dir(study, out)
    paths: list[Path] = []
    for series in study.series():
        chosen = pick_images(study.saved_images(series), max_images)
        if not chosen:
            log.info("layer_head_grids: %s has no saved maps (maps/<image>.npz; save_maps=false?), skipped", series)
            continue
        for image in chosen:
            d = study.maps(series, image)
            category = d["meta"].get("category") or ""
            title = f"{image}{f' ({category})' if category else ''}{SEP}{series}"
            fig = grid_figure(d["image"], d["mask"], d["maps"], d["names"], title)
            paths += save(fig, out, f"grid_{slug(series)}_{image_stem(image)}", formats)
    if not paths:
        log.info("layer_head_grids: no saved maps below %s, skipped", study.root)
    return paths


def _depth_layers(layers: Sequence[int], num_layers: int | None = None) -> list[int]:
    """The saved layers nearest to the fractions ``DEPTHS`` of the model's depth, unique.

    The depth is the model's layer count where the run recorded it, else the deepest saved layer + 1.
    """
    layers = sorted(set(layers))
    n = int(num_layers) if num_layers else layers[-1] + 1
    picked = []
    for f in DEPTHS:
        target = max(math.ceil(f * n) - 1, 0)
        best = min(layers, key=lambda x: (abs(x - target), -x))
        if best not in picked:
            picked.append(best)
    return sorted(picked)


def _first_or_mean(names: Sequence[str]) -> int:
    names = list(names)
    return names.index("mean") if "mean" in names else 0


@styled
def vit_vs_cnn(source: Study | Path | str, out: Path | str | None = None,
               formats: Sequence[str] = ("png", "pdf"), max_images: int = 3) -> list[Path]:
    """ViT and CNN maps of the same images at comparable relative depths, side by side.

    For each (ViT series, CNN series) pair sharing saved images: rows = up to ``max_images``
    images, columns = input, ViT maps (head mean, or the first map) and CNN maps (first map) at the
    saved layers nearest 25/50/75/100% of each model's depth (its deepest saved layer + 1).
    """
    study = as_study(source)
    out = figure_dir(study, out)
    vits = [s for s in study.series() if study.info(s)["kind"] == "vit"]
    cnns = [s for s in study.series() if study.info(s)["kind"] == "cnn"]
    if not vits or not cnns:
        log.info("vit_vs_cnn: needs a ViT run and a CNN run (found %d ViT, %d CNN), skipped", len(vits), len(cnns))
        return []
    paths: list[Path] = []
    for v in vits:
        for c in cnns:
            vi, ci = study.saved_images(v), study.saved_images(c)
            common = vi.merge(ci[["image", "dataset"]], on=["image", "dataset"])
            chosen = pick_images(common, max_images)
            if not chosen:
                log.info("vit_vs_cnn: %s and %s share no image with saved maps, skipped", v, c)
                continue
            fig = _pair_figure(study, v, c, chosen)
            paths += save(fig, out, f"vit_vs_cnn_{slug(v)}__{slug(c)}", formats)
    return paths


def _pair_figure(study: Study, v: str, c: str, images: list[str]) -> Figure:
    first = {s: study.maps(s, images[0]) for s in (v, c)}
    depth = {s: _depth_layers(list(first[s]["maps"]), first[s]["meta"].get("num_layers")) for s in (v, c)}
    pick = {s: _first_or_mean(first[s]["names"][depth[s][0]]) for s in (v, c)}
    nv, nc = len(depth[v]), len(depth[c])
    cell, spacer, left, top = 0.8, 0.14, 0.95, 0.5
    ratios = [1, spacer / cell, *([1] * nv), spacer / cell, *([1] * nc)]
    width = left + cell * sum(ratios) + 0.6
    height = top + cell * len(images) + 0.06 * (len(images) - 1) + 0.05
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(len(images), len(ratios), width_ratios=ratios, left=left / width, right=1 - 0.6 / width,
                            top=1 - top / height, bottom=0.05 / height, wspace=0.06, hspace=0.06)
    for r, image in enumerate(images):
        ax = fig.add_subplot(grid[r, 0])
        d = study.maps(v, image)
        show_input(ax, d["image"], d["mask"], outline=True)
        category = d["meta"].get("category") or ""
        ax.set_ylabel(f"{image}\n({category})" if category else image, fontsize=6.5, labelpad=3)
        if r == 0:
            ax.set_title("input / mask", pad=3)
        for s, offset, tag in ((v, 2, "ViT"), (c, 3 + nv, "CNN")):
            d = study.maps(s, image)
            for j, layer in enumerate(depth[s]):
                ax = fig.add_subplot(grid[r, offset + j])
                if layer in d["maps"]:
                    k = _first_or_mean(d["names"][layer])
                    show_map(ax, d["maps"][layer][k])
                else:
                    ax.axis("off")
                if r == 0:
                    ax.set_title(f"{tag} L{layer}", pad=3)
    describe = {s: f"{s}, {map_label(study.info(s)['method'], first[s]['names'][depth[s][0]][pick[s]])}"
                for s in (v, c)}
    fig.suptitle(f"ViT: {describe[v]}   |   CNN: {describe[c]}\n"
                 f"layers at ~25/50/75/100% of each model's depth", y=1 - 0.04 / height, va="top", fontsize=7.5)
    bar_h = min(cell * len(images), 1.6)
    colorbar(fig, [1 - 0.5 / width, 1 - (top + bar_h) / height, 0.09 / width, bar_h / height],
              "map value (min–max per map)")
    return fig


@styled
def best_map_overlays(source: Study | Path | str, out: Path | str | None = None,
                      formats: Sequence[str] = ("png", "pdf"), max_images: int = 3) -> list[Path]:
    """Per defect type, the (model, method, layer, head) with the best mean AUROC (else IoU).

    Its map, bilinear-upsampled to the image and min-max scaled, is laid over up to
    ``max_images`` images of that type (alpha 0.5, 'inferno') with the mask outline. Only
    candidates whose maps were saved compete; ``best`` rows are left out.
    """
    study = as_study(source)
    out = figure_dir(study, out)
    rows = smallest_threshold(study.df[study.df["head"] != "best"])
    rows = rows[~rows["category"].isin(["good", ""])]
    metric = next((m for m in ("auroc", "iou") if m in rows.columns and rows[m].notna().any()), None)
    if metric is None:
        log.info("best_map_overlays: no AUROC or IoU values for a defect category (no masks?), skipped")
        return []
    saved = study.images[study.images["saved"]][["series", "image"]].drop_duplicates()
    rows = rows.merge(saved, on=["series", "image"])
    if rows.empty:
        log.info("best_map_overlays: no saved maps for the defect images, skipped")
        return []
    paths: list[Path] = []
    keys = ["series", "layer", "head"]
    for category, part in rows.groupby("category"):
        scores = per_image(part, keys, metric).groupby(keys)[metric].mean()
        if scores.empty:
            continue
        (series, layer, head), value = scores.idxmax(), float(scores.max())
        info = study.info(series)
        candidates = sorted(part.loc[part["series"] == series, "image"].unique())
        spread = np.unique(np.linspace(0, len(candidates) - 1, min(max_images, len(candidates))).round().astype(int))
        examples = [candidates[i] for i in spread]  # spread over the sorted ids (textures, folders)
        drawn = []
        for image in examples:
            d = study.maps(series, image)
            names = list(d["names"].get(int(layer), []))
            if int(layer) in d["maps"] and head in names:
                drawn.append((image, d, d["maps"][int(layer)][names.index(head)]))
        if not drawn:
            log.info("best_map_overlays: %s: the maps of %s L%s %s were not saved, skipped", category, series,
                     layer, head)
            continue
        who = series.replace(f"{SEP}{info['method']}", "", 1)
        what = map_label(info["method"], head) if map_axis(info["method"]) == HEADS else f"{info['method']} {head}"
        title = f"{category}: {who}{SEP}L{int(layer)}{SEP}{what} ({catalog.title(metric)} {value:.2f})"
        fig = Figure(figsize=(1.75 * len(drawn) + 0.5, 2.15))
        axes = fig.subplots(1, len(drawn), squeeze=False)[0]
        fig.subplots_adjust(wspace=0.05, left=0.02, right=1 - 0.45 / (1.75 * len(drawn) + 0.5), top=0.82,
                            bottom=0.08)
        for ax, (image, d, m) in zip(axes, drawn):
            ax.imshow(d["image"], interpolation="bilinear")
            ax.imshow(minmax(upsample(m, d["image"].shape[:2])), cmap=CMAP, alpha=0.5, vmin=0, vmax=1,
                      interpolation="bilinear")
            if d["mask"] is not None and d["mask"].any() and not d["mask"].all():
                ax.contour(d["mask"].astype(np.float32), levels=[0.5], colors=[OUTLINE], linewidths=0.6)
            bare(ax)
            ax.set_xlabel(image, fontsize=6.5, labelpad=2)
        fig.suptitle(title, fontsize=8, y=0.97)
        pos = axes[-1].get_position()
        colorbar(fig, [pos.x1 + 0.02, pos.y0, 0.08 / fig.get_figwidth(), pos.height], "map value")
        paths += save(fig, out, f"best_map_{image_stem(category)}", formats)
    return paths
