"""A smoke run of the benchmark command (tiny sizes) so it cannot rot; no timing assertions."""

import json
import subprocess
import sys

import pytest

from benchmarks.machine import cpu_description
from conftest import PROJECT_ROOT
from pipeline.effects import EFFECTS


@pytest.mark.slow
def test_benchmark_quick_run_writes_its_report(tmp_path):
    page = tmp_path / "performance.md"
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--output", str(tmp_path), "--page", str(page)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800)  # (13 min on a slow 2-core machine)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    report = (tmp_path / "results.md").read_text()
    assert page.read_text().startswith("# Performance") and page.read_text().endswith(report)  # the page: generated
    assert {row["model"] for row in results["training_overhead"]} == {"mlp-1bit", "cnn-1bit"}
    assert all(row["ratio"] > 0 and row["rng_floor_ratio"] >= 1 for row in results["training_overhead"])
    # the 784-512-512 MLP, hidden layers: noise and deviation (drawn at the outputs) as one Gaussian,
    # 64 x 512 per layer
    (mlp,) = [row for row in results["training_overhead"] if row["model"] == "mlp-1bit"]
    assert mlp["gaussians_at_outputs"] == 2 * 64 * 512 and mlp["draw_ms"] >= 0
    assert set(mlp["only_ratio"]) == {effect.name for effect in EFFECTS}
    throughput = results["robustness_throughput"]
    for mode, chips in (("one_chip", 1), ("side_by_side", 5)):
        assert throughput[mode]["chips_per_pass"] == chips and throughput[mode]["programming_ms"] >= 0
        assert throughput[mode]["traces"] == 1  # levels and chips changed without retracing
    # every whole evaluation gives the same table one chip per pass and side by side
    side_by_side = results["chips_side_by_side"]
    assert [row["same_table"] for row in side_by_side] == [True] * len(side_by_side)
    assert {(row["model"], row["automatic_chips_per_pass"]) for row in side_by_side} == {("mlp-1bit", 2), ("cnn-1bit", 2), ("cnn-1bit", 1)}
    assert all(row["one_chip_peak_mb_added"] >= 0 and row["side_by_side_peak_mb_added"] >= 0 for row in side_by_side)
    assert "plain layers, chips' images in one call" in report and all("plain_batching_gain" in row for row in side_by_side)
    limit = results["side_by_side_limit"]  # the same chips both ways, and the floor from its two parts
    cases = [(row["model"], row["perturbed_layers"], row["chips"]) for row in limit]
    assert cases == [("mlp-1bit", "hidden", 4), ("cnn-1bit", "hidden", 4), ("cnn-1bit", "all", 4)]
    assert all(row["same_numbers"] and row["chips_per_pass"] == 2 for row in limit)
    assert all(row["floor_ms"] == pytest.approx(row["plain_ms"] + row["draws_ms"]) and row["plain_ms"] > 0 and row["draws_ms"] > 0 for row in limit)
    assert all(row["highest_speedup"] == pytest.approx(row["one_chip_ms"] / row["floor_ms"]) for row in limit)
    assert "highest possible speed-up" in report and "plain layers, 2 chips in one call" in report
    assert results["sweep"]["complete_trials"] + 0 <= results["sweep"]["trials"]
    assert len(results["sweep"]["rss_mb_by_trial"]) >= 1
    assert "| training step" in (tmp_path / "results.md").read_text()
    target = results["target_yield"]  # the yield's many-chip evaluation, against this machine's floor
    assert target["chips_evaluated"] == target["chips"] == 100 and target["traces"] == 1
    assert target["floor_ms_per_chip"] > target["draw_ms_per_chip"] > 0 and target["ratio_to_floor"] > 0
    assert results["pruning_signal"]["ratio"] > 0 and results["pruning_signal"]["epoch_s"] > 0
    tiles = results["tiles"]  # 256-row tiles: the training step and the target's chips, with and without
    assert tiles["training"]["ratio"] > 0 and tiles["training"]["levels"].endswith("-t256")
    assert [row["target"] for row in tiles["targets"]] == ["target_hardware.yaml + 256-row tiles", "target_hardware_tiles.yaml"]
    assert all(row["chips"] == 20 and row["tiles_s"] > 0 and row["without_s"] > 0 for row in tiles["targets"])
    # every tile's own output noise: more random numbers with tiles; the bound adds only those to the chips without tiles
    assert all(row["tiles_draws_s"] > row["without_draws_s"] for row in tiles["targets"])
    assert all(row["lowest_ratio"] == pytest.approx(1 + (row["tiles_draws_s"] - row["without_draws_s"]) / row["without_s"]) for row in tiles["targets"])
    assert "Crossbar tiles of 256 rows" in report
    over_time = results["lifetime"]  # the yield over time: 14 reads of the same chips, within 14 x one read
    assert over_time["reads"] == 2 * over_time["times"] == 14 and over_time["chips"] == 100
    assert 0 < over_time["grid_s"] and over_time["draws_per_read_s"] > 0 and over_time["traces"] == 1
    assert set(over_time["lifetimes"]) == {"none", "global"} and "Yield over time" in report
    layers = results["cnn_sensitivity"]  # every weighted layer of the CNN perturbed alone
    assert list(layers["layer_seconds"]) == ["conv_1", "conv_2", "conv_3", "dense_1", "dense_out"] and layers["target_chips"] == 20
    assert all(seconds > 0 for seconds in layers["layer_seconds"].values()) and "Per-layer sensitivity" in report
    cost = results["evaluation_cost"]  # a repeated evaluation reuses the copy a new one builds and traces
    assert cost["new_copy_s"] > cost["chips_10_s"] > 0 and cost["per_chip_ms"] > 0 and "fixed part of a repeated" in report
    # --only measures the sections named and keeps the others; a quick run is not mixed with a full one
    again = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", "pruning_signal", "--output", str(tmp_path)],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    updated = json.loads((tmp_path / "results.json").read_text())
    assert updated["target_yield"] == target and updated["pruning_signal"] != results["pruning_signal"]
    mixed = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "pruning_signal", "--output", str(tmp_path)],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert mixed.returncode == 2 and "quick run" in mixed.stderr


X86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx avx2 fma avx512f avx512bw\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 sve\nCPU part\t: 0xd40\n\nModel\t: a board's name\n"


@pytest.mark.parametrize("text, described", [
    (X86, {"cpu_model": "AMD EPYC 9R14", "vector_unit": "avx512f"}),  # the first processor's, the widest unit
    (ARM, {"vector_unit": "sve"}),  # no model name (a board's "Model" is not the processor's)
    ("processor\t: 0\nFeatures\t: half thumb vfp neon\n", {"vector_unit": "neon"}),  # 32-bit ARM
    ("processor\t: 0\nflags\t: fpu sse\n", {}),  # no vector unit of the list, no model
])
def test_the_machine_is_described_by_its_processor_and_widest_vector_unit(tmp_path, text, described):
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_description(str(tmp_path / "cpuinfo")) == described
    assert cpu_description(str(tmp_path / "absent")) == {}
