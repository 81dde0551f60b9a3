"""The method vocabulary: every spelling parses to its method and back from the manifest it writes; the old
spellings still work with one notice; a wrong one is one line naming every spelling."""
import warnings

import pytest

from edge_lbp import methods
from edge_lbp.methods.lora import Lora
from edge_lbp.methods.partial import Partial
from edge_lbp.methods.side import Side
from edge_lbp.methods.zo_hybrid import ZOHybrid

SPELLINGS = [("all", Partial), ("last:2", Partial), ("bias", Partial), ("head", Partial), ("lora:8", Lora),
             ("zo-hybrid:3", ZOHybrid), ("side", Side)]


@pytest.mark.parametrize("text, kind", SPELLINGS)
def test_each_spelling_parses_and_reads_back_from_its_manifest(text, kind):
    method = methods.parse(text)
    assert type(method) is kind and method.spec == text
    if isinstance(method, Side):
        method.taps = (0, 2)  # what adapt() resolves on the model
    manifest = {"trainable_set": method.trainable_set, "method": method.record(None, None, ["frozen.weight"])
                if not isinstance(method, Side) else {"name": "side", "taps": [0, 2]}}
    if manifest["method"] is None:
        del manifest["method"]
    again = methods.of_manifest(manifest)
    assert type(again) is kind and again.spec == text


@pytest.mark.parametrize("text", ["some", "last:0", "lora:x", "zo-hybrid:0", "Head", "backprop:2"])
def test_a_wrong_spelling_is_one_line_naming_them_all(text):
    with pytest.raises(ValueError) as err:
        methods.parse(text)
    message = str(err.value)
    assert "\n" not in message and f"unknown method {text!r}" in message
    assert all(syntax in message for syntax in ("last:K", "lora:R", "zo-hybrid:K", "side"))


def test_old_spellings_work_with_one_notice():
    with pytest.warns(FutureWarning, match="deprecated: --train lora:4 is --method lora:4") as caught:
        assert methods.resolve(None, train="lora:4").spec == "lora:4"
    assert len(caught) == 1
    with pytest.warns(FutureWarning, match="deprecated: --method backprop is --method all$"):
        assert methods.resolve("backprop").spec == "all"
    with pytest.warns(FutureWarning) as caught:  # both old spellings at once: one notice naming both
        assert methods.resolve("backprop", train="head").spec == "head"
    assert [str(w.message) for w in caught] == [
        "deprecated: --method backprop is --method all; --train head is --method head"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spellings give no notice
        assert methods.resolve("head", train="all").spec == "head"
        assert methods.resolve(None).spec == "all"


def test_a_method_and_an_old_trainable_set_together_are_refused():
    with pytest.raises(ValueError, match="--method zo-hybrid:1 chooses the trainable set itself"):
        methods.resolve("zo-hybrid:1", train="head")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a wrong old spelling is its error alone, no notice before it
        with pytest.raises(ValueError, match="unknown method 'some'"):
            methods.resolve(None, train="some")
    with pytest.raises(ValueError, match="--taps applies to --method side"):
        methods.resolve("lora:2", taps="1")


def test_an_artifact_of_an_unknown_method_is_one_line():
    with pytest.raises(ValueError, match="the artifact's method 'quantum' is not one of zo-hybrid, side"):
        methods.of_manifest({"method": {"name": "quantum"}})


def test_the_cli_says_the_notice_in_one_line_and_exports(tmp_path, capsys, export_extra):
    from edge_lbp import cli

    assert cli.main(["export", "vit-tiny", "-o", str(tmp_path / "art"), "--train", "head", "--lbp", "none"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["edge-lbp: warning: deprecated: --train head is --method head"]
    assert (tmp_path / "art" / "manifest.json").is_file()
