"""The benchmark command runs end to end (on a tiny workload: timings are not tested)."""

from __future__ import annotations

from refimpl.bench import __main__ as bench


def test_ops_table_on_the_quick_workload(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            ["ops", "--quick", "--repeats", "1", "--backends", "numpy,numba", "--json", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    for op in ("roi_align", "roi_align_max", "roi_pool", "roi_warp", "prroi_pool"):
        assert f"| tiny     | {op:13s} | numba" in text
    assert "failed" not in text
    assert out.read_text().count('"backend"') == 2 * 5 * 2  # backends x ops x directions


def test_overhead_table(capsys):
    assert bench.main(["overhead", "--quick", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("| tiny     |") == 4
