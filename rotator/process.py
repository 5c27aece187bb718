"""The cyclic garbage collector around a command-line process's start-up and exit.

Start-up (imports, the config, the SDK clients) allocates a few hundred thousand objects that live
as long as the process. The collector would traverse them again and again while they are being
built, and once more at interpreter exit, for nothing: that is ~0.15 s of a `rotate` run that
takes well under a second for one target (bench/startup.py). So, only when rotator *is* the
process (never when a test or an embedder calls `cli.main`):
- collection is off during start-up;
- at its end, everything built so far moves to the permanent generation (`gc.freeze`) and
  collection resumes, so the work that follows (rotations, a daemon's life) is collected as usual;
- at exit, everything is frozen again, so the interpreter's final collections have nothing to do.
"""

from __future__ import annotations

import gc

_managing = False


def begin_startup() -> None:
    global _managing
    _managing = True
    gc.disable()


def startup_done() -> None:
    """Called once the long-lived objects exist; harmless to call twice or when not managing."""
    if _managing and not gc.isenabled():
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    if _managing:
        gc.freeze()
