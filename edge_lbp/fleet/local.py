"""A whole fleet on this machine: Flower's SuperLink, N SuperNodes and ``flwr run`` as separate processes.

Everything listens on the loopback interface only (127.0.0.1, on free ports) and runs from this environment's
Flower executables (no Ray, no simulation engine, no dependency installation). Each SuperNode trains on its own
part of the dataset (``partition-id`` in its node config). A SuperNode that dies is started again (a board that
reboots) up to ``restarts`` times; the round it died in completes with the others once the SuperLink notices the
missing heartbeats (about a minute in Flower 1.42). With ``min_nodes`` below ``clients`` the rounds go on without a
board whose restarts are spent, as long as ``min_nodes`` are left (each round aggregates the nodes that answered).

Every process started here, and every process those start (Flower's SuperExec, ServerApp and ClientApp
processes), is remembered by id and stopped when the run ends, fails or is interrupted. Logs go to
``<out>/logs/``.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from edge_lbp.fleet import APP_DIR
from edge_lbp.status import stop_signals

HOST = "127.0.0.1"  # never another address: the local fleet is not reachable from the network
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception): ")


class FleetError(ChildProcessError):
    """A Flower process failed; the message names its log. (An OSError: the CLI prints it in one line.)"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def node_config(settings: dict) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings quoted as TOML (JSON's quoting is TOML's)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in settings.items())


def flower_executable(name: str) -> str:
    """Flower's command from the environment running edge_lbp (a venv need not be activated)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise ValueError(f"{path}: Flower's {name} is not installed here: pip install 'edge-lbp[fleet]'")
    return str(path)


def flower_env(**extra) -> dict:
    """This environment with its own bin folder first on PATH: Flower starts ``flower-superexec`` and the app
    processes by name, which fails when edge_lbp runs from a venv that is not activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, **extra)


def write_flower_home(home: Path, address: str, root_certificates=None) -> Path:
    """A Flower home folder (``$FLWR_HOME``) whose default SuperLink connection, ``fleet``, is ``address``:
    ``flwr run`` reads its SuperLink from there, and the user's own ``~/.flwr`` stays untouched."""
    home.mkdir(parents=True, exist_ok=True)
    security = (f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n" if root_certificates
                else "insecure = true\n")
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fleet"\n\n[superlink.fleet]\n'
                                      f"address = {json.dumps(address)}\n{security}")
    return home


class LocalFleet:
    """Start with ``run(on_line)``: it returns when ``flwr run`` ends and always stops every process first."""

    def __init__(self, artifact, data, *, clients: int, rounds: int, out, partition_by: str = "iid",
                 run_config: dict | None = None, threads: int = 1, restarts: int = 2, timeout: float = 3600.0,
                 min_nodes: int | None = None):
        min_nodes = clients if min_nodes is None else min_nodes
        if clients < 1 or rounds < 1 or not 1 <= min_nodes <= clients or restarts < 0:
            raise ValueError(f"--clients and --rounds must be at least 1, --min-nodes from 1 to --clients, "
                             f"--restarts at least 0; got {clients}, {rounds}, {min_nodes}, {restarts}")
        from edge_lbp.core.artifact import Artifact

        Artifact.open(artifact)  # a wrong path fails here in one line, not in a ServerApp traceback minutes later
        if not Path(data).exists():
            raise ValueError(f"{data}: no such image folder or .npz file")
        self.artifact, self.data = str(Path(artifact).resolve()), str(Path(data).resolve())
        self.clients, self.rounds, self.partition_by, self.threads = clients, rounds, partition_by, threads
        self.out = Path(out).resolve()
        self.logs = self.out / "logs"
        self.run_config = dict(run_config or {})
        self.restarts, self.timeout, self.min_nodes = restarts, timeout, min_nodes
        self.processes = {}  # role -> Popen of the processes started here
        self.known = {}  # pid -> psutil.Process of everything started here or by them (checked by create time)
        self.restarted = 0
        self.env = flower_env(FLWR_HOME=str(self.out / "flwr-home"), PYTHONUNBUFFERED="1")

    def run(self, on_line) -> None:
        """Run the deployment; ``on_line(text)`` gets each line of the ServerApp's round report. Raises
        ``FleetError`` unless the last round was reported."""
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            link = free_port()
            write_flower_home(self.out / "flwr-home", f"{HOST}:{link}")
            self._start("superlink", [flower_executable("flower-superlink"), "--insecure", "--host", HOST,
                                      "--port", str(link), "--disable-runtime-dependency-installation"])
            self._wait_for_port(link)
            for index in range(self.clients):
                self._start_supernode(index, link)
            self._follow_run(on_line)
        finally:
            with stop_signals(signal.SIG_IGN):  # a second Ctrl-C must not cut the stopping short: orphans
                self.stop()

    def _start(self, role: str, command, stdout=None) -> subprocess.Popen:
        log = open(self.logs / f"{role}.log", "ab")
        # A session of its own: Ctrl-C in the terminal reaches this supervisor only, which stops the processes
        # in order (a SuperNode killed before the SuperLink would only be restarted).
        process = subprocess.Popen(command, stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL,
                                   env=self.env, cwd=self.out, start_new_session=True)
        log.close()
        self.processes[role] = process
        self._remember(process.pid)
        return process

    def _start_supernode(self, index: int, link: int) -> None:
        settings = {"artifact": self.artifact, "data": self.data, "partition-id": index,
                    "num-partitions": self.clients, "partition-by": self.partition_by, "threads": self.threads}
        self._start(f"supernode-{index}", [
            flower_executable("flower-supernode"), "--insecure", "--superlink", f"{HOST}:{link}", "--host", HOST,
            "--port", str(free_port()), "--node-config", node_config(settings), "--max-wait-time", "120"])

    def _wait_for_port(self, port: int, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise FleetError(f"the SuperLink exited at start (see {self.logs / 'superlink.log'})")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.2)
        raise FleetError(f"the SuperLink did not listen on {HOST}:{port} within {seconds:.0f} s")

    def _follow_run(self, on_line) -> None:
        overrides = self.out / "run-config.toml"
        config = {"artifact": self.artifact, "val-data": self.data, "out": str(self.out),
                  "num-server-rounds": self.rounds, "min-nodes": self.min_nodes, **self.run_config}
        overrides.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        run = self._start("flwr-run", [flower_executable("flwr"), "run", str(APP_DIR), "fleet", "--stream",
                                       "--run-config", str(overrides)], stdout=subprocess.PIPE)
        lines = queue.Queue()
        threading.Thread(target=_pump, args=(run.stdout, lines, self.logs / "run.log"), daemon=True).start()
        deadline = time.monotonic() + self.timeout
        finished, last, error = False, f"round {self.rounds}/{self.rounds}:", None
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:  # flwr run closed its output: the run is over
                status = run.wait(timeout=30)
                if finished:
                    return
                raise FleetError(f"the run failed (flwr run status {status}): {error or 'no round report'} "
                                 f"(see {self.logs / 'run.log'})")
            if line.startswith("round "):
                finished = line.startswith(last)
                on_line(line)
            elif _EXCEPTION.match(line):
                error = line  # a traceback's last line: what went wrong in the ServerApp
            self._watch(on_line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run did not finish within {self.timeout:.0f} s (logs in {self.logs})")

    def _watch(self, on_line) -> None:
        """Remember new descendants; start a SuperNode again when it died, within the restart budget; beyond it,
        go on without it while ``min_nodes`` are left."""
        for process in list(self.processes.values()):
            self._remember(process.pid)
        for role, process in list(self.processes.items()):
            if role.startswith("supernode-") and process.poll() is not None:
                why = f"{role} exited (status {process.returncode}) and the restart budget ({self.restarts}) is spent"
                if self.restarted < self.restarts:
                    self.restarted += 1
                    link = self.processes["superlink"].args[self.processes["superlink"].args.index("--port") + 1]
                    self._start_supernode(int(role.split("-")[1]), int(link))
                    continue
                del self.processes[role]  # stays in self.known, which stop() goes through
                left = sum(r.startswith("supernode-") for r in self.processes)
                if left < self.min_nodes:
                    raise FleetError(f"{why}: {left} SuperNodes left, fewer than --min-nodes {self.min_nodes} "
                                     f"(see {self.logs / (role + '.log')})")
                on_line(f"fleet: {why}; the rounds go on with the {left} others (see {self.logs / (role + '.log')})")

    def _remember(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                self.known.setdefault(process.pid, process)
        except psutil.NoSuchProcess:
            pass

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process started here or by them: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for process in list(self.processes.values()):
            self._remember(process.pid)
        # psutil checks each pid's creation time, so a recycled pid is never signalled.
        alive = [p for p in self.known.values() if p.is_running()]
        for process in alive:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace)
        for process in self.processes.values():
            if process.stdout is not None:
                process.stdout.close()
            process.poll()  # reap the ones started here


def _pump(stream, lines: queue.Queue, log: Path) -> None:
    """Copy ``flwr run``'s output to its log and hand each line on without colour codes; ``None`` at the end."""
    with open(log, "a") as f:
        for raw in stream:
            text = _ANSI.sub("", raw.decode(errors="replace")).rstrip("\n")
            f.write(text + "\n")
            f.flush()
            lines.put(text)
    lines.put(None)
