"""Every engine keeps the session contract: the same calls behave the same way, and what an engine declares in
``capabilities`` it offers, while what it does not declare is refused in one line."""
import time

import numpy as np
import pytest

pytest.importorskip("torch", reason="the fixture exports an artifact (export extra)")

import edge_lbp.runtime as runtime  # noqa: E402
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.devices import ExternalMeter, PowerSampler  # noqa: E402
from edge_lbp.profiler import Profiler  # noqa: E402
from edge_lbp.runtime.session import Capabilities, Session, Unsupported  # noqa: E402
from fake_device import board  # noqa: E402

ENGINES = [pytest.param(e, marks=pytest.mark.skipif(
    e == "ort" and not __import__("importlib").util.find_spec("onnxruntime"), reason="onnxruntime-training absent"))
    for e in runtime.ENGINES]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract") / "vit-tiny"
    export_model("vit-tiny", folder, lbp="lp-tri:4", method="all", lr=0.01)
    return folder


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 32, 32)).astype(np.float32), np.array([1, 2])


def test_every_engine_declares_its_capabilities():
    from edge_lbp.runtime.numba_session import NumbaSession
    from edge_lbp.runtime.ort_session import OrtSession

    for engine in (NumbaSession, OrtSession):
        assert issubclass(engine, Session) and engine.engine in runtime.ENGINES
        assert isinstance(engine.capabilities, Capabilities)
        assert engine.capabilities is not Session.capabilities, engine.engine


@pytest.mark.parametrize("engine", ENGINES)
def test_common_calls(artifact, engine, batch):
    session = edge_lbp.load(artifact, engine, threads=1)
    x, y = batch
    before = session.state.parameters()
    assert set(before) == set(session.artifact.manifest["trainable"] + session.artifact.manifest["frozen"])
    logits = session.eval_step(x)
    assert logits.shape == (2, session.artifact.logits["shape"][-1])
    session.optimizer.set_learning_rate(0.05)
    loss = session.train_step(x, y)
    assert isinstance(loss, float) and np.isfinite(loss)
    after = session.state.parameters()
    assert any(not np.array_equal(before[n], after[n]) for n in session.artifact.trainable)
    session.state.set_parameters(before)
    np.testing.assert_array_equal(session.eval_step(x), logits)
    name = session.artifact.trainable[0]
    with pytest.raises(ValueError, match=f"parameter {name}: shape"):
        session.state.set_parameters({name: np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match="unknown parameters"):
        session.state.set_parameters({"no.such.weight": np.zeros(3, np.float32)})


@pytest.mark.parametrize("engine", ENGINES)
def test_declared_capabilities_work_and_the_others_refuse(artifact, engine, batch):
    session = edge_lbp.load(artifact, engine, threads=1)
    caps = session.capabilities
    x, y = batch
    calls, trace = [], []
    session.forward_backward(x, y, trace=trace, on_forward_end=lambda: calls.append(time.perf_counter()))
    phases = {t[0] for t in trace}
    assert phases == ({"forward", "backward"} if caps.node_trace else {"forward_backward"})
    if caps.forward_end_hook:  # once: every forward node before it, nothing but backward nodes after it
        (boundary,) = calls
        assert all(end <= boundary for phase, *_, end in trace if phase == "forward")
        after = [phase for phase, _, _, start, _ in trace if start >= boundary]
        assert after and set(after) == {"backward"}
    else:
        assert calls == []

    if caps.gradients:
        grads = session.gradients()
        assert set(grads) == set(session.artifact.trainable)
        name = session.artifact.trainable[0]
        stepped = edge_lbp.load(artifact, engine, threads=1)  # the same step with the gradients halved in place
        stepped.forward_backward(x, y)
        for g in stepped.gradients().values():
            g *= np.float32(0.5)
        reference = {n: g * np.float32(0.5) for n, g in grads.items()}
        for g, r in zip(grads.values(), reference.values()):
            g[...] = r
        session.optimizer.step(), stepped.optimizer.step()
        np.testing.assert_array_equal(session.state.parameters()[name], stepped.state.parameters()[name])
    else:
        with pytest.raises(Unsupported, match=f"the {engine} engine"):
            session.gradients()

    if caps.memory_estimate:
        one, four = session.step_bytes(1), session.step_bytes(4)
        assert 0 < one < four
    else:
        with pytest.raises(Unsupported, match=f"the {engine} engine"):
            session.step_bytes(4)

    if caps.optimizer_state:
        state = session.state.optimizer_state()
        assert state["step"] >= 1 and len(state) > 1
        fresh = edge_lbp.load(artifact, engine, threads=1)
        fresh.state.set_parameters(session.state.parameters())
        fresh.state.set_optimizer_state(state)
        assert session.train_step(x, y) == fresh.train_step(x, y)
        for n, value in session.state.parameters().items():
            np.testing.assert_array_equal(value, fresh.state.parameters()[n], err_msg=n)
    else:
        with pytest.raises(Unsupported, match=f"the {engine} engine"):
            session.state.optimizer_state()
        with pytest.raises(Unsupported):
            session.state.set_optimizer_state({"step": 0})


@pytest.mark.parametrize("engine", ENGINES)
def test_profiler_marks_phases_through_the_declared_hook(artifact, engine, batch, tmp_path):
    session = edge_lbp.load(artifact, engine, threads=1)
    sampler = PowerSampler(ExternalMeter(5.0), board=board("generic"), root=tmp_path, rate_hz=50)
    with Profiler(session, sampler=sampler) as prof:
        prof.step(*batch)
    marks = [m[0] for m in prof.records[0].marks[1:]]
    expected = ["forward", "backward"] if session.capabilities.forward_end_hook else ["forward_backward"]
    assert marks == expected + ["optimizer"]
