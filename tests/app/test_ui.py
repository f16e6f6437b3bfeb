"""The MLflow UI as a user sees it, in a real headless Chromium (Debian's), driven by Playwright.

Reads the session's shared store (two tiny `main`s and a tiny `sweep`, made through `mlflow run`),
serves it with `mlflow server` on a free localhost port, and checks that the runs, their nesting, the robustness charts and the
PNG artifacts show, and that the command that makes the documentation's screenshots
(`tests/screenshots.py`, `make screenshots`) works on it.
"""

import mlflow
import pytest

from conftest import all_runs, run_cli
from pipeline.app.ui import runs_page
from screenshots import CHROMIUM, CHROMIUM_ARGS, close_assistant, take_screenshots
from services import mlflow_server




@pytest.mark.slow
@pytest.mark.browser
def test_runs_read_well_in_the_mlflow_ui(shared, tmp_path):
    """The session's shared store: two tiny `main`s and a tiny sweep, as `mlflow run` made them."""
    assert CHROMIUM, "Chromium is needed: scripts/system-deps installs it (make test runs it)"
    for name in ("main", "main_again", "sweep"):
        shared.result(name)
    tracking_store = shared.uri
    runs = {run.info.run_name: run for run in sorted(all_runs(tracking_store), key=lambda run: run.info.start_time)}
    experiment = runs["main-mlp-1bit"].info.experiment_id
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with mlflow_server(tmp_path / "server", backend_store_uri=tracking_store) as url:
        browse_the_runs(url, experiment, runs, shots)
        written = take_screenshots(tracking_store, "test-experiment", tmp_path / "docs", url=url)  # the documentation's command
    for name in ("runs.png", "robustness_charts.png", "robustness_artifact.png", "compare_trials.png"):
        assert (shots / name).stat().st_size > 20_000, name  # a real page, not a blank one
    assert [path.name for path in written] == ["ui_runs.png", "ui_robustness_charts.png", "ui_comparison.png",
                                              "ui_compare_trials.png"]
    assert all(path.stat().st_size > 20_000 for path in written)


def browse_the_runs(url, experiment, runs, shots):
    qat, trials = runs["qat-mlp-1bit"], [runs[f"trial-00{i}"] for i in range(3)]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})

        # The link `make ui` prints: the experiment's runs in the model-training view (not MLflow 3's GenAI
        # overview); readable names, the sweep's trials nested under its parent.
        link = runs_page(url, "test-experiment")
        assert link == f"{url}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        page.goto(link)
        page.get_by_text("main-mlp-1bit").first.wait_for(timeout=60_000)
        close_assistant(page)
        assert not page.get_by_text("trial-000").is_visible()  # children are folded under their parent
        for expander in page.locator('button[data-component-id*="runnamecellrenderer"]').all():
            expander.click()
        page.get_by_text("trial-000").first.wait_for(timeout=30_000)
        body = page.inner_text("body")
        for name in ("main-mlp-1bit", "baseline-mlp-float", "qat-mlp-1bit", "perturb-mlp-1bit-d20-s0.30-c0.50",
                     "trial-000", "trial-002"):
            assert name in body, name
        assert any(name.startswith("sweep-") for name in runs) and next(n for n in runs if n.startswith("sweep-")) in body
        page.screenshot(path=shots / "runs.png")

        # A run page: the robustness curves as charts drawn from the step metrics.
        page.goto(f"{url}/#/experiments/{experiment}/runs/{qat.info.run_id}/model-metrics")
        page.get_by_text("robustness/noise").first.wait_for(timeout=60_000)
        close_assistant(page)
        assert "acc_mean" in page.inner_text("body")
        # the charts are drawn (plotly SVGs with their step axes), not just their frames
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 6", timeout=60_000)
        page.get_by_text("Step").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=shots / "robustness_charts.png")

        # The robustness PNG artifact renders (an image with real pixels).
        page.goto(f"{url}/#/experiments/{experiment}/runs/{qat.info.run_id}/artifacts/robustness/curves.png")
        page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth > 1000)",
                               timeout=60_000)
        close_assistant(page)
        page.screenshot(path=shots / "robustness_artifact.png")

        # Comparing trials: side-by-side curves and the parallel-coordinates view.
        ids = ",".join(f'"{run.info.run_id}"' for run in trials)
        page.goto(f'{url}/#/compare-runs?runs=[{ids}]&experiments=["{experiment}"]')
        page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=60_000)
        body = page.inner_text("body")
        assert all(run.info.run_name in body for run in trials)
        assert "perturb.noise_sigma" in body
        page.screenshot(path=shots / "compare_trials.png", full_page=True)
        browser.close()


def test_every_stage_run_describes_itself(tracking_store):
    result = run_cli("prepare", "--source", "bundled", "--limit", "100")
    assert result.returncode == 0
    (run,) = all_runs(tracking_store)
    note = run.data.tags["mlflow.note.content"]
    assert "Prepared mnist" in note and "stratified" in note
    assert mlflow.get_run(run.info.run_id).data.tags["stage"] == "prepare"
