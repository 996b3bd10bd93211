"""Dataset manifests: turn a user's local copy of a dataset into (relative video path, label) pairs.

The extraction engine only needs a list of videos under one root, a class index per video (-1 when
unknown) and the class names; everything else about a dataset (its official split files, their quirks)
is handled here, once. A `Manifest` also carries `source`, the provenance recorded in the store's
attributes: which format, which annotation files, which split and subset, and how many listed videos
were not found on disk.

Formats (`load_manifest(fmt, root, annotations, split, subset)`):

- ``folder``: ``root/<class>/**/<video>``. Classes are the sub-folders of root that hold at least one
  video, sorted by name; videos are found recursively below the class folder. ``annotations`` and
  ``split`` are unused; ``subset`` only names the split in the provenance. A flat folder (videos directly
  in root, no class folders) is a set of unlabelled videos (labels -1, no classes); beside class folders,
  videos directly in root are left out and counted in ``source["loose_videos_ignored"]``.
- ``csv``: a CSV file (``annotations``) whose header has a ``path`` column and usually a ``label`` column
  (no label column: every label is -1). Labels are either all integers (kept as they are, -1 = unknown)
  or class names (sorted alphabetically). Paths are relative to root; absolute paths are accepted when
  they lie under root. An optional ``split`` (or ``subset``) column selects the rows of ``subset``; class
  names are then taken from all rows so train and test manifests share their indices.
- ``ucf101``: the official ``ucfTrainTestlist`` folder (``annotations``): ``classInd.txt``,
  ``trainlist0N.txt``, ``testlist0N.txt``; split 1-3, subset train|test. Labels come from the class
  folder of each path through classInd, 0-based, matched case-insensitively: the official release spells
  one class both "HandstandPushups" and "HandStandPushups". A class folder whose case differs on disk
  is written with the on-disk spelling. A train-list index that disagrees with the folder is an error.
- ``hmdb51``: the official folder of ``<class>_test_split<N>.txt`` files (``annotations``), lines
  ``<video> <0|1|2>``: 1 = train, 2 = test, 0 = in neither (excluded). Videos at ``root/<class>/<video>``.
  Split 1-3, subset train|test; classes sorted.
- ``kinetics``: a Kinetics CSV (label, youtube_id, time_start, time_end, split[, is_cc]) or a folder
  holding ``train.csv`` / ``validate.csv`` (or ``val.csv``) / ``test.csv``. Each row names the file
  ``{youtube_id}_{time_start:06d}_{time_end:06d}`` with any of ``extensions`` (``.mp4`` preferred),
  looked up both at ``root/<label>/<file>`` and at ``root/<file>``. Listed files that are not on disk are
  kept (extraction marks them failed "missing") and counted in ``source["missing"]``.
- ``ssv2``: the folder (``annotations``) with ``something-something-v2-labels.json`` (template -> index)
  and ``something-something-v2-{train,validation,test}.json`` (the short names ``labels.json``,
  ``train.json``... are accepted too). Videos at ``root/<id>.webm`` (another extension from
  ``extensions`` is used when only that one exists). Subset train|validation (``val`` is an alias);
  ``test`` reads the unlabelled test list (labels -1) and is refused when there is none, rather than
  silently standing in for validation.

Every user mistake raises `ManifestError` with a one-line message naming the file (and line).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from vcache.data.manifest import (
    DEFAULT_EXTENSIONS,
    FORMATS,
    SUBSET_ALIASES,
    Loaded,
    Manifest,
    ManifestError,
    finish,
    is_video,
    need_dir,
    need_file,
    norm_name,
    read_lines,
    relative,
    split_number,
    subset_name,
)


def load_manifest(
    fmt: str,
    root: str | Path,
    annotations: str | Path | None = None,
    split: int = 1,
    subset: str = "train",
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
) -> Manifest:
    """Build the manifest of a local dataset copy; see the module docstring for each format's layout."""
    if fmt not in FORMATS:
        raise ManifestError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError(f"video root {root} is not a directory")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ManifestError("no video extensions given")
    ann = Path(annotations).expanduser() if annotations is not None else None
    if fmt == "folder":
        return finish(root, *_load_folder(root, subset, exts))
    if ann is None:
        raise ManifestError(f"format {fmt!r} needs an annotations path ({_ANNOTATION_HELP[fmt]})")
    loader = {"csv": _load_csv, "ucf101": _load_ucf101, "hmdb51": _load_hmdb51}.get(fmt)
    if loader is not None:
        return finish(root, *loader(root, ann, split, subset))
    if fmt == "kinetics":
        return finish(root, *_load_kinetics(root, ann, subset, exts))
    return finish(root, *_load_ssv2(root, ann, subset, exts))


_ANNOTATION_HELP = {
    "csv": "a CSV file with a path,label header",
    "ucf101": "the ucfTrainTestlist folder with classInd.txt",
    "hmdb51": "the folder of <class>_test_split<N>.txt files",
    "kinetics": "a Kinetics CSV file or the folder holding train.csv/validate.csv/test.csv",
    "ssv2": "the folder holding something-something-v2-labels.json",
}


# ---------------------------------------------------------------------------------------------- formats


def _load_folder(root: Path, subset: str, exts: tuple[str, ...]) -> Loaded:
    class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class: list[tuple[str, list[str]]] = []
    for name in class_dirs:
        videos = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            videos += [f"{rel_dir}/{f}" for f in filenames if is_video(f, exts)]
        if videos:  # folders without videos (e.g. __MACOSX leftovers) are not classes
            per_class.append((name, sorted(videos)))
    top = sorted(f.name for f in root.iterdir() if f.is_file() and is_video(f.name, exts))
    source = {"format": "folder", "subset": subset}
    if top and per_class:
        source["loose_videos_ignored"] = len(top)
    elif top:  # a flat folder: unlabelled videos
        return top, [-1] * len(top), [], {**source, "unlabelled": True}
    paths = [p for _, videos in per_class for p in videos]
    labels = [i for i, (_, videos) in enumerate(per_class) for _ in videos]
    return paths, labels, [name for name, _ in per_class], source


def _load_csv(root: Path, ann: Path, split: int, subset: str) -> Loaded:
    rows, columns = _read_csv(ann)
    if "path" not in columns:
        raise ManifestError(f"{ann}: header has no 'path' column (found {', '.join(columns) or 'nothing'})")
    split_col = next((c for c in ("split", "subset") if c in columns), None)
    want = subset_name(subset, ("train", "val", "test"), "csv") if split_col else None
    entries: list[tuple[str, str, str]] = []  # (path, raw label, where) of the selected rows
    all_labels: list[str] = []
    for line, row in rows:
        raw_label = (row.get("label") or "").strip()
        all_labels.append(raw_label)
        if split_col and SUBSET_ALIASES.get((row.get(split_col) or "").strip().lower()) != want:
            continue
        where = f"{ann}:{line}"
        entries.append((relative(root, row.get("path") or "", where), raw_label, where))
    known = [label for label in all_labels if label]
    if known and all(re.fullmatch(r"-?\d+", label) for label in known):
        values = [int(label) for label in known]
        if min(values) < -1:
            raise ManifestError(
                f"{ann}: integer labels must be >= 0 (or -1 for unknown), found {min(values)}"
            )
        class_names = [str(i) for i in range(max(values) + 1)]
        labels = [int(raw) if raw else -1 for _, raw, _ in entries]
    else:
        class_names = sorted(set(known))
        index = {name: i for i, name in enumerate(class_names)}
        labels = [index[raw] if raw else -1 for _, raw, _ in entries]
    source = {"format": "csv", "annotations": str(ann), "subset": subset, "split_column": split_col}
    return [p for p, _, _ in entries], labels, class_names, source


def _read_csv(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Rows of a CSV file as dicts keyed by lower-case, stripped column names, with their line numbers."""
    need_file(path, "annotation file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip().lower() for c in next(reader, [])]
            rows = []
            for values in reader:
                if any(v.strip() for v in values):
                    rows.append((reader.line_num, dict(zip(header, values, strict=False))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read CSV file {path}: {e}") from None
    return rows, header


def _load_ucf101(root: Path, ann: Path, split: int, subset: str) -> Loaded:
    need_dir(ann, "UCF-101 annotation folder")
    split = split_number(split, "ucf101")
    subset = subset_name(subset, ("train", "test"), "ucf101")
    class_file = need_file(ann / "classInd.txt", "UCF-101 class list")
    class_names: list[str] = []
    for line, text in read_lines(class_file):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(class_names) + 1:
            raise ManifestError(
                f"{class_file}:{line}: expected '{len(class_names) + 1} <ClassName>', got {text!r}"
            )
        class_names.append(parts[1])
    # Case-insensitive: UCF-101 spells one class both "HandstandPushups" and "HandStandPushups".
    index = {name.lower(): i for i, name in enumerate(class_names)}
    # A class folder on disk may differ in case from the list; use the spelling that exists.
    disk_dirs = {d.name.lower(): d.name for d in root.iterdir() if d.is_dir()}
    list_file = need_file(ann / f"{subset}list{split:02d}.txt", f"UCF-101 {subset} list")
    paths, labels = [], []
    for line, text in read_lines(list_file):
        where = f"{list_file}:{line}"
        parts = text.split()
        rel = relative(root, parts[0], where)
        folder, _, rest = rel.partition("/")
        label = index.get(folder.lower())
        if not rest or label is None:
            raise ManifestError(f"{where}: {rel} is not under a class folder listed in {class_file.name}")
        if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
            raise ManifestError(f"{where}: label {parts[1]} disagrees with class {class_names[label]}")
        paths.append(f"{disk_dirs.get(folder.lower(), folder)}/{rest}")
        labels.append(label)
    files = [str(class_file), str(list_file)]
    return (
        paths,
        labels,
        class_names,
        {"format": "ucf101", "annotations": files, "split": split, "subset": subset},
    )


_HMDB_FILE = re.compile(r"^(.+)_test_split(\d+)\.txt$")


def _load_hmdb51(root: Path, ann: Path, split: int, subset: str) -> Loaded:
    need_dir(ann, "HMDB-51 annotation folder")
    split = split_number(split, "hmdb51")
    subset = subset_name(subset, ("train", "test"), "hmdb51")
    wanted_flag = "1" if subset == "train" else "2"  # HMDB-51 split files: 1 = train, 2 = test, 0 = unused
    files: dict[str, dict[int, Path]] = {}
    for f in ann.iterdir():
        m = _HMDB_FILE.match(f.name)
        if m:
            files.setdefault(m.group(1), {})[int(m.group(2))] = f
    if not files:
        raise ManifestError(f"no <class>_test_split<N>.txt files in HMDB-51 annotation folder {ann}")
    class_names = sorted(files)
    paths, labels, used = [], [], []
    for label, name in enumerate(class_names):
        split_file = files[name].get(split)
        if split_file is None:
            raise ManifestError(f"HMDB-51 annotation folder {ann} has no {name}_test_split{split}.txt")
        used.append(str(split_file))
        for line, text in read_lines(split_file):
            parts = text.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ManifestError(f"{split_file}:{line}: expected '<video> <0|1|2>', got {text!r}")
            if parts[1] == wanted_flag:
                paths.append(relative(root, f"{name}/{parts[0]}", f"{split_file}:{line}"))
                labels.append(label)
    return (
        paths,
        labels,
        class_names,
        {"format": "hmdb51", "annotations": used, "split": split, "subset": subset},
    )


_KINETICS_FILES = {
    "train": ("train.csv",),
    "val": ("validate.csv", "val.csv", "validation.csv"),
    "test": ("test.csv",),
}


def _load_kinetics(root: Path, ann: Path, subset: str, exts: tuple[str, ...]) -> Loaded:
    want = subset_name(subset, ("train", "val", "test"), "kinetics")
    if ann.is_dir():
        present = [ann / n for names in _KINETICS_FILES.values() for n in names if (ann / n).is_file()]
        chosen = next((ann / n for n in _KINETICS_FILES[want] if (ann / n).is_file()), None)
        if chosen is None:
            raise ManifestError(f"Kinetics folder {ann} has none of {', '.join(_KINETICS_FILES[want])}")
    else:
        present, chosen = [ann], ann
    # Class names come from every CSV at hand, so train/val/test manifests share one class index.
    tables = {p: _read_csv(p) for p in present}
    names = sorted(
        {(row.get("label") or "").strip() for rows, _ in tables.values() for _, row in rows} - {""}
    )
    index = {name: i for i, name in enumerate(names)}
    rows, columns = tables[chosen]
    missing_cols = {"youtube_id", "time_start", "time_end"} - set(columns)
    if missing_cols:
        raise ManifestError(f"{chosen}: header lacks Kinetics column(s) {', '.join(sorted(missing_cols))}")
    files = _index_videos(root, exts)
    # Missing files keep the class-folder layout when root uses one (see module docstring).
    has_dirs = any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
    paths, labels, missing = [], [], 0
    for line, row in rows:
        where = f"{chosen}:{line}"
        if "split" in columns and SUBSET_ALIASES.get((row.get("split") or "").strip().lower()) != want:
            continue
        label_name = (row.get("label") or "").strip()
        start, end = _second(row["time_start"], where), _second(row["time_end"], where)
        # The file name used by the Kinetics download scripts: {youtube_id}_{start:06d}_{end:06d}.
        stem = f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"
        found = _pick(files.get(stem, []), label_name, exts)
        if found is None:
            missing += 1
            found = f"{label_name}/{stem}{exts[0]}" if label_name and has_dirs else f"{stem}{exts[0]}"
        paths.append(found)
        labels.append(index[label_name] if label_name else -1)
    source = {
        "format": "kinetics",
        "annotations": [str(p) for p in present],
        "subset": subset,
        "split_column": "split" in columns,
        "missing": missing,
    }
    return paths, labels, names, source


def _second(value: str | None, where: str) -> int:
    try:
        seconds = float((value or "").strip())
    except ValueError:
        raise ManifestError(f"{where}: time {value!r} is not a number") from None
    if seconds != int(seconds) or seconds < 0:
        raise ManifestError(f"{where}: time {value!r} is not a whole number of seconds")
    return int(seconds)


def _index_videos(root: Path, exts: tuple[str, ...]) -> dict[str, list[str]]:
    """Video files at root/<file> and root/<dir>/<file>, keyed by file stem (one directory scan)."""
    index: dict[str, list[str]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as inner:
                    for f in inner:
                        if f.is_file() and is_video(f.name, exts):
                            index.setdefault(os.path.splitext(f.name)[0], []).append(f"{entry.name}/{f.name}")
            elif entry.is_file() and is_video(entry.name, exts):
                index.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
    return index


def _pick(candidates: list[str], label: str, exts: tuple[str, ...]) -> str | None:
    """Prefer a copy in the row's class folder (any spelling of it), then the earliest extension."""
    if not candidates:
        return None
    key = norm_name(label)

    def rank(path: str) -> tuple[int, int, str]:
        folder = path.rpartition("/")[0]
        ext = os.path.splitext(path)[1].lower()
        return (0 if folder and norm_name(folder) == key else 1, exts.index(ext), path)

    return min(candidates, key=rank)


def _load_ssv2(root: Path, ann: Path, subset: str, exts: tuple[str, ...]) -> Loaded:
    need_dir(ann, "SSv2 annotation folder")
    want = subset_name(subset, ("train", "val", "test"), "ssv2")
    labels_file = _ssv2_file(ann, "labels")
    split_file = _ssv2_file(ann, {"train": "train", "val": "validation", "test": "test"}[want])
    templates = _read_json(labels_file)
    if not isinstance(templates, dict) or not templates:
        raise ManifestError(f"{labels_file}: expected a JSON object mapping template -> index")
    try:
        by_index = sorted((int(v), k) for k, v in templates.items())
    except (TypeError, ValueError):
        raise ManifestError(f"{labels_file}: every index must be an integer") from None
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise ManifestError(f"{labels_file}: indices must run 0..{len(by_index) - 1} without gaps")
    class_names = [name for _, name in by_index]
    exact = {name: i for i, name in enumerate(class_names)}
    loose = {_collapse(name): i for i, name in enumerate(class_names)}
    entries = _read_json(split_file)
    if not isinstance(entries, list):
        raise ManifestError(f"{split_file}: expected a JSON list of videos")
    paths, labels = [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ManifestError(f"{split_file}: entry {n} has no 'id'")
        vid = str(entry["id"]).strip()
        paths.append(_with_ext(root, vid, ".webm", exts))
        template = entry.get("template")
        if template is None:  # the test list carries ids only
            labels.append(-1)
            continue
        # SSv2's labels file lists each template with its "[something]" brackets removed.
        name = str(template).replace("[", "").replace("]", "")
        label = exact.get(name.strip(), loose.get(_collapse(name)))
        if label is None:
            raise ManifestError(
                f"{split_file}: video {vid} has template {template!r} not in {labels_file.name}"
            )
        labels.append(label)
    files = [str(labels_file), str(split_file)]
    return paths, labels, class_names, {"format": "ssv2", "annotations": files, "subset": subset}


def _ssv2_file(ann: Path, name: str) -> Path:
    for candidate in (ann / f"something-something-v2-{name}.json", ann / f"{name}.json"):
        if candidate.is_file():
            return candidate
    raise ManifestError(f"SSv2 annotation file {ann / f'something-something-v2-{name}.json'} does not exist")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read JSON file {path}: {e}") from None


def _collapse(text: str) -> str:
    return " ".join(text.lower().split())


def _with_ext(root: Path, stem: str, preferred: str, exts: tuple[str, ...]) -> str:
    """``stem + preferred`` if it exists, else the first existing of ``exts``, else ``stem + preferred``."""
    for ext in (preferred, *exts):
        if (root / f"{stem}{ext}").is_file():
            return f"{stem}{ext}"
    return f"{stem}{preferred}"
