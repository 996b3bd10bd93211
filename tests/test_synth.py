"""`vcache synth`: layout, decodability with decord, determinism and the pixel content of each family."""

from __future__ import annotations

import json
from pathlib import Path

import decord
import numpy as np
import pytest
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.data.datasets import load_manifest
from vcache.data.synth import COLOURS, DIRECTIONS, class_families, class_list, generate

FRAMES, SIZE = 16, 64  # 16 frames for speed; the default is 64


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """All 29 classes (mixed task), one train and one test video each."""
    out = tmp_path_factory.mktemp("synth") / "mixed"
    summary = generate(
        out, n_train=29, n_test=29, seed=3, frames=FRAMES, size=SIZE, task="mixed", progress=False
    )
    assert summary["classes"] == 29 and summary["bytes"] > 0
    return out


def decode(path: Path) -> np.ndarray:
    """All frames (T, H, W, 3) uint8 of a video, decoded by decord as the extraction engine does."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_split_files_parse_and_every_listed_file_exists(mixed: Path) -> None:
    class_ind = [line.split() for line in lines(mixed / "splits" / "classInd.txt")]
    assert [int(i) for i, _ in class_ind] == list(range(1, 30))
    label_of = {name: int(i) for i, name in class_ind}
    assert list(label_of) == [c.name for c in class_list("mixed")]

    train = [line.split() for line in lines(mixed / "splits" / "trainlist01.txt")]
    test = lines(mixed / "splits" / "testlist01.txt")
    assert len(train) == 29 and len(test) == 29
    for rel, label in train:
        assert (mixed / "videos" / rel).is_file()
        assert label_of[rel.split("/")[0]] == int(label)
    for rel in test:
        assert " " not in rel and (mixed / "videos" / rel).is_file()
    # UCF-101 naming: v_<Class>_gGG_cCC.mp4; no group is shared by the train and the test list.
    groups = {
        s: {rel.rsplit("_c", 1)[0] for rel in rels}
        for s, rels in (("train", [r for r, _ in train]), ("test", test))
    }
    assert not groups["train"] & groups["test"]
    assert all(Path(rel).name.startswith(f"v_{rel.split('/')[0]}_g") for rel in test)


def test_classes_json_tags_families(mixed: Path) -> None:
    meta = json.loads((mixed / "classes.json").read_text())
    assert meta["seed"] == 3 and meta["settings"]["frames"] == FRAMES and meta["settings"]["intra"] is True
    assert {f: len(names) for f, names in meta["families"].items()} == {
        "appearance": 5,
        "order": 20,
        "motion": 4,
    }
    families = class_families(mixed)
    assert (
        families["App3"] == "appearance"
        and families["Ord4Then2"] == "order"
        and families["MotUp"] == "motion"
    )
    assert [c["class_ind"] for c in meta["classes"]] == list(range(1, 30))


def test_the_project_ucf101_loader_reads_it(mixed: Path) -> None:
    train = load_manifest("ucf101", mixed / "videos", mixed / "splits", split=1, subset="train")
    test = load_manifest("ucf101", mixed / "videos", mixed / "splits", split=1, subset="test")
    assert len(train) == len(test) == 29
    assert train.class_names == [c.name for c in class_list("mixed")]
    assert sorted(train.labels) == list(range(29))


def test_videos_decode_with_decord_to_the_right_frames_and_size(mixed: Path) -> None:
    for rel in lines(mixed / "splits" / "testlist01.txt")[::4]:
        reader = decord.VideoReader(str(mixed / "videos" / rel))
        assert len(reader) == FRAMES
        assert reader[0].shape == (SIZE, SIZE, 3)


def sprite_colour(frames: np.ndarray) -> np.ndarray:
    """Mean RGB (0..1) of the saturated pixels: the background is grey, so they are the digit's."""
    f = frames.astype(np.float32) / 255.0
    saturated = (f.max(axis=-1) - f.min(axis=-1)) > 0.35
    assert saturated.sum() > 20 * len(frames), "the digit should be visible in every frame"
    return f[saturated].mean(axis=0)


def nearest_digit(rgb: np.ndarray) -> int:
    return min(COLOURS, key=lambda d: float(np.sum((np.asarray(COLOURS[d]) - rgb) ** 2)))


def test_order_classes_show_digit_a_then_digit_b(mixed: Path) -> None:
    for rel, _ in (line.split() for line in lines(mixed / "splits" / "trainlist01.txt")):
        cls = next(c for c in class_list("mixed") if c.name == rel.split("/")[0])
        if cls.family == "motion":
            continue
        video = decode(mixed / "videos" / rel)
        half = FRAMES // 2
        first, second = nearest_digit(sprite_colour(video[:half])), nearest_digit(sprite_colour(video[half:]))
        assert (first, second) == (cls.digits[0], cls.digits[-1]), rel


def test_motion_classes_move_the_digit_in_their_direction(mixed: Path) -> None:
    for cls in (c for c in class_list("mixed") if c.family == "motion"):
        video = decode(next((mixed / "videos" / cls.name).glob("*.mp4"))).astype(np.float32)
        mask = (video.max(axis=-1) - video.min(axis=-1)) > 90  # the coloured digit
        axis = 1 if DIRECTIONS[cls.direction][0] else 2  # rows move for Down/Up, columns for Right/Left
        shifts = range(-6, 7)
        # The shift (with wrap-around) that best maps frame t onto frame t + 2, summed over the video.
        overlap = [np.sum(np.roll(mask[:-2], s, axis=axis) & mask[2:]) for s in shifts]
        step = list(shifts)[int(np.argmax(overlap))]
        assert np.sign(step) == sum(DIRECTIONS[cls.direction]), (cls.name, step)


def test_gap_blanks_the_middle_of_order_videos(tmp_path: Path) -> None:
    generate(tmp_path, n_train=1, n_test=0, frames=16, size=32, task="order", gap=8, progress=False)
    video = decode(next((tmp_path / "videos").rglob("*.mp4"))).astype(np.float32) / 255.0
    coloured = ((video.max(axis=-1) - video.min(axis=-1)) > 0.35).sum(axis=(1, 2))
    assert (coloured[4:12] == 0).all() and (coloured[:4] > 20).all() and (coloured[12:] > 20).all()


def test_same_seed_same_videos_other_seed_other_videos(tmp_path: Path) -> None:
    kwargs = dict(n_test=0, frames=8, size=32, task="order", progress=False)
    generate(tmp_path / "a", n_train=3, seed=7, **kwargs)
    generate(tmp_path / "b", n_train=2, seed=7, workers=1, **kwargs)  # fewer videos: the first ones match
    generate(tmp_path / "c", n_train=2, seed=8, **kwargs)
    for rel in lines(tmp_path / "b" / "splits" / "testlist01.txt") + [
        line.split()[0] for line in lines(tmp_path / "b" / "splits" / "trainlist01.txt")
    ]:
        a, b, c = (decode(tmp_path / d / "videos" / rel) for d in "abc")
        assert np.array_equal(a, b)
        assert np.abs(a.astype(int) - c).mean() > 2.0


def test_cli_writes_refuses_a_non_empty_folder_and_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "synth",
        str(out),
        "--train",
        "4",
        "--test",
        "4",
        "--frames",
        "8",
        "--size",
        "32",
        "--task",
        "motion",
    ]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (
        len(lines(out / "splits" / "trainlist01.txt")) == 4
        and len(lines(out / "splits" / "classInd.txt")) == 4
    )
    assert len(decord.VideoReader(str(next((out / "videos" / "MotLeft").glob("*.mp4"))))) == 8

    refused = runner.invoke(app, [*args, "--quiet"])
    message = " ".join(refused.output.split())  # rich wraps long lines
    assert refused.exit_code == 1 and "is not empty" in message and "Traceback" not in message

    again = runner.invoke(app, [*args, "--seed", "1", "--overwrite", "--quiet"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "classes.json").read_text())["seed"] == 1

    bad = runner.invoke(app, ["synth", str(tmp_path / "bad"), "--task", "colour"])
    assert bad.exit_code == 2 and "order" in bad.output
