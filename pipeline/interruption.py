"""Interruptions (Ctrl-C, SIGTERM) as one exception, however they unwind.

A signal's handler runs between two bytecodes of the main thread, so the ``KeyboardInterrupt`` it raises
can land inside a library's context manager and make that manager's ``__exit__`` fail in turn
(TensorFlow's ``tf_stack`` then raises ``AssertionError: Concurrent access?``). Python chains the
interruption as that error's ``__context__``: :func:`caused_by_interruption` follows the chain, so a run
interrupted at such a moment still ends KILLED and the command still exits 130.
"""

from __future__ import annotations


def raise_on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM unwinds like Ctrl-C: open runs end KILLED and a running Optuna trial is marked failed."""
    raise KeyboardInterrupt(f"signal {signum}")


def interruption_of(error: BaseException | None) -> KeyboardInterrupt | None:
    """The interruption ``error`` is, or was raised while unwinding; None for an error of its own."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def caused_by_interruption(error: BaseException | None) -> bool:
    return interruption_of(error) is not None
