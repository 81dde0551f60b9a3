"""``edge-lbp fleet``: federated adaptation across boards with Flower (the ``fleet`` extra).

``local`` runs a whole deployment on this machine; ``superlink``, ``supernode`` and ``run`` start the pieces of a
real one (Flower's own commands with this project's defaults); ``app`` prints the Flower App folder.
"""
import os
import sys
import time
from pathlib import Path

from edge_lbp.cli import options


def add_parser(commands) -> None:
    """``fleet`` and its subcommands, each run by the handler of its name below."""
    fleet = commands.add_parser(
        "fleet", help="federated adaptation across boards with Flower (needs the 'fleet' extra)",
        description="Several boards adapt one model together without sharing images: Flower's FedAvg over the "
                    "artifact's trainable parameters, each board training with the Trainer on its own data.")
    sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    cmd = sub.add_parser("local", help="a SuperLink and N SuperNodes on this machine (127.0.0.1), one run",
                         description="A real Flower deployment on the loopback interface: each SuperNode trains on "
                                     "its own part of --data; prints the global validation accuracy every round.")
    cmd.add_argument("artifact", metavar="ARTIFACT")
    cmd.add_argument("--data", required=True, metavar="PATH",
                     help="image folder or .npz; its train split is divided among the SuperNodes, its val split "
                          "is the global validation set (and each node's part of it, its local one)")
    cmd.add_argument("--clients", type=int, default=3, metavar="N", help="SuperNodes (default: %(default)s)")
    cmd.add_argument("--rounds", type=int, default=3, metavar="R", help="(default: %(default)s)")
    cmd.add_argument("--partition", default="iid", choices=("iid", "class"),
                     help="iid: a seeded random deal; class: node i gets the classes l with l %% N == i "
                          "(default: %(default)s)")
    # Not the shared --threads: here it is per SuperNode, and 1 by default since the nodes share the cores.
    cmd.add_argument("--threads", type=int, default=1, metavar="T",
                     help="threads per SuperNode (default: %(default)s: the nodes share this machine's cores)")
    cmd.add_argument("--out", default="fleet-out", metavar="DIR",
                     help="round-<r>/ (checkpoint + model.onnx), rounds.jsonl, logs/ (default: %(default)s)")
    cmd.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="stop the whole run after S seconds")
    _add_round_options(cmd)
    cmd.set_defaults(run=local)

    cmd = sub.add_parser("superlink", help="start Flower's SuperLink (the server; the ServerApp runs beside it)")
    cmd.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    cmd.add_argument("--port", type=int, default=9093, help="(default: %(default)s)")
    cmd.add_argument("--ssl-certfile", metavar="PEM")
    cmd.add_argument("--ssl-keyfile", metavar="PEM")
    _add_insecure(cmd)
    cmd.set_defaults(run=superlink)

    cmd = sub.add_parser("supernode", help="start Flower's SuperNode on this board, training on its own data")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    cmd.add_argument("--artifact", required=True, metavar="DIR", help="the artifact folder on this board")
    cmd.add_argument("--data", required=True, metavar="PATH", help="this board's image folder or .npz")
    cmd.add_argument("--val", metavar="PATH", help="local validation data (default: the val split of --data)")
    options.add_threads(cmd)
    cmd.add_argument("--port", type=int, default=9094, metavar="P",
                     help="the SuperNode's own API on 127.0.0.1 (default: %(default)s; one per SuperNode)")
    _add_client_tls(cmd)
    cmd.set_defaults(run=supernode)

    cmd = sub.add_parser("run", help="start a federated run on a SuperLink (flwr run with this project's app)")
    cmd.add_argument("artifact", metavar="ARTIFACT", help="the artifact folder, as a path on the SuperLink machine")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    cmd.add_argument("--val", metavar="PATH", help="global validation data, a path on the SuperLink machine")
    cmd.add_argument("--rounds", type=int, default=3, metavar="R", help="(default: %(default)s)")
    cmd.add_argument("--min-nodes", type=int, default=2, metavar="N",
                     help="boards connected before a round starts (default: %(default)s)")
    cmd.add_argument("--out", default="fleet-out", metavar="DIR",
                     help="the global models, a path on the SuperLink machine (default: %(default)s)")
    _add_client_tls(cmd)
    _add_round_options(cmd)
    cmd.set_defaults(run=run)

    cmd = sub.add_parser("app", help="print the folder of the Flower App (for flwr run)")
    cmd.set_defaults(run=app)


def _add_round_options(cmd) -> None:
    cmd.add_argument("--epochs", type=int, default=1, metavar="E", help="local epochs per round (default: 1)")
    options.add_batch_size(cmd)
    cmd.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default: the artifact's)")
    options.add_seed(cmd, help="round r trains with seed + r - 1 (default: 0)")
    options.add_onnx_preprocessing(cmd, "each round's model.onnx")


def _add_insecure(cmd) -> None:
    cmd.add_argument("--insecure", action="store_true", help="no TLS (a trusted network only)")


def _add_client_tls(cmd) -> None:
    cmd.add_argument("--root-certificates", metavar="PEM", help="the SuperLink's CA certificate")
    _add_insecure(cmd)


def _require_flower() -> None:
    from edge_lbp.fleet import require_flower  # edge_lbp.fleet reads data (onnx): not when building the parser

    require_flower()


def local(args) -> int:
    _require_flower()
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
    from edge_lbp.fleet import APP_DIR

    print(APP_DIR)
    return 0


def superlink(args) -> int:
    _require_flower()
    from edge_lbp.fleet.local import flower_executable

    command = [flower_executable("flower-superlink"), "--host", args.host, "--port", str(args.port),
               "--disable-runtime-dependency-installation", *_tls(args, server=True)]
    return _exec(command)


def supernode(args) -> int:
    _require_flower()
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
    import json

    _require_flower()
    from edge_lbp.fleet import APP_DIR
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
    config = {"local-epochs": args.epochs, "batch-size": args.batch_size, "seed": args.seed,
              "onnx-preprocessing": args.onnx_preprocessing}
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
