"""Manifests built from tiny fake copies of each dataset layout (empty files stand in for videos)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vcache.data.datasets import FORMATS, Manifest, ManifestError, load_manifest


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


# ---------------------------------------------------------------------------------------------- folder


def test_folder_sorted_classes_recursive_and_hidden_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "walk/b.mp4", "walk/a.AVI", "run/sub/c.webm", "run/._c.webm", "run/notes.txt")
    touch(tmp_path, "__MACOSX/x.txt", "loose.mp4")
    m = load_manifest("folder", tmp_path, subset="test")
    assert m.class_names == ["run", "walk"]
    assert m.paths == ["run/sub/c.webm", "walk/a.AVI", "walk/b.mp4"]
    assert m.labels == [0, 1, 1]
    assert len(m) == 3
    assert m.source["format"] == "folder" and m.source["subset"] == "test" and m.source["missing"] == 0
    assert m.source["loose_videos_ignored"] == 1  # loose.mp4, beside class folders


def test_a_flat_folder_is_a_set_of_unlabelled_videos(tmp_path: Path) -> None:
    touch(tmp_path, "b.mp4", "a.mkv", "notes.txt")
    m = load_manifest("folder", tmp_path)
    assert m.paths == ["a.mkv", "b.mp4"] and m.labels == [-1, -1] and m.class_names == []
    assert m.source["unlabelled"] is True


def test_folder_without_videos_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "walk/readme.txt")
    with pytest.raises(ManifestError, match="no videos found"):
        load_manifest("folder", tmp_path)


def test_to_dict_is_json_safe_summary(tmp_path: Path) -> None:
    touch(tmp_path, "a/1.mp4", "b/2.mp4")
    d = load_manifest("folder", tmp_path).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["num_videos"] == 2 and d["num_labelled"] == 2 and d["class_names"] == ["a", "b"]
    assert "paths" not in d and "labels" not in d


# ---------------------------------------------------------------------------------------------- csv


def test_csv_class_names_sorted_and_absolute_paths(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    touch(root, "x/1.mp4", "y/2.mp4", "3.mp4")
    ann = write(
        tmp_path / "list.csv",
        f"path,label,extra\nx/1.mp4,zebra,a\n{root / 'y/2.mp4'},ant,b\n3.mp4,,c\ngone.mp4,zebra,d\n",
        newline="\r\n",
    )
    m = load_manifest("csv", root, ann)
    assert m.class_names == ["ant", "zebra"]
    assert m.paths == ["x/1.mp4", "y/2.mp4", "3.mp4", "gone.mp4"]
    assert m.labels == [1, 0, -1, 1]
    assert m.source["missing"] == 1


def test_csv_integer_labels_kept(tmp_path: Path) -> None:
    touch(tmp_path, "a.mp4", "b.mp4")
    ann = write(tmp_path / "l.csv", "label,path\n3,a.mp4\n0,b.mp4\n")
    m = load_manifest("csv", tmp_path, ann)
    assert m.labels == [3, 0]
    assert m.class_names == ["0", "1", "2", "3"]


def test_csv_split_column_shares_class_index(tmp_path: Path) -> None:
    ann = write(tmp_path / "l.csv", "path,label,split\na.mp4,cat,train\nb.mp4,dog,train\nc.mp4,dog,test\n")
    test = load_manifest("csv", tmp_path, ann, subset="test")
    assert test.paths == ["c.mp4"] and test.labels == [1] and test.class_names == ["cat", "dog"]


def test_csv_errors(tmp_path: Path) -> None:
    no_path = write(tmp_path / "a.csv", "file,label\na.mp4,x\n")
    with pytest.raises(ManifestError, match="no 'path' column"):
        load_manifest("csv", tmp_path, no_path)
    outside = write(tmp_path / "b.csv", "path,label\n/elsewhere/a.mp4,x\n")
    with pytest.raises(ManifestError, match=r"b\.csv:2: absolute path .* is not under root"):
        load_manifest("csv", tmp_path, outside)
    escape = write(tmp_path / "c.csv", "path,label\n../a.mp4,x\n")
    with pytest.raises(ManifestError, match="leaves the video root"):
        load_manifest("csv", tmp_path, escape)
    clash = write(tmp_path / "d.csv", "path,label\na.mp4,x\na.mp4,y\n")
    with pytest.raises(ManifestError, match="listed twice with different labels"):
        load_manifest("csv", tmp_path, clash)
    with pytest.raises(ManifestError, match="needs an annotations path"):
        load_manifest("csv", tmp_path)


# ---------------------------------------------------------------------------------------------- ucf101


def make_ucf(tmp_path: Path) -> tuple[Path, Path]:
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    # classInd spelling differs in case from the folder and the list files: the official quirk.
    write(ann / "classInd.txt", "1 ApplyEyeMakeup \n2 HandStandPushups\n", newline="\r\n")
    write(
        ann / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2 \n",
        newline="\r\n",
    )
    write(
        ann / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c01.avi\n",
        newline="\r\n",
    )
    write(ann / "trainlist02.txt", "HandstandPushups/v_HandStandPushups_g01_c01.avi 2\n")
    touch(
        root, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"
    )
    return root, ann


def test_ucf101_train_and_test_lists(tmp_path: Path) -> None:
    root, ann = make_ucf(tmp_path)
    train = load_manifest("ucf101", root, ann, split=1, subset="train")
    assert train.class_names == ["ApplyEyeMakeup", "HandStandPushups"]
    assert train.paths == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
    ]
    assert train.labels == [0, 1]
    assert train.source["missing"] == 1 and train.source["split"] == 1
    test = load_manifest("ucf101", root, ann, split=1, subset="test")
    assert test.labels == [0, 1]
    assert test.paths[1] == "HandstandPushups/v_HandStandPushups_g01_c01.avi"


def test_ucf101_split_selection_and_refusal(tmp_path: Path) -> None:
    root, ann = make_ucf(tmp_path)
    second = load_manifest("ucf101", root, ann, split=2)
    assert second.paths == ["HandstandPushups/v_HandStandPushups_g01_c01.avi"] and second.labels == [1]
    with pytest.raises(ManifestError, match="split 4 is not valid for ucf101"):
        load_manifest("ucf101", root, ann, split=4)
    with pytest.raises(ManifestError, match=r"testlist02\.txt does not exist"):
        load_manifest("ucf101", root, ann, split=2, subset="test")
    with pytest.raises(ManifestError, match="subset 'val' is not valid for ucf101"):
        load_manifest("ucf101", root, ann, subset="val")


def test_ucf101_label_must_agree_with_folder(tmp_path: Path) -> None:
    root, ann = make_ucf(tmp_path)
    write(ann / "trainlist03.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n")
    with pytest.raises(ManifestError, match=r"trainlist03\.txt:1: label 2 disagrees"):
        load_manifest("ucf101", root, ann, split=3)


def test_ucf101_missing_class_list(tmp_path: Path) -> None:
    root, ann = make_ucf(tmp_path)
    (ann / "classInd.txt").unlink()
    with pytest.raises(ManifestError, match=r"classInd\.txt does not exist"):
        load_manifest("ucf101", root, ann)


# ---------------------------------------------------------------------------------------------- hmdb51


def make_hmdb(tmp_path: Path) -> tuple[Path, Path]:
    root, ann = tmp_path / "hmdb51", tmp_path / "splits"
    write(ann / "wave_test_split1.txt", "w_a.avi 1 \nw_b.avi 2 \nw_c.avi 0 \n", newline="\r\n")
    write(ann / "brush_hair_test_split1.txt", "b_a.avi 2\nb_b.avi 1\n")
    write(ann / "wave_test_split2.txt", "w_a.avi 2\nw_b.avi 1\nw_c.avi 1\n")
    write(ann / "brush_hair_test_split2.txt", "b_a.avi 1\nb_b.avi 0\n")
    touch(root, "wave/w_a.avi", "wave/w_b.avi", "brush_hair/b_a.avi", "brush_hair/b_b.avi")
    return root, ann


def test_hmdb51_flags_and_zero_excluded(tmp_path: Path) -> None:
    root, ann = make_hmdb(tmp_path)
    train = load_manifest("hmdb51", root, ann, split=1, subset="train")
    assert train.class_names == ["brush_hair", "wave"]
    assert train.paths == ["brush_hair/b_b.avi", "wave/w_a.avi"] and train.labels == [0, 1]
    test = load_manifest("hmdb51", root, ann, split=1, subset="test")
    assert test.paths == ["brush_hair/b_a.avi", "wave/w_b.avi"] and test.labels == [0, 1]
    assert "wave/w_c.avi" not in train.paths + test.paths  # flag 0: in neither subset
    two = load_manifest("hmdb51", root, ann, split=2, subset="train")
    assert two.paths == ["brush_hair/b_a.avi", "wave/w_b.avi", "wave/w_c.avi"] and two.labels == [0, 1, 1]
    assert two.source["missing"] == 1


def test_hmdb51_errors(tmp_path: Path) -> None:
    root, ann = make_hmdb(tmp_path)
    with pytest.raises(ManifestError, match="has no brush_hair_test_split3.txt"):
        load_manifest("hmdb51", root, ann, split=3)
    with pytest.raises(ManifestError, match="split 0 is not valid"):
        load_manifest("hmdb51", root, ann, split=0)
    write(ann / "wave_test_split1.txt", "w_a.avi 7\n")
    with pytest.raises(ManifestError, match=r"wave_test_split1\.txt:1: expected '<video> <0\|1\|2>'"):
        load_manifest("hmdb51", root, ann, split=1)
    with pytest.raises(ManifestError, match="no <class>_test_split<N>.txt files"):
        load_manifest("hmdb51", root, tmp_path / "hmdb51")


# ---------------------------------------------------------------------------------------------- kinetics

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def test_kinetics_file_names_layouts_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "k400"
    ann = write(
        tmp_path / "ann" / "train.csv",
        KINETICS_HEADER + "air drumming,abc,5,15,train,0\n"
        '"passing American football (in game)",def,120,130,train,0\n'
        "air drumming,ghi,0.0,10,train,0\n"
        "abseiling,zzz,1,11,val,0\n",
    )
    write(tmp_path / "ann" / "validate.csv", KINETICS_HEADER + "abseiling,zzz,1,11,val,0\n")
    touch(root, "air_drumming/abc_000005_000015.mp4", "def_000120_000130.webm")
    m = load_manifest("kinetics", root, ann, subset="train")
    assert m.paths == [
        "air_drumming/abc_000005_000015.mp4",  # class folder, spelled with an underscore on disk
        "def_000120_000130.webm",  # flat layout, another extension
        "air drumming/ghi_000000_000010.mp4",  # missing: kept, under its class folder
    ]
    assert m.class_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert m.labels == [1, 2, 1]
    assert m.source["missing"] == 1
    # A folder of CSVs: the subset picks validate.csv, class names come from all of them.
    val = load_manifest("kinetics", root, tmp_path / "ann", subset="validate")
    assert val.paths == ["abseiling/zzz_000001_000011.mp4"] and val.labels == [0]
    assert val.class_names == m.class_names


def test_kinetics_unlabelled_test_and_errors(tmp_path: Path) -> None:
    ann = write(tmp_path / "test.csv", "youtube_id,time_start,time_end,split\nq,3,13,test\n")
    touch(tmp_path, "q_000003_000013.mp4")
    m = load_manifest("kinetics", tmp_path, ann, subset="test")
    assert m.paths == ["q_000003_000013.mp4"] and m.labels == [-1] and m.source["missing"] == 0
    with pytest.raises(ManifestError, match="no videos found for subset 'train'"):
        load_manifest("kinetics", tmp_path, ann, subset="train")
    bad = write(tmp_path / "bad.csv", "label,youtube_id,time_start\nx,q,3\n")
    with pytest.raises(ManifestError, match="lacks Kinetics column"):
        load_manifest("kinetics", tmp_path, bad)
    frac = write(tmp_path / "frac.csv", "label,youtube_id,time_start,time_end,split\nx,q,3.5,13,train\n")
    with pytest.raises(ManifestError, match=r"frac\.csv:2: time '3\.5'"):
        load_manifest("kinetics", tmp_path, frac)
    with pytest.raises(ManifestError, match=r"missing\.csv does not exist"):
        load_manifest("kinetics", tmp_path, tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------- ssv2


def make_ssv2(tmp_path: Path) -> tuple[Path, Path]:
    root, ann = tmp_path / "videos", tmp_path / "labels"
    labels = {"Holding something next to something": "1", "Pushing something from left to right": "0"}
    write(ann / "something-something-v2-labels.json", json.dumps(labels))
    train = [
        {
            "id": "78687",
            "label": "holding potato next to vicks vaporub bottle",
            "template": "Holding [something] next to [something]",
            "placeholders": ["potato", "vicks vaporub bottle"],
        },
        {
            "id": "42326",
            "label": "pushing cup from left to right",
            "template": "Pushing [Something] from left to right",
        },
    ]
    write(ann / "something-something-v2-train.json", json.dumps(train))
    write(ann / "something-something-v2-validation.json", json.dumps(train[1:]))
    touch(root, "78687.webm", "42326.mp4")
    return root, ann


def test_ssv2_template_matching(tmp_path: Path) -> None:
    root, ann = make_ssv2(tmp_path)
    m = load_manifest("ssv2", root, ann, subset="train")
    assert m.class_names == ["Pushing something from left to right", "Holding something next to something"]
    assert m.paths == ["78687.webm", "42326.mp4"]
    assert m.labels == [1, 0]  # the second template differs in case from the labels file
    val = load_manifest("ssv2", root, ann, subset="val")
    assert val.labels == [0] and val.source["subset"] == "val"


def test_ssv2_test_subset_and_errors(tmp_path: Path) -> None:
    root, ann = make_ssv2(tmp_path)
    with pytest.raises(ManifestError, match=r"something-something-v2-test\.json does not exist"):
        load_manifest("ssv2", root, ann, subset="test")
    write(ann / "something-something-v2-test.json", json.dumps([{"id": "9"}]))
    test = load_manifest("ssv2", root, ann, subset="test")
    assert test.paths == ["9.webm"] and test.labels == [-1] and test.source["missing"] == 1
    write(ann / "something-something-v2-validation.json", json.dumps([{"id": "5", "template": "Eating [x]"}]))
    with pytest.raises(ManifestError, match="video 5 has template 'Eating \\[x\\]' not in"):
        load_manifest("ssv2", root, ann, subset="validation")
    (ann / "something-something-v2-labels.json").unlink()
    with pytest.raises(ManifestError, match=r"labels\.json does not exist"):
        load_manifest("ssv2", root, ann)


# ---------------------------------------------------------------------------------------------- common


def test_unknown_format_and_bad_root(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown dataset format 'ucf'"):
        load_manifest("ucf", tmp_path)
    with pytest.raises(ManifestError, match="is not a directory"):
        load_manifest("folder", tmp_path / "nope")
    assert set(FORMATS) == {"folder", "csv", "ucf101", "hmdb51", "kinetics", "ssv2"}


def test_manifest_error_is_value_error_and_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_manifest("hmdb51", tmp_path, tmp_path / "absent")
    assert isinstance(info.value, ManifestError) and "\n" not in str(info.value)
    assert isinstance(Manifest(tmp_path, [], [], [], {}), Manifest)
