"""``edge-lbp fleet``: federated adaptation across boards with Flower (the ``fleet`` extra).

``local`` runs a whole deployment on this machine; ``superlink``, ``supernode``, ``register`` and ``run`` start the
pieces of a real one (Flower's own commands with this project's defaults: TLS, and with ``--enable-supernode-auth``
only registered boards join); ``app`` prints the Flower App folder.
"""
import os
import sys
import time
from pathlib import Path

from edge_lbp.cli import options
from edge_lbp.status import ExitStatus, signal_name, status_of


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
    cmd.add_argument("--min-nodes", type=options.count, metavar="N",
                     help="boards a round needs; the rounds go on without a lost board while N are left "
                          "(default: --clients)")
    cmd.add_argument("--restarts", type=options.count0, default=2, metavar="K",
                     help="a SuperNode that dies is started again up to K times in all (default: %(default)s)")
    _add_round_options(cmd)
    cmd.set_defaults(run=local)

    cmd = sub.add_parser("superlink", help="start Flower's SuperLink (the server; the ServerApp runs beside it)")
    cmd.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    cmd.add_argument("--port", type=int, default=9093, help="(default: %(default)s)")
    cmd.add_argument("--ssl-certfile", metavar="PEM", help="the SuperLink's TLS certificate")
    cmd.add_argument("--ssl-keyfile", metavar="PEM", help="its private key")
    cmd.add_argument("--ssl-ca-certfile", metavar="PEM", help="the CA certificate that signed it")
    cmd.add_argument("--enable-supernode-auth", action="store_true",
                     help="only SuperNodes whose public key was registered (`edge-lbp fleet register`) may join")
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
    cmd.add_argument("--auth-supernode-private-key", metavar="KEY",
                     help="this board's private key (OpenSSH format, NIST curve: ssh-keygen -t ecdsa -b 384), "
                          "for a SuperLink with --enable-supernode-auth")
    _add_client_tls(cmd)
    cmd.set_defaults(run=supernode)

    cmd = sub.add_parser("register", help="let a board join a SuperLink with --enable-supernode-auth "
                                          "(flwr supernode register)")
    cmd.add_argument("public_key", metavar="PUBLIC_KEY", help="the board's public key (its KEY.pub)")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    _add_client_tls(cmd)
    cmd.set_defaults(run=register)

    cmd = sub.add_parser("run", help="start a federated run on a SuperLink (flwr run with this project's app)")
    cmd.add_argument("artifact", metavar="ARTIFACT", help="the artifact folder, as a path on the SuperLink machine")
    cmd.add_argument("--superlink", required=True, metavar="HOST:PORT")
    cmd.add_argument("--val", metavar="PATH", help="global validation data, a path on the SuperLink machine")
    cmd.add_argument("--rounds", type=int, default=3, metavar="R", help="(default: %(default)s)")
    cmd.add_argument("--min-nodes", type=options.count, default=2, metavar="N",
                     help="boards a round needs: it starts when N are connected and aggregates those that answered "
                          "when at least N did (default: %(default)s)")
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
                       run_config=_run_config(args), min_nodes=args.min_nodes, restarts=args.restarts)
    print(f"fleet: a SuperLink and {args.clients} SuperNodes on 127.0.0.1, {args.rounds} rounds, "
          f"{args.partition} partitions of {args.data}; logs in {fleet.logs}", flush=True)
    started = time.monotonic()
    try:
        fleet.run(lambda line: print(line, flush=True))
    except KeyboardInterrupt as exc:
        print(f"edge-lbp: stopped by {signal_name(exc)}; every Flower process is stopped", file=sys.stderr)
        return status_of(exc)
    print(f"fleet: {args.rounds} rounds in {time.monotonic() - started:.0f} s; global models in {fleet.out}")
    return ExitStatus.OK


def app(args) -> int:
    from edge_lbp.fleet import APP_DIR

    print(APP_DIR)
    return ExitStatus.OK


def superlink(args) -> int:
    _require_flower()
    from edge_lbp.fleet.local import flower_executable

    command = [flower_executable("flower-superlink"), "--host", args.host, "--port", str(args.port),
               "--disable-runtime-dependency-installation", *_tls(args, server=True)]
    if args.enable_supernode_auth:
        if args.insecure:
            raise ValueError("--enable-supernode-auth needs TLS: give --ssl-certfile, --ssl-keyfile and "
                             "--ssl-ca-certfile instead of --insecure")
        command.append("--enable-supernode-auth")
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
    if args.auth_supernode_private_key:
        _check_files({"--auth-supernode-private-key": args.auth_supernode_private_key})
        command += ["--auth-supernode-private-key", args.auth_supernode_private_key]
    return _exec(command)


def register(args) -> int:
    _require_flower()
    from edge_lbp.fleet.local import flower_executable

    if args.insecure:
        raise ValueError("registering a board needs TLS (a SuperLink with --enable-supernode-auth has it): give "
                         "--root-certificates")
    _use_flower_home(args)
    return _exec([flower_executable("flwr"), "supernode", "register", args.public_key, "fleet"])


def _use_flower_home(args) -> None:
    """A Flower home of this command's own whose ``fleet`` connection is ``--superlink``, so the user's
    ~/.flwr/config.toml is never rewritten."""
    from edge_lbp.fleet.local import write_flower_home

    _tls(args, server=False)  # refuses a connection that is neither TLS nor --insecure
    home = write_flower_home(Path.home() / ".cache" / "edge_lbp" / "flwr-home", args.superlink,
                             None if args.insecure else args.root_certificates)
    os.environ["FLWR_HOME"] = str(home)


def run(args) -> int:
    import json

    _require_flower()
    from edge_lbp.fleet import APP_DIR
    from edge_lbp.fleet.local import flower_executable

    _use_flower_home(args)
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
        files = {"--ssl-certfile": args.ssl_certfile, "--ssl-keyfile": args.ssl_keyfile,
                 "--ssl-ca-certfile": args.ssl_ca_certfile}
        if not all(files.values()):
            raise ValueError("a SuperLink needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (or --insecure "
                             "on a trusted network)")
        _check_files(files)
        return [text for option, path in files.items() for text in (option, path)]
    if not args.root_certificates:
        raise ValueError("connecting to a SuperLink needs --root-certificates (its CA certificate) or --insecure "
                         "on a trusted network")
    _check_files({"--root-certificates": args.root_certificates})
    return ["--root-certificates", args.root_certificates]


def _check_files(files: dict) -> None:
    """A missing certificate is one line here, not a Flower process that exits with its own message."""
    for option, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path}: no such file")


def _exec(command) -> int:
    from edge_lbp.fleet.local import flower_env

    print(" ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, flower_env())  # Flower's process replaces this one: its signals, its exit status
