"""edge-lbp plan: each method's memory at a batch size from one artifact, checked against the methods' own artifacts."""
import pytest
import edge_lbp
from edge_lbp.cli import main
from edge_lbp.plan import parse_size, plan

pytest.importorskip("torch", reason="the export extra is not installed (tiny artifacts are exported here)")
from edge_lbp.methods import export_model  # noqa: E402

BATCH = 32


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    for name, options in (("full", {"lbp": "none"}), ("zo", {"lbp": "none", "method": "zo-hybrid:1"}),
                          ("side", {"lbp": "none", "method": "side"})):
        export_model("vit-tiny", root / name, **options)
    return root


def test_sizes():
    assert parse_size("512MB") == 512 * 10**6 and parse_size("512MiB") == parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("800000") == 800_000
    for bad in ("lots", "-1MB", "12XB", ""):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_the_estimates_agree_with_each_method_s_own_artifact(artifacts):
    baseline, rows = plan(artifacts / "full", BATCH, threads=1, zo_blocks=1)
    by = {r.method: r for r in rows}
    assert list(by) == ["inference", "full", "zo-hybrid:1", "side"] and baseline > 0
    assert by["full"].measured and by["inference"].measured and not by["side"].measured
    measured = {name: edge_lbp.load(artifacts / name, threads=1).step_bytes(BATCH) for name in ("full", "zo", "side")}
    assert by["full"].step == measured["full"]
    assert by["inference"].step < by["zo-hybrid:1"].step < by["full"].step
    # Estimates from the full artifact's step against the steps of the exported methods themselves.
    assert by["zo-hybrid:1"].step == pytest.approx(measured["zo"], rel=0.3)
    assert by["side"].step == pytest.approx(measured["side"], rel=0.25)
    assert by["full"].state == 3 * sum(a.nbytes for a in edge_lbp.load(artifacts / "full").state.params.values())


def test_cli_says_which_methods_fit(artifacts, capsys):
    assert main(["plan", str(artifacts / "zo"), "--memory", "10GB", "--batch-size", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "zo-hybrid:1" in out and "inference" in out and " no " not in out
    assert main(["plan", str(artifacts / "side"), "--memory", "1MB", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count(" no ") == 2 and " yes " not in out
    assert main(["plan", str(artifacts / "side"), "--memory", "lots"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
