"""The warp-load replay of refimpl.course.coalescing, on cases counted by hand, and its
verdict on the benchmark's workloads."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.bench.gpu import WORKLOADS
from refimpl.course.coalescing import compare_layouts, replay_roi_align_loads


def test_channels_of_one_sample_one_warp():
    """Output 1x1, 32 channels: a warp is the 32 channels of one bin. Channels-last reads
    each corner as 32 consecutive floats (128 aligned bytes: 4 sectors); NCHW reads one
    float from each of 32 planes (32 sectors)."""
    rois = np.array([[0, 2.0, 2.0, 6.0, 6.0]])
    args = ((1, 32, 8, 8), rois, (1, 1), 1.0, 1, False, np.array([0]))
    cl = replay_roi_align_loads("channels_last", *args)
    nchw = replay_roi_align_loads("nchw", *args)
    assert (cl.instructions, cl.sectors) == (4, 16)
    assert (nchw.instructions, nchw.sectors) == (4, 128)
    assert cl.sectors_per_load == 4 and nchw.sectors_per_load == 32


def test_a_row_of_bins_one_channel():
    """One channel, output 1x32 over a 32x1-pixel box: the samples sit at x = 0.5 .. 31.5,
    y = 0.5, so the four corner loads read elements 0..31, 1..32 (row 0) and 40..71,
    41..72 (row 1, W = 40): 4 + 5 + 4 + 5 sectors, in either layout (C = 1)."""
    rois = np.array([[0, 0.0, 0.0, 32.0, 1.0]])
    for layout in ("nchw", "channels_last"):
        r = replay_roi_align_loads(layout, (1, 1, 4, 40), rois, (1, 32), 1.0, 1, False, [0])
        assert (r.instructions, r.sectors) == (4, 18), layout


def test_outside_samples_load_nothing():
    rois = np.array([[0, -40.0, -40.0, -20.0, -20.0]])  # more than a pixel outside
    r = replay_roi_align_loads("nchw", (1, 32, 8, 8), rois, (2, 2), 1.0, 2, True, [0])
    assert r.instructions == 0 and r.sectors == 0


def test_bad_layout():
    with pytest.raises(ValueError, match="layout"):
        replay_roi_align_loads("nhwc", (1, 1, 4, 4), np.zeros((1, 5)), (1, 1), 1.0, 1, False, [0])


def test_channels_last_is_ideal_on_the_benchmark_workloads():
    """C = 256: every channels-last load is 4 sectors; NCHW needs several times more."""
    for w in WORKLOADS:
        x, rois, _ = w.make()
        out = (w.output_size, w.output_size)
        r = compare_layouts(x.shape, rois, out, w.spatial_scale, 2, True, n_warps=16)
        assert r["channels_last"].sectors_per_load == 4
        assert r["nchw"].sectors_per_load > 2 * r["channels_last"].sectors_per_load, w.name
