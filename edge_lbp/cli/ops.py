"""``edge-lbp ops``: the ops the numba engine runs, generated from the kernel registry (the README's op table is
this command's output; a test keeps the two equal)."""
from edge_lbp.status import ExitStatus


def add_parser(commands) -> None:
    cmd = commands.add_parser("ops", help="the ONNX ops the device engine runs (from its kernel registry)")
    cmd.set_defaults(run=run)


def table() -> str:
    """A Markdown table: one row per domain, with the opset versions the kernels implement and the ops."""
    import edge_lbp.runtime.kernels  # noqa: F401  (registers every kernel)
    from edge_lbp.runtime import registry

    by_domain = {}
    for domain, op in registry.supported():
        by_domain.setdefault(domain, []).append(op)
    lines = ["| domain | opsets | ops |", "|---|---|---|"]
    for domain, ops in by_domain.items():
        versions = registry.OPSETS.get(registry.STANDARD_DOMAIN if domain == "ai.onnx" else domain)
        if versions is None:  # a kernel registered outside the engine's domains (a test's, a user's extension)
            continue
        span = f"{versions.start}" if len(versions) == 1 else f"{versions.start}–{versions.stop - 1}"
        lines.append(f"| {domain} | {span} | {', '.join(f'`{op}`' for op in ops)} ({len(ops)}) |")
    return "\n".join(lines)


def run(args) -> int:
    print(table())
    return ExitStatus.OK
