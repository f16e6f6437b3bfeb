"""A quiet terminal: TensorFlow's and the converters' native (C++) log lines kept out of the output.

TensorFlow writes INFO lines (``I0000 ... oneDNN custom operations are on``, ``Could not find cuda
drivers``) while its shared libraries load, before its logging is initialised, where no log level
reaches them; afterwards ``TF_CPP_MIN_LOG_LEVEL`` governs (``3`` here: the ``E0000 ... NodeDef
mentions attribute use_unbounded_threadpool`` lines that every ``tf.data`` pipeline of this
TensorFlow build prints are not errors of ours). So the first ``import tensorflow`` runs with the
process's stderr (file descriptor 2) captured, and the captured text is written back without the
known noise: native INFO / WARNING lines and absl's notice about them. Python's own warnings and
errors, and any other line, pass -- but for two notices of TensorFlow's Python logger
(:data:`PYTHON_NOISE`). ``HWL_VERBOSE=1`` (or ``--verbose`` on the command line) keeps
everything, for debugging.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_VARIABLE = "HWL_VERBOSE"
NOISE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # absl: I0000 00:00:1796164743.198069  14808 port.cc:153]
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "  # TensorFlow's older format (LCE's converter)
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Inside, file descriptor 2 goes to a file; on exit its lines go back to stderr without the
    :data:`NOISE`. Nothing is filtered when :func:`verbose`."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class QuietFirstImport(importlib.abc.MetaPathFinder):
    """Runs the first import of ``name`` inside :func:`native_noise_filtered`, then steps aside."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = FilteredLoader(spec.loader)
        return spec


class FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with native_noise_filtered():
            self.loader.exec_module(module)

    def __getattr__(self, name: str):  # everything else (resources, ...) from the real loader
        return getattr(self.loader, name)


QUIET_LEVEL = "3"  #: ``TF_CPP_MIN_LOG_LEVEL`` of a quiet terminal
#: tf_keras, on every model it reloads to convert or log; TensorFlow, when five functions made from one
#: piece of code (every model's predict function, every calibration probe) have each been traced once
PYTHON_NOISE = ("the compiled metrics have yet to be built", "triggered tf.function retracing")


def without_python_noise(record: logging.LogRecord) -> bool:
    return verbose() or not any(text in record.getMessage() for text in PYTHON_NOISE)


def quiet_tensorflow() -> None:
    """Set TensorFlow's native log level and filter its first import (unless :func:`verbose`)."""
    if verbose() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    if not any(isinstance(finder, QuietFirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietFirstImport("tensorflow"))
        logging.getLogger("tensorflow").addFilter(without_python_noise)


def make_verbose() -> None:
    """Undo :func:`quiet_tensorflow` before TensorFlow loads (``--verbose``)."""
    os.environ[VERBOSE_VARIABLE] = "1"
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == QUIET_LEVEL:
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, QuietFirstImport)]
