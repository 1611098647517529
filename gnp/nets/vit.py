"""ViT-Ti and ViT-S as the official code defines them (ViT_TI16, ViT_S16 in models/available_models/
vit_model.py of zhaoyang-0204/gnp, after google-research/vision_transformer), built with timm.

timm's VisionTransformer has the official layout (patch convolution, class token, learned position embedding
over every token, pre-norm blocks, final LayerNorm with ε 1e-6, the class token to a linear head) and adds the
drop path (stochastic depth) the paper's heavy setting uses; a hand-written transformer would add nothing but
code to check. What is set here to be the official network:
- dropout 0.1 where the official code puts it: after the position embedding, on the attention weights,
  after the attention's output projection, after the MLP's GELU and after its second dense layer; none
  before the head;
- GELU in its tanh form (Flax's `nn.gelu` default);
- Flax's initializers (timm's "jax" scheme): patch convolution LeCun normal, dense layers Xavier uniform
  (MLP biases N(0, 1e-6), others 0), position embedding N(0, 0.02), and zeros for the head and the class
  token. q, k and v are three (d, d) dense layers there and one fused (d, 3d) layer in timm: each third is
  initialized as its own Xavier-uniform (d, d) matrix, not the fused one (whose bound would be smaller).
Patches are 4×4 for CIFAR's 10 or 100 classes and 16×16 for ImageNet's 1,000, as the official code picks
them. Parameters for 10 classes at 32 px: ViT-Ti 5,362,762, ViT-S 21,342,346. `digits` is the same network
at 4 layers of 64 (208,074 parameters for 10 classes): the embedded demo's, which trains on two CPU cores.
"""

import torch
from torch import nn

from gnp.errors import UserError

SIZES = {"ti": (192, 3, 12), "s": (384, 6, 12), "digits": (64, 4, 4)}  # width, heads, layers; MLP 4× wide
DROPOUT = 0.1


def official_patch(num_classes: int) -> int:
    return 16 if num_classes == 1000 else 4


def vit(size: str, num_classes: int, image_size: int, *, patch_size: int | None = None,
        drop_path: float = 0.0) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    width, heads, depth = SIZES[size]
    patch_size = patch_size or official_patch(num_classes)
    if image_size % patch_size:
        raise UserError(f"patch size {patch_size} does not tile image_size {image_size}; use a patch size that "
                        "divides it (--patch-size)")
    model = VisionTransformer(
        img_size=image_size, patch_size=patch_size, num_classes=num_classes,
        embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0, act_layer="gelu_tanh", weight_init="jax",
        pos_drop_rate=DROPOUT, attn_drop_rate=DROPOUT, proj_drop_rate=DROPOUT, drop_rate=0.0,
        drop_path_rate=drop_path,
    )
    with torch.no_grad():
        nn.init.zeros_(model.cls_token)  # timm's "jax" scheme draws it from N(0, 1e-6)
        for block in model.blocks:
            for part in block.attn.qkv.weight.chunk(3):  # q, k, v: rows of the fused weight
                nn.init.xavier_uniform_(part)
    return model
