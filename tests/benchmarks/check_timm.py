"""timm ViT and DeiT through the exporter, the numba engine against ONNX Runtime (a script run by hand, not a test).

timm imports torchvision, whose PyPI wheels do not load beside the project's local torch 2.13.0 build, so this runs
in a throwaway venv outside the repository with the torch/torchvision pair that pip finds on this machine's disk
(a CUDA build, about 5.5 GB, run on the CPU); CI never installs it. From the repository root:

    python3 -m venv /tmp/timmvenv
    /tmp/timmvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/timmvenv/bin/pip install timm==1.0.31 onnxruntime-training==1.19.2 'onnx>=1.16,<1.18' \\
        numpy numba psutil safetensors threadpoolctl pillow tqdm
    /tmp/timmvenv/bin/pip install --no-deps -e .
    /tmp/timmvenv/bin/pip list | grep -E '^(torch|torchvision|timm) '   # torch must still be 2.14.1
    /tmp/timmvenv/bin/python tests/benchmarks/check_timm.py
    rm -rf /tmp/timmvenv

Small random configurations (32-px images, 4-px patches, 2 blocks, 10 classes) are exported with
``edge_lbp.export_model`` under ``lbp="lp-tri:4"`` and ``lbp="none"``. Without dropout, the numba engine and ONNX
Runtime train 5 AdamW steps on the same batches (``engine_check.compare_engines``: losses and parameters within
1e-4 relative, eval logits before 1e-5 and after 1e-4), and the numba engine's eval logits equal timm's in eval
mode. With dropout and drop-path the engines draw different numbers, so as in tests/test_export_hf.py
(``engine_check.compare_random_training``): both engines' eval logits equal timm's in eval mode (1e-4), and the
numba engine repeats its losses from a session seed and changes them with another. One line per configuration;
the exit status is 1 when any fails.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

# edge_lbp first: its process settings (OMP_WAIT_POLICY) must be in place before torch starts OpenMP.
import edge_lbp
from edge_lbp import export_model
import timm  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_check import LIMITS, compare_engines, compare_random_training, exceeded, rel  # noqa: E402

SIDE, CLASSES = 32, 10
SHAPE = (3, SIDE, SIDE)
SMALL = dict(pretrained=False, img_size=SIDE, patch_size=4, depth=2, num_classes=CLASSES)
DROPOUT = dict(drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1)
# name -> (timm model, options, extra tokens before the 8x8 patch grid, whether training draws random numbers).
# timm's default attention is F.scaled_dot_product_attention; exportable=True selects its explicit softmax path.
CONFIGS = {
    "vit": ("vit_tiny_patch16_224", {}, 1, False),
    "vit-exportable": ("vit_tiny_patch16_224", dict(exportable=True), 1, False),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {}, 2, False),
    "vit-dropout": ("vit_tiny_patch16_224", DROPOUT, 1, True),
    "vit-exportable-dropout": ("vit_tiny_patch16_224", dict(exportable=True, **DROPOUT), 1, True),
    "vit-drop-path": ("vit_tiny_patch16_224", dict(drop_path_rate=0.3), 1, True),
    "deit-distilled-dropout": ("deit_tiny_distilled_patch16_224", dict(drop_path_rate=0.3, **DROPOUT), 2, True),
}
LAYERS = 8  # qkv, proj, fc1, fc2 in each of the 2 blocks; the head sees one token


def build(name):
    model_name, options, _, _ = CONFIGS[name]
    torch.manual_seed(0)
    return timm.create_model(model_name, **SMALL, **options)


def geometry_problem(report, lbp, extra):
    """What is wrong with the LBP table, or None: every block linear layer on the 8x8 grid after ``extra``
    tokens under lp-tri:4, none under none."""
    rewritten = [(tuple(r["grid"]), r["extra_tokens"]) for r in report.layers if r["status"] == "rewritten"]
    want = [] if lbp == "none" else [((8, 8), extra)] * LAYERS
    return None if rewritten == want else f"rewritten layers {rewritten}, expected {want}"


def check(name, lbp, folder):
    _, _, extra, random = CONFIGS[name]
    model = build(name)
    report = export_model(model, folder, lbp=lbp, input_shape=SHAPE, lr=0.01)
    probe = np.random.default_rng(1).standard_normal((2, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(probe)).numpy()
    if random:
        measured = compare_random_training(folder, probe, want, CLASSES)
        failed = [k for k in ("eval_numba", "eval_ort") if not measured[k] < 1e-4]
        failed += [k for k in ("repeats", "seed_matters") if not measured[k]]
    else:
        measured = {"eval_torch": rel(edge_lbp.load(folder, "numba").eval_step(probe), want),
                    **compare_engines(folder, SHAPE, CLASSES)}
        failed = exceeded(measured) + (["eval_torch"] if not measured["eval_torch"] < 1e-4 else [])
    problem = geometry_problem(report, lbp, extra)
    failed += ["geometry"] if problem else []
    return measured, failed, problem


def main():
    onnxruntime.set_default_logger_severity(3)  # the ort engine's training Module warns about every unused constant
    print(f"torch {torch.__version__}, timm {timm.__version__}; limits {LIMITS}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="check_timm_") as tmp:
        for name in CONFIGS:
            for lbp in ("lp-tri:4", "none"):
                try:
                    measured, failed, problem = check(name, lbp, Path(tmp) / f"{name}-{lbp.replace(':', '')}")
                except Exception as exc:  # a configuration that cannot export or load is a failure, with its cause
                    line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    measured, failed, problem = {}, ["error"], line
                values = "  ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items())
                verdict = "PASS" if not failed else f"FAIL ({', '.join(failed)})"
                print(f"{name:<24} {lbp:<8} {values}  {verdict}" + (f"  {problem}" if problem else ""), flush=True)
                failures += bool(failed)
    print(f"{failures} configuration(s) failed" if failures else "all configurations passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
