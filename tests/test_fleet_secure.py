"""The real deployment as docs/fleet.md recommends it, on 127.0.0.1 with certificates generated here: TLS between
every piece, SuperNode authentication refusing a board whose key was not registered, and rounds that go on without
a board lost for good (`fleet run --min-nodes`)."""
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

pytest.importorskip("flwr", reason="the fleet extra (Flower) is not installed")
pytest.importorskip("torch", reason="the export extra is not installed (the test artifact is exported here)")

from certificates import write_node_key, write_tls  # noqa: E402
from edge_lbp.fleet.local import free_port  # noqa: E402
from test_fleet import _kill_tree, _wait_for_listener, artifact, assert_rounds_went_on_without_one_board, data  # noqa: E402,F401  (fixtures)

FLEET = [sys.executable, "-m", "edge_lbp", "fleet"]


@pytest.mark.parametrize("args, message", [
    (["superlink", "--ssl-certfile", "s.pem", "--ssl-keyfile", "s.key"],
     "a SuperLink needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (or --insecure on a trusted network)"),
    (["superlink", "--insecure", "--enable-supernode-auth"], "--enable-supernode-auth needs TLS"),
    (["supernode", "--superlink", "h:1", "--artifact", "a", "--data", "d", "--root-certificates", "no.pem"],
     "--root-certificates no.pem: no such file"),
    (["run", "a", "--superlink", "h:1"], "needs --root-certificates (its CA certificate) or --insecure"),
    (["register", "k.pub", "--superlink", "h:1", "--insecure"], "registering a board needs TLS"),
])
def test_missing_security_is_one_line_before_flower_starts(args, message, tmp_path, monkeypatch, capsys):
    from edge_lbp.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fleet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-lbp: error: ") and message in err[0], err


class SecureFleet:
    """A SuperLink with TLS and SuperNode authentication, and the SuperNodes started on it; ``close`` kills all."""

    def __init__(self, tmp_path):
        self.tmp, self.tls, self.port, self.pieces = tmp_path, write_tls(tmp_path / "certs"), free_port(), []
        # `fleet run` and `fleet register` keep their Flower home in ~; only the system's folders on PATH.
        self.env = dict(os.environ, PATH="/usr/bin:/bin", HOME=str(tmp_path))
        self.address = f"127.0.0.1:{self.port}"
        self.link_log = tmp_path / "superlink.log"
        self.link = self._start("superlink", "--host", "127.0.0.1", "--port", str(self.port), "--ssl-certfile",
                                self.tls["cert"], "--ssl-keyfile", self.tls["key"], "--ssl-ca-certfile",
                                self.tls["ca"], "--enable-supernode-auth", log=self.link_log)
        _wait_for_listener(self.link, self.port, seconds=240)  # a loaded CI machine starts Flower slowly

    def _start(self, *args, log):
        process = subprocess.Popen([*FLEET, *map(str, args)], env=self.env, stdout=open(log, "w"),
                                   stderr=subprocess.STDOUT)
        self.pieces.append(process)
        return process

    def register(self, name):
        key = write_node_key(self.tmp / "certs" / name)
        done = subprocess.run([*FLEET, "register", f"{key}.pub", "--superlink", self.address,
                               "--root-certificates", str(self.tls["ca"])], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "registered successfully" in done.stdout, done.stdout + done.stderr
        return key

    def supernode(self, name, artifact, data, key=None):
        auth = ["--auth-supernode-private-key", key] if key else []
        return self._start("supernode", "--superlink", self.address, "--root-certificates", self.tls["ca"],
                           "--artifact", artifact, "--data", data, "--threads", "1", "--port", free_port(), *auth,
                           log=self.tmp / f"{name}.log")

    def close(self):
        for piece in self.pieces:
            try:
                _kill_tree(psutil.Process(piece.pid))
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def fleet(tmp_path):
    secure = SecureFleet(tmp_path)
    yield secure
    secure.close()


@pytest.mark.slow
def test_only_registered_boards_join(fleet, artifact, data, tmp_path):
    member = fleet.supernode("member", artifact, data, fleet.register("member.key"))
    stranger = fleet.supernode("stranger", artifact, data, write_node_key(tmp_path / "certs" / "stranger.key"))
    keyless = fleet.supernode("keyless", artifact, data)
    assert stranger.wait(timeout=300) != 0 and keyless.wait(timeout=300) != 0
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    assert "All SuperNodes must be registered" in (tmp_path / "keyless.log").read_text()
    assert member.poll() is None, (tmp_path / "member.log").read_text()
    assert len(re.findall(r"Activated node_id=", fleet.link_log.read_text())) == 1


@pytest.mark.slow
def test_tls_rounds_go_on_without_a_board_lost_for_good(fleet, artifact, data, tmp_path):
    """Three registered boards over TLS; one dies for good after round 1 (SIGKILL, nothing restarts it): rounds 2
    and 3 aggregate the other two (`--min-nodes 2`) and the global model still improves."""
    boards = [fleet.supernode(f"board-{i}", artifact, data, fleet.register(f"board-{i}.key")) for i in range(3)]
    out = tmp_path / "fleet"
    run = subprocess.Popen([*FLEET, "run", str(artifact), "--superlink", fleet.address, "--root-certificates",
                            str(fleet.tls["ca"]), "--val", str(data), "--rounds", "3", "--min-nodes", "2", "--out",
                            str(out)], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in run.stdout:
            lines.append(line.rstrip())
            if line.startswith("round 1/3"):
                _kill_tree(psutil.Process(boards[1].pid))
        status = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(timeout=60)
    report = "\n".join(lines[-40:])
    assert status == 0, report
    assert_rounds_went_on_without_one_board(lines, report)
    assert (out / "round-3" / "checkpoint.json").is_file()
