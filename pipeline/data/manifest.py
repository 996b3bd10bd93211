"""The manifest, what extraction needs from a dataset: videos under one root, a class index per video (-1
when unknown), the class names and the provenance (`source`); and the small checks the format readers in
`vcache.data.datasets` share, each raising `ManifestError` with a one-line message naming the file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

FORMATS = ("folder", "csv", "ucf101", "hmdb51", "kinetics", "ssv2")
DEFAULT_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")

# Spellings of a subset name found in official files and in users' habits, mapped to one canonical name.
SUBSET_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


class ManifestError(ValueError):
    """A dataset copy or its annotation files do not match the requested format (a user mistake)."""


@dataclass
class Manifest:
    """The videos of one dataset split: ``root / paths[i]`` has class ``labels[i]`` (-1 = unknown)."""

    root: Path
    paths: list[str]
    labels: list[int]
    class_names: list[str]
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def to_dict(self) -> dict:
        """A JSON-safe summary for store attributes: provenance and class names, no per-video lists."""
        return {
            "root": str(self.root),
            "num_videos": len(self.paths),
            "num_labelled": sum(1 for label in self.labels if label >= 0),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            **self.source,
        }


Loaded = tuple[list[str], list[int], list[str], dict]


def finish(root: Path, paths: list[str], labels: list[int], class_names: list[str], source: dict) -> Manifest:
    """Drop exact duplicate entries, refuse contradictory ones and empty results, count missing files."""
    seen: dict[str, int] = {}
    out_paths: list[str] = []
    out_labels: list[int] = []
    for path, label in zip(paths, labels, strict=True):
        if path in seen:
            if seen[path] != label:
                raise ManifestError(
                    f"{path} is listed twice with different labels ({seen[path]} and {label})"
                )
            continue
        seen[path] = label
        out_paths.append(path)
        out_labels.append(label)
    what = source.get("annotations") or str(root)
    what = ", ".join(what) if isinstance(what, list) else what
    if not out_paths:
        raise ManifestError(f"no videos found for subset {source.get('subset')!r} in {what}")
    source = dict(source)
    source["duplicates_dropped"] = len(paths) - len(out_paths)
    if "missing" not in source:
        source["missing"] = sum(1 for p in out_paths if not (root / p).is_file())
    return Manifest(root=root, paths=out_paths, labels=out_labels, class_names=class_names, source=source)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers, stripped of CR/LF and outer spaces."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read annotation file {path}: {e}") from None
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ManifestError(f"{what} {path} is not a directory")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ManifestError(f"{what} {path} does not exist")
    return path


def relative(root: Path, raw: str, where: str) -> str:
    """A listed path as a clean POSIX path relative to root (absolute paths must lie under root)."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise ManifestError(f"{where}: empty path")
    if text.startswith("/"):
        absolute = Path(os.path.normpath(text))
        for base in (root.absolute(), root.resolve()):
            if absolute.is_relative_to(base):
                text = absolute.relative_to(base).as_posix()
                break
        else:
            raise ManifestError(f"{where}: absolute path {raw.strip()} is not under root {root}")
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        raise ManifestError(f"{where}: path {raw.strip()} leaves the video root")
    return rel.as_posix()


def subset_name(subset: str, allowed: tuple[str, ...], fmt: str) -> str:
    canonical = SUBSET_ALIASES.get(str(subset).strip().lower())
    if canonical not in allowed:
        raise ManifestError(f"subset {subset!r} is not valid for {fmt}; expected one of {', '.join(allowed)}")
    return canonical


def split_number(split: int, fmt: str) -> int:
    # UCF-101 and HMDB-51 each ship exactly three official train/test splits.
    if isinstance(split, bool) or split not in (1, 2, 3):
        raise ManifestError(f"split {split!r} is not valid for {fmt}; the official splits are 1, 2 and 3")
    return int(split)


def is_video(name: str, exts: tuple[str, ...]) -> bool:
    # Hidden files are skipped: macOS leaves "._name.mp4" resource forks beside real videos.
    return not name.startswith(".") and name.lower().endswith(exts)


def norm_name(name: str) -> str:
    """Class-name key that ignores case, spaces, underscores and punctuation (folder-name variants)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())
