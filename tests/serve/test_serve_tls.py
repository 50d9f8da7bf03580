"""``serve --tls-psk``: nbdkit's TLS through serve, with a real libnbd client (issue 11.9);
and a warning when a non-loopback address is served without TLS."""

from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path

import pytest
from helpers.cli import CLI, build_image
from helpers.servers import import_nbd
from helpers.trees import make_source_tree

from ext4gen.serve.options import ServeOptions, is_loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def psk(tmp_path: Path) -> Path:
    path = tmp_path / "keys.psk"
    path.write_text(f"alice:{secrets.token_hex(32)}\n")
    path.chmod(0o600)
    return path


def test_psk_tls_serves_tls_clients_and_refuses_plain_ones(psk: Path, tmp_path: Path):
    nbd = import_nbd()
    manifest = make_source_tree(tmp_path)
    reference = build_image(manifest, tmp_path / "ref.img")
    port = _free_port()
    proc = subprocess.Popen([*CLI, "serve", str(manifest), "--port", str(port), "--bind",
                             "127.0.0.1", "--tls-psk", str(psk), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        assert uri == f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={psk}", uri

        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(str(psk))
        h.set_tls_username("alice")
        h.connect_tcp("127.0.0.1", str(port))
        assert h.get_tls_negotiated()
        assert h.pread(len(reference), 0) == reference
        h.shutdown()

        by_uri = nbd.NBD()
        by_uri.set_uri_allow_local_file(True)  # as nbdinfo, nbdcopy and nbdfuse do
        by_uri.connect_uri(uri)  # the URI serve printed works as is
        assert by_uri.pread(4096, 1024) == reference[1024:5120]
        by_uri.shutdown()

        plain = nbd.NBD()
        plain.set_tls(nbd.TLS_DISABLE)
        with pytest.raises(nbd.Error):
            plain.connect_tcp("127.0.0.1", str(port))
            plain.pread(4096, 0)

        wrong = tmp_path / "wrong.psk"
        wrong.write_text(f"alice:{secrets.token_hex(32)}\n")
        bad = nbd.NBD()
        bad.set_tls(nbd.TLS_REQUIRE)
        bad.set_tls_psk_file(str(wrong))
        bad.set_tls_username("alice")
        with pytest.raises(nbd.Error):
            bad.connect_tcp("127.0.0.1", str(port))
    finally:
        proc.terminate()
        proc.wait(30)
    assert "without TLS" not in (proc.stderr.read() if proc.stderr else "")


def test_non_loopback_address_without_tls_warns(tmp_path: Path):
    """192.0.2.1 (TEST-NET-1) is not configured here: nbdkit cannot bind it and exits,
    so nothing is ever exposed; the warning comes before that."""
    manifest = make_source_tree(tmp_path)
    proc = subprocess.run([*CLI, "serve", str(manifest), "--port", str(_free_port()), "--bind",
                           "192.0.2.1", "--foreground"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "warning: serving on 192.0.2.1" in proc.stderr and "without TLS" in proc.stderr


@pytest.mark.parametrize("bind, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.2", False),
    ("example.org", False),
])
def test_what_counts_as_loopback(bind: str, loopback: bool):
    assert is_loopback(bind) is loopback
    opts = ServeOptions(source="m.toml", port=10809, bind=bind)
    assert opts.exposed_without_tls() is not loopback


def _x509_dir(base: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (openssl), as nbdkit wants them."""
    d = base / "pki"
    d.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out",
        "ca-cert.pem", "-days", "2", "-subj", "/CN=ext4gen test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server-key.pem", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-out", "server-cert.pem", "-days", "2", "-extfile", "san.ext")
    return d


def test_x509_tls_with_a_verified_server_certificate(tmp_path: Path):
    nbd = import_nbd()
    manifest = make_source_tree(tmp_path)
    reference = build_image(manifest, tmp_path / "ref.img")
    pki = _x509_dir(tmp_path)
    port = _free_port()
    proc = subprocess.Popen([*CLI, "serve", str(manifest), "--port", str(port), "--bind",
                             "127.0.0.1", "--tls-certificates", str(pki), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"nbds://127.0.0.1:{port}"
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(str(pki))  # the client reads ca-cert.pem to verify the server
        h.set_tls_verify_peer(True)
        h.connect_tcp("127.0.0.1", str(port))
        assert h.get_tls_negotiated()
        assert h.pread(len(reference), 0) == reference
        h.shutdown()
    finally:
        proc.terminate()
        proc.wait(30)
