"""``edge-lbp fleet``: federated adaptation across boards with Flower (the ``fleet`` extra).

``local`` runs a whole deployment on this machine; ``superlink``, ``supernode`` and ``run`` start the pieces of a
real one (Flower's own commands with this project's defaults); ``app`` prints the Flower App folder.
"""
import os
import sys
import time
from pathlib import Path

from edge_lbp.fleet import APP_DIR, require_flower


def local(args) -> int:
    require_flower()
    from edge_lbp.fleet.local import LocalFleet

    fleet = LocalFleet(args.artifact, args.data, clients=args.clients, rounds=args.rounds, out=args.out,
                       partition_by=args.partition, threads=args.threads, timeout=args.timeout,
                       run_config=_run_config(args))
    print(f"fleet: a SuperLink and {args.clients} SuperNodes on 127.0.0.1, {args.rounds} rounds, "
          f"{args.partition} partitions of {args.data}; logs in {fleet.logs}", flush=True)
    started = time.monotonic()
    try:
        fleet.run(lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("edge-lbp: interrupted; every Flower process is stopped", file=sys.stderr)
        return 130
    print(f"fleet: {args.rounds} rounds in {time.monotonic() - started:.0f} s; global models in {fleet.out}")
    return 0


def app(args) -> int:
    print(APP_DIR)
    return 0


def superlink(args) -> int:
    require_flower()
    from edge_lbp.fleet.local import flower_executable

    command = [flower_executable("flower-superlink"), "--host", args.host, "--port", str(args.port),
               "--disable-runtime-dependency-installation", *_tls(args, server=True)]
    return _exec(command)


def supernode(args) -> int:
    require_flower()
    from edge_lbp.fleet.local import flower_executable, node_config

    settings = {"artifact": str(Path(args.artifact).resolve()), "data": str(Path(args.data).resolve())}
    if args.val:
        settings["val"] = str(Path(args.val).resolve())
    if args.threads:
        settings["threads"] = args.threads
    # The SuperNode's own API (its ClientApp processes talk to it) stays on the loopback interface.
    command = [flower_executable("flower-supernode"), "--superlink", args.superlink, "--host", "127.0.0.1",
               "--port", str(args.port), "--node-config", node_config(settings), *_tls(args, server=False)]
    return _exec(command)


def run(args) -> int:
    require_flower()
    import json

    from edge_lbp.fleet.local import flower_executable, write_flower_home

    if not (args.insecure or args.root_certificates):
        raise ValueError("flwr run needs --root-certificates (the SuperLink's CA) or --insecure")
    # A Flower home of this command's own, so the user's ~/.flwr/config.toml is never rewritten.
    home = write_flower_home(Path.home() / ".cache" / "edge_lbp" / "flwr-home", args.superlink,
                             None if args.insecure else args.root_certificates)
    os.environ["FLWR_HOME"] = str(home)
    overrides = {"artifact": str(Path(args.artifact).resolve()), "out": args.out,
                 "num-server-rounds": args.rounds, "min-nodes": args.min_nodes, **_run_config(args)}
    if args.val:
        overrides["val-data"] = str(Path(args.val).resolve())
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    return _exec([flower_executable("flwr"), "run", str(APP_DIR), "fleet", "--stream", "--run-config", text])


def _run_config(args) -> dict:
    config = {"local-epochs": args.epochs, "batch-size": args.batch_size, "seed": args.seed}
    if args.lr is not None:
        config["lr"] = args.lr
    return config


def _tls(args, *, server: bool) -> list:
    if args.insecure:
        return ["--insecure"]
    if server:
        if not (args.ssl_certfile and args.ssl_keyfile):
            raise ValueError("a SuperLink needs --ssl-certfile and --ssl-keyfile (or --insecure on a trusted network)")
        return ["--ssl-certfile", args.ssl_certfile, "--ssl-keyfile", args.ssl_keyfile]
    if not args.root_certificates:
        raise ValueError("a SuperNode needs --root-certificates (the SuperLink's CA) or --insecure")
    return ["--root-certificates", args.root_certificates]


def _exec(command) -> int:
    from edge_lbp.fleet.local import flower_env

    print(" ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, flower_env())  # Flower's process replaces this one: its signals, its exit status
