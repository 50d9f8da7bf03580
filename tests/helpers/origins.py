"""Real remote origins for the remote-content tests, started and stopped by the tests.

- :class:`Nginx`: Debian's nginx in the foreground on 127.0.0.1 with its own config,
  root, pid and logs; its access log counts the requests ext4gen made.
- :class:`FaultProxy`: a small HTTP/1.1 proxy in this process, in front of nginx,
  that injects resets, 500s and delays on request.
- :class:`MotoS3`: moto's standalone S3 server (``moto_server``) in a subprocess;
  clients talk to it with boto3 exactly as to AWS, endpoint URL only.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.processes import pid_running

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Nginx:
    """nginx serving ``root`` on 127.0.0.1:``port`` until :meth:`stop`; restartable."""

    def __init__(self, workdir: Path, root: Path) -> None:
        if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
            pytest.skip("nginx is not installed (scripts/setup.sh installs nginx-light)")
        self.dir = workdir
        self.root = root
        self.port = free_port()
        self.access_log = workdir / "access.log"
        self.proc: subprocess.Popen | None = None
        for d in ("tmp", "logs"):
            (workdir / d).mkdir(parents=True, exist_ok=True)
        tmp = workdir / "tmp"
        (workdir / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format counted '$request_method $uri $http_range $status $body_bytes_sent';
    access_log {self.access_log} counted;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location / {{ }}
    }}
}}
""")

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                          "-e", str(self.dir / "error.log")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def requests(self, name: str | None = None) -> list[str]:
        """Access-log lines (``METHOD URI RANGE STATUS BYTES``), optionally of one file."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [ln for ln in lines if name is None or ln.split(" ")[1] == f"/{name}"]


@contextlib.contextmanager
def nginx_serving(workdir: Path, root: Path) -> Iterator[Nginx]:
    server = Nginx(workdir, root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FaultProxy:
    """Forwards HTTP/1.1 requests to an upstream port, or fails them on purpose.

    ``faults`` is a list of actions consumed one per request: ``"reset"`` (TCP RST),
    ``"500"``, ``"503"``, ``"delay:SECONDS"`` or ``"pass"``; when it runs out, requests pass.
    ``down`` makes every request a reset (the origin is gone).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.faults: list[str] = []
        self.down = False
        self.seen = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _handle(self) -> None:
                with proxy.lock:
                    proxy.seen += 1
                    action = "reset" if proxy.down else (proxy.faults.pop(0) if proxy.faults else "pass")
                if action == "reset":
                    return self._reset()
                if action in ("500", "503"):
                    body = b"injected"
                    self.send_response(int(action))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                if action.startswith("delay:"):
                    time.sleep(float(action.split(":", 1)[1]))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, headers=headers)
                    r = conn.getresponse()
                    body = r.read()
                except OSError:
                    return self._reset()
                finally:
                    conn.close()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                return None

            do_GET = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MotoS3:
    """``moto_server`` on 127.0.0.1:``port``; ``client()`` is a plain boto3 S3 client for it."""

    def __init__(self, workdir: Path) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            pytest.skip("moto_server is not installed (pip install 'moto[server]': the test extra)")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, env={**os.environ, **AWS_ENV})
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            stop_process(self.proc)
            raise

    def client(self):  # -> botocore S3 client
        import boto3

        return boto3.session.Session(**{"aws_access_key_id": "testing",
                                        "aws_secret_access_key": "testing",
                                        "region_name": "us-east-1"}).client(
            "s3", endpoint_url=self.endpoint)

    def gets(self, bucket: str, key: str = "") -> int:
        """GET requests for objects under ``bucket/key`` in moto's request log."""
        if not self.log.exists():
            return 0
        needle = f'"GET /{bucket}/{key}'
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))  # werkzeug colours
        return sum(1 for ln in text.splitlines() if needle in ln)

    def alive(self) -> bool:
        return pid_running(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def moto_serving(workdir: Path) -> Iterator[MotoS3]:
    server = MotoS3(workdir)
    try:
        yield server
    finally:
        server.stop()


def file_bytes_over_nbd(h, image, path: str) -> bytes:  # h: nbd.NBD, image: ext4gen.Image
    """A regular file's content read block by block from an NBD export of ``image``.

    ``image`` is the same manifest planned in the test process: planning is
    deterministic, so its extents are the server's.  Only the file's own data
    blocks are read, never metadata, so the origin sees exactly its fetches.
    """
    plan = image.plan
    for p, ip in plan.paths():
        if p == path.encode():
            out = bytearray(ip.size)
            for logical, n, phys in plan.physical_extents(ip):
                start = logical * 4096
                want = min(n * 4096, ip.size - start)
                out[start : start + want] = h.pread(want, phys * 4096)
            return bytes(out)
    raise KeyError(path)
