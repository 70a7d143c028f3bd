"""How many memory sectors a warp's loads touch: RoIAlign's forward in NCHW vs channels-last.

A GPU serves a warp's load instruction (32 threads, one address each) in 32-byte
**sectors**: 32 float32 values at consecutive addresses are 4 sectors, 32 scattered ones up
to 32. This module replays the loads of refimpl's RoIAlign forward kernels
(``refimpl.ops.cuda``, one thread per output element) warp by warp, in lockstep: for each
sampling point ``(iy, ix)`` and each of its four bilinear corners, one load instruction per
warp, and counts the distinct sectors its active threads touch. The thread order is the
kernel's: NCHW ``(k, c, ph, pw)`` with ``pw`` fastest, or channels-last ``(k, ph, pw, c)``
with ``c`` fastest over an ``[N, H, W, C]`` map.

It is a model, not a measurement: no caches (a sector read twice counts twice), no
latency, no occupancy. It counts what coalescing changes, the DRAM/L2 transactions a warp
asks for, and so tells which layout a memory-bound kernel should prefer; ``python -m
refimpl bench gpu`` measures the truth on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.ops import geometry as g

WARP = 32
SECTOR_BYTES = 32


@dataclass(frozen=True)
class WarpLoads:
    layout: str  # "nchw" | "channels_last"
    warps: int  # warps replayed
    instructions: int  # warp-wide load instructions with at least one active thread
    sectors: int  # sectors those instructions touched, summed

    @property
    def sectors_per_load(self) -> float:
        """4 is ideal for float32 (32 threads x 4 bytes); 32 is one sector per thread."""
        return self.sectors / max(self.instructions, 1)


def _thread_element(layout: str, t: np.ndarray, shape: tuple[int, int, int, int]):
    """Thread ids -> their output element ``(k, c, ph, pw)`` in the kernel's order."""
    _, channels, pooled_h, pooled_w = shape
    if layout == "channels_last":
        c = t % channels
        pw = (t // channels) % pooled_w
        ph = (t // (channels * pooled_w)) % pooled_h
        k = t // (channels * pooled_w * pooled_h)
    else:
        pw = t % pooled_w
        ph = (t // pooled_w) % pooled_h
        c = (t // (pooled_w * pooled_h)) % channels
        k = t // (pooled_w * pooled_h * channels)
    return k, c, ph, pw


def _sample_corners(F, grid, ph, pw, iy, ix, height, width):
    """The four (y, x) pixels that sample (iy, ix) of bin (ph, pw) reads, or None where the
    RoI's grid has no such sample or the sample lies outside the image."""
    start_y, start_x, bin_h, bin_w, gh, gw, _ = grid
    if iy >= gh or ix >= gw:
        return None
    y = g.sample_coord(F, start_y, bin_h, ph, iy, gh)
    xx = g.sample_coord(F, start_x, bin_w, pw, ix, gw)
    inside_y, y0, y1, _, _ = g.bilinear_1d(F, y, height)
    inside_x, x0, x1, _, _ = g.bilinear_1d(F, xx, width)
    if not (inside_y and inside_x):
        return None
    return (y0, x0), (y0, x1), (y1, x0), (y1, x1)


def _element_offset(layout, x_shape, b, c, y, x) -> int:
    """The offset, in elements, of x[b, c, y, x] in ``layout``."""
    _, channels, height, width = x_shape
    if layout == "channels_last":
        return ((b * height + y) * width + x) * channels + c
    return ((b * channels + c) * height + y) * width + x


def replay_roi_align_loads(
    layout: str,
    x_shape: tuple[int, int, int, int],
    rois: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    warps: np.ndarray,
    itemsize: int = 4,
) -> WarpLoads:
    """Replay the loads of RoIAlign's forward (avg) for the given warp indices."""
    if layout not in ("nchw", "channels_last"):
        raise ValueError(f"layout must be 'nchw' or 'channels_last', got {layout!r}")
    F = np.float32 if itemsize == 4 else np.float64
    _, channels, height, width = x_shape
    pooled_h, pooled_w = output_size
    n_rois = rois.shape[0]
    total = n_rois * channels * pooled_h * pooled_w
    scale = F(spatial_scale)
    grids = [
        g.align_box(F, *map(F, r[1:]), scale, aligned, pooled_h, pooled_w, sampling_ratio)
        for r in rois
    ]
    instructions = sectors = 0
    for w in np.asarray(warps):
        t = np.arange(w * WARP, min((w + 1) * WARP, total))
        if t.size == 0:
            continue
        k, c, ph, pw = _thread_element(layout, t, (n_rois, channels, pooled_h, pooled_w))
        b = rois[k, 0].astype(np.int64)
        # The warp runs the largest grid among its threads; smaller ones sit out the rest.
        grid_h = max(grids[i][4] for i in k)
        grid_w = max(grids[i][5] for i in k)
        for iy in range(grid_h):
            for ix in range(grid_w):
                # per lane: the four (y, x) pixels of its sample (iy, ix), or None
                corners = [
                    _sample_corners(F, grids[k[lane]], ph[lane], pw[lane], iy, ix, height, width)
                    for lane in range(t.size)
                ]
                for corner in range(4):  # one load instruction per corner
                    addresses = [
                        _element_offset(layout, x_shape, b[lane], c[lane], *cs[corner]) * itemsize
                        for lane, cs in enumerate(corners)
                        if cs is not None
                    ]
                    if addresses:
                        instructions += 1
                        sectors += len({a // SECTOR_BYTES for a in addresses})
    return WarpLoads(layout, len(warps), instructions, sectors)


def compare_layouts(
    x_shape, rois, output_size, spatial_scale, sampling_ratio, aligned, n_warps=64, seed=0
) -> dict[str, WarpLoads]:
    """Both layouts on the same randomly chosen warps *of work*: warp ``w`` of the NCHW
    order and warp ``w`` of the channels-last order cover different outputs but the same
    amount, so the sector totals compare."""
    n_rois, (_, channels, _, _) = rois.shape[0], x_shape
    total = n_rois * channels * output_size[0] * output_size[1]
    rng = np.random.default_rng(seed)
    warps = rng.choice((total + WARP - 1) // WARP, size=n_warps, replace=False)
    return {
        layout: replay_roi_align_loads(
            layout, x_shape, rois, output_size, spatial_scale, sampling_ratio, aligned, warps
        )
        for layout in ("nchw", "channels_last")
    }
