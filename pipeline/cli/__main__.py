"""``python -m pipeline.cli``: exits with the code of :func:`pipeline.cli.main`.

After an interruption (SIGTERM, Ctrl-C) the runs are ended and the output flushed by then, and the
process leaves without the interpreter's teardown: TensorFlow's thread pools and the trackers'
daemon threads may still be running at that moment, and a finalizing interpreter that meets one of
them holding a lock (a thread pool's mutex, the buffer of stderr) aborts with SIGABRT instead of
exiting with 130. ``faulthandler`` prints every thread's Python stack should a native crash happen.
"""

import faulthandler
import logging
import os
import sys

from pipeline.cli import EXIT_INTERRUPTED, main

faulthandler.enable()
code = main()
if code == EXIT_INTERRUPTED:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
