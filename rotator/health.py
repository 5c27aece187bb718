"""The daemon's operations surface on `[service] listen`: /metrics, /healthz, /readyz.

- ``/metrics``: Prometheus text format from the daemon's own registry.
- ``/healthz``: 200 while the scheduler runs (its thread is alive); 503 otherwise. For a liveness
  probe: a 503 means restart me.
- ``/readyz``: 200 when the config is loaded and the last preflight (Funnelback authenticates, every
  store in use answers) passed; 503 with a JSON reason otherwise. For a readiness probe / alerting.

Standard library only (``ThreadingHTTPServer`` on a daemon thread), no access log.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from rotator.errors import RotatorError
from rotator.logs import get_logger

log = get_logger("rotator.health")

# (ok, reason) providers
Probe = Callable[[], tuple[bool, str]]


def parse_listen(listen: str) -> tuple[str, int]:
    """"0.0.0.0:9464", "[::]:9464", ":9464" (all interfaces) -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise RotatorError(f"[service] listen {listen!r} is not HOST:PORT", hint="e.g. \"0.0.0.0:9464\"")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], family: int, surface: HealthServer) -> None:
        self.address_family = family
        self.surface = surface
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is not worth a traceback on stderr.
        log.debug("health_request_error", client=str(client_address[0]) if client_address else None)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "rotator"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # no access log: probes every few seconds would drown the rotation logs

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        surface = self.server.surface
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._reply(200, surface.render_metrics(), surface.metrics_content_type, head=head)
            elif path in ("/healthz", "/livez"):
                self._probe(surface.live, head)
            elif path == "/readyz":
                self._probe(surface.ready, head)
            elif path == "/":
                body = b"rotator: /metrics /healthz /readyz\n"
                self._reply(200, body, "text/plain; charset=utf-8", head=head)
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - a probe must never kill the server thread
            log.error("health_handler_failed", path=path, error=type(exc).__name__)
            try:
                self._reply(500, b"internal error\n", "text/plain; charset=utf-8", head=head)
            except OSError:
                pass

    def _probe(self, probe: Probe, head: bool) -> None:
        ok, reason = probe()
        body = json.dumps({"status": "ok" if ok else "unavailable", "reason": reason}).encode() + b"\n"
        self._reply(200 if ok else 503, body, "application/json", head=head)

    def _reply(self, status: int, body: bytes, content_type: str, *, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)


class HealthServer:
    """Serves the three endpoints on a daemon thread. `live`/`ready` return (ok, reason)."""

    def __init__(self, listen: str, *, render_metrics: Callable[[], bytes], metrics_content_type: str,
                 live: Probe, ready: Probe) -> None:
        self.listen = listen
        self.render_metrics = render_metrics
        self.metrics_content_type = metrics_content_type
        self.live = live
        self.ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def start(self) -> HealthServer:
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = _Server((host, port), family, self)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RotatorError(f"cannot listen on {self.listen}: port in use",
                                   hint="another process (or another rotator) uses it; change [service] listen"
                                   ) from None
            if exc.errno == errno.EACCES:
                raise RotatorError(f"cannot listen on {self.listen}: permission denied",
                                   hint="ports below 1024 need privileges; use e.g. 9464") from None
            raise RotatorError(f"cannot listen on {self.listen}: {exc.strerror or exc}",
                               hint="check [service] listen (HOST:PORT of an address of this machine)") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="health-http", daemon=True)
        self._thread.start()
        log.info("listening", listen=self.listen, port=self.port)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
