"""kill -9 a process mid-append: every index it was told about must survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from gateway.evidence import verify_log
from gateway.evidence.crypto import generate_signing_key, write_keypair

from .helpers import open_log

WRITER = textwrap.dedent("""
    import sys
    from gateway.evidence import EvidenceLog
    from gateway.evidence.crypto import load_signing_key

    log = EvidenceLog.open(sys.argv[1], signing_key=load_signing_key(sys.argv[2]), encryption_key=bytes(range(32)),
                           key_id="crash", checkpoint_every=50, segment_max_bytes=8192, fsync_interval=0.005)
    i = 0
    while True:
        idx = log.append({"kind": "decision", "time": 1.0 * i, "request_id": "r%d" % i, "n": i},
                         {"request": b"body %d" % i})
        print(idx, flush=True)
        i += 1
""")


def test_kill_9_mid_run_loses_no_acknowledged_record(tmp_path):
    key = generate_signing_key()
    write_keypair(key, tmp_path / "k.key", tmp_path / "k.pub")
    logdir = tmp_path / "log"
    errfile = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(logdir), str(tmp_path / "k.key")],
                            stdout=subprocess.PIPE, stderr=errfile, text=True)
    printed: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(printed) < 1500 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # the same buffered reader: lines it already pulled in are not lost
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        errfile.seek(0)
        err = errfile.read()
        errfile.close()
    printed += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= 1500, err
    assert printed == list(range(len(printed)))

    with open_log(logdir, key, encryption_key=bytes(range(32)), key_id="crash") as log:
        assert log.size >= len(printed)
        for idx in printed:
            rec = log.get(idx)
            assert rec["n"] == idx and rec["bodies"]["request"] == b"body %d" % idx
        assert log.find("r%d" % printed[-1]) == [printed[-1]]
        log.append({"kind": "after-crash"})
    report = verify_log(logdir, key.public_key())
    assert report.ok, report.summary()
    assert report.records == log.size
