"""Run moto as a real HTTP endpoint on loopback, for tests that talk to AWS through boto3.

    with start_moto_server() as moto:                 # in-process thread (fast, ~0.1 s)
        client = boto3.client("secretsmanager", endpoint_url=moto.url, **moto.client_kwargs())
        ...
        moto.reset()                                   # forget every resource

    with start_moto_server(subprocess=True) as moto:   # `python -m moto.server` child process
        subprocess.run(["rotator", ...], env={**os.environ, **moto.env()})

Both modes speak real HTTP on 127.0.0.1, so either one is reachable from child processes (a rotator
started with `subprocess`); the thread mode dies with the pytest process, the subprocess mode is
isolated (its global settings, e.g. IAM enforcement through `enable_auth`, affect nobody else) and
survives nothing: it is killed on exit from the `with` block.

Never use real credentials with this: `env()` and `client_kwargs()` hand out moto's fake ones.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess as _subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class MotoServer:
    """A running moto endpoint. `url` is what `endpoint_url` takes."""

    url: str
    region: str = "us-east-1"
    process: _subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _thread_server: Any = field(default=None, repr=False)

    def _post(self, path: str, body: bytes = b"") -> dict[str, Any]:
        # Not form-encoded: moto reads the raw body of /moto-api/reset-auth.
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode() or "{}"
        return json.loads(text)

    def reset(self) -> None:
        """Drop every resource in every moto backend (POST /moto-api/reset)."""
        self._post("/moto-api/reset")

    def enable_auth(self, free_actions: int = 0) -> None:
        """Make moto enforce IAM: after `free_actions` unauthenticated requests, every request must be
        signed by an IAM access key that moto created and is checked against its policies. Global to
        the server: use it on a `subprocess=True` server of your own."""
        self._post("/moto-api/reset-auth", str(free_actions).encode())

    def disable_auth(self) -> None:
        self._post("/moto-api/reset-auth", b"inf")

    def env(self) -> dict[str, str]:
        """Environment for a child process (e.g. rotator) to use this server with fake credentials.
        rotator itself takes the endpoint from its config (`endpoint_url`); AWS_ENDPOINT_URL is also
        set for plain boto3/awscli users."""
        return {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.url}

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for boto3.client(...) that point at this server."""
        return {"endpoint_url": self.url, "region_name": self.region,
                "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

    def stop(self) -> None:
        if self._thread_server is not None:
            self._thread_server.stop()
            self._thread_server = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except _subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


def _wait_until_ready(url: str, process: _subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/moto-api/data.json", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    return False


def _start_subprocess(region: str) -> MotoServer:
    last_output = ""
    for _attempt in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        url = f"http://{HOST}:{port}"
        env = {**os.environ, **FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": region}
        env.pop("AWS_ENDPOINT_URL", None)
        process = _subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                    stdout=_subprocess.PIPE, stderr=_subprocess.STDOUT, env=env)
        if _wait_until_ready(url, process, time.monotonic() + STARTUP_TIMEOUT):
            # keep reading its output so a chatty server never blocks on a full pipe
            _drain(process)
            return MotoServer(url=url, region=region, process=process)
        process.kill()
        out, _ = process.communicate(timeout=10)
        last_output = (out or b"").decode(errors="replace")[-2000:]
    raise RuntimeError(f"moto server did not start:\n{last_output}")


def _drain(process: _subprocess.Popen[bytes]) -> None:
    import threading

    def pump() -> None:
        assert process.stdout is not None
        for _line in process.stdout:
            pass

    threading.Thread(target=pump, name="moto-server-output", daemon=True).start()


def _start_thread(region: str) -> MotoServer:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return MotoServer(url=f"http://{host}:{port}", region=region, _thread_server=server)


@contextmanager
def start_moto_server(*, subprocess: bool = False, region: str = "us-east-1") -> Iterator[MotoServer]:
    """Start moto on 127.0.0.1 with a free port; stop it on exit.

    subprocess=False: `ThreadedMotoServer` in this process: fast, but every thread-mode server in one
    process shares moto's global state (its resources, `reset()`, `enable_auth()`) with the others
    and with `mock_aws`: use unique resource names rather than `reset()` there.
    subprocess=True: `python -m moto.server` as a child (~0.5 s to start); state of its own.
    """
    server = _start_subprocess(region) if subprocess else _start_thread(region)
    try:
        yield server
    finally:
        server.stop()
