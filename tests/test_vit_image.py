"""SVT from an image ViT (issue 14): a DINO / timm-style state dict loads into the video ViT, and at load
time the video model is the image model applied to every frame (TimeSformer's zero temporal output)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vcache.models import build_backbone
from vcache.pretrain.vit_image import image_to_video_state, load_image_vit

DIM, DEPTH, HEADS, PATCH, SIZE = 48, 2, 3, 8, 32


class ImageViT(nn.Module):
    """A timm / DINO ViT written out with their parameter names, as an independent reference."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, DIM) * 0.1)
        self.blocks = nn.ModuleList()
        for _ in range(DEPTH):
            blk = nn.Module()
            blk.norm1, blk.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
            blk.attn = nn.Module()
            blk.attn.qkv, blk.attn.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
            blk.mlp = nn.Module()
            blk.mlp.fc1, blk.mlp.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)  # DINO / timm carry a head; the loader ignores it
        for p in self.parameters():  # no default init: every weight should matter
            nn.init.normal_(p, std=0.1)

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch_embed.proj(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), 1, DIM), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            h = blk.norm1(x)
            q, k, v = blk.attn.qkv(h).reshape(len(x), -1, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (DIM // HEADS) ** 0.5, dim=-1) @ v
            x = x + blk.attn.proj(a.transpose(1, 2).reshape(len(x), -1, DIM))
            x = x + blk.mlp.fc2(nn.functional.gelu(blk.mlp.fc1(blk.norm2(x))))
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


def video_vit():
    torch.manual_seed(1)
    return build_backbone(
        "vit_video_tiny", img_size=SIZE, patch_size=PATCH, num_frames=4, dim=DIM, depth=DEPTH, heads=HEADS
    ).eval()


def test_video_model_starts_as_the_image_model(tmp_path) -> None:
    torch.manual_seed(0)
    image = ImageViT(SIZE // PATCH).eval()
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in image.state_dict().items()}}, path)  # DINO layout
    video = video_vit()
    ignored = load_image_vit(video, path)
    assert ignored == ["head.weight", "head.bias"]
    frames = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        cls_img, tok_img = image(frames)
        for i in range(3):  # each frame as a 1-frame clip
            cls_vid, maps = video(frames[i][None, :, None])
            torch.testing.assert_close(cls_vid[0], cls_img[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(maps[0, 0].reshape(-1, DIM), tok_img[i], atol=1e-5, rtol=1e-5)
        # a 4-frame clip of one frame repeated: every frame's tokens are the image model's
        clip = frames[0][None, :, None].expand(1, 3, 4, SIZE, SIZE)
        cls_vid, maps = video(clip)
        torch.testing.assert_close(cls_vid[0], cls_img[0], atol=1e-5, rtol=1e-5)
        for t in range(4):
            torch.testing.assert_close(maps[0, t].reshape(-1, DIM), tok_img[0], atol=1e-5, rtol=1e-5)


def test_key_mapping_and_its_errors() -> None:
    image = ImageViT(SIZE // PATCH)
    video = video_vit()
    state, _ = image_to_video_state(image.state_dict(), video)
    sd = image.state_dict()
    assert torch.equal(
        state["blocks.1.attn_t.qkv.weight"], sd["blocks.1.attn.qkv.weight"]
    )  # TimeSformer copy
    assert torch.equal(state["blocks.1.norm_t.bias"], sd["blocks.1.norm1.bias"])
    assert torch.equal(state["blocks.0.mlp.2.weight"], sd["blocks.0.mlp.fc2.weight"])
    assert not state["blocks.0.attn_t.proj.weight"].any() and not state["time_embed"].any()
    # another grid: pos_embed resized (the CLS slot kept)
    other = ImageViT(8)
    state, _ = image_to_video_state(other.state_dict(), video)
    assert state["pos_embed"].shape == video.pos_embed.shape
    assert torch.equal(state["pos_embed"][:, 0], other.pos_embed[:, 0].detach())
    del sd["blocks.1.norm2.weight"]
    with pytest.raises(KeyError, match="norm_mlp"):
        image_to_video_state(sd, video)
    deeper = {**image.state_dict(), "blocks.5.norm1.weight": torch.ones(DIM)}
    with pytest.raises(KeyError, match="blocks.5"):
        image_to_video_state(deeper, video)
