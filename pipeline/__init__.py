"""Hardware-aware training of quantized and binarized networks (Larq on TensorFlow).

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` -- the one piece of global state
the project changes at import time. Larq 0.14, MLflow's tensorflow flavor and
optuna-integration's Keras callbacks all need Keras 2 (``tf_keras``), and TensorFlow
reads the switch once, when it is first imported. Import ``pipeline`` before TensorFlow.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "pipeline must be imported before tensorflow (or TF_USE_LEGACY_KERAS=1 set): "
        "Larq 0.14 needs Keras 2, which TensorFlow selects only at its first import."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
