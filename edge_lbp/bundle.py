"""Writes the demo's packaged artifact (``edge_lbp.core.packaged``) into the package's asset folder (workstation side).

    python -m edge_lbp.bundle            # from the repository root: rewrites edge_lbp/assets/vit_c10_demo*

It exports the bundled backbone with the packaged settings, then keeps what the device needs and the backbone file
does not already hold: the graphs, the manifest (without ONNX Runtime's checkpoint, which only the ``ort`` engine
reads and which would be a second copy of the weights; a workstation with the export extra exports afresh for it)
and the new head. Run it again after a change to the exporter or the backbone; ``tests/test_packaged.py`` fails
until the packaged files equal a fresh export.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from edge_lbp.core import packaged
from edge_lbp.core.artifact import MANIFEST, ORT_CHECKPOINT, PARAMS_FILE


def bundle(assets_dir) -> Path:
    """Export and write ``FOLDER`` and ``HEAD_FILE`` into ``assets_dir``; return the folder."""
    from safetensors.numpy import load_file, save_file

    from edge_lbp.methods import export_model
    from edge_lbp.export.models import load_pretrained

    assets_dir = Path(assets_dir)
    with tempfile.TemporaryDirectory(prefix="edge_lbp_bundle_") as tmp:
        exported = Path(tmp) / "artifact"
        export_model(load_pretrained(packaged.BACKBONE, num_classes=packaged.CLASSES), exported,
                     **packaged.SETTINGS)
        manifest = json.loads((exported / MANIFEST).read_text())
        manifest.pop("ort_checkpoint", None)
        manifest["checksums"].pop(ORT_CHECKPOINT, None)
        params = load_file(str(exported / PARAMS_FILE))
        backbone = load_file(str(packaged.assets() / packaged.BACKBONE_FILE))
        shared = [n for n in params if not n.startswith(packaged.HEAD_PREFIX)]
        # assemble() takes every other parameter from the backbone file: refuse to bundle if that would be wrong.
        differ = [n for n in shared if n not in backbone or not (backbone[n] == params[n]).all()]
        if differ:
            raise ValueError(f"exported parameters {differ[:3]} differ from {packaged.BACKBONE_FILE}")
        head = {n: v for n, v in params.items() if n.startswith(packaged.HEAD_PREFIX)}
        out = assets_dir / packaged.FOLDER
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in manifest["graphs"].values():
            shutil.copyfile(exported / name, out / name)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        save_file(head, str(assets_dir / packaged.HEAD_FILE))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_lbp.bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=str(packaged.assets()), metavar="DIR",
                        help="where to write (default: this package's asset folder, %(default)s)")
    args = parser.parse_args(argv)
    out = bundle(args.assets)
    size = sum(p.stat().st_size for p in out.rglob("*")) + (Path(args.assets) / packaged.HEAD_FILE).stat().st_size
    print(f"wrote {out} and {packaged.HEAD_FILE}: {size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
