"""zo-hybrid:K (ElasticZO): the SPSA estimate, its regenerated perturbations, the device session, resume."""
import json
import warnings

import numpy as np
import pytest
import edge_lbp
from edge_lbp.cli import main
from edge_lbp.trainer import Trainer
from edge_lbp.core.zo import ZOConfig, add_perturbation, perturbations, probe_key, spsa_probe

THREADS = 1


def _quadratic(seed=0):
    """L(θ) = ½ (θ - c)ᵀ A (θ - c) over two tensors (12 values), float64: (params, names, loss, gradient)."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(6)}
    names = ["w", "b"]
    m = rng.standard_normal((12, 12))
    a, c = m @ m.T / 12 + np.eye(12), rng.standard_normal(12)

    def flat():
        return np.concatenate([params[n].ravel() for n in names])

    def loss():
        d = flat() - c
        return 0.5 * d @ a @ d

    return params, names, loss, lambda: a @ (flat() - c)


def test_spsa_estimate_on_a_quadratic_is_unbiased_within_its_sampling_error():
    params, names, loss, gradient = _quadratic()
    truth = gradient()
    start = {n: v.copy() for n, v in params.items()}
    gs, zs = [], []
    for probe in range(4000):
        key = probe_key(3, 0, 0, probe)
        g, _, _ = spsa_probe(loss, params, names, key, 1e-3)
        z = np.concatenate([z.ravel() for _, z in perturbations(key, params, names)]).astype(np.float64)
        assert g == pytest.approx(z @ truth, rel=1e-5, abs=1e-6)  # central differences are exact on a quadratic
        gs.append(g)
        zs.append(z)
    gs, zs = np.array(gs), np.array(zs)
    samples = gs[:, None] * zs
    mean, stderr = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - truth) < 4.5 * stderr), (mean - truth) / stderr
    # The test has power: the gradient stands well clear of the sampling error, and a direction other than the
    # probe's own (the next probe's draw) gives an estimate centred on 0 that the same bound rejects.
    assert np.linalg.norm(truth) > 10 * np.linalg.norm(stderr)
    wrong = (gs[:-1, None] * zs[1:]).mean(0)
    assert not np.all(np.abs(wrong - truth) < 4.5 * stderr)
    assert all(np.allclose(params[n], start[n], rtol=0, atol=1e-12) for n in names)  # restored


def test_perturbations_are_regenerated_bit_exactly_from_their_seed():
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal((5, 7)).astype(np.float32), "b": rng.standard_normal(9).astype(np.float32)}
    key = probe_key(0, 12, 1, 2)
    first = [z for _, z in perturbations(key, params, ["a", "b"])]
    again = [z for _, z in perturbations(key, params, ["a", "b"])]
    other = [z for _, z in perturbations(probe_key(0, 12, 1, 3), params, ["a", "b"])]
    assert all(np.array_equal(x, y) and x.dtype == np.float32 for x, y in zip(first, again))
    assert not any(np.array_equal(x, y) for x, y in zip(first, other))
    moved = {n: v.copy() for n, v in params.items()}
    add_perturbation(moved, ["a", "b"], key, 0.5)
    assert all(np.array_equal(moved[n], params[n] + np.float32(0.5) * z) for n, z in zip(["a", "b"], first))


def test_zo_config_defaults_and_bad_values():
    assert ZOConfig() == ZOConfig.of(None) == ZOConfig.of({"eps": 1e-3, "probes": 1, "lr": 1e-4})
    for bad in ({"eps": 0}, {"probes": 0}, {"lr": -1}, {"probes": 1.5}):
        with pytest.raises(ValueError, match="ZO"):
            ZOConfig(**bad)


pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")
from edge_lbp.methods import export_model  # noqa: E402
from test_data import write_folder  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("zo")
    export_model("vit-tiny", root / "zo", method="zo-hybrid:1", lr=1e-3)  # LBP-WHT lp-tri:4 in the last block
    export_model("vit-tiny", root / "zo-exact", method="zo-hybrid:1", lbp="none")
    export_model("vit-tiny", root / "exact", lbp="none", optimizer="sgd")  # the same seeded weights, all trainable
    return root


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def test_the_device_estimate_is_the_directional_derivative_of_exact_backprop(artifacts):
    """The session's g for a probe equals zᵀ∇L with ∇L from exact backprop of the same model (the numba engine's
    gradients, which the engine tests hold to ONNX Runtime's) up to O(ε²) and float32 rounding of the losses."""
    zo = edge_lbp.load(artifacts / "zo-exact", threads=THREADS, method_options={"probes": 3, "eps": 1e-3})
    exact = edge_lbp.load(artifacts / "exact", threads=THREADS)
    x, y = _batch()
    exact.forward_backward(x, y)
    grads = exact.gradients()
    zo.forward_backward(x, y)
    assert len(zo.probes) == 3
    for key, g in zo.probes:
        z = {n: d for n, d in perturbations(key, zo.state.params, zo.zo_names)}
        directional = sum(float(np.dot(z[n].ravel(), grads[n].ravel())) for n in zo.zo_names)
        assert g == pytest.approx(directional, rel=1e-2, abs=1e-3)
    for name in zo.artifact.trainable:  # the first-order part: the gradients of exact backprop, at the same parameters
        assert np.allclose(zo.gradients()[name], grads[name], rtol=1e-4, atol=1e-6), name


def test_an_update_moves_the_zo_part_along_its_probes_and_only_what_the_method_trains(artifacts):
    session = edge_lbp.load(artifacts / "zo", threads=THREADS, method_options={"lr": 1e-2})
    before = session.state.parameters()
    session.train_step(*_batch())
    after = session.state.parameters()
    assert set(session.state.trained) == set(before) and set(session.zo_names).isdisjoint(session.artifact.trainable)
    assert all(not np.array_equal(after[n], before[n]) for n in session.state.trained if n.endswith("weight"))
    frozen_lr = edge_lbp.load(artifacts / "zo", threads=THREADS, method_options={"lr": 0.0})
    frozen_lr.train_step(*_batch())
    # lr 0: the ZO part ends where the probes' restores left it (the last bit at most), the backprop part moves.
    moved = frozen_lr.state.parameters()
    assert all(np.allclose(moved[n], before[n], rtol=1e-6, atol=1e-7) for n in frozen_lr.zo_names)


def test_a_resumed_zo_run_continues_bit_for_bit(artifacts, tmp_path):
    folder = artifacts / "zo"
    config = {"schedule": "cosine", "warmup_steps": 1, "total_steps": 6, "accumulate": 2, "seed": 5,
              "method_options": {"probes": 2, "lr": 1e-3}}
    data = [_batch(seed=i) for i in range(8)]
    straight = Trainer(folder, threads=THREADS, **config)
    straight_losses = [straight.step(x, y) for x, y in data]
    first = Trainer(folder, threads=THREADS, **config)
    losses = [first.step(x, y) for x, y in data[:4]]
    first.save(tmp_path / "ckpt")
    resumed = Trainer.resume(tmp_path / "ckpt", threads=THREADS)
    assert resumed.method_options == {"eps": 1e-3, "probes": 2, "lr": 1e-3}
    losses += [resumed.step(x, y) for x, y in data[4:]]
    assert losses == straight_losses
    a, b = resumed.session.state.parameters(), straight.session.state.parameters()
    assert all(np.array_equal(a[n], b[n]) for n in b)
    # Without the ZO parameters in the checkpoint the resumed run would differ: they did move.
    initial = Trainer(folder).session.state.params
    assert not np.array_equal(a["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])


def test_zo_needs_the_numba_engine_and_a_zo_artifact(artifacts):
    with pytest.raises(ValueError, match="numba engine only"):
        edge_lbp.load(artifacts / "zo", "ort")
    with pytest.raises(ValueError, match="trains by --method all, which takes no options on the device"):
        Trainer(artifacts / "exact", method_options={"lr": 1e-4})
    with pytest.raises(ValueError, match="chooses the trainable set itself"):
        export_model("vit-tiny", artifacts / "never", method="zo-hybrid:1", train="head")
    with pytest.raises(ValueError, match="unknown method"):
        export_model("vit-tiny", artifacts / "never", method="zo-hybrid:0")


def test_the_previous_release_s_spelling_of_the_options_still_works(artifacts, tmp_path):
    """``Trainer(zo=...)`` with one notice, and a checkpoint that records them as ``zo`` resumes with them."""
    with pytest.warns(FutureWarning, match=r"deprecated: Trainer\(zo=...\) is Trainer\(method_options=...\)"):
        trainer = Trainer(artifacts / "zo", threads=THREADS, zo={"probes": 2})
    assert trainer.method_options == {"eps": 1e-3, "probes": 2, "lr": 1e-4}
    trainer.step(*_batch())
    trainer.save(tmp_path / "ckpt")
    record_path = tmp_path / "ckpt" / "checkpoint.json"
    record = json.loads(record_path.read_text())
    record["metadata"]["config"]["zo"] = record["metadata"]["config"].pop("method_options")
    record_path.write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming an old checkpoint is not the user's deprecated call
        assert Trainer.resume(tmp_path / "ckpt", threads=THREADS).method_options == trainer.method_options


def test_cli_exports_and_trains_a_zo_hybrid_artifact(tmp_path, capsys):
    out, data = tmp_path / "art", write_folder(tmp_path / "data", per_class=3)
    assert main(["export", "vit-tiny", "-o", str(out), "--method", "zo-hybrid:1", "--num-classes", "3"]) == 0
    assert main(["train", str(out), "--data", str(data), "--epochs", "1", "--batch-size", "4", "--threads", "1",
                 "--zo-lr", "1e-4", "--zo-probes", "2", "--checkpoint", str(tmp_path / "ck")]) == 0
    assert Trainer.resume(tmp_path / "ck").method_options == {"eps": 1e-3, "probes": 2, "lr": 1e-4}
    capsys.readouterr()
    exact = tmp_path / "exact"
    export_model("vit-tiny", exact, num_classes=3)
    assert main(["train", str(exact), "--data", str(data), "--epochs", "1", "--zo-eps", "1e-2"]) == 2
    assert "takes no options on the device (given: eps)" in capsys.readouterr().err
