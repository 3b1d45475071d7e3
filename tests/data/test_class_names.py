import pytest

from fgir.data.class_names import (
    CharacterName,
    display_name,
    folder_display_name,
    parse_tag,
    parse_tag_list,
    read_tags_file,
)
from fgir.data.readers import DatasetFileError, read_class_names


@pytest.mark.parametrize("tag, expected", [
    ("edelgard_von_hresvelgr_(fire_emblem)", CharacterName("edelgard_von_hresvelgr_(fire_emblem)", "Edelgard von Hresvelgr", "Fire Emblem")),
    ("hatsune_miku", CharacterName("hatsune_miku", "Hatsune Miku", "")),
    ("akemi_homura", CharacterName("akemi_homura", "Akemi Homura", "")),
    ("tohsaka_rin_(fate/stay_night)", CharacterName("tohsaka_rin_(fate/stay_night)", "Tohsaka Rin", "Fate/Stay Night")),
    # Only the last group is the series; a costume qualifier stays with the character.
    ("artoria_pendragon_(lancer)_(fate)", CharacterName("artoria_pendragon_(lancer)_(fate)", "Artoria Pendragon (Lancer)", "Fate")),
    ("ryuuko_(kill_la_kill)", CharacterName("ryuuko_(kill_la_kill)", "Ryuuko", "Kill la Kill")),
    ("c.c.", CharacterName("c.c.", "C.C.", "")),
    ("rem_(re:zero)", CharacterName("rem_(re:zero)", "Rem", "Re:Zero")),
    ("melon-chan", CharacterName("melon-chan", "Melon-chan", "")),
    ("émilie_de_rochefort_(ça)", CharacterName("émilie_de_rochefort_(ça)", "Émilie de Rochefort", "Ça")),
    ("the_boss", CharacterName("the_boss", "The Boss", "")),  # a particle is capitalised as the first word
])
def test_parse_tag(tag, expected):
    assert parse_tag(tag) == expected
    assert display_name(tag) == (f"{expected.character} ({expected.series})" if expected.series else expected.character)


def test_display_name_examples():
    assert display_name("edelgard_von_hresvelgr_(fire_emblem)") == "Edelgard von Hresvelgr (Fire Emblem)"
    assert folder_display_name("000_hatsune_miku") == "Hatsune Miku"
    assert folder_display_name("036_reisen_udongein_inaba") == "Reisen Udongein Inaba"
    with pytest.raises(ValueError, match="empty class tag '__'"):
        parse_tag("__")


def test_parse_tag_list_reads_python_list_literals():
    assert parse_tag_list("['1girl', 'solo', \"jack-o'-lantern\", 'long_hair']") == ["1girl", "solo", "jack-o'-lantern", "long_hair"]
    assert parse_tag_list("[]") == [] and parse_tag_list("  ") == []


def test_parse_tag_list_decodes_escapes_and_keeps_commas_inside_tags():
    assert parse_tag_list(r"['back\\slash', 'it\'s', 'a, b',]") == ["back\\slash", "it's", "a, b"]


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hacked')",  # never evaluated
    "['a', 1]",
    "('a', 'b')",
    "['a', 'b'",
    "[['a']]",
    "[b'a']",
])
def test_parse_tag_list_refuses_anything_but_a_list_of_strings(text):
    shown = text.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(DatasetFileError, match=rf"^x.csv:3: column tags_cat0: expected a list of quoted tags like "
                                               rf"\['a', 'b'\], got '{shown}'$"):
        parse_tag_list(text, "x.csv:3: column tags_cat0")


def test_read_tags_file(tmp_path):
    path = tmp_path / "train_tags.csv"
    path.write_text(
        "id,dir,class_id,tags_cat0,tags_cat3,tags_cat4\n"
        "194933,0933/194933.jpg,2,\"['1girl', 'solo']\",\"['fate/stay_night']\",\"['saber']\"\n"
        "194940,0940/194940.jpg,0,[],[],\"['hatsune_miku']\"\n"
    )
    rows = read_tags_file(path, num_classes=3)
    assert rows[0] == ("194933", "0933/194933.jpg", 2, ["1girl", "solo"], ["fate/stay_night"], ["saber"])
    assert (rows[1].general, rows[1].character) == ([], ["hatsune_miku"])


def test_read_tags_file_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "val_tags.csv"
    path.write_text("id,dir,class_id,tags_cat0\n1,0001/1.jpg,0,[]\n")
    with pytest.raises(DatasetFileError, match=r"val_tags.csv:1: header must name the columns id,dir,class_id,tags_cat0,tags_cat3,tags_cat4; missing tags_cat3,tags_cat4"):
        read_tags_file(path)
    path.write_text("id,dir,class_id,tags_cat0,tags_cat3,tags_cat4\n1,0001/1.jpg,0,[],[],[]\n2,0002/2.jpg,0,[],\"[open(\"\"x\"\")]\",[]\n")
    with pytest.raises(DatasetFileError, match=r"val_tags.csv:3: column tags_cat3: expected a list of quoted tags"):
        read_tags_file(path)
    path.write_text("id,dir,class_id,tags_cat0,tags_cat3,tags_cat4\n1,../1.jpg,0,[],[],[]\n")
    with pytest.raises(DatasetFileError, match=r"val_tags.csv:2: image path must be relative"):
        read_tags_file(path)


def test_names_file_with_more_columns_reads_the_class_name_column(tmp_path):
    path = tmp_path / "classid_classname.csv"
    path.write_text("class_id,class_name,tag\n0,\"Saber (Fate, Zero)\",\"saber_(fate,_zero)\"\n1,Hatsune Miku,hatsune_miku\n")
    assert read_class_names(path) == ["Saber (Fate, Zero)", "Hatsune Miku"]
    path.write_text("class_id,class_name,tag\n0,Saber (Fate),saber_(fate)\n1,Hatsune Miku\n")
    with pytest.raises(DatasetFileError, match=r"classid_classname.csv:3: expected 3 fields like the header, got 2"):
        read_class_names(path)
