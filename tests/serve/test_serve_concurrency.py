"""Issue 3: many clients at once, some hanging up mid-request, never a wrong byte.

Sixteen libnbd connections keep several reads in flight each (100,000 reads
of random offsets and lengths in total) and compare every reply with the
built image, while other clients disconnect abruptly with requests
outstanding and an nbdcopy is SIGKILLed mid-copy.  Image and server come from
the ``ext4_image`` and ``ext4_export`` fixtures: serving is the means here;
what ``ext4gen serve`` itself does is tested in test_serve.py.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers.servers import connect, export, import_nbd, nbdinfo_json
from helpers.trees import make_source_tree

CONNECTIONS = 16
TOTAL_READS = 100_000
DEPTH = 4  # reads in flight per connection


def random_length(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.75:
        return rng.randint(1, 4096)
    if r < 0.97:
        return rng.randint(4097, 32 << 10)
    return rng.randint((32 << 10) + 1, 128 << 10)


class Reader(threading.Thread):
    """One connection issuing ``nreads`` random reads, DEPTH at a time, checking each reply."""

    def __init__(self, uri: str, reference: bytes, nreads: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.uri, self.reference, self.nreads, self.seed = uri, reference, nreads, seed
        self.done = 0
        self.mismatches: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e

    def _run(self) -> None:
        nbd = import_nbd()
        h = connect(self.uri)
        rng = random.Random(self.seed)
        size = len(self.reference)
        inflight: dict[int, tuple[object, int, int]] = {}
        issued = 0
        while self.done < self.nreads:
            while issued < self.nreads and len(inflight) < DEPTH:
                n = random_length(rng)
                off = rng.randrange(0, size - n + 1)
                buf = nbd.Buffer(n)
                inflight[h.aio_pread(buf, off)] = (buf, off, n)
                issued += 1
            h.poll(-1)
            while inflight and (cookie := h.aio_peek_command_completed()) != 0:
                h.aio_command_completed(cookie)  # raises if the server answered an error
                buf, off, n = inflight.pop(cookie)
                if buf.to_bytearray() != self.reference[off : off + n]:
                    self.mismatches.append((off, n))
                self.done += 1
        h.shutdown()


def hang_up_mid_request(uri: str, size: int, rounds: int) -> int:
    """Open a connection, queue large reads, then cut the socket under them."""
    nbd = import_nbd()
    cut = 0
    for i in range(rounds):
        h = connect(uri)
        for k in range(16):
            h.aio_pread(nbd.Buffer(1 << 20), (k * 65536 + i * 4096) % (size - (1 << 20)))
        if i % 2:
            h.poll(0)  # let some replies start arriving
        s = socket.socket(fileno=os.dup(h.aio_get_fd()))
        s.shutdown(socket.SHUT_RDWR)
        s.close()
        del h  # nbd_close with the requests still outstanding
        cut += 1
    return cut


@pytest.mark.slow
def test_sixteen_connections_100k_random_reads_while_clients_hang_up(tmp_path: Path, ext4_image,
                                                                      ext4_export):
    manifest = make_source_tree(tmp_path)
    reference = ext4_image(manifest).read_bytes()
    server = export(ext4_export, manifest)
    per = TOTAL_READS // CONNECTIONS
    readers = [Reader(server.uri, reference, per, seed) for seed in range(CONNECTIONS)]
    started = time.monotonic()
    for r in readers:
        r.start()

    # Meanwhile: clients that vanish with requests in flight.
    cut = hang_up_mid_request(server.uri, len(reference), rounds=20)
    for _ in range(3):
        copier = subprocess.Popen(["nbdcopy", "--no-extents", "--requests=64", server.uri, "null:"],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.05)
        copier.send_signal(signal.SIGKILL)
        copier.wait()

    for r in readers:
        r.join(timeout=600)
    elapsed = time.monotonic() - started
    assert all(not r.is_alive() for r in readers), "readers did not finish"
    errors = [r.error for r in readers if r.error]
    assert not errors, f"{len(errors)} readers failed, first: {errors[0]!r}"
    total = sum(r.done for r in readers)
    mismatches = [m for r in readers for m in r.mismatches]
    assert total >= TOTAL_READS
    assert mismatches == [], f"{len(mismatches)} wrong replies, first: {mismatches[:5]}"

    # Still serving, to new clients, the right bytes.
    assert server.alive(), f"nbdkit died:\n{server.stderr()[-3000:]}"
    assert nbdinfo_json(server.uri)["exports"][0]["export-size"] == len(reference)
    out = tmp_path / "after.img"
    subprocess.run(["nbdcopy", server.uri, str(out)], check=True)
    assert out.read_bytes() == reference
    print(f"{total} reads over {CONNECTIONS} connections in {elapsed:.1f} s "
          f"({total / elapsed:.0f}/s), {cut} hang-ups, 3 nbdcopy SIGKILLs")
    # And it stops cleanly: nbdkit unloads the plugin (its one summary line), nothing crashed.
    server.stop()
    assert not server.alive()
    log = server.stderr()
    assert len([ln for ln in log.splitlines() if ln.startswith("ext4gen: served ")]) == 1, log[-3000:]
    assert "Assertion" not in log and "Traceback" not in log, log[-3000:]
