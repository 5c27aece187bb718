"""HTTP for the Funnelback client: one urllib3 connection pool per client, one exchange at a time.

Why urllib3 and not requests: botocore loads urllib3 anyway, while requests adds ~50 ms of imports
to every CLI start and ~0.35 ms of CPU to every call (its session machinery, cookie jar and
environment lookups), which rotator does not need (bench/README.md). What requests did for us is
done here, once, when the client is built:
- proxies from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`);
- the CA bundle: `funnelback.ca_cert`, else `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` (as before),
  else certifi's bundle when installed, else the system's;
- no cookies: urllib3 keeps none, so a session cookie set at login can never authenticate a later
  call by itself (`verify_token` must be judged on the token it presents alone);
- no redirects (one would carry X-Security-Token to wherever it points) and no retries (the caller
  decides, knowing whether the call is idempotent).

`send` never raises for I/O: every failure becomes a `Failure` that says whether the request can
have reached the server, which decides whether a non-idempotent call may be retried. Nothing here
keeps an exception object, so request headers (the token) cannot travel up in a traceback.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
import urllib3.exceptions


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]    # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes                   # at most `limit + 1` bytes: more means truncated


@dataclass(frozen=True)
class Failure:
    """A request that got no HTTP answer."""

    reason: str
    never_sent: bool   # provably never reached the server (refused, connect timeout): safe to retry
    retryable: bool    # False for TLS/URL problems that retrying cannot fix
    hint: str = ""


class Transport:
    """Thread-safe: urllib3's pools hand each thread its own connection."""

    def __init__(self, base_url: str, *, verify_tls: bool, ca_cert: str | None, pool_size: int,
                 connect_timeout: float, read_timeout: float, pool: Any = None) -> None:
        """`pool`: a urllib3 PoolManager to send through (fault injection in tests)."""
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._timeouts = (connect_timeout, read_timeout)
        self._origin_length = 0    # > 0: the pool is the host's own pool and takes paths, not URLs
        if pool is None:
            pool, direct = _pool_for(base_url, verify_tls=verify_tls, ca_cert=ca_cert, pool_size=pool_size)
            if direct:
                parts = urlsplit(base_url)
                self._origin_length = len(f"{parts.scheme}://{parts.netloc}")
        self._pool = pool

    def send(self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None,
             limit: int, error_limit: int) -> Response | Failure:
        """One exchange. The body is read up to `limit` bytes for a 2xx answer, `error_limit`
        otherwise; one byte more than that is returned when the server sent more."""
        target = url[self._origin_length:] if self._origin_length else url
        try:
            response = self._pool.urlopen(method, target, body=body, headers=dict(headers),
                                          timeout=self._timeout, retries=False, redirect=False,
                                          preload_content=False)
            try:
                cap = limit if 200 <= response.status < 300 else error_limit
                data = response.read(cap + 1)
                if len(data) > cap:
                    response.close()   # the rest is unread: this connection cannot be reused
                return Response(response.status, response.headers, data)
            finally:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            failure = classify(exc, self._timeouts)
            del exc
            return failure
        except ValueError:
            # e.g. http.client refusing a header value with a line break: its message quotes the value.
            # Where it was raised is unknown, so the request counts as possibly sent.
            return Failure("the exchange failed (an invalid header value?)", never_sent=False, retryable=False)

    def close(self) -> None:
        if self._origin_length:
            self._pool.close()      # a host's pool
        else:
            self._pool.clear()      # a PoolManager's pools


def classify(exc: BaseException, timeouts: tuple[float, float]) -> Failure:
    """Turn a urllib3 (or socket) exception into a Failure, deciding whether the request could have
    been sent. With `retries=False` urllib3 raises the underlying error itself."""
    errors = urllib3.exceptions
    if isinstance(exc, errors.SSLError):
        return Failure("TLS handshake failed", never_sent=True, retryable=False,
                       hint="check funnelback.verify_tls / funnelback.ca_cert")
    if isinstance(exc, (errors.LocationValueError, errors.LocationParseError)):
        return Failure("invalid URL", never_sent=True, retryable=False, hint="check funnelback.url")
    if isinstance(exc, errors.NewConnectionError):   # refused, unresolvable (before ConnectTimeoutError: a subclass)
        return Failure("cannot connect (refused or unresolvable)", never_sent=True, retryable=True,
                       hint="check funnelback.url and that the server is up")
    if isinstance(exc, errors.ConnectTimeoutError):
        return Failure(f"connect timeout after {timeouts[0]:g}s", never_sent=True, retryable=True)
    if isinstance(exc, errors.ProxyError):
        # urllib3 says ProxyError only while connecting to the proxy, before our request left.
        return Failure("cannot connect through the proxy", never_sent=True, retryable=True,
                       hint="check HTTPS_PROXY / NO_PROXY")
    if isinstance(exc, errors.ReadTimeoutError):
        return Failure(f"no answer within {timeouts[1]:g}s", never_sent=False, retryable=True)
    return Failure("connection lost before a complete answer", never_sent=False, retryable=True)


def _pool_for(base_url: str, *, verify_tls: bool, ca_cert: str | None, pool_size: int) -> tuple[Any, bool]:
    """(pool, direct): without a proxy, the one host's connection pool itself (direct: it takes
    paths, and no URL is parsed and looked up per call: a sixth of a call's CPU); with one,
    urllib3's ProxyManager, which takes full URLs."""
    tls: dict[str, Any] = {"cert_reqs": "CERT_NONE"}
    if verify_tls:
        bundle = ca_cert or _ca_bundle_from_environment()
        tls = {"cert_reqs": "CERT_REQUIRED"}
        if bundle and os.path.isdir(bundle):
            tls["ca_cert_dir"] = bundle
        elif bundle:
            tls["ca_certs"] = bundle
    # maxsize: a connection per call in flight (the client caps those); block=False: never wait for one.
    options = {"maxsize": max(1, pool_size), "block": False, **tls}
    proxy = proxy_for(base_url)
    if proxy:
        return urllib3.ProxyManager(proxy, num_pools=2, **options), False
    if urlsplit(base_url).scheme != "https":
        options = {k: v for k, v in options.items() if k not in tls}   # plain HTTP connections take no TLS options
    return urllib3.connection_from_url(base_url, **options), True


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment names for `url`, unless NO_PROXY exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment() if environ is None else _proxies_in(environ)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or not parts.hostname:
        return None
    exempt = "no" in proxies and urllib.request.proxy_bypass_environment(parts.hostname, {"no": proxies["no"]})
    return None if exempt else proxy


def _proxies_in(environ: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in environ.items():
        key = name.lower()
        if value and key.endswith("_proxy"):
            found.setdefault(key[: -len("_proxy")], value)
    return found


def _ca_bundle_from_environment() -> str | None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import certifi
    except ImportError:
        return None   # the system's default certificates
    return str(certifi.where())
