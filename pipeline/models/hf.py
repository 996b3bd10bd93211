"""Hugging Face ``transformers`` video and image models: ``--backbone hf:<model id or local folder>``.

Video models take the whole clip: VideoMAE, V-JEPA 2 (encoder only), TimeSformer, ViViT and X-CLIP's vision
tower (frames with cross-frame message tokens, so its clip length is fixed by its config). Image models run
per frame (CLIP vision, DINOv2, SigLIP vision) and their frame embeddings are averaged over time; their map
keeps every frame (T' = T). The model class is chosen from ``config.json``'s ``model_type``.

Preprocessing comes from the folder's own JSON files, never from ``transformers``' processor classes (the
fast ones import torchvision): ``video_preprocessor_config.json`` or ``preprocessor_config.json`` give
``image_mean`` / ``image_std`` (with ``rescale_factor`` / ``offset`` folded in, so ViViT's [-1, 1] rescale
is kept exactly), the crop (``crop_size``, else ``size``) and the short-side resize (``size.shortest_edge``);
``config.json`` gives the frames per clip (``num_frames`` / ``frames_per_clip``), tubelet and patch size.
What a folder lacks is taken from the family's processor defaults in ``transformers`` (read off its source,
listed in :data:`FAMILIES`); the frame stride is never in those files and is the family's paper value or our
choice (docs/models.md). Where each value came from is recorded in the store under ``backbone.source``.

Pools: ``pooler`` (the model's own pooled output), ``cls`` (the first token of the last hidden state), ``avg``
/ ``max`` over the patch tokens. The feature map is the patch tokens as (T', H', W', C).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from vcache.models.base import Preprocessing, VideoBackbone
from vcache.models.registry import register_prefix

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Family:
    """One ``model_type``: the class that loads it and its defaults (``transformers`` processor defaults)."""

    cls: str  # transformers class name
    video: bool  # True: the clip goes in whole; False: frame by frame
    pool: str  # default pool
    pools: tuple[str, ...]
    prefix_tokens: int  # tokens before the patches in last_hidden_state (CLS)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_ratio: float  # resize_short / input_size when the folder does not say
    frame_stride: int
    why: str  # where the pool and stride come from
    order: str = "thw"  # patch token order in last_hidden_state
    rescale_offset: bool = False  # ViViT: x / 127.5 - 1 before the mean / std
    image_frames: int = 8  # clip length of image models (our choice)
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra from_pretrained kwargs


FAMILIES: dict[str, Family] = {
    "videomae": Family(
        "VideoMAEModel", True, "avg", ("avg", "max"), 0, HALF, HALF, 1.0, 4,
        "mean of patch tokens as VideoMAE's fine-tuning (use_mean_pooling); 16 x 4 is its Kinetics clip",
    ),
    "vjepa2": Family(
        "VJEPA2Model", True, "avg", ("avg", "max"), 0, IMAGENET_MEAN, IMAGENET_STD, 256 / 224, 4,
        "mean of the encoder's patch tokens (its attentive probe is trained per task); stride 4 our choice",
    ),
    "timesformer": Family(
        "TimesformerModel", True, "cls", ("cls", "avg", "max"), 1, IMAGENET_MEAN, IMAGENET_STD, 1.0, 32,
        "CLS as TimeSformer's classifier and SVT; 8 x 1/32 as TimeSformer's implementation details",
        order="hwt",
    ),
    "vivit": Family(
        "VivitModel", True, "cls", ("cls", "avg", "max"), 1, HALF, HALF, 256 / 224, 2,
        "CLS as ViViT's classifier; 32 frames at stride 2, ViViT's Kinetics setting",
        rescale_offset=True, kwargs=(("add_pooling_layer", False),),
    ),
    "xclip": Family(
        "XCLIPVisionModel", False, "pooler", ("pooler", "cls", "avg", "max"), 1, CLIP_MEAN, CLIP_STD, 1.0, 8,
        "per-frame pooler (post-layernorm CLS) averaged over time; MIT and projection not applied",
    ),
    "clip": Family(
        "CLIPVisionModel", False, "pooler", ("pooler", "cls", "avg", "max"), 1, CLIP_MEAN, CLIP_STD, 1.0, 8,
        "per-frame pooler (post-layernorm CLS) averaged over time; stride our choice",
    ),
    "dinov2": Family(
        "Dinov2Model", False, "pooler", ("pooler", "cls", "avg", "max"), 1, IMAGENET_MEAN, IMAGENET_STD,
        256 / 224, 8, "per-frame pooler (layernormed CLS) averaged over time; stride our choice",
    ),
    "siglip": Family(
        "SiglipVisionModel", False, "pooler", ("pooler", "avg", "max"), 0, HALF, HALF, 1.0, 8,
        "per-frame pooler (attention-pooling head) averaged over time; stride our choice",
    ),
}  # fmt: skip
ALIASES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip", "xclip_vision_model": "xclip"}
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def resolve(spec: str) -> tuple[Path, str | None]:
    """A local folder as it is, or a hub id downloaded (or found in the cache offline): (folder, revision)."""
    if not spec:
        raise ValueError("give 'hf:<model id or local folder>'")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder.resolve(), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ValueError(f"no model folder at {spec!r}")
    try:
        from huggingface_hub import snapshot_download

        got = Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as e:  # offline, unknown repo, gated: one line
        offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if _offline() else ""
        raise ValueError(f"cannot get model {spec!r} from the hub{offline}: {_first_line(e)}") from None
    return got, got.name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {_first_line(e)}") from None


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the weight files (name and content hash of each, sorted): the store's checkpoint hash."""
    from vcache.models.build import file_sha256

    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _side(v: Any) -> int | None:
    """A processor size entry (int, {"height", "width"}, {"shortest_edge"}) as one side, else None."""
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, dict):
        for k in ("height", "shortest_edge"):
            if k in v:
                return int(v[k])
    return None


def read_preprocessing(folder: Path, config: dict, family: Family) -> tuple[Preprocessing, dict]:
    """Preprocessing of a model folder and, for each value, where it came from (recorded in the store)."""
    proc, proc_name = {}, None
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            proc, proc_name = _read_json(folder / name), name
            break
    vision = config.get("vision_config") or config
    default = f"{family.cls} default"
    src: dict[str, Any] = {}

    mean, std = proc.get("image_mean"), proc.get("image_std")
    src["mean_std"] = f"{proc_name} image_mean/image_std" if mean and std else default
    mean, std = tuple(mean or family.mean), tuple(std or family.std)
    if not proc.get("do_normalize", True):
        mean, std, src["mean_std"] = (0.0,) * 3, (1.0,) * 3, f"{proc_name} do_normalize false"
    offset = bool(proc.get("offset", family.rescale_offset))
    rf = float(proc.get("rescale_factor", 1 / 127.5 if offset else 1 / 255))
    # the processor computes ((x * rf - offset) - m) / s; the engine computes (x / 255 - M) / S
    mean = tuple((float(offset) + m) / (255 * rf) for m in mean)
    std = tuple(s / (255 * rf) for s in std)
    if offset or rf != 1 / 255:
        src["mean_std"] += f" with rescale_factor {rf:g}" + (" and offset -1" if offset else "")

    crop = _side(proc.get("crop_size")) if proc.get("do_center_crop", True) else None
    size = _side(proc.get("size"))
    native = vision.get("image_size", vision.get("crop_size"))
    native = int(native[0] if isinstance(native, (list, tuple)) else native) if native else None
    input_size = crop or size or native
    src["input_size"] = (
        f"{proc_name} crop_size" if crop else f"{proc_name} size" if size else "config.json image_size"
    )
    if input_size is None:
        raise ValueError(f"{folder}: neither the preprocessor files nor config.json give an image size")
    short = (proc.get("size") or {}).get("shortest_edge") if isinstance(proc.get("size"), dict) else None
    resize_short = int(short) if short else round(input_size * family.resize_ratio)
    src["resize_short"] = f"{proc_name} size.shortest_edge" if short else f"{default} ratio"

    frames = vision.get("num_frames", vision.get("frames_per_clip"))
    if not family.video and family.cls != "XCLIPVisionModel":
        frames, src["clip_frames"] = family.image_frames, "our choice (image model)"
    else:
        src["clip_frames"] = "config.json num_frames/frames_per_clip"
    src["frame_stride"] = family.why
    pre = Preprocessing(
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        input_size=int(input_size),
        resize_short=int(resize_short),
        clip_frames=int(frames),
        frame_stride=family.frame_stride,
        pool=family.pool,
    )
    return pre, src


def _patch_and_tubelet(vision: dict) -> tuple[int, int]:
    patch = vision.get("patch_size", 16)
    tub = vision.get("tubelet_size", 1)
    if isinstance(tub, (list, tuple)):  # ViViT: [t, h, w]
        tub, patch = tub[0], tub[1]
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch), int(tub)


class HFBackbone(VideoBackbone):
    """A ``transformers`` model behind the VideoBackbone contract (see the module docstring)."""

    def __init__(self, model: nn.Module, family_name: str, pre: Preprocessing, source: dict) -> None:
        super().__init__(pre)
        self.model = model
        self.family_name = family_name
        self.family = FAMILIES[family_name]
        self.pools = self.family.pools
        self._source = source
        vision = model.config.to_dict()
        self.patch, self.tubelet = _patch_and_tubelet(vision)
        self.hidden = int(vision["hidden_size"])
        self.native_size = int(source["image_size"])  # the size its position embeddings were made for
        self.fixed_frames = int(vision["num_frames"]) if family_name == "xclip" else None
        params = inspect.signature(model.forward).parameters
        self.can_interpolate = "interpolate_pos_encoding" in params
        self.extra_kwargs = {"skip_predictor": True} if "skip_predictor" in params else {}

    def weights_module(self) -> nn.Module:
        return self.model

    def provenance(self) -> dict:
        return dict(self._source)

    @property
    def feature_dim(self) -> int:
        return self.hidden

    def map_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
        t = int(frames) // self.tubelet if self.family.video else int(frames)
        return t, int(size) // self.patch, int(size) // self.patch, self.hidden

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, _, t, h, w = x.shape
        if self.fixed_frames is not None and t != self.fixed_frames:
            raise ValueError(f"X-CLIP's vision tower takes {self.fixed_frames} frames per clip, got {t}")
        kw = dict(self.extra_kwargs)
        if self.can_interpolate and (h != self.native_size or w != self.native_size):
            kw["interpolate_pos_encoding"] = True
        frames = x.transpose(1, 2)  # (B, T, 3, H, W): the layout transformers' video models take
        if not self.family.video:
            frames = frames.reshape(b * t, *frames.shape[2:])
        out = self.model(frames, **kw)
        tokens = out.last_hidden_state
        tt, gh, gw, c = self.map_shape(t, h)
        n = 1 if self.family.video else t  # batch items per clip: 1 clip, or T frames
        first = self.family.prefix_tokens
        patches = tokens[:, first : first + tt * gh * gw // n]  # without the CLS token
        if self.family.order == "hwt":
            fmap = patches.reshape(b, gh, gw, tt, c).permute(0, 3, 1, 2, 4)
        else:
            fmap = patches.reshape(b, tt, gh, gw, c)
        pool = self.preprocessing.pool
        if pool == "pooler":
            pooled = out.pooler_output.reshape(b, n, -1).mean(dim=1)
        elif pool == "cls":
            pooled = tokens[:, 0].reshape(b, n, -1).mean(dim=1)
        elif pool == "avg":
            pooled = fmap.mean(dim=(1, 2, 3))
        elif pool == "max":
            pooled = fmap.amax(dim=(1, 2, 3))
        else:
            raise ValueError(f"unknown pool {pool!r} (choose from {', '.join(self.pools)})")
        return pooled, fmap.contiguous()


def load_model(spec: str) -> HFBackbone:
    """Load ``spec`` (a folder or hub id); every failure is a one-line ValueError."""
    folder, revision = resolve(spec)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a Hugging Face model folder")
    config = _read_json(folder / "config.json")
    model_type = str(config.get("model_type", ""))
    family_name = ALIASES.get(model_type, model_type)
    if family_name not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise ValueError(
            f"model type {model_type or '(none)'!r} of {spec!r} is not a video or image model vcache runs "
            f"(supported: {supported})"
        )
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise ValueError(f"{folder} has no weights ({' or '.join(_WEIGHTS[::2])})")
    family = FAMILIES[family_name]
    import transformers

    cls = getattr(transformers, family.cls)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no per-tensor bar in an extraction's log
    try:
        model, info = cls.from_pretrained(
            str(folder), output_loading_info=True, local_files_only=True, **dict(family.kwargs)
        )
    except Exception as e:
        raise ValueError(f"cannot load {spec!r} as {family.cls}: {_first_line(e)}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"the weights in {folder} lack {len(missing)} tensors {family.cls} needs "
            f"(e.g. {', '.join(missing[:3])})"
        )
    pre, src = read_preprocessing(folder, config, family)
    vision = model.config.to_dict()
    native = vision.get("image_size", vision.get("crop_size"))
    source = {
        "format": "huggingface",
        "model_type": model_type,
        "class": family.cls,
        "revision": revision,
        "transformers": transformers.__version__,
        "image_size": int(native[0] if isinstance(native, (list, tuple)) else native),
        "patch_size": _patch_and_tubelet(vision)[0],
        "tubelet_size": _patch_and_tubelet(vision)[1],
        "time_pool": "mean" if not family.video else None,
        "preprocessing_source": src,
    }
    bb = HFBackbone(model.float(), family_name, pre, source)
    bb.checkpoint, bb.checkpoint_sha256 = str(folder), weights_sha256(folder)
    return bb


@register_prefix("hf")
def hf_backbone(spec: str, **kwargs: Any) -> VideoBackbone:
    """``hf:<model id or local folder>``: a ``transformers`` video model, or an image model per frame."""
    if kwargs:
        raise ValueError(f"hf backbones take no factory arguments, got {sorted(kwargs)}")
    return load_model(spec)
