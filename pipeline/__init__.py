"""Hardware-aware training of quantized and binarized networks (Larq on TensorFlow).

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` -- the global state the project changes
at import time, with TensorFlow's native log level: Larq 0.14, MLflow's tensorflow flavor and
optuna-integration's Keras callbacks all need Keras 2 (``tf_keras``), and TensorFlow reads the
switch once, when it is first imported. Import ``pipeline`` before TensorFlow. Its native log
lines are kept out of the terminal (:mod:`pipeline.native_logs`; ``HWL_VERBOSE=1`` keeps them).
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "pipeline must be imported before tensorflow (or TF_USE_LEGACY_KERAS=1 set): "
        "Larq 0.14 needs Keras 2, which TensorFlow selects only at its first import."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from pipeline.native_logs import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

__version__ = "0.1.0"
