"""Long-tailed splits (``edge-lbp longtail``) and accuracy by how many training images a class had."""
import math

import numpy as np
import pytest

from edge_lbp.cli import main
from edge_lbp.longtail import accuracy_by_group, class_counts, longtail_counts, make_longtail, shot_groups
from test_data import write_folder


def test_counts_fall_exponentially_from_the_largest_class_to_largest_over_ratio():
    counts = longtail_counts([500] * 10, 100)
    assert counts[0] == 500 and counts[-1] == 5
    for c in range(1, 10):  # each class keeps 100^(-1/9) of the one before it, up to rounding
        assert counts[c] == round(500 / 100 ** (c / 9))
        assert counts[c] < counts[c - 1]
    assert longtail_counts([7, 9, 3], 1) == [7, 9, 3]  # ratio 1 keeps everything
    assert longtail_counts([1000, 40, 1000], 10) == [1000, 40, 100]  # never more than a class has
    assert longtail_counts([5, 5], 1000) == [5, 1]  # at least one image


BAD = [([5, 5], 0.5, "at least 1"), ([5], 10, "two or more"), ([5, 0], 10, "two or more"),
       ([5, 5], math.nan, "at least 1")]


@pytest.mark.parametrize("available, ratio, match", BAD)
def test_bad_ratios_and_counts_are_one_line(available, ratio, match):
    with pytest.raises(ValueError, match=match):
        longtail_counts(available, ratio)


def test_shot_groups_use_the_long_tail_literatures_thresholds():
    assert shot_groups([101, 100, 20, 19, 0]) == ["many", "medium", "medium", "few", "few"]
    assert shot_groups([10, 5, 2], many=8, few=3) == ["many", "medium", "few"]


def test_group_accuracy_pools_the_groups_samples():
    correct, samples = [9, 1, 3, 0], [10, 10, 4, 0]
    got = accuracy_by_group(correct, samples, ["many", "many", "few", "few"])
    assert got == {"many": 10 / 20, "medium": None, "few": 3 / 4}


def _npz(path, per_class=20, classes=4):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(classes), per_class)
    x = rng.integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = y  # every image says its class
    np.savez(path, x_train=x, y_train=y.astype(np.uint8), x_test=x[:6], y_test=y[:6].astype(np.uint8),
             label_names=np.array(["a", "b", "c", "d"][:classes]))
    return x, y


def test_an_npz_split_keeps_a_subset_of_each_class_and_the_test_set_whole(tmp_path):
    x, y = _npz(tmp_path / "src.npz")
    counts = make_longtail(tmp_path / "src.npz", tmp_path / "lt.npz", 10, seed=3)
    assert counts == [20, 9, 4, 2]
    with np.load(tmp_path / "lt.npz", allow_pickle=False) as lt:
        assert class_counts(lt["y_train"]) == counts and lt["y_train"].dtype == np.uint8
        assert (lt["x_train"][:, 0, 0, 0] == lt["y_train"]).all()
        originals = {row.tobytes() for row in x}
        assert all(row.tobytes() in originals for row in lt["x_train"])
        assert len({row.tobytes() for row in lt["x_train"]}) == sum(counts)  # no image twice
        np.testing.assert_array_equal(lt["x_test"], x[:6])
        assert lt["label_names"].tolist() == ["a", "b", "c", "d"]
        first = lt["x_train"].copy()
    make_longtail(tmp_path / "src.npz", tmp_path / "again.npz", 10, seed=3)
    make_longtail(tmp_path / "src.npz", tmp_path / "other.npz", 10, seed=4)
    with np.load(tmp_path / "again.npz") as again, np.load(tmp_path / "other.npz") as other:
        np.testing.assert_array_equal(again["x_train"], first)
        assert not np.array_equal(other["x_train"], first)


def test_a_folder_split_copies_the_kept_images_and_the_other_splits(tmp_path):
    write_folder(tmp_path / "src" / "train", per_class=6)
    write_folder(tmp_path / "src" / "val", per_class=2)
    counts = make_longtail(tmp_path / "src", tmp_path / "lt", 3)
    assert counts == [6, 3, 2]  # ant, bee, cat: 6 * 3^(-c/2), rounded
    kept = [sorted(p.name for p in (tmp_path / "lt" / "train" / c).iterdir()) for c in ("ant", "bee", "cat")]
    assert [len(k) for k in kept] == counts
    for c, names in zip(("ant", "bee", "cat"), kept):
        for name in names:
            copy, original = (tmp_path / root / "train" / c / name for root in ("lt", "src"))
            assert copy.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in (tmp_path / "lt" / "val" / "cat").iterdir()) == ["0.png", "1.png"]


def test_bad_sources_and_targets_are_one_line(tmp_path):
    _npz(tmp_path / "src.npz")
    (tmp_path / "taken.npz").write_bytes(b"")
    for source, out, match in [(tmp_path / "missing.npz", tmp_path / "o.npz", "no such image folder"),
                               (tmp_path / "src.npz", tmp_path / "taken.npz", "already exists"),
                               (tmp_path / "src.npz", tmp_path / "folder", "is an .npz file")]:
        with pytest.raises(ValueError, match=match):
            make_longtail(source, out, 10)
    np.savez(tmp_path / "gap.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 2]))
    with pytest.raises(ValueError, match="class 1 has no training images"):
        make_longtail(tmp_path / "gap.npz", tmp_path / "o.npz", 10)


def test_cli_writes_the_split_and_says_its_shape(tmp_path, capsys):
    _npz(tmp_path / "src.npz", per_class=150)
    assert main(["longtail", str(tmp_path / "src.npz"), str(tmp_path / "lt.npz"), "--imbalance", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {tmp_path / 'lt.npz'}: 267 training images, 150 to 15 per class (ratio 10.0)"
    assert out[1:] == ["per class: 150  70  32  15", "shots: many 1  medium 2  few 1"]
    assert main(["longtail", str(tmp_path / "src.npz"), str(tmp_path / "x.npz"), "--imbalance", "0.5"]) == 2
    assert "0.5 must be >= 1" in capsys.readouterr().err
