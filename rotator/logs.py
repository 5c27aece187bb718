"""structlog, configured once: JSON in production, readable console output on a TTY.

The redaction processor runs last before rendering, so nothing can bypass it: values under keys that
name a secret are replaced, `Secret` objects render as redacted, and any registered secret value
found inside free text (an exception message, a URL) is scrubbed.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, MutableMapping

import structlog

from rotator.secret import REDACTED, Secret, scrub

# Keys whose values are secrets whatever they contain. Names that merely mention a secret
# (token_name, secret_id, token_env...) are references, not values, and stay visible.
_SECRET_KEY = re.compile(r"^(token|value|password|secret|client_token|secret_access_key|jwt|"
                         r"x-security-token|x-vault-token|authorization|new_token|old_token)$", re.I)

_configured = False


class _Stderr:
    """sys.stderr looked up at each write (tests and embedders swap it), and a log line that cannot
    be written is dropped rather than raised: logging must never fail a rotation step, least of all
    right after a new token's value arrived."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (OSError, ValueError):
            return False


def _redact_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.match(str(k)) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_redact_value(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret value survives to the renderer."""
    for key in list(event_dict):
        if _SECRET_KEY.match(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _scrub_rendered(_logger: Any, _method: str, rendered: Any) -> Any:
    # Last line of defence, after rendering (tracebacks are formatted by then).
    return scrub(rendered) if isinstance(rendered, str) else rendered


def configure(*, fmt: str | None = None, level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the whole process. `fmt` None means: console on a TTY, else JSON."""
    global _configured
    stream = stream or _Stderr()
    if fmt is None:
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        exc_processor: Any = structlog.processors.dict_tracebacks
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
        exc_processor = structlog.processors.format_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exc_processor,
            redact,
            renderer,
            _scrub_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (botocore, urllib3, apscheduler) log through stdlib logging: keep them quiet and
    # route what remains through the same redaction.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=stream,
                        format="%(levelname)s %(name)s %(message)s", force=True)
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(numeric, logging.WARNING))  # libraries that set their own INFO level too
        handler.addFilter(_StdlibScrubber())
    _configured = True


class _StdlibScrubber(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = ()
        return True


def get_logger(name: str = "rotator") -> Any:
    return structlog.get_logger(name)
