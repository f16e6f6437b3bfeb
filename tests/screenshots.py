"""The documentation's screenshots of the MLflow UI, from the runs of a real store (`make screenshots`).

    python tests/screenshots.py sqlite:///mlflow.db hardware-aware-larq docs

serves the store with ``mlflow server``, opens the newest FINISHED ``main`` run's pages in Debian's
headless Chromium (Playwright) and writes ``ui_runs.png`` (the runs of the experiment, model-training
view), ``ui_robustness_charts.png`` (the robustness curves of its 1-bit QAT run, drawn by MLflow from
the step metrics) and ``ui_comparison.png`` (its comparison chart) into the output directory; with
a sweep in the store also ``ui_compare_trials.png`` (three of its trials compared).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import mlflow

from services import mlflow_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  #: Debian's; scripts/system-deps installs it
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def close_assistant(page) -> None:
    """MLflow 3's assistant side panel, if shown, hides half the page: close it."""
    close = page.get_by_role("button", name="Close")
    if close.count() and close.first.is_visible():
        close.first.click()


def newest(client, experiment_id: str, stage: str, parent: str | None = None):
    condition = f"tags.stage = '{stage}' and attributes.status = 'FINISHED'"
    if parent:
        condition += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs([experiment_id], condition, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def take_screenshots(store_uri: str, experiment_name: str, out: Path, url: str | None = None) -> list[Path]:
    """The screenshots of the newest ``main`` run of ``experiment_name`` in ``store_uri``; returns their
    paths. ``url``: an MLflow server already serving that store (default: one is started for them)."""
    mlflow.set_tracking_uri(store_uri)
    client = mlflow.MlflowClient(store_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    main = experiment and newest(client, experiment.experiment_id, "main")
    if main is None:
        raise SystemExit(f"no FINISHED main run in experiment {experiment_name!r} of {store_uri}: run `make main` first")
    out.mkdir(parents=True, exist_ok=True)
    if url is None:
        with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp), backend_store_uri=store_uri) as started:
            return screenshots_of(started, client, experiment, main, out)
    return screenshots_of(url, client, experiment, main, out)


def screenshots_of(url: str, client, experiment, main, out: Path) -> list[Path]:
    """The pages of :func:`take_screenshots`, from the server at ``url``."""
    from playwright.sync_api import sync_playwright

    from pipeline.app.ui import runs_page

    qat = newest(client, experiment.experiment_id, "qat", main.info.run_id)
    sweep = newest(client, experiment.experiment_id, "sweep")
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(runs_page(url, experiment.name))
        page.get_by_text(main.info.run_name).first.wait_for(timeout=60_000)
        close_assistant(page)
        for expander in page.locator('button[data-component-id*="runnamecellrenderer"]').all()[:1]:
            expander.click()  # the newest main: its stages
        page.wait_for_timeout(1500)
        written.append(shot(page, out / "ui_runs.png"))
        base = f"{url}/#/experiments/{experiment.experiment_id}/runs"
        page.goto(f"{base}/{qat.info.run_id}/model-metrics")
        page.get_by_text("robustness/noise").first.wait_for(timeout=60_000)
        close_assistant(page)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 6", timeout=60_000)
        page.wait_for_timeout(2000)
        written.append(shot(page, out / "ui_robustness_charts.png"))
        page.goto(f"{base}/{main.info.run_id}/artifacts/comparison/comparison.png")
        page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth > 1000)", timeout=60_000)
        close_assistant(page)
        written.append(shot(page, out / "ui_comparison.png"))
        if sweep is not None:
            trials = client.search_runs([experiment.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}' and tags.stage = 'trial'", max_results=3)
            ids = ",".join(f'"{run.info.run_id}"' for run in trials)
            page.goto(f'{url}/#/compare-runs?runs=[{ids}]&experiments=["{experiment.experiment_id}"]')
            page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=60_000)
            written.append(shot(page, out / "ui_compare_trials.png", full_page=True))
        browser.close()
    return written


def shot(page, path: Path, full_page: bool = False) -> Path:
    page.screenshot(path=path, full_page=full_page)
    return path


if __name__ == "__main__":
    store, experiment_name, directory = (sys.argv[1:4] + ["sqlite:///mlflow.db", "hardware-aware-larq", "docs"][len(sys.argv[1:4]):])
    for path in take_screenshots(store, experiment_name, Path(directory)):
        print(f"wrote {path}")
