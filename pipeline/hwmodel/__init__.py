"""The hardware model: what a quantizer is (``quantizers``), the hardware-aware layers with their one
forward path (``layers``), and a model's chips -- attached, programmed, calibrated, read (``chips``).

Imports ``effects``, ``perturbation`` and ``config`` below it; nothing of ``learning``, ``evaluation``,
``deploy`` or ``app``."""
