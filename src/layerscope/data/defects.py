"""Synthetic surface defects: their shapes, drawn as an opacity map with its exact mask, and their paint.

Defect kinds:

* ``"scratch"``: a thin (2-4 px wide at 256 px, times ``scale``), slightly
  curved line with tapered ends, lighter or darker than the surface.
* ``"crack"``: a dark, branching random-walk polyline, 1-3 px wide.
* ``"spot"``: a small dark pit, a disk or ellipse of radius ~4-10 px with a
  soft rim.
* ``"stain"``: a large (radius ~20-45 px) irregular blob of low contrast: a
  darker or lighter tint of the local intensity, not a black blob.

Sizes are quoted for a 256 x 256 image; they scale linearly with the shorter
image side and with ``scale``. Every defect lies fully inside the image with
a margin of 4 % of the shorter side (at least 2 px) and its mask covers less
than 25 % of the image.

Painting rule: with ``alpha`` the defect opacity in [0, 1] (see
:func:`make_defect`), ``img`` the clean texture in [0, 1] and ``target`` the
intensity the defect pulls towards (0 for cracks and pits, 0 or 1 for
scratches, a tint of the locally averaged intensity for stains)::

    out = img * (1 - alpha * contrast) + target * alpha * contrast

so ``contrast=0`` returns the clean texture and ``contrast=1`` replaces the
texture by ``target`` where ``alpha == 1``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from skimage import filters

DEFECTS: tuple[str, ...] = ("scratch", "crack", "spot", "stain")

REFERENCE_SIZE = 256.0  # image side for which the defect sizes are quoted
_MARGIN_FRACTION = 0.04  # free border around every defect, fraction of side
_MIN_HALF_WIDTH = 0.6  # px; keeps thin strokes connected on small images
_MIN_DEFECT_SHAPE = 16  # px; smallest image side make_defect accepts


def _fit(
    lo: np.ndarray,
    hi: np.ndarray,
    pad: float,
    shape: tuple[int, int],
    margin: float,
    rng: np.random.Generator,
) -> tuple[float, np.ndarray]:
    """Chooses a shrink factor and a translation that place a shape inside.

    The shape is given in local coordinates by the bounding box ``[lo, hi]``
    of its skeleton (rows, cols) plus a padding ``pad`` (stroke half width,
    soft edge) that is not shrunk. After ``p -> p * factor + shift`` the
    padded box lies within ``[margin, shape - 1 - margin]`` on both axes.

    Args:
        lo: (2,) lower corner of the skeleton bounding box.
        hi: (2,) upper corner of the skeleton bounding box.
        pad: Extent around the skeleton that must also fit.
        shape: Image shape (H, W).
        margin: Free border in pixels.
        rng: Generator that draws the translation.

    Returns:
        ``(factor, shift)``: factor in (0, 1], shift (2,) float array.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    avail = np.asarray(shape, dtype=np.float64) - 1.0 - 2.0 * margin - 2.0 * pad
    avail = np.maximum(avail, 0.0)
    span = hi - lo
    factor = 1.0
    for axis in range(2):
        if span[axis] > avail[axis] and span[axis] > 0:
            factor = min(factor, avail[axis] / span[axis])
    lo, hi = lo * factor, hi * factor
    shift_lo = margin + pad - lo
    shift_hi = np.asarray(shape, dtype=np.float64) - 1.0 - margin - pad - hi
    shift_hi = np.maximum(shift_hi, shift_lo)
    shift = shift_lo + rng.random(2) * (shift_hi - shift_lo)
    return factor, shift


def _stroke(alpha: np.ndarray, points: np.ndarray, half_widths: np.ndarray) -> None:
    """Renders an anti-aliased polyline of varying width into ``alpha``.

    A pixel at distance ``d`` from a segment whose local half width is ``w``
    gets opacity ``clip(w + 0.5 - d, 0, 1)``, so opacity > 0.5 exactly where
    ``d < w``. Opacities combine by maximum.

    Args:
        alpha: Float array (H, W), updated in place.
        points: (N, 2) vertices (row, col), N >= 2.
        half_widths: (N,) half width at each vertex.
    """
    height, width = alpha.shape
    for k in range(len(points) - 1):
        p0, p1 = points[k], points[k + 1]
        w0, w1 = half_widths[k], half_widths[k + 1]
        reach = max(w0, w1) + 1.0
        r0 = max(int(math.floor(min(p0[0], p1[0]) - reach)), 0)
        r1 = min(int(math.ceil(max(p0[0], p1[0]) + reach)) + 1, height)
        c0 = max(int(math.floor(min(p0[1], p1[1]) - reach)), 0)
        c1 = min(int(math.ceil(max(p0[1], p1[1]) + reach)) + 1, width)
        if r0 >= r1 or c0 >= c1:
            continue
        rows = np.arange(r0, r1, dtype=np.float64)[:, None]
        cols = np.arange(c0, c1, dtype=np.float64)[None, :]
        seg = p1 - p0
        length2 = float(seg @ seg)
        if length2 > 0:
            t = ((rows - p0[0]) * seg[0] + (cols - p0[1]) * seg[1]) / length2
            t = np.clip(t, 0.0, 1.0)
        else:
            t = np.zeros((r1 - r0, c1 - c0))
        dist = np.hypot(rows - (p0[0] + t * seg[0]), cols - (p0[1] + t * seg[1]))
        local = np.clip(w0 + t * (w1 - w0) + 0.5 - dist, 0.0, 1.0)
        np.maximum(alpha[r0:r1, c0:c1], local, out=alpha[r0:r1, c0:c1])


def _scratch(
    shape: tuple[int, int], rng: np.random.Generator, s: float, margin: float
) -> np.ndarray:
    """Opacity of a thin, slightly curved scratch with tapered ends."""
    short = min(shape)
    length = min(rng.uniform(70.0, 150.0) * s, 1.5 * short)  # _fit shrinks it further
    angle = rng.uniform(0.0, math.pi)
    bend = rng.uniform(-0.12, 0.12) * length
    wobble_amp = rng.uniform(0.0, 0.6) * max(s, 0.5)
    wobble_phase = rng.uniform(0.0, 2.0 * math.pi)
    half_width = rng.uniform(1.0, 2.0) * s
    half_width = float(np.clip(half_width, _MIN_HALF_WIDTH, max(0.03 * short, 1.0)))

    n = max(8, int(length / max(1.5, 0.5 * half_width)))
    t = np.linspace(0.0, 1.0, n)
    direction = np.array([math.sin(angle), math.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    # Parabolic arc from -L/2 to +L/2 (apex offset bend/2) with a faint wobble.
    along = (t - 0.5) * length
    sideways = 2.0 * bend * t * (1.0 - t)
    sideways = sideways + wobble_amp * np.sin(2.0 * math.pi * 3.0 * t + wobble_phase)
    points = along[:, None] * direction + sideways[:, None] * normal

    profile = 0.3 + 0.7 * np.sin(math.pi * t) ** 0.5
    widths = np.maximum(half_width * profile, 0.5 * _MIN_HALF_WIDTH)

    factor, shift = _fit(points.min(0), points.max(0), half_width + 1.0, shape, margin, rng)
    alpha = np.zeros(shape, dtype=np.float64)
    _stroke(alpha, points * factor + shift, widths)
    return alpha


def _random_walk(
    start: np.ndarray,
    angle: float,
    steps: int,
    step: float,
    rng: np.random.Generator,
    jitter: float = 0.35,
) -> np.ndarray:
    """Returns a jagged, direction-persistent random walk of ``steps`` steps."""
    points = np.empty((steps + 1, 2))
    points[0] = start
    deviation = 0.0
    for k in range(steps):
        deviation = 0.75 * deviation + rng.normal(0.0, jitter)
        theta = angle + deviation
        points[k + 1] = points[k] + step * np.array([math.sin(theta), math.cos(theta)])
    return points


def _crack(
    shape: tuple[int, int], rng: np.random.Generator, s: float, margin: float
) -> np.ndarray:
    """Opacity of a dark, branching random-walk crack."""
    short = min(shape)
    length = rng.uniform(70.0, 140.0) * s
    step = max(1.0, 2.5 * s)
    steps = max(4, int(round(length / step)))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    half_width = float(np.clip(rng.uniform(0.75, 1.5) * s, _MIN_HALF_WIDTH, max(0.02 * short, 1.0)))

    strokes: list[tuple[np.ndarray, np.ndarray]] = []
    trunk = _random_walk(np.zeros(2), angle, steps, step, rng)
    t = np.linspace(0.0, 1.0, len(trunk))
    trunk_widths = half_width * (0.45 + 0.55 * np.sin(math.pi * t) ** 0.5)
    strokes.append((trunk, trunk_widths))

    n_branches = int(rng.integers(1, 4))
    for _ in range(n_branches):
        at = int(rng.integers(int(0.15 * steps), max(int(0.85 * steps), int(0.15 * steps) + 1)))
        side = 1.0 if rng.random() < 0.5 else -1.0
        branch_angle = angle + side * rng.uniform(0.5, 1.1)
        branch_steps = max(3, int(round(steps * rng.uniform(0.2, 0.45))))
        branch = _random_walk(trunk[at], branch_angle, branch_steps, step, rng)
        tb = np.linspace(0.0, 1.0, len(branch))
        branch_widths = trunk_widths[at] * 0.75 * (1.0 - 0.6 * tb)
        strokes.append((branch, branch_widths))
        if rng.random() < 0.5 and branch_steps >= 6:  # a twig off the branch
            at2 = int(rng.integers(branch_steps // 3, branch_steps))
            twig_angle = branch_angle - side * rng.uniform(0.5, 1.0)
            twig_steps = max(2, int(round(branch_steps * rng.uniform(0.3, 0.6))))
            twig = _random_walk(branch[at2], twig_angle, twig_steps, step, rng)
            tt = np.linspace(0.0, 1.0, len(twig))
            strokes.append((twig, branch_widths[at2] * 0.8 * (1.0 - 0.5 * tt)))

    all_points = np.concatenate([p for p, _ in strokes])
    factor, shift = _fit(all_points.min(0), all_points.max(0), half_width + 1.0, shape, margin, rng)
    alpha = np.zeros(shape, dtype=np.float64)
    for points, widths in strokes:
        _stroke(alpha, points * factor + shift, np.maximum(widths, 0.5 * _MIN_HALF_WIDTH))
    return alpha


def _ellipse_coords(
    shape: tuple[int, int], center: np.ndarray, angle: float, aspect: float, reach: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Rotated, aspect-normalised coordinates in a window around ``center``.

    Returns:
        ``(window, u, v)``: the window slices and coordinates along the major
        axis (``u``) and along the minor axis divided by ``aspect`` (``v``).
    """
    height, width = shape
    r0 = max(int(math.floor(center[0] - reach)), 0)
    r1 = min(int(math.ceil(center[0] + reach)) + 1, height)
    c0 = max(int(math.floor(center[1] - reach)), 0)
    c1 = min(int(math.ceil(center[1] + reach)) + 1, width)
    dy = np.arange(r0, r1, dtype=np.float64)[:, None] - center[0]
    dx = np.arange(c0, c1, dtype=np.float64)[None, :] - center[1]
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u = dx * cos_a + dy * sin_a
    v = (-dx * sin_a + dy * cos_a) / aspect
    return (slice(r0, r1), slice(c0, c1)), u, v


def _spot(
    shape: tuple[int, int], rng: np.random.Generator, s: float, margin: float
) -> np.ndarray:
    """Opacity of a small dark pit (disk or ellipse) with a soft rim."""
    short = min(shape)
    radius = float(np.clip(rng.uniform(4.0, 10.0) * s, 1.5, 0.15 * short))
    aspect = rng.uniform(0.65, 1.0)
    angle = rng.uniform(0.0, math.pi)
    band = max(1.0, 0.4 * radius)  # width of the soft rim
    reach = radius + 0.5 * band + 1.0
    _, shift = _fit(np.zeros(2), np.zeros(2), reach, shape, margin, rng)
    window, u, v = _ellipse_coords(shape, shift, angle, aspect, reach)
    rho = np.hypot(u, v)
    alpha = np.zeros(shape, dtype=np.float64)
    alpha[window] = np.clip(0.5 + (radius - rho) / band, 0.0, 1.0)
    return alpha


def _stain(
    shape: tuple[int, int], rng: np.random.Generator, s: float, margin: float
) -> np.ndarray:
    """Opacity of a large irregular blob with a diffuse edge and a faint ring."""
    ks = np.arange(2, 8)
    amps = rng.uniform(0.0, 1.0, len(ks)) / ks
    amps *= rng.uniform(0.15, 0.3) / amps.sum()  # total relative wobble
    phases = rng.uniform(0.0, 2.0 * math.pi, len(ks))
    aspect = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, math.pi)
    # Cap the radius so that the blob stays well below 25 % of the image.
    cap = math.sqrt(0.18 * shape[0] * shape[1] / math.pi) / (1.0 + amps.sum())
    radius = float(np.clip(rng.uniform(20.0, 45.0) * s, 3.0, cap))
    band = max(1.5, 0.3 * radius)
    ring_width = max(1.0, 0.15 * radius)
    noise = rng.standard_normal((64, 64))

    reach_local = radius * (1.0 + amps.sum()) + 0.5 * band + 1.0
    _, shift = _fit(np.zeros(2), np.zeros(2), reach_local, shape, margin, rng)
    window, u, v = _ellipse_coords(shape, shift, angle, aspect, reach_local)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    harmonics = np.cos(ks[:, None, None] * theta + phases[:, None, None])
    edge_radius = radius * (1.0 + np.sum(amps[:, None, None] * harmonics, axis=0))
    inside = edge_radius - rho  # approximately the signed distance to the edge
    edge = np.clip(0.5 + inside / band, 0.0, 1.0)
    ring = np.exp(-((inside / ring_width) ** 2))

    # Smooth interior mottling in [0, 1], sampled on the window grid.
    smooth = filters.gaussian(noise, sigma=6.0, mode="wrap")
    smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-12)
    rows = np.linspace(0, 63, u.shape[0]).astype(int)
    cols = np.linspace(0, 63, u.shape[1]).astype(int)
    mottle = smooth[np.ix_(rows, cols)]

    alpha = np.zeros(shape, dtype=np.float64)
    alpha[window] = edge * (0.75 + 0.25 * ring) * (0.7 + 0.3 * mottle)
    # The mask is exactly the blob interior (soft-edge opacity may dip there).
    alpha[window] = np.where(inside > 0, np.maximum(alpha[window], 0.51), alpha[window])
    return alpha


_DEFECT_RENDERERS = {"scratch": _scratch, "crack": _crack, "spot": _spot, "stain": _stain}


def make_defect(
    kind: str, shape: tuple[int, int], rng: np.random.Generator, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draws the opacity map and exact mask of one random defect.

    Sizes are quoted for a 256 x 256 image and scale linearly with
    ``min(shape) / 256`` and with ``scale``. The defect, soft edges
    included, lies inside the image with a margin of 4 % of the shorter side
    (at least 2 px); sizes are capped so the mask never reaches 25 % of the
    image.

    Args:
        kind: One of :data:`DEFECTS`.
        shape: Image shape (H, W); both sides must be >= 16.
        rng: Random generator; the result is a deterministic function of its
            state.
        scale: Multiplier of the defect size, > 0.

    Returns:
        ``(alpha, mask)``: ``alpha`` is float32 (H, W) in [0, 1], the defect
        opacity (soft edges allowed); ``mask`` is bool (H, W), exactly
        ``alpha > 0.5``, and is never empty.

    Raises:
        ValueError: If ``kind`` is unknown, ``shape`` is not two sides >= 16,
            or ``scale`` is not a finite number > 0.
    """
    if kind not in _DEFECT_RENDERERS:
        raise ValueError(f"unknown defect kind {kind!r}; valid kinds: {', '.join(DEFECTS)}")
    if len(shape) != 2 or min(int(x) for x in shape) < _MIN_DEFECT_SHAPE:
        raise ValueError(f"shape must be (H, W) with both sides >= {_MIN_DEFECT_SHAPE}, got {tuple(shape)!r}")
    if not is_real(scale) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    shape = (int(shape[0]), int(shape[1]))
    s = min(shape) / REFERENCE_SIZE * float(scale)
    margin = max(2.0, _MARGIN_FRACTION * min(shape))
    alpha = _DEFECT_RENDERERS[kind](shape, rng, s, margin)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    mask = alpha > 0.5
    if not mask.any():  # safety net; the renderers are sized to avoid this
        r, c = np.unravel_index(int(np.argmax(alpha)), shape)
        alpha[r, c] = 1.0
        mask[r, c] = True
    return alpha, mask


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (bools excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def defect_target(
    kind: str, image: np.ndarray, rng: np.random.Generator, s: float
) -> np.ndarray | float:
    """Intensity that a defect of ``kind`` pulls the surface towards."""
    if kind == "scratch":
        return 1.0 if rng.random() < 0.5 else 0.0
    if kind == "stain":
        sigma = min(max(2.0, 4.0 * s), 0.05 * min(image.shape))
        local = filters.gaussian(image, sigma=max(sigma, 1.0), mode="reflect")
        tint = rng.uniform(0.45, 0.7) if rng.random() < 0.75 else rng.uniform(1.35, 1.7)
        return np.clip(local * tint, 0.0, 1.0)
    return 0.0  # crack, spot
