"""The application edge: MLflow (``tracking``, the only module that imports it), the stages as runs
(``stages``), and the views of their outcomes (``compare``, ``plots``, ``ui``). Imports ``flow`` and
everything below it."""
