"""The scorer's columns, metric by metric, against references written from each metric's formula, and the
per-run writers.

``Ref*`` / ``ref_*`` below are the rank metrics as they were before the vectorised rewrite (one Python loop
per map, per tie group and per AUPRO segment), kept verbatim, and brute-force references of the other
columns: every column of every row the scorer writes must equal its reference to 1e-6 (relative).
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerscope.methods import threshold_maps
from layerscope.metrics.kept_pixels import kept_pixels
from layerscope.metrics.localization import aupro_counts, cells_from_mask, iou_oracle_counts
from layerscope.metrics.rank_groups import auroc_counts
from layerscope.results import catalog
from layerscope.scoring import ScoreOptions, Target, batch_image_rows, image_rows


# ---------------------------------------------------------------------------------------------------------------
# Frozen reference: the rank metrics before the vectorised rewrite (verbatim but for names).
# ---------------------------------------------------------------------------------------------------------------
class RefCells:
    def __init__(self, pos, neg, regions):
        self.pos, self.neg, self.regions = pos, neg, regions

    @property
    def n_pos(self) -> float:
        return float(self.pos.sum())

    @property
    def n_neg(self) -> float:
        return float(self.neg.sum())


def ref_cells_from_mask(mask, grid, valid=None) -> RefCells:
    from skimage.measure import label

    h, w = grid
    shape = tuple(mask.shape)
    if (h, w) == shape:
        index = torch.arange(h * w)
    else:
        cells = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
        index = F.interpolate(cells, size=shape, mode="nearest").long().flatten()
    m = mask.flatten().bool()
    v = valid.flatten().bool() if valid is not None else torch.ones_like(m)
    pos = torch.bincount(index[m & v], minlength=h * w).double()
    neg = torch.bincount(index[~m & v], minlength=h * w).double()
    labels = torch.from_numpy(label((mask & (valid if valid is not None else True)).numpy(), connectivity=2))
    labels = labels.flatten().long()
    n_regions = int(labels.max())
    regions = torch.zeros(h * w, n_regions, dtype=torch.float64)
    if n_regions:
        inside = labels > 0
        regions.index_put_((index[inside], labels[inside] - 1), torch.ones(int(inside.sum()), dtype=torch.float64),
                           accumulate=True)
    return RefCells(pos, neg, regions)


def _ref_nan(lead):
    return torch.full(tuple(lead), float("nan"))


def _ref_descending_groups(row, *weights):
    values, order = torch.sort(row, descending=True)
    _, group = torch.unique_consecutive(values, return_inverse=True)
    n = int(group[-1]) + 1
    return [torch.zeros(n, dtype=torch.float64).index_add_(0, group, w[order]) for w in weights]


def ref_iou_counts(kept, cells):
    k = kept.double()
    inter = (k * cells.pos).sum(-1)
    union = (k * cells.neg).sum(-1) + cells.n_pos
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.full_like(union, float("nan"))).float()


def ref_iou_oracle_counts(scores, cells):
    lead = scores.shape[:-1]
    if cells.n_pos == 0:
        return _ref_nan(lead)
    out = torch.empty(int(np.prod(lead)) if lead else 1, dtype=torch.float64)
    for r, row in enumerate(scores.reshape(-1, scores.shape[-1]).double()):
        gp, gn = _ref_descending_groups(row, cells.pos, cells.neg)
        out[r] = (torch.cumsum(gp, 0) / (cells.n_pos + torch.cumsum(gn, 0))).max()
    return out.float().reshape(lead)


def _ref_area_until(x, y, limit):
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = float(x[i - 1]), float(x[i]), float(y[i - 1]), float(y[i])
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def ref_aupro_counts(scores, cells, fpr_limit=0.3):
    lead = scores.shape[:-1]
    n_regions = cells.regions.shape[1]
    if n_regions == 0 or cells.n_neg == 0:
        return _ref_nan(lead)
    pro_weight = (cells.regions / cells.regions.sum(0, keepdim=True)).sum(1) / n_regions
    fpr_weight = cells.neg / cells.n_neg
    out = torch.empty(int(np.prod(lead)) if lead else 1, dtype=torch.float64)
    for r, row in enumerate(scores.reshape(-1, scores.shape[-1]).double()):
        gp, gf = _ref_descending_groups(row, pro_weight, fpr_weight)
        pro = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(gp, 0)])
        fpr = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(gf, 0)])
        out[r] = _ref_area_until(fpr, pro, fpr_limit) / fpr_limit
    return out.float().reshape(lead)


def ref_auroc_counts(scores, pos, neg):
    lead, n = scores.shape[:-1], scores.shape[-1]
    pos, neg = pos.double(), neg.double()
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full(lead, float("nan"))
    rows = scores.reshape(-1, n).double()
    out = torch.empty(rows.shape[0], dtype=torch.float64)
    for r, row in enumerate(rows):
        values, order = torch.sort(row)
        _, group, _ = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
        n_groups = int(group[-1]) + 1
        gp = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, pos[order])
        gn = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, neg[order])
        neg_below = torch.cumsum(gn, 0) - gn
        out[r] = (gp * (neg_below + 0.5 * gn)).sum() / (n_pos * n_neg)
    return out.float().reshape(lead)


class RefTarget:
    def __init__(self, mask, valid=None):
        self.mask, self.valid = mask.bool(), valid
        self._cells = {}

    @property
    def size(self):
        return tuple(self.mask.shape)

    def cells(self, grid):
        if grid not in self._cells:
            self._cells[grid] = ref_cells_from_mask(self.mask, grid, self.valid)
        return self._cells[grid]

    @property
    def fraction(self):
        valid = self.valid if self.valid is not None else torch.ones_like(self.mask)
        return float((self.mask & valid).sum() / valid.sum().clamp_min(1))


# ---------------------------------------------------------------------------------------------------------------
# Cases: maps with ties, all-zero, constant and signed maps; masks with several regions, empty, full, ignored pixels.
# ---------------------------------------------------------------------------------------------------------------
def _maps(seed: int, k: int, grid: tuple[int, int], ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(k, *grid, generator=g)
    if ties:
        m = (m * 6).round() / 6  # 7 levels: large tie groups, split by every threshold
        m[0, : grid[0] // 2] = m[0, 0, 0]  # one map with a half-image tie block
    m[-1] = 0.0  # a map with no mass
    if k > 3:
        m[-2] = 0.25  # a constant map
        m[1] = m[1] - 0.4  # a signed map (PCA-like): keep_mass shifts it
    return m


def _mask(kind: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, size, dtype=torch.bool)
    valid = None
    if kind in ("regions", "ignored"):
        mask[2:size // 3, 3:size // 2] = True
        mask[size // 2:size - 3, size // 2 + 2:size - 2] = True
        mask |= torch.rand(size, size, generator=g) > 0.985  # single-pixel regions
        if kind == "ignored":
            valid = torch.rand(size, size, generator=g) > 0.2
            valid[:, :2] = False  # a VOC-like ignored border
    elif kind == "full":
        mask[:] = True
    elif kind == "tiny":
        mask[size // 2, size // 2] = True
    return mask, valid


# ---------------------------------------------------------------------------------------------------------------
# Per-metric references: each column of the scorer's rows against its formula, written here, map by map.
# ---------------------------------------------------------------------------------------------------------------
def _scored(maps, target, opts):
    """(K, H, W) maps as scored against the mask, and the cells: the grid itself (nearest: exact on cells), or the
    maps smoothed to the image (bilinear, align_corners=False) with one cell a pixel."""
    if opts.upsample == "nearest":
        return maps, target.cells(tuple(maps.shape[-2:]))
    up = F.interpolate(maps[:, None].float(), size=target.size, mode="bilinear", align_corners=False)[:, 0]
    return up, target.cells(target.size)


def _shifted(s):
    low = s.amin(-1, keepdim=True)
    return torch.where(low < 0, s - low, s)  # a signed map starts at 0


def ref_mass_in_mask(s, cells):
    s = _shifted(s.double())
    inside, total = (s * cells.pos).sum(-1), (s * (cells.pos + cells.neg)).sum(-1)
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))


def ref_pointing(s, cells):
    if cells.n_pos == 0:
        return torch.full(s.shape[:1], float("nan"))
    return torch.tensor([float(cells.pos[int(torch.argmax(row))] > 0) for row in s])


def ref_pointing_tolerance(maps, mask, tolerance):
    """TorchRay's pointing game: the bilinear-upsampled map's first maximum within ``tolerance`` px of the mask."""
    if not mask.any():
        return torch.full(maps.shape[:1], float("nan"))
    up = F.interpolate(maps[:, None].float(), size=tuple(mask.shape), mode="bilinear", align_corners=False)[:, 0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    hits = []
    for m in up:
        y, x = divmod(int(torch.argmax(m.flatten())), mask.shape[1])
        hits.append(float(((ys - y) ** 2 + (xs - x) ** 2 < tolerance ** 2).any()))
    return torch.tensor(hits)


def ref_entropy(maps):
    p = _shifted(maps.flatten(-2).double())
    total = p.sum(-1, keepdim=True)
    p = p / total
    h = -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1) / math.log(p.shape[-1])
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan")))


def ref_top_mean(maps, fraction):
    flat = maps.flatten(-2).double()
    k = max(1, int(round(fraction * flat.shape[-1])))
    return torch.sort(flat, descending=True).values[:, :k].mean(-1)


def ref_gini(maps):
    """Gini index of |map| (Chalasani et al. 2020): sum_i (2i - n - 1) a_(i) / (n sum a), a sorted ascending."""
    out = []
    for a in maps.flatten(-2).double().abs():
        a, n = torch.sort(a).values, a.numel()
        total = float(a.sum())
        out.append(sum((2 * i - n - 1) * float(a[i - 1]) for i in range(1, n + 1)) / (n * total) if total else math.nan)
    return torch.tensor(out)


def ref_complexity(maps):
    out = []
    for a in maps.flatten(-2).double().abs():
        total = float(a.sum())
        out.append(-sum(float(v / total) * math.log(float(v / total)) for v in a if v > 0) if total else math.nan)
    return torch.tensor(out)


def references(maps, target, opts):
    """Column -> (K,) reference values of K maps (IoU: (K, T)), from the formulas above."""
    out = {"entropy": ref_entropy(maps), "score_max": maps.flatten(-2).amax(-1).double(),
           "score_topk": ref_top_mean(maps, opts.topk), "gini": ref_gini(maps), "complexity": ref_complexity(maps)}
    if target is None:
        return out
    scored, cells = _scored(maps, target, opts)
    s = scored.flatten(-2).double()
    iou = [ref_iou_counts(threshold_maps(scored, t, opts.rule).flatten(-2), cells) for t in opts.thresholds]
    mass = ref_mass_in_mask(s, cells)
    out.update(iou=torch.stack(iou, -1), iou_oracle=ref_iou_oracle_counts(s, cells),
               auroc=ref_auroc_counts(s, cells.pos, cells.neg), aupro=ref_aupro_counts(s, cells, opts.fpr_limit),
               mass_in_mask=mass, mass_ratio=mass / target.fraction if target.fraction else torch.full_like(mass, math.nan),
               pointing=ref_pointing(s, cells),
               pointing_tol=ref_pointing_tolerance(maps, target.mask, opts.pointing_tolerance))
    return out


def _close(ours, ref) -> bool:
    ours, ref = float(ours), float(ref)
    return (math.isnan(ours) and math.isnan(ref)) or abs(ours - ref) <= 1e-6 * max(1.0, abs(ref))


def _check_columns(rows, maps, names, target, opts) -> None:
    """The metric columns of ``rows`` (``image_rows`` of layer -> maps) against ``references``, and, without a
    mask, every column that needs one undefined (a metric added later is checked by its own test)."""
    for layer, m in maps.items():
        ref = references(m, target, opts)
        if not opts.sparseness:
            ref = {c: v for c, v in ref.items() if catalog.PER_IMAGE[c].option != "metrics.sparseness"}
        for row in (r for r in rows if r["layer"] == layer and r["head"] != "best"):
            k, j = list(names[layer]).index(row["head"]), opts.thresholds.index(row["threshold"])
            for column, values in ref.items():
                want = values[k, j] if column == "iou" else values[k]
                assert _close(row[column], want), (column, layer, row["head"], row["threshold"], row[column], want)
            if target is None:
                masked = [c for c, f in catalog.PER_IMAGE.items() if f.needs_mask and not f.needs_model]
                assert all(math.isnan(row[c]) for c in masked), row
            assert opts.sparseness == ("gini" in row)  # an option's columns only when it is on


NAMES = {4: ["0", "1", "2", "3"], 6: ["0", "1", "2", "3", "4", "mean"]}


@pytest.mark.parametrize("mask_kind", ["regions", "ignored", "empty", "full", "tiny"])
@pytest.mark.parametrize("upsample_mode,size,grid", [("nearest", 28, (7, 7)), ("nearest", 30, (4, 7)),
                                                     ("bilinear", 20, (5, 5))])
@pytest.mark.parametrize("rule,thresholds", [("keep_mass", [0.6]), ("keep_mass", [0.0, 0.3, 0.6, 0.9, 1.0]),
                                             ("minmax", [0.0, 0.5, 0.99, 1.0])])
@pytest.mark.parametrize("ties", [True, False])
def test_every_metric_column_equals_its_formula(mask_kind, upsample_mode, size, grid, rule, thresholds, ties):
    mask, valid = _mask(mask_kind, size, seed=3)
    opts = ScoreOptions(thresholds, rule, upsample_mode, fpr_limit=0.3, topk=0.05, pointing_tolerance=4.0,
                        sparseness=ties)
    for k, seed in ((6, 0), (4, 1)):
        maps = {0: _maps(seed, k, grid, ties)}
        rows = image_rows({}, maps, {0: NAMES[k]}, Target(mask, valid), opts)
        _check_columns(rows, maps, {0: NAMES[k]}, RefTarget(mask, valid), opts)


def test_metric_columns_without_mask_and_with_other_limits_equal_their_formulas():
    maps = {0: _maps(5, 6, (6, 6), ties=True)}
    for opts in (ScoreOptions([0.5, 0.7]), ScoreOptions([0.5], fpr_limit=1.0), ScoreOptions([0.2], fpr_limit=0.01)):
        _check_columns(image_rows({}, maps, {0: NAMES[6]}, None, opts), maps, {0: NAMES[6]}, None, opts)
        mask, valid = _mask("ignored", 24, seed=7)
        rows = image_rows({}, maps, {0: NAMES[6]}, Target(mask, valid), opts)
        _check_columns(rows, maps, {0: NAMES[6]}, RefTarget(mask, valid), opts)


def test_many_layers_and_double_maps_equal_their_formulas_in_a_batch():
    """Layers of one grid are scored as one block, a float64 layer in its own, images of a batch together: each
    column still equals its formula map by map."""
    opts = ScoreOptions([0.3, 0.6], "keep_mass", "nearest")
    maps = {layer: torch.stack([_maps(layer * 2 + b, 6, (7, 7), ties=layer % 2 == 0) for b in range(2)])
            for layer in range(4)}
    maps[3] = maps[3].double()  # a rescore may hand float64 maps in: thresholds follow the map's dtype
    names = {layer: NAMES[6] for layer in maps}
    specs = [_mask("regions", 28, seed=11), _mask("tiny", 28, seed=2)]
    rows = batch_image_rows([{"image": "a"}, {"image": "b"}], maps, names, [Target(*s) for s in specs], opts)
    for b, spec in enumerate(specs):
        _check_columns(rows[b], {layer: m[b] for layer, m in maps.items()}, names, RefTarget(*spec), opts)


def test_rows_per_threshold_every_map_then_the_best_head_by_iou():
    mask, valid = _mask("regions", 28, seed=3)
    opts = ScoreOptions([0.3, 0.6, 0.9])
    maps = {2: _maps(0, 6, (7, 7), ties=False), 5: _maps(1, 4, (7, 7), ties=False)}
    names = {2: NAMES[6], 5: NAMES[4]}
    rows = image_rows({"image": "x"}, maps, names, Target(mask, valid), opts)
    expected = [(2, t, h) for t in opts.thresholds for h in [*NAMES[6], "best"]] + \
               [(5, t, h) for t in opts.thresholds for h in NAMES[4]]  # no mean: no best row
    assert [(r["layer"], r["threshold"], r["head"]) for r in rows] == expected
    assert all(r["image"] == "x" and r["threshold_rule"] == "keep_mass" and (r["grid_h"], r["grid_w"]) == (7, 7)
               for r in rows)
    for t in opts.thresholds:
        block = [r for r in rows if r["layer"] == 2 and r["threshold"] == t]
        heads = [r for r in block if r["head"] not in ("mean", "best")]
        best = block[-1]
        top = max(heads, key=lambda r: -math.inf if math.isnan(r["iou"]) else r["iou"])
        assert best["best_head"] == top["head"]
        assert set(best) == set(top) | {"best_head"}
        assert all(_close(best[c], top[c]) if isinstance(top[c], float) else best[c] == top[c]
                   for c in top if c != "head")
    no_mask = image_rows({"image": "x"}, maps, names, None, opts)
    assert len(no_mask) == len(expected) - len(opts.thresholds)  # nothing to choose a best head by
    assert all(math.isnan(r["iou"]) and math.isnan(r["auroc"]) for r in no_mask)


NOTED = {m.name for m in catalog.PER_IMAGE.values() if m.undefined_when}


@pytest.mark.parametrize("mask_kind", ["regions", "empty", "full", None])
def test_notes_name_only_undefined_columns_and_each_condition_that_holds(mask_kind):
    maps = {0: _maps(0, 6, (7, 7), ties=True)}  # map 5 is all zero
    target = Target(*_mask(mask_kind, 28, seed=1)) if mask_kind else None
    rows = image_rows({}, maps, {0: NAMES[6]}, target, ScoreOptions([0.5]))
    condition = {"regions": "", "empty": "no defect pixels", "full": "mask covers the whole image", None: "no mask"}
    for row in (r for r in rows if r["head"] != "best"):
        named = set()
        for part in filter(None, row["notes"].split("; ")):
            reason, columns = part.split(": ")
            assert columns.endswith(" undefined"), part
            named |= set(columns.removesuffix(" undefined").split(", "))
            assert reason in (condition[mask_kind], "map is all zero"), part
        assert named <= NOTED and all(math.isnan(row[c]) for c in named), (row["notes"], named)
        assert row["notes"].startswith(condition[mask_kind])
        assert ("map is all zero" in row["notes"]) == (row["head"] == "mean")  # the all-zero map


def test_notes_are_the_ones_results_csv_holds():
    """The notes are generated from the metrics' facts; these are the strings results.csv has always held (a
    metric that adds itself to a condition changes every such row of results.csv: update them here then)."""
    from layerscope.metrics.per_image import notes

    assert notes(("no mask",)) == \
        "no mask: iou, iou_oracle, auroc, aupro, mass_in_mask, mass_ratio, pointing undefined"
    assert notes(("no defect pixels", "map is all zero")) == \
        "no defect pixels: iou_oracle, auroc, aupro, mass_ratio, pointing undefined; " \
        "map is all zero: entropy, mass_in_mask undefined"
    assert notes(("mask covers the whole image",)) == "mask covers the whole image: auroc, aupro undefined"
    assert notes(()) == ""


def test_registry_finds_every_metric_module_once_in_column_order():
    import pkgutil

    from layerscope.metrics import per_image

    modules = {info.name for info in pkgutil.iter_modules(per_image.__path__)}
    assert {p.metric.name for p in per_image.SCORED} == modules  # each module's column is its file's name
    orders = [p.metric.order for p in per_image.SCORED]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert [c for c in catalog.PER_IMAGE if c in modules] == [p.metric.name for p in per_image.SCORED]
    assert all(per_image.BY_NAME[c].metric is catalog.PER_IMAGE[c] for c in modules)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("ties", [True, False])
def test_metric_functions_equal_the_reference_for_any_leading_shape(lead, ties):
    mask, valid = _mask("ignored", 16, seed=2)
    cells, ref = cells_from_mask(mask, (16, 16), valid), ref_cells_from_mask(mask, (16, 16), valid)
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(*lead, 256, generator=g, dtype=torch.float64)
    if ties:
        scores = (scores * 10).round()
    for limit in (0.3, 1.0, 0.001):
        torch.testing.assert_close(aupro_counts(scores, cells, limit), ref_aupro_counts(scores, ref, limit),
                                   atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(auroc_counts(scores, cells.pos, cells.neg), ref_auroc_counts(scores, ref.pos, ref.neg),
                               atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(iou_oracle_counts(scores, cells), ref_iou_oracle_counts(scores, ref),
                               atol=1e-6, rtol=0, equal_nan=True)
    assert aupro_counts(scores, cells).shape == lead == auroc_counts(scores, cells.pos, cells.neg).shape


@pytest.mark.parametrize("size,grid", [((28, 28), (7, 7)), ((30, 45), (4, 7)), ((16, 16), (16, 16)),
                                       ((14, 14), (7, 7)), ((5, 6), (7, 9)), ((448, 448), (32, 32))])
@pytest.mark.parametrize("mask_kind", ["regions", "ignored", "empty", "full"])
def test_cells_from_mask_equals_the_reference(size, grid, mask_kind):
    mask, valid = _mask(mask_kind, max(size), seed=5)
    mask = mask[:size[0], :size[1]]
    valid = valid[:size[0], :size[1]] if valid is not None else None
    ours, ref = cells_from_mask(mask, grid, valid), ref_cells_from_mask(mask, grid, valid)
    for field in ("pos", "neg", "regions"):
        assert torch.equal(getattr(ours, field), getattr(ref, field)), field


def test_aupro_limit_inside_a_segment_and_on_a_point():
    """Two cells: the curve goes (0, 0) -> (0.5, 1) -> (1, 1); hand-computed areas."""
    mask = torch.tensor([[True, False, False]])
    cells = cells_from_mask(mask, (1, 3))
    scores = torch.tensor([[3.0, 2.0, 1.0]])  # region first, then one negative, then the other
    # first point: all of PRO at FPR 0, so the area up to any limit is the limit itself
    assert aupro_counts(scores, cells, 0.3).item() == pytest.approx(1.0)
    worst = torch.tensor([[1.0, 2.0, 3.0]])  # both negatives first: (0,0) -> (0.5,0) -> (1,0) -> (1,1)
    assert aupro_counts(worst, cells, 1.0).item() == pytest.approx(0.0)
    middle = torch.tensor([[2.0, 3.0, 1.0]])  # (0,0) -> (0.5,0) -> (0.5,1) -> (1,1): area 0.5 over [0, 1]
    assert aupro_counts(middle, cells, 1.0).item() == pytest.approx(0.5)
    assert aupro_counts(middle, cells, 0.5).item() == pytest.approx(0.0)  # the limit on the vertical step
    assert aupro_counts(middle, cells, 0.75).item() == pytest.approx(0.25 / 0.75)
    tied = torch.tensor([[2.0, 2.0, 1.0]])  # region tied with a negative: (0,0) -> (0.5,1) -> (1,1)
    assert aupro_counts(tied, cells, 0.25).item() == pytest.approx(0.5 * 0.25 * 0.5 / 0.25)


@pytest.mark.parametrize("rule,thresholds", [("keep_mass", [0.0, 0.2, 0.6, 0.95, 1.0]),
                                             ("minmax", [0.0, 0.3, 0.7, 1.0])])
@pytest.mark.parametrize("broken", [False, True])
def test_kept_pixels_equal_the_threshold_cell_by_cell(rule, thresholds, broken):
    """Pixels each threshold keeps, against ``threshold_maps`` itself; NaN / inf maps take the cell-by-cell path."""
    mask, valid = _mask("ignored", 28, seed=9)
    cells = cells_from_mask(mask, (7, 7), valid)
    maps = _maps(3, 6, (7, 7), ties=True)
    if broken:
        maps[2, 0, 0] = float("nan")
        maps[3, 1, 1] = float("inf")
    inter, kept_neg, _ = kept_pixels(maps.flatten(-2)[None], thresholds, rule, cells.pos[None], cells.neg[None])
    inter, kept_neg = inter[0], kept_neg[0]
    for j, t in enumerate(thresholds):
        kept = threshold_maps(maps, t, rule).flatten(-2).double()
        assert torch.equal(inter[:, j], kept @ cells.pos), (t, inter[:, j], kept @ cells.pos)
        assert torch.equal(kept_neg[:, j], kept @ cells.neg)


@pytest.mark.parametrize("levels", [3, 40, 2 ** 10])  # long tie groups (index_add_), short runs, mostly pairs
def test_tie_group_sums_in_place_equal_index_add_group_sums(levels):
    """``group_sums_per_row`` leaves each tie group's sum at the group's last item (zeros at its other items)
    and ``close_up`` moves them to ``group_sums``' layout: the same bits as one ``index_add_`` in sorted order."""
    from layerscope.metrics.kept_pixels import close_up, group_sums_per_row
    from layerscope.metrics.rank_groups import Ranked, group_sums

    g = torch.Generator().manual_seed(levels)
    b, r, n = 2, 3, 300
    flat = (torch.rand(b, r, n, generator=g) * levels).floor() / levels - 0.2  # signed: keep_mass shifts them
    flat[1, 2] = torch.rand(n, generator=g)  # a row without ties
    pos, neg = torch.randint(0, 4, (2, b, n), generator=g).double()
    _, _, ranked = kept_pixels(flat, [0.5], "keep_mass", pos, neg)
    weights = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    spread = group_sums_per_row(ranked, weights.permute(2, 0, 1))  # (3, B x R, n)
    closed = [close_up(spread[c].flip(-1).clone(), n, ranked).flip(-1) for c in range(3)]
    for row in range(b * r):
        one = Ranked(ranked.order[row:row + 1], ranked.group[row:row + 1], ranked.n_groups[row:row + 1])
        ref = group_sums(one, weights[row // r])[0]  # (n, 3): group g's sum at g, zeros after the last group
        group = ranked.group[row]
        last = torch.ones(n, dtype=torch.bool)
        last[:-1] = group[1:] != group[:-1]
        assert torch.equal(spread[:, row, last], ref[:int(ranked.n_groups[row])].t())
        assert not spread[:, row, ~last].any()
        for c in range(3):
            assert torch.equal(closed[c][row], ref[:, c])


def test_many_thresholds_reuse_one_sort(monkeypatch):
    """Thresholded IoU for T thresholds sorts each layer's maps a bounded number of times, not T times."""
    calls = []
    real = torch.sort

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    mask, _ = _mask("regions", 28, seed=1)
    maps = _maps(0, 6, (7, 7), ties=False).abs()
    for thresholds in ([0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]):
        calls.clear()
        monkeypatch.setattr(torch, "sort", counting)
        image_rows({}, {0: maps}, {0: NAMES[6]}, Target(mask), ScoreOptions(thresholds))
        monkeypatch.setattr(torch, "sort", real)
        assert len(calls) <= 2, len(calls)


# ---------------------------------------------------------------------------------------------------------------
# The per-run grid picture: PIL only, the same mosaic as the paper figures' renderer.
# ---------------------------------------------------------------------------------------------------------------
def _grid_inputs():
    rng = np.random.default_rng(0)
    image = (rng.random((56, 56, 3)) * 255).astype(np.uint8)
    mask = np.zeros((56, 56), bool)
    mask[10:30, 20:40] = True
    maps = {layer: rng.random((3, 4, 4)).astype(np.float32) for layer in (0, 5, 11)}
    names = {layer: ["0", "1", "mean"] for layer in maps}
    return image, mask, maps, names


def _old_mosaic(image, mask, maps):
    """The mosaic as the matplotlib-coloured renderer drew it before (frozen copy)."""
    import matplotlib
    from PIL import Image

    cell, gap = 96, 4
    cmap = matplotlib.colormaps["inferno"]

    def colorize(m):
        low, high = float(m.min()), float(m.max())
        scaled = (m - low) / (high - low) if high > low else np.zeros_like(m)
        rgb = (cmap(scaled)[..., :3] * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(rgb).resize((cell, cell), Image.NEAREST))

    layers = sorted(maps)
    cols = max(m.shape[0] for m in maps.values()) + 1
    canvas = np.full((len(layers) * (cell + gap), cols * (cell + gap), 3), 255, np.uint8)

    def put(r, c, tile):
        canvas[r * (cell + gap):r * (cell + gap) + cell, c * (cell + gap):c * (cell + gap) + cell] = tile

    thumb = np.asarray(Image.fromarray(image).resize((cell, cell), Image.BILINEAR))
    put(0, 0, thumb)
    if mask is not None and len(layers) > 1:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((cell, cell), Image.NEAREST)) > 127
        inner = np.zeros_like(small)
        inner[1:-1, 1:-1] = small[1:-1, 1:-1] & small[:-2, 1:-1] & small[2:, 1:-1] & small[1:-1, :-2] & small[1:-1, 2:]
        overlay = thumb.copy()
        overlay[small & ~inner] = (0, 208, 255)
        put(1, 0, overlay)
    for r, layer in enumerate(layers):
        for k in range(maps[layer].shape[0]):
            put(r, k + 1, colorize(maps[layer][k]))
    return canvas


def test_mosaic_is_pixel_identical_to_the_matplotlib_coloured_one():
    from layerscope.figures import grid

    image, mask, maps, names = _grid_inputs()
    maps[5][1] = 0.5  # a constant map
    maps[11][0, 0, 0] = maps[11][0].max() + 1  # the top value lands in the last colour bin
    assert np.array_equal(grid._mosaic(image, mask, maps), _old_mosaic(image, mask, maps))
    assert np.array_equal(grid._mosaic(image, None, maps), _old_mosaic(image, None, maps))


def test_mosaic_identical_on_grids_that_do_not_divide_the_cell():
    from layerscope.figures import grid

    rng = np.random.default_rng(1)
    image, mask, _, _ = _grid_inputs()
    maps = {layer: rng.standard_normal((k, side, side)).astype(np.float32)  # EfficientNet-like 7 .. 112 grids
            for layer, (k, side) in enumerate([(3, 7), (2, 14), (3, 33), (1, 112)])}
    assert np.array_equal(grid._mosaic(image, mask, maps), _old_mosaic(image, mask, maps))


def test_png_bytes_decode_to_the_same_pixels(tmp_path):
    from PIL import Image

    from layerscope.figures import grid

    rgb = (np.random.default_rng(2).random((37, 53, 3)) * 255).astype(np.uint8)
    rgb[10:20] = 255  # runs, as in a grid
    (tmp_path / "x.png").write_bytes(grid.png_bytes(rgb))
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), rgb)


def test_per_run_grid_is_drawn_without_matplotlib(tmp_path, monkeypatch):
    import sys

    from PIL import Image

    from layerscope.figures import grid

    image, mask, maps, names = _grid_inputs()
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    path = tmp_path / "figures" / "x_grid.png"
    grid.layer_head_grid(image, mask, maps, names, "x | model | method", path)
    assert [p.name for p in path.parent.iterdir()] == ["x_grid.png"]  # no temporary file left
    picture = np.asarray(Image.open(path).convert("RGB"))
    mosaic = grid._mosaic(image, mask, maps)
    # the mosaic is pasted unscaled below the title and column labels, right of the row labels
    hits = [(y, x) for y in range(picture.shape[0] - mosaic.shape[0] + 1)
            for x in range(picture.shape[1] - mosaic.shape[1] + 1)
            if np.array_equal(picture[y:y + mosaic.shape[0], x:x + mosaic.shape[1]], mosaic)]
    assert len(hits) == 1
    y, x = hits[0]
    assert y > 10 and x > 10  # room for the labels
    assert (picture[:y] < 128).any() and (picture[:, :x] < 128).any()  # dark label text was drawn there


def test_paper_grid_figure_still_renders_the_same_mosaic():
    from layerscope.figures import grid

    image, mask, maps, names = _grid_inputs()
    fig = grid.grid_figure(image, mask, maps, names, "x")
    shown = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(shown), grid._mosaic(image, mask, maps))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["input / mask", "0", "1", "mean"]


# ---------------------------------------------------------------------------------------------------------------
# The background writer.
# ---------------------------------------------------------------------------------------------------------------
def test_writer_writes_in_order_then_marks_done(tmp_path):
    from layerscope.results.writer import BackgroundWriter

    written: list[str] = []
    done = tmp_path / "done.txt"
    with BackgroundWriter(done, max_pending=2) as w:
        for i in range(6):
            w.submit(f"img{i}", [(tmp_path / f"{i}.npz", lambda i=i: (time.sleep(0.01), written.append(f"img{i}")))])
    assert written == [f"img{i}" for i in range(6)]
    assert done.read_text() == "".join(f"img{i}\n" for i in range(6))


def test_writer_error_names_the_file_and_marks_nothing_after_it(tmp_path):
    from layerscope.results.writer import BackgroundWriter, WriteError

    done = tmp_path / "done.txt"

    def fail():
        raise OSError(28, "No space left on device")

    w = BackgroundWriter(done)
    w.submit("a", [(tmp_path / "a.npz", lambda: None)])
    w.submit("b", [(tmp_path / "b.npz", fail)])
    with pytest.raises(WriteError, match="b.npz"):
        for i in range(50):  # the error surfaces at a later submit (or at close)
            w.submit(f"c{i}", [(tmp_path / f"c{i}.npz", lambda: None)])
            time.sleep(0.01)
        w.close()
    w.close()  # closing again after the error is harmless
    assert done.read_text() == "a\n"  # b failed: not done; nothing after it was marked done either


def test_writer_close_drains_everything_even_when_interrupted(tmp_path):
    """KeyboardInterrupt in the main thread while items are queued: close() still writes them all."""
    from layerscope.results.writer import BackgroundWriter

    done = tmp_path / "done.txt"
    gate = threading.Event()
    w = BackgroundWriter(done, max_pending=8)
    try:
        w.submit("slow", [(tmp_path / "slow", lambda: gate.wait(5))])
        for i in range(5):
            w.submit(f"q{i}", [(tmp_path / f"q{i}", lambda: None)])
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        gate.set()
    finally:
        w.close()
    assert done.read_text().split() == ["slow"] + [f"q{i}" for i in range(5)]


def test_study_marks_an_image_done_only_after_its_maps_are_on_disk(tmp_path):
    """Every id in done.txt has its maps file, a complete npz, and its figure when one was asked for."""
    from .conftest import compose
    from omegaconf import open_dict

    from layerscope import study
    from layerscope.results import layout
    from layerscope.results.maps_io import load_maps
    from layerscope.results.rundir import read_done

    cfg = compose("model=tiny_vit", "data.per_combination=1", "data.textures=[brick]", "progress=false",
                  "cache.enabled=false", "figures.max_images=2", "dataset_metrics=false")
    with open_dict(cfg):
        cfg.model.img_size = 32
    study.run(cfg, tmp_path)
    done = read_done(tmp_path)
    assert len(done) == 4
    for image in done:
        assert load_maps(layout.map_file(tmp_path, image))["maps"]
    assert len(list((tmp_path / layout.FIGURES).glob("*_grid.png"))) == 2


def test_any_true_equals_torch_any_on_every_shape():
    """``metrics.bools.any_true`` (the bytes' maximum) against ``torch.any``: whole tensors, each dimension,
    non-contiguous views, all-false and empty tensors."""
    from layerscope.metrics.bools import any_true

    gen = torch.Generator().manual_seed(3)
    for shape, p in (((5, 7), 0.1), ((3, 4, 6), 0.02), ((9,), 0.0), ((4, 1), 1.0)):
        mask = torch.rand(shape, generator=gen) < p
        for m in (mask, mask.transpose(0, -1)):
            assert bool(any_true(m)) == bool(m.any())
            for dim in range(m.ndim):
                assert torch.equal(any_true(m, dim), m.any(dim))
    assert not bool(any_true(torch.zeros(0, dtype=torch.bool)))
