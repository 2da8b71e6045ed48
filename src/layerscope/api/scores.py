"""``score``: the ``results.csv`` rows of maps against masks, from the run's own row builder."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .compute import eval_mode
from .inputs import Masks
from .layer_maps import Maps

if TYPE_CHECKING:
    import pandas as pd

    from ..config.schema import MetricsOptions

SCORE_KEYS = ("threshold_rule", "upsample", "seed")


def _mask(mask: Any, image_hw: tuple[int, int], size: int, i: int) -> torch.Tensor | None:
    """One mask (path, PIL, array) in its image's frame -> (S, S) bool, read and resized as a run does
    (``data.images.as_mask``; ``data.transforms.resize_mask``: a cell is defect where any of its pixels is).

    Raises:
        ValueError: not a mask, or a mask of another size than its image (one line naming ``masks[i]``).
    """
    from ..data.images import BadImage, as_mask
    from ..data.transforms import resize_mask

    if mask is None:
        return None
    try:
        arr = as_mask(mask, f"masks[{i}]")
    except BadImage as e:
        raise ValueError(f"masks[{i}]: {e}") from None
    if tuple(arr.shape) != tuple(image_hw):
        (mh, mw), (ih, iw) = arr.shape, image_hw
        raise ValueError(f"masks[{i}]: mask is {mw}x{mh}, image {i} is {iw}x{ih}; expected the same size (a mask in "
                         "its image's frame, as given to layerscope.maps)")
    return resize_mask(arr, size)


def score(maps: Maps, masks: Masks = None, threshold: float | Sequence[float] | None = None,
          **metric_options: Any) -> pd.DataFrame:
    """The ``results.csv`` rows of ``maps`` against ``masks``, from the run's own row builder.

    Args:
        maps: from ``layerscope.maps``.
        masks: one per image (a path, a PIL image, an (H, W) array of the image's own size as given to
            ``maps``, or None), or None for the threshold-free columns only. Read and resized as a run
            does (``data.images.as_mask``, ``data.transforms.resize_mask``: a cell of a coarser grid is defect
            where any of its pixels is), so the rows equal the run's.
        threshold: keep-mass fraction(s) (or min-max levels with ``threshold_rule="minmax"``); default: a
            run's (``StudyConfig.threshold``), as for every option not given.
        **metric_options: ``threshold_rule``, ``upsample``, and any ``metrics.*`` option of
            the schema (``config.schema.MetricsOptions``: ``aupro_fpr_limit``, ``pointing_tolerance``, ``faithfulness=True``,
            ``faithfulness_steps``, ``faithfulness_baseline``, ``faithfulness_tie_orders``), ``seed``.

    Returns:
        A pandas DataFrame with the columns of ``results.csv``, one row per (image, layer, map,
        threshold), plus a ``best`` row per threshold where maps are heads with their mean.

    Raises:
        ValueError: an unknown option, or masks that do not match the images: another count, another size
            than their image, not a mask ((H, W, 5), NaN values, complex).

    Example:
        >>> import numpy as np, layerscope as ls
        >>> m = ls.maps(ls.load("tiny_cnn"), [np.zeros((64, 64, 3), np.uint8)], method="features")
        >>> mask = np.zeros((64, 64), bool); mask[8:24, 8:24] = True
        >>> df = ls.score(m, [mask])
        >>> sorted(df["head"].unique())
        ['l2', 'mean_abs', 'pca']
    """
    import dataclasses

    import pandas as pd

    from ..config.schema import MetricsOptions, StudyConfig, typed
    from ..results.table import COLUMNS
    from ..scoring import ScoreOptions, Target, image_rows, one_thread

    metric_keys = tuple(f.name for f in dataclasses.fields(MetricsOptions))
    given: dict[str, Any] = {"metrics": {}}
    if threshold is not None:
        given["threshold"] = list(threshold) if isinstance(threshold, (list, tuple)) else threshold
    for key, value in metric_options.items():
        if key in SCORE_KEYS:
            given[key] = value
        elif key in metric_keys:
            given["metrics"][key] = value
        else:
            raise ValueError(f"{key}: not a scoring option (options: {', '.join(SCORE_KEYS + metric_keys)})")
    opts: StudyConfig = typed(StudyConfig, given)  # the schema's defaults for the rest, types checked
    scoring = ScoreOptions.of(opts.threshold, opts.threshold_rule, opts.upsample, opts.metrics)
    n, bb = maps.num_images, maps.backbone
    one = masks is None or n == 1 and not isinstance(masks, (list, tuple))
    mask_list: list[Any] = [masks] * n if one else list(masks) if isinstance(masks, Iterable) else [masks]
    if len(mask_list) != n:
        raise ValueError(f"masks: {len(mask_list)} masks for {n} images; give one per image (None where there is none)")
    size = maps.images.shape[1]
    targets = [_mask(m, maps.sizes[i], size, i) for i, m in enumerate(mask_list)]
    if opts.metrics.faithfulness:
        with eval_mode(bb):
            extra = _faithfulness(maps, opts.metrics, opts.seed)
    else:
        extra = [None] * n
    rows = []
    with one_thread():
        for i in range(n):
            target = Target(targets[i]) if targets[i] is not None else None
            meta = {"image": maps.ids[i], "group": maps.ids[i], "category": "", "dataset": "", "source": "",
                    "model": bb.name, "kind": bb.kind, "num_layers": bb.num_layers, "img_size": bb.img_size,
                    "method": maps.method, "mask_fraction": target.fraction if target is not None else None}
            if maps.logits is not None and bb.labels:
                p, c = torch.from_numpy(maps.logits[i]).softmax(-1).max(-1)
                meta.update(pred_label=bb.labels[int(c)], pred_prob=float(p))
            image_maps = {layer: torch.from_numpy(maps[layer][i]) for layer in maps.layers}
            names = {layer: maps.names for layer in maps.layers}
            rows += image_rows(meta, image_maps, names, target, scoring, extra[i])
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _faithfulness(maps: Maps, metrics: MetricsOptions, seed: int) -> list[Any]:
    """Deletion and insertion AUC of every map, per image (``metrics.faithfulness=True``; ``metrics``: the
    ``config.schema.MetricsOptions``)."""
    from ..mapsource import faithfulness

    bb = maps.backbone
    target = getattr(maps._method, "target_class", None)
    if isinstance(target, int) or isinstance(target, (list, tuple)):
        classes = torch.as_tensor([target] * maps.num_images if isinstance(target, int) else list(target))
    elif maps.logits is not None:
        classes = torch.from_numpy(maps.logits).argmax(-1)  # a callable target: the predicted class's probability
    else:
        classes = torch.zeros(maps.num_images, dtype=torch.long)  # faithfulness() stops with its one line
    arrays = {layer: torch.from_numpy(maps[layer]) for layer in maps.layers}
    values = faithfulness(bb, maps._rgb, arrays, classes, metrics.faithfulness_steps, metrics.faithfulness_baseline,
                          tie_orders=metrics.faithfulness_tie_orders, seed=seed)
    return [{layer: {"deletion_auc": v[i, :, 0], "insertion_auc": v[i, :, 1]} for layer, v in values.items()}
            for i in range(maps.num_images)]
