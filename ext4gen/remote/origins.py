"""One remote object, fetched by byte range: HTTP(S) through urllib3, S3 through boto3.

Both clients keep connections open between requests (one pool per process).
Their own retries are switched off: :func:`fetch_range` retries transient
failures itself with bounded exponential backoff under one deadline, so a read
either gets the right bytes in time or becomes EIO — it never hangs.

An object is *pinned* by what the server said about it the first time (ETag,
Last-Modified, size); a later response that disagrees means the object was
replaced, which is EIO like a rewritten host file.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from dataclasses import dataclass

from ..errors import SourceError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
#: Set when the server stops: retry loops end at once instead of spending their budget.
STOPPING = threading.Event()


class TransientError(Exception):
    """Worth retrying: timeouts, resets, 5xx, throttling."""


class ObjectChanged(SourceError):
    """The object is not the one planned (ETag, Last-Modified or size differ)."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str | None = None
    last_modified: str | None = None


class Origin:
    """Where one object lives.  ``pin`` is set at plan time (HEAD) or by the first response."""

    name: str = ""

    def __init__(self) -> None:
        self.pin: ObjectInfo | None = None
        self._lock = threading.Lock()

    def head(self, timeout: float) -> ObjectInfo:
        raise NotImplementedError

    def get(self, start: int, end: int, timeout: float) -> bytes:
        """Bytes [start, end) in one request; TransientError, SourceError or ObjectChanged."""
        raise NotImplementedError

    def check_pin(self, seen: ObjectInfo) -> None:
        with self._lock:
            if self.pin is None:
                self.pin = seen
                return
            pin = self.pin
        if (seen.size != pin.size or (pin.etag and seen.etag and seen.etag != pin.etag)
                or (pin.last_modified and seen.last_modified
                    and seen.last_modified != pin.last_modified)):
            raise ObjectChanged(f"{self.name}: remote object changed since the image was planned "
                                f"(ETag {pin.etag} -> {seen.etag}, size {pin.size} -> {seen.size})")


def fetch_range(origin: Origin, start: int, end: int, deadline: float) -> bytes:
    """Bytes [start, end) of ``origin``, retried with backoff until ``deadline`` (monotonic)."""
    attempt = 0
    last = "no attempt"
    while True:
        left = deadline - time.monotonic()
        if STOPPING.is_set():
            raise SourceError(f"{origin.name}: the server is stopping")
        if left <= 0:
            raise SourceError(f"{origin.name}: bytes {start}-{end - 1} not fetched in time "
                              f"({attempt} attempts; last: {last})")
        try:
            data = origin.get(start, end, min(left, READ_TIMEOUT))
        except TransientError as e:
            last = str(e)
        else:
            if len(data) == end - start:
                return data
            last = f"short body ({len(data)} of {end - start} bytes)"
        attempt += 1
        pause = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** min(attempt, 10)))
        STOPPING.wait(min(max(0.0, deadline - time.monotonic()), pause * (0.5 + random.random() / 2)))


def head_with_retries(origin: Origin, timeout: float) -> ObjectInfo:
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return origin.head(max(0.1, min(READ_TIMEOUT, deadline - time.monotonic())))
        except TransientError as e:
            attempt += 1
            if time.monotonic() >= deadline:
                raise SourceError(f"{origin.name}: cannot learn its size ({e})") from None
            time.sleep(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt))


# -- HTTP ----------------------------------------------------------------------------

_pool = None
_pool_lock = threading.Lock()


def http_pool():  # -> urllib3.PoolManager
    global _pool
    with _pool_lock:
        if _pool is None:
            import urllib3

            _pool = urllib3.PoolManager(num_pools=64, maxsize=16, block=False, retries=False)
        return _pool


def check_url(url: str, allow_http: bool) -> str | None:
    """Why ``url`` is refused, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s):// URL with a host"
    if parts.scheme == "http" and not allow_http and parts.hostname not in LOCAL_HOSTS:
        return ("plain http:// is allowed only for localhost; use https://, or allow it with "
                "[image] allow_http = true / --allow-http")
    return None


class HttpOrigin(Origin):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = self.name = url

    def _request(self, method: str, headers: dict[str, str], timeout: float, preload: bool):
        import urllib3

        try:
            return http_pool().request(
                method, self.url, headers=headers, preload_content=preload, redirect=True,
                timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout))
        except urllib3.exceptions.HTTPError as e:
            raise TransientError(f"{type(e).__name__}: {e}") from None

    @staticmethod
    def _status(url: str, status: int) -> None:
        if status in (408, 425, 429) or status >= 500:
            raise TransientError(f"HTTP {status}")
        if status in (412, 416):
            raise ObjectChanged(f"{url}: remote object changed since the image was planned "
                                f"(HTTP {status})")
        if status >= 300:
            raise SourceError(f"{url}: HTTP {status}")

    def head(self, timeout: float) -> ObjectInfo:
        r = self._request("HEAD", {}, timeout, True)
        self._status(self.url, r.status)
        length = r.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise SourceError(f"{self.url}: the server does not say its size (no Content-Length)")
        return ObjectInfo(int(length), r.headers.get("ETag"), r.headers.get("Last-Modified"))

    def get(self, start: int, end: int, timeout: float) -> bytes:
        import urllib3

        r = self._request("GET", {"Range": f"bytes={start}-{end - 1}"}, timeout, False)
        reusable = False  # a connection goes back to the pool only after a complete exchange
        try:
            if r.status >= 300:
                r.drain_conn()  # error bodies are small
                reusable = True
            self._status(self.url, r.status)
            if r.status == 206:
                total = (r.headers.get("Content-Range") or "").rpartition("/")[2]
                size = int(total) if total.isdigit() else -1
            elif start == 0:  # a server without range support: the head of the full body
                size = int(r.headers.get("Content-Length") or -1)
            else:
                raise SourceError(f"{self.url}: the server ignores range requests")
            self.check_pin(ObjectInfo(size, r.headers.get("ETag"), r.headers.get("Last-Modified")))
            try:
                data = r.read(end - start, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise TransientError(f"body: {type(e).__name__}: {e}") from None
            reusable = r.status == 206 and len(data) == end - start
            return data
        finally:
            if reusable:
                r.release_conn()
            else:  # a partly read or whole-object body: the connection is not reusable
                r.close()
                if r.connection is not None:
                    r.connection.close()
                r.release_conn()


# -- S3 ------------------------------------------------------------------------------

_clients: dict[str | None, object] = {}
_clients_lock = threading.Lock()
_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                              "Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "TooManyRequests", "503", "500", "502", "504"})


def s3_client(endpoint: str | None):  # -> botocore client
    """One client per endpoint: credentials and region exactly as the AWS tools find them."""
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 1, "mode": "standard"},
                            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                            max_pool_connections=32)
            client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _clients[endpoint] = client
        return client


def parse_s3_url(url: str) -> tuple[str, str] | None:
    parts = urllib.parse.urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        return None
    return parts.netloc, key


class S3Origin(Origin):
    def __init__(self, url: str, endpoint: str | None) -> None:
        super().__init__()
        self.name = url
        parsed = parse_s3_url(url)
        assert parsed is not None
        self.bucket, self.key = parsed
        self.endpoint = endpoint

    def _call(self, fn, **kw):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, Key=self.key, **kw)
        except ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise TransientError(f"S3 {code or status}") from None
            if code in ("PreconditionFailed", "412", "InvalidRange", "416"):
                raise ObjectChanged(f"{self.name}: remote object changed since the image was "
                                    f"planned ({code})") from None
            raise SourceError(f"{self.name}: S3 {code or status}: {err.get('Message', '')}") from None
        except BotoCoreError as e:
            if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError",
                                    "NoRegionError", "ParamValidationError"):
                raise SourceError(f"{self.name}: {e}") from None
            raise TransientError(f"{type(e).__name__}: {e}") from None

    def head(self, timeout: float) -> ObjectInfo:
        r = self._call(s3_client(self.endpoint).head_object)
        return ObjectInfo(int(r["ContentLength"]), r.get("ETag"), str(r.get("LastModified")))

    def get(self, start: int, end: int, timeout: float) -> bytes:
        kw = {"Range": f"bytes={start}-{end - 1}"}
        if self.pin is not None and self.pin.etag:
            kw["IfMatch"] = self.pin.etag
        r = self._call(s3_client(self.endpoint).get_object, **kw)
        total = str(r.get("ContentRange") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(r.get("ContentLength") or -1)
        self.check_pin(ObjectInfo(size, r.get("ETag"), str(r.get("LastModified"))))
        body = r["Body"]
        try:
            return body.read()
        except Exception as e:  # botocore wraps urllib3/socket errors in several types
            raise TransientError(f"body: {type(e).__name__}: {e}") from None
        finally:
            body.close()
