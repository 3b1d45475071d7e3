"""`fgir data prepare` refuses to write a split with no images (seen with --allow-count-mismatch on a
partial download), naming the split and what was found; nothing is written."""

import pytest
from test_prepare_cub import make_mini_cub

from fgir.cli import main
from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import EmptySplitError


def test_a_download_without_test_images_is_refused_and_nothing_is_written(tmp_path):
    root = tmp_path / "CUB_200_2011"
    make_mini_cub(root, per_class=(4, 0))
    with pytest.raises(EmptySplitError, match=(
            rf"^cub at {root}: the test split would have no images \(the dataset's own split lists none\); "
            rf"found 3 classes, 12 train_val and 0 test images under {root / 'images'}\. Nothing was written$")):
        prepare_dataset("cub", root, tmp_path / "out", check_counts=False)
    assert not (tmp_path / "out").exists()


def test_classes_of_one_image_leave_nothing_to_validate_on(tmp_path):
    root = tmp_path / "CUB_200_2011"
    make_mini_cub(root, per_class=(1, 1))
    with pytest.raises(EmptySplitError, match=r"the val split would have no images \(no class has 2 or more "
                                              r"train_val images to hold one out\)"):
        prepare_dataset("cub", root, root, check_counts=False)
    assert not (root / "train.csv").exists()


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    root = tmp_path / "CUB_200_2011"
    make_mini_cub(root, per_class=(4, 0))
    assert main(["data", "prepare", "cub", str(root), "--allow-count-mismatch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgir data: error: cub at ") and "the test split would have no images" in err
    assert len(err.strip().splitlines()) == 1
