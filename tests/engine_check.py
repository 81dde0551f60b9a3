"""Parameters after a few steps on the numba engine against ONNX Runtime's, for the model-source tests."""
import numpy as np

# Parameters whose exact gradient is 0: softmax ignores a shift of every score, so the key projection's bias
# does not change the loss. Both engines move it by rounding noise amplified by AdamW's normalisation (up to
# ~1e-5 here), different noise in each: they are checked to stay near 0, not to agree.
ZERO_GRADIENT = ("k_proj.bias",)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-12))


def assert_parameters_match(mine, theirs, initial, rtol=1e-4):
    assert mine.keys() == theirs.keys() == initial.keys()
    for name in mine:
        if name.endswith(ZERO_GRADIENT):
            # 5 AdamW steps at lr 0.01 move a parameter with a real gradient by ~0.05 per element.
            assert np.abs(mine[name] - initial[name]).max() < 1e-3, name
            assert np.abs(theirs[name] - initial[name]).max() < 1e-3, name
        else:
            assert rel(mine[name], theirs[name]) < rtol, name
