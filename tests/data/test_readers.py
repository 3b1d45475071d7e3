import numpy as np
import pytest

from fgir.data.readers import (
    DatasetFileError,
    class_folders,
    read_class_names,
    read_label_file,
    read_split_csv,
    scan_class_folders,
)


def write(path, text):
    path.write_text(text)
    return path


def test_split_csv_reads_rows_in_order(tmp_path):
    path = write(tmp_path / "train.csv", "class_id,dir\n2,b/1.jpg\n0,a/2.jpg\n\n1,c d/3.jpg\n")
    rows = read_split_csv(path)
    assert rows.paths == ["b/1.jpg", "a/2.jpg", "c d/3.jpg"]
    assert rows.labels == [2, 0, 1]
    assert rows.boxes is None


def test_split_csv_reads_boxes_and_ignores_other_columns(tmp_path):
    text = "dir,note,class_id,x0,y0,x1,y1\na.jpg,hi,1,1,2,30.5,40\nb.jpg,,0,0,0,5,5\n"
    rows = read_split_csv(write(tmp_path / "s.csv", text))
    assert rows.labels == [1, 0]
    np.testing.assert_array_equal(rows.boxes, [[1, 2, 30.5, 40], [0, 0, 5, 5]])
    assert rows.boxes.dtype == np.float32


def test_split_csv_tolerates_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("class_id,dir\n0,a.jpg\n".encode("utf-8-sig"))
    assert read_split_csv(path).labels == [0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,a.jpg\n", r"s\.csv:1: header must name the columns class_id,dir; missing class_id,dir"),
        ("class_id,dir\n0,a.jpg\nx,b.jpg\n", r"s\.csv:3: class_id must be an integer, got 'x'"),
        ("class_id,dir\n0,a.jpg\n-1,b.jpg\n", r"s\.csv:3: class_id must be >= 0"),
        ("class_id,dir\n0,a.jpg\n0,b.jpg,extra\n", r"s\.csv:3: expected 2 fields like the header, got 3"),
        ("class_id,dir\n0,/etc/passwd\n", r"s\.csv:2: image path must be relative"),
        ("class_id,dir\n0,a/../../secret.jpg\n", r"s\.csv:2: image path must be relative"),
        ("class_id,dir\n0,\n", r"s\.csv:2: empty image path"),
        ("class_id,dir\n", r"s\.csv: no rows after the header"),
        ("", r"s\.csv: empty file"),
        ("class_id,dir,x0,y0,x1,y1\n0,a.jpg,5,0,5,9\n", r"s\.csv:2: box needs x1 > x0"),
        ("class_id,dir,x0,y0,x1,y1\n0,a.jpg,a,0,5,9\n", r"s\.csv:2: box x0,y0,x1,y1 must be numbers"),
    ],
)
def test_split_csv_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DatasetFileError, match=message):
        read_split_csv(write(tmp_path / "s.csv", text))


def test_split_csv_label_bound_names_line(tmp_path):
    path = write(tmp_path / "s.csv", "class_id,dir\n0,a.jpg\n\n3,b.jpg\n")
    assert read_split_csv(path, num_classes=4).labels == [0, 3]
    with pytest.raises(DatasetFileError, match=r"s\.csv:4: class_id must be >= 0, < 3 .* got 3"):
        read_split_csv(path, num_classes=3)


def test_inner_dotdot_that_stays_inside_is_allowed(tmp_path):
    rows = read_split_csv(write(tmp_path / "s.csv", "class_id,dir\n0,a/../b/c.jpg\n0,..hidden.jpg\n"))
    assert rows.paths == ["a/../b/c.jpg", "..hidden.jpg"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetFileError, match=r"nothing\.csv: file not found"):
        read_split_csv(tmp_path / "nothing.csv")


def test_label_file_reads_headerless_rows(tmp_path):
    rows = read_label_file(write(tmp_path / "l.csv", "0,0933/194933.jpg\n5,0001/1.jpg\n"))
    assert rows.paths == ["0933/194933.jpg", "0001/1.jpg"]
    assert rows.labels == [0, 5]


def test_label_file_with_a_header_suggests_csv_format(tmp_path):
    with pytest.raises(
        DatasetFileError, match=r"l\.csv:1: .* \(this format has no header; use data.format=csv"
    ):
        read_label_file(write(tmp_path / "l.csv", "class_id,dir\n0,a.jpg\n"))


def test_label_file_errors_name_line(tmp_path):
    with pytest.raises(DatasetFileError, match=r"l\.csv:2: expected 2 fields class_id,relative_path, got 1"):
        read_label_file(write(tmp_path / "l.csv", "0,a.jpg\n7\n"))
    with pytest.raises(DatasetFileError, match=r"l\.csv:3: class_id must be >= 0, < 2"):
        read_label_file(write(tmp_path / "l.csv", "0,a.jpg\n1,b.jpg\n2,c.jpg\n"), num_classes=2)


def test_label_file_with_300k_rows(tmp_path):
    # The size of DAF:re's training list; checks every row survives, not the speed.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3263, size=322_947)
    lines = [f"{label},{i // 100:04d}/{i}.jpg" for i, label in enumerate(labels)]
    rows = read_label_file(write(tmp_path / "train.csv", "\n".join(lines) + "\n"), num_classes=3263)
    assert rows.labels == labels.tolist()
    assert len(rows.paths) == 322_947
    assert rows.paths[123_456] == "1234/123456.jpg"


@pytest.mark.parametrize("header", ["", "class_id,class_name\n"])
def test_class_names_with_or_without_header(tmp_path, header):
    path = write(tmp_path / "names.csv", header + '1,hatsune_miku\n0,saber\n2,"a, b"\n')
    assert read_class_names(path) == ["saber", "hatsune_miku", "a, b"]


def test_class_names_keep_unquoted_commas(tmp_path):
    assert read_class_names(write(tmp_path / "names.csv", "0,x,y\n1,z\n")) == ["x,y", "z"]


def test_class_names_duplicate_names_both_lines(tmp_path):
    with pytest.raises(DatasetFileError, match=r"names\.csv:4: class_id 1 already given on line 3"):
        read_class_names(write(tmp_path / "names.csv", "class_id,class_name\n0,a\n1,b\n1,c\n"))


def test_class_names_gap_is_reported(tmp_path):
    with pytest.raises(
        DatasetFileError, match=r"names\.csv: class ids must be 0\.\.2 with no gaps; missing 1"
    ):
        read_class_names(write(tmp_path / "names.csv", "0,a\n2,b\n3,c\n"))


def test_class_names_second_non_integer_row_is_an_error(tmp_path):
    with pytest.raises(DatasetFileError, match=r"names\.csv:2: class_id must be an integer, got 'oops'"):
        read_class_names(write(tmp_path / "names.csv", "id,name\noops,a\n"))


def make_folder_tree(root):
    files = [
        "b_cls/1.PNG",
        "b_cls/sub/2.jpeg",
        "a_cls/3.jpg",
        "a_cls/notes.txt",
        "a_cls/.hidden.jpg",
        "c/4.webp",
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / ".cache").mkdir()
    return root


def test_scan_class_folders(tmp_path):
    rows, names = scan_class_folders(make_folder_tree(tmp_path))
    assert names == ["a_cls", "b_cls", "c"]
    assert rows.paths == ["a_cls/3.jpg", "b_cls/1.PNG", "b_cls/sub/2.jpeg", "c/4.webp"]
    assert rows.labels == [0, 1, 1, 2]


def test_scan_class_folders_uses_given_ids(tmp_path):
    rows, names = scan_class_folders(make_folder_tree(tmp_path), ["z", "c", "b_cls", "a_cls"])
    assert rows.labels == [3, 2, 2, 1]
    with pytest.raises(
        DatasetFileError, match=r"class folder\(s\) a_cls, c are not among the 2 known classes"
    ):
        scan_class_folders(tmp_path, ["b_cls", "z"])


def test_scan_errors(tmp_path):
    with pytest.raises(DatasetFileError, match="not a folder"):
        class_folders(tmp_path / "absent")
    with pytest.raises(DatasetFileError, match="no class sub-folders"):
        class_folders(tmp_path)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "readme.md").write_text("x")
    with pytest.raises(DatasetFileError, match="no images"):
        scan_class_folders(tmp_path)
