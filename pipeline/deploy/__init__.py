"""Deployment of a trained model: the flatbuffer (``export``), run and timed in the interpreter
(``interpreter``), its hardware manifest (``manifest``) and its sizes (``size``). Imports ``hwmodel`` and
``learning``; MLflow-free."""
