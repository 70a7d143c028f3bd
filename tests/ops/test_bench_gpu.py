"""The GPU benchmark's host-side parts (workloads, traffic model, peak bandwidth, table) and,
on a machine with a CUDA GPU and torchvision, a run end to end on a tiny workload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refimpl.bench import __main__ as bench
from refimpl.bench import gpu as bench_gpu


def test_large_workload_is_the_issue_s():
    large = {w.name: w for w in bench_gpu.WORKLOADS}["large"]
    x, rois, grad = large.make()
    assert x.shape == (2, 256, 200, 304) and x.dtype == np.float32
    assert rois.shape == (1000, 5) and grad.shape == (1000, 256, 7, 7)
    # every box inside its 800 x 1216 image, in both images
    assert set(np.unique(rois[:, 0])) == {0.0, 1.0}
    assert (rois[:, 1:3] >= 0).all() and (rois[:, 3] <= 1216).all() and (rois[:, 4] <= 800).all()
    assert (rois[:, 3] > rois[:, 1]).all() and (rois[:, 4] > rois[:, 2]).all()


def test_peak_bandwidth_of_known_devices():
    # H100 SXM5: 2619 MHz HBM3 on a 5120-bit bus, 3.35 TB/s in NVIDIA's data sheet;
    # A100 40GB: 1215 MHz HBM2, 5120 bits, 1555 GB/s.
    assert bench_gpu.peak_bandwidth_gbs(2_619_000, 5120) == pytest.approx(3352, abs=1)
    assert bench_gpu.peak_bandwidth_gbs(1_215_000, 5120) == pytest.approx(1555, abs=1)


def test_covered_pixels_counts_the_union_with_a_one_pixel_rim():
    rois = np.array(
        [
            [0, 8.0, 8.0, 16.0, 16.0],  # scale 1/4: [2, 4] -> pixels 1..4 with the rim: 4 x 4
            [0, 8.0, 8.0, 16.0, 16.0],  # the same box again: counted once
            [0, 0.0, 0.0, 2.0, 2.0],  # pixels 0..1 (the rim clipped at 0): 2 x 2, 1 shared
            [1, 40.0, 0.0, 64.0, 3.0],  # image 1, clipped at the right edge: cols 9..15, rows 0..1
        ]
    )
    assert bench_gpu.covered_pixels(rois, 2, 16, 16, 0.25) == 16 + 4 - 1 + 7 * 2


def test_traffic_model():
    w = bench_gpu.Workload("t", 1, 2, 16, 16, 4, 1, 8.0, 8.0, output_size=2)
    rois = np.array([[0, 8.0, 8.0, 16.0, 16.0]])
    t = bench_gpu.traffic_bytes(w, rois)
    touched, out, full = 16 * 2 * 4, 1 * 2 * 2 * 2 * 4, 16 * 16 * 2 * 4
    assert t == {"forward": touched + out, "backward": out + full + 2 * touched}


def test_table_format():
    row = bench_gpu.GpuRow("large", "roi_align", "forward", "kernel nhwc", 0.5, [0.5], 2.0, 900.0,
                           0.27)  # fmt: skip
    ref = bench_gpu.GpuRow("large", "roi_align", "forward", "torchvision", 1.0, [1.0], None, 450.0,
                           None)  # fmt: skip
    text = bench_gpu.format_gpu_table([ref, row], "H")
    assert "| large | roi_align | forward | kernel nhwc | 0.500 | 2.00x | 900 | 27% |" in text
    assert "| large | roi_align | forward | torchvision | 1.000 |  | 450 |  |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message")
def test_without_a_gpu_it_says_so(capsys):
    assert bench.main(["gpu", "--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_end_to_end(capsys, tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "gpu.json"
    assert bench.main(["gpu", "--quick", "--repeats", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("| tiny | roi_align |") == 10 and text.count("| tiny | roi_pool |") == 10
