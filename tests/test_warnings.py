"""The suite's warning filters (pyproject.toml): a deprecation raised from the project's own code fails
its test; one raised inside a third-party library is not ours to fix and stays quiet."""

import warnings

import pytest


@pytest.mark.parametrize("module", ["pipeline", "pipeline.deploy.interpreter", "sweeps.study", "benchmarks.run"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_deprecation_from_the_project_is_an_error(module, category):
    with pytest.raises(category):
        warnings.warn_explicit("old API", category, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("module", ["tensorflow.lite.python.interpreter", "pipelines_elsewhere", "mlflow.tracking"])
def test_a_deprecation_from_elsewhere_is_not(module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old API", DeprecationWarning, f"{module.replace('.', '/')}.py", 1, module=module)
    assert caught == []  # ignored, not raised


def test_no_deprecated_tflite_interpreter_is_called():
    """TFLite flatbuffers run in LiteRT's interpreter (ai_edge_litert); tf.lite.Interpreter is deprecated."""
    from conftest import PROJECT_ROOT

    sources = [path for folder in ("pipeline", "sweeps", "benchmarks", "tests", "tutorial") for path in (PROJECT_ROOT / folder).rglob("*")
               if path.suffix in (".py", ".ipynb")]
    calls = [path.name for path in sources if path.name != "test_warnings.py" and "lite.Interpreter(" in path.read_text()]
    assert len(sources) > 50 and calls == []
