"""A SIGKILLed supervisor takes nbdkit with it promptly, idle clients or not (issue 11.2).

nbdkit answers its parent's death with SIGTERM, then waits for every client to
hang up: one idle client kept an orphan serving (~40 s here, for as long as the
client stayed).  The plugin now watches the supervisor's pid and exits a short
grace after it dies; the socket left behind is removed by the next start on it.
"""

from __future__ import annotations

import time
from pathlib import Path

from helpers.cli import CliServer as Server
from helpers.cli import cli_serving as serving
from helpers.processes import pid_running
from helpers.servers import connect
from helpers.trees import make_source_tree

from ext4gen.serve.processes import STOP_GRACE


def test_sigkill_of_the_supervisor_stops_nbdkit_despite_an_idle_client(tmp_path: Path):
    manifest = make_source_tree(tmp_path)
    sock = tmp_path / "nbd.sock"
    server = Server(manifest, sock)
    try:
        idle = connect(server.uri)
        assert idle.pread(4096, 0)
        server.proc.kill()
        server.proc.wait(30)
        killed = time.monotonic()
        while pid_running(server.nbdkit_pid) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        gone_after = time.monotonic() - killed
        assert not pid_running(server.nbdkit_pid), "nbdkit outlived its killed supervisor"
        assert gone_after < STOP_GRACE + 5, f"nbdkit took {gone_after:.1f} s to go"
        # The orphan could not remove its socket; the next serve on that path does.
        with serving(manifest, sock) as again:
            assert connect(again.uri).pread(4096, 0)
        assert not sock.exists()
    finally:
        server.stop()
