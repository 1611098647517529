"""The official code's AutoAugment CIFAR policy, batched on uint8 (N, 3, H, W) tensors on any device.

Read from ds_pipeline/autoaugment/{autoaugment,policies}.py and ds_pipeline/datasets/augmentation.py in
zhaoyang-0204/gnp (forked from google-research/sam; TF 2.12, tensorflow-addons 0.23) and the TF kernels it
calls. `auto_augmentation` maps cifar10/cifar100 to `policy_cifar`: the 95 "good policies" (exp0_0 …
exp2_7, 19 groups of 5), each two (op, probability, level) steps, with HParams(cutout_const=100,
translate_const=250) and the replace value 128. Per image (`select_and_apply_random_policy`): one
sub-policy uniformly, then each step applied when floor(u + p) >= 1 in float32, with a sign
(floor(u + 0.5) >= 1: positive) drawn for Rotate/Shear/Translate whether or not the step applies.

Reproduced as TF computes it (float32 where TF is float32, truncating casts to uint8):
- blend: image1 + f·(image2 − image1), clipped, truncated; interpolation (0 < f < 1) never leaves
  [0, 255], and f = 0 or 1 give image1 or image2 exactly, so one formula covers all three branches.
- Color: grayscale as tf.image.rgb_to_grayscale: x·(1/255) dotted with (0.2989, 0.5870, 0.1140),
  times 255.5, truncated. Contrast: the official "mean" is the sum of the 256-bin histogram over 256,
  i.e. H·W/256 whatever the pixels (4 for 32×32), so it blends towards that constant. Brightness
  blends towards 0. Sharpness: TF's depthwise 3×3 [[1,1,1],[1,5,1],[1,1,1]]/13 accumulated tap by tap
  in row-major order with fused multiply-adds (TF 2.12's default oneDNN kernel), truncated; the
  one-pixel border keeps the original.
- Solarize (x < t ? x : 255 − x), SolarizeAdd (unused by this policy), Posterize (x >> s << s, TF
  clamps s to 7), Invert, AutoContrast per channel (scale = 255/(hi − lo), x·scale − lo·scale, clipped;
  unchanged when hi == lo), Equalize per channel with TF's LUT (step = (H·W − count of the top value)
  // 255; identity when 0; lut = [0, (cumsum + step//2) // step][:256], clipped).
- Rotate, ShearX/Y, TranslateX/Y: TF's ImageProjectiveTransformV3, nearest, on the wrapped image: the
  source of output (x, y) is (t0·x + t1·y + t2, t3·x + t4·y + t5) in float32, rounded half away from
  zero; outside the image all channels take 128 (the unwrap). Rotate uses tfa's matrix for a positive
  (counterclockwise) angle: degrees level/10·30, radians in float32. Translate shifts by
  level/10·250 pixels: on 32×32 images any non-zero level leaves a uniform 128 image, as the official
  code does. Shear level/10·0.3.
- Cutout: a 2·pad square, pad = int(level/10·100) (30 or 40 here), centred on a uniform pixel, set to
  128 (the policy passes replace to it), clipped to the image: level 4 covers any 32×32 image.
Checked bit for bit against the official functions under the versions it pins (TensorFlow 2.12.0,
tensorflow-addons 0.23.0) on an x86 CPU with AVX-512/FMA: every op at every level 0–10 and both signs on
600 images (noise, flat blocks, gradients, low contrast; tf.data graph and eager), Cutout and the
selection, gates and signs end to end on 400 images with these draws fed to the official code as its
uniforms, and rgb_to_grayscale on all 2^24 colours.
Differences from TF:
- Randomness comes from `draws`, not TF's Philox stream: a uniform u gives the integer floor(u·n)
  (TF takes random bits mod n, a bias under n/2^32); u is rounded to float32 for the gates and signs.
- cos/sin of the rotation angle are float64 results rounded to float32; for every angle levels 0–10
  produce they equal glibc's cosf/sinf, which TF called here.
- Sharpness follows the oneDNN kernel TF 2.12 uses by default. TF run with TF_ENABLE_ONEDNN_OPTS=0
  (Eigen's kernel, no FMA), and presumably oneDNN on a CPU without FMA, rounds the smoothed value
  differently: it is 1 lower or higher at about 4% of pixels (0.4% on noise, 8% on flat blocks), which
  the blend passes on (to nearly all of them below level 5, to a fraction above).
- Only CPU was checked. The arithmetic is elementwise IEEE float32/float64 (division as a true
  division, no floating-point reductions), so other devices should give the same bytes.
"""

import math

import torch

MAX_LEVEL = 10.0
REPLACE = 128
CUTOUT_CONST, TRANSLATE_CONST = 100, 250  # HParams of distort_image_with_autoaugment

POLICY = (  # policy_cifar: exp0_0..exp0_3, exp1_0..exp1_6, exp2_0..exp2_7, in the official order
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.0, 2)),
    (("TranslateY", 0.7, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.4, 3)),
    (("Equalize", 0.7, 5), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("TranslateY", 0.7, 9)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 1)),
    (("TranslateY", 0.8, 9), ("TranslateY", 0.9, 9)),
    (("AutoContrast", 0.8, 0), ("TranslateY", 0.7, 9)),
    (("TranslateY", 0.2, 7), ("Color", 0.9, 6)),
    (("Equalize", 0.7, 6), ("Color", 0.4, 9)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Brightness", 0.3, 7), ("AutoContrast", 0.5, 8)),
    (("AutoContrast", 0.9, 4), ("AutoContrast", 0.5, 6)),
    (("Solarize", 0.3, 5), ("Equalize", 0.6, 5)),
    (("TranslateY", 0.2, 4), ("Sharpness", 0.3, 3)),
    (("Brightness", 0.0, 8), ("Color", 0.8, 8)),
    (("Solarize", 0.2, 6), ("Color", 0.8, 6)),
    (("Solarize", 0.2, 6), ("AutoContrast", 0.8, 1)),
    (("Solarize", 0.4, 1), ("Equalize", 0.6, 5)),
    (("Brightness", 0.0, 0), ("Solarize", 0.5, 2)),
    (("AutoContrast", 0.9, 5), ("Brightness", 0.5, 3)),
    (("Contrast", 0.7, 5), ("Brightness", 0.0, 2)),
    (("Solarize", 0.2, 8), ("Solarize", 0.1, 5)),
    (("Contrast", 0.5, 1), ("TranslateY", 0.2, 9)),
    (("AutoContrast", 0.6, 5), ("TranslateY", 0.0, 9)),
    (("AutoContrast", 0.9, 4), ("Equalize", 0.8, 4)),
    (("Brightness", 0.0, 7), ("Equalize", 0.4, 7)),
    (("Solarize", 0.2, 5), ("Equalize", 0.7, 5)),
    (("Equalize", 0.6, 8), ("Color", 0.6, 2)),
    (("Color", 0.3, 7), ("Color", 0.2, 4)),
    (("AutoContrast", 0.5, 2), ("Solarize", 0.7, 2)),
    (("AutoContrast", 0.2, 0), ("Equalize", 0.1, 0)),
    (("ShearY", 0.6, 5), ("Equalize", 0.6, 5)),
    (("Brightness", 0.9, 3), ("AutoContrast", 0.4, 1)),
    (("Equalize", 0.8, 8), ("Equalize", 0.7, 7)),
    (("Equalize", 0.7, 7), ("Solarize", 0.5, 0)),
    (("Equalize", 0.8, 4), ("TranslateY", 0.8, 9)),
    (("TranslateY", 0.8, 9), ("TranslateY", 0.6, 9)),
    (("TranslateY", 0.9, 0), ("TranslateY", 0.5, 9)),
    (("AutoContrast", 0.5, 3), ("Solarize", 0.3, 4)),
    (("Solarize", 0.5, 3), ("Equalize", 0.4, 4)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("AutoContrast", 0.1, 5), ("Brightness", 0.0, 0)),
    (("Cutout", 0.2, 4), ("Equalize", 0.1, 1)),
    (("Equalize", 0.7, 7), ("AutoContrast", 0.6, 4)),
    (("Color", 0.1, 8), ("ShearY", 0.2, 3)),
    (("ShearY", 0.4, 2), ("Rotate", 0.7, 0)),
    (("ShearY", 0.1, 3), ("AutoContrast", 0.9, 5)),
    (("TranslateY", 0.3, 6), ("Cutout", 0.3, 3)),
    (("Equalize", 0.5, 0), ("Solarize", 0.6, 6)),
    (("AutoContrast", 0.3, 5), ("Rotate", 0.2, 7)),
    (("Equalize", 0.8, 2), ("Invert", 0.4, 0)),
    (("Equalize", 0.9, 5), ("Color", 0.7, 0)),
    (("Equalize", 0.1, 1), ("ShearY", 0.1, 3)),
    (("AutoContrast", 0.7, 3), ("Equalize", 0.7, 0)),
    (("Brightness", 0.5, 1), ("Contrast", 0.1, 7)),
    (("Contrast", 0.1, 4), ("Solarize", 0.6, 5)),
    (("Solarize", 0.2, 3), ("ShearX", 0.0, 0)),
    (("TranslateX", 0.3, 0), ("TranslateX", 0.6, 0)),
    (("Equalize", 0.5, 9), ("TranslateY", 0.6, 7)),
    (("ShearX", 0.1, 0), ("Sharpness", 0.5, 1)),
    (("Equalize", 0.8, 6), ("Invert", 0.3, 6)),
    (("AutoContrast", 0.3, 9), ("Cutout", 0.5, 3)),
    (("ShearX", 0.4, 4), ("AutoContrast", 0.9, 2)),
    (("ShearX", 0.0, 3), ("Posterize", 0.0, 3)),
    (("Solarize", 0.4, 3), ("Color", 0.2, 4)),
    (("Equalize", 0.1, 4), ("Equalize", 0.7, 6)),
    (("Equalize", 0.3, 8), ("AutoContrast", 0.4, 3)),
    (("Solarize", 0.6, 4), ("AutoContrast", 0.7, 6)),
    (("AutoContrast", 0.2, 9), ("Brightness", 0.4, 8)),
    (("Equalize", 0.1, 0), ("Equalize", 0.0, 6)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 4)),
    (("Equalize", 0.5, 5), ("AutoContrast", 0.1, 2)),
    (("Solarize", 0.5, 5), ("AutoContrast", 0.9, 5)),
    (("AutoContrast", 0.6, 1), ("AutoContrast", 0.7, 8)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.1, 2)),
    (("Equalize", 0.6, 9), ("Equalize", 0.4, 4)),
)

# Columns of `draws`: which sub-policy; whether step 1 / step 2 applies; the sign of step 1 / step 2
# (Rotate, Shear, Translate); the Cutout centre's row and column (no sub-policy has two Cutouts).
CHOICE, GATE_1, GATE_2, SIGN_1, SIGN_2, CUTOUT_ROW, CUTOUT_COL = range(7)
DRAWS = 7

SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
F32 = torch.float32


def level_to_arg(name: str, level: int) -> float:
    """The official level_to_arg in Python float64, before the random sign (SIGNED ops only)."""
    if name in ("AutoContrast", "Equalize", "Invert"):
        return 0.0
    if name == "Rotate":
        return (level / MAX_LEVEL) * 30.0
    if name == "Posterize":
        return float(int((level / MAX_LEVEL) * 4))
    if name == "Solarize":
        return float(int((level / MAX_LEVEL) * 256))
    if name == "SolarizeAdd":
        return float(int((level / MAX_LEVEL) * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (level / MAX_LEVEL) * 1.8 + 0.1
    if name in ("ShearX", "ShearY"):
        return (level / MAX_LEVEL) * 0.3
    if name == "Cutout":
        return float(int((level / MAX_LEVEL) * CUTOUT_CONST))
    if name in ("TranslateX", "TranslateY"):
        return (level / MAX_LEVEL) * float(TRANSLATE_CONST)
    raise KeyError(name)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF's blend with a per-image factor (float32 arithmetic, clip, truncate)."""
    a, b = image1.to(F32), image2.to(F32)
    return (a + _col(factor.to(F32)) * (b - a)).clamp_(0, 255).to(torch.uint8)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x.to(torch.int16) < _col(threshold.to(torch.int16)), x, 255 - x)


def solarize_add(x: torch.Tensor, addition: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    added = (x.to(torch.int64) + _col(addition.to(torch.int64))).clamp_(0, 255).to(torch.uint8)
    return torch.where(x < threshold, added, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """(x >> s) << s as a mask; TF's bitwise shifts clamp s to 7."""
    shift = (8 - bits.to(torch.int64)).clamp(0, 7)
    mask = torch.bitwise_left_shift(torch.full_like(shift, 255), shift) & 255
    return x & _col(mask).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """tf.image.rgb_to_grayscale of uint8 (N, 3, H, W): (N, 1, H, W) uint8."""
    f = x.to(F32) * torch.tensor(1 / 255, dtype=F32)
    w = torch.tensor([0.2989, 0.5870, 0.1140], dtype=F32)
    g = (f[:, 0] * w[0] + f[:, 1] * w[1]) + f[:, 2] * w[2]
    return (g * 255.5).to(torch.uint8).unsqueeze(1)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(_gray(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blends towards sum(histogram)/256 = H·W/256, the official code's "mean"."""
    h, w = x.shape[-2:]
    mean = min(max(float(torch.tensor(h * w, dtype=F32) / 256.0), 0.0), 255.0)
    return blend(torch.full_like(x[:, :1], int(mean)), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros_like(x[:, :1]), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Smooth with PIL's kernel, tap by tap with fused multiply-adds as TF's (oneDNN) depthwise conv; the
    border keeps the original. Every product and partial sum is a multiple of 2^-27 below 2^9, so each
    float64 acc + k·x is exact and rounding it to float32 is the FMA, on any device."""
    h, w = x.shape[-2:]
    result = x.clone()
    if h >= 3 and w >= 3:
        f = x.to(torch.float64)
        k1, k5 = (float(torch.tensor(k, dtype=F32) / torch.tensor(13.0, dtype=F32)) for k in (1.0, 5.0))
        acc = torch.zeros_like(f[..., 1:-1, 1:-1], dtype=F32)
        for dy in range(3):
            for dx in range(3):
                tap = f[..., dy:dy + h - 2, dx:dx + w - 2] * (k5 if dy == dx == 1 else k1)
                acc = (acc.to(torch.float64) + tap).to(F32)
        result[..., 1:-1, 1:-1] = acc.clamp_(0, 255).to(torch.uint8)
    return blend(result, x, factor)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per channel: stretch [lo, hi] to [0, 255] in float32; unchanged when hi == lo."""
    f = x.to(F32)
    lo = f.amin(dim=(-2, -1), keepdim=True)
    hi = f.amax(dim=(-2, -1), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo)  # 255.0 / t would multiply by 1/t
    offset = -lo * scale
    scaled = (f * scale + offset).clamp_(0, 255).to(torch.uint8)
    return torch.where(hi > lo, scaled, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per channel, TF's LUT; the channel is unchanged when its step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top = hist.gather(1, flat.amax(dim=1, keepdim=True))  # count of the highest value present
    step = (h * w - top) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut[:, :-1]], 1).clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(torch.uint8).reshape(n, c, h, w)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """std::round, exactly: torch.round rounds half to even."""
    t = torch.trunc(v)
    frac = v - t
    return (t + (frac >= 0.5).to(F32) - (frac <= -0.5).to(F32)).to(torch.int64)


def _transform(x: torch.Tensor, t: list[torch.Tensor]) -> torch.Tensor:
    """ImageProjectiveTransformV3 (affine, nearest) on the wrapped image: fill 128 outside."""
    n, c, h, w = x.shape
    xs = torch.arange(w, dtype=F32, device=x.device).view(1, 1, w)
    ys = torch.arange(h, dtype=F32, device=x.device).view(1, h, 1)
    t = [v.to(F32).view(-1, 1, 1) for v in t]
    src_x = _round_half_away((t[0] * xs + t[1] * ys) + t[2])
    src_y = _round_half_away((t[3] * xs + t[4] * ys) + t[5])
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = torch.where(inside, src_y * w + src_x, 0).view(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return torch.where(inside.unsqueeze(1), out, torch.full_like(out, REPLACE))


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """tfa.image.rotate: counterclockwise by `degrees`, the official float32 radians."""
    h, w = (torch.tensor(float(s - 1), dtype=F32) for s in x.shape[-2:])
    radians = degrees.to(F32) * torch.tensor(math.pi / 180.0, dtype=F32)
    cos, sin = torch.cos(radians.double()).to(F32), torch.sin(radians.double()).to(F32)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    return _transform(x, [cos, -sin, x_offset, sin, cos, y_offset])


def shear_x(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    return _transform(x, [one, level, zero, zero, one, zero])


def shear_y(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    return _transform(x, [one, zero, zero, level, one, zero])


def translate_x(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Output (x, y) reads input (x + pixels, y): tfa.translate(image, [-pixels, 0])."""
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _transform(x, [one, zero, pixels, zero, one, zero])


def translate_y(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _transform(x, [one, zero, zero, zero, one, pixels])


def cutout(x: torch.Tensor, pad: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Rows [cy − pad, cy + pad) × columns [cx − pad, cx + pad), clipped to the image, set to 128."""
    h, w = x.shape[-2:]
    pad = pad.to(torch.int64).view(-1, 1)
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    cy, cx = centre[:, :1], centre[:, 1:]
    in_rows = (rows >= cy - pad) & (rows < cy + pad)
    in_cols = (cols >= cx - pad) & (cols < cx + pad)
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)
    return torch.where(mask, torch.full_like(x, REPLACE), x)


OPS = {  # name -> f(images, arg, cutout centre)
    "AutoContrast": lambda x, a, c: autocontrast(x),
    "Equalize": lambda x, a, c: equalize(x),
    "Invert": lambda x, a, c: invert(x),
    "Rotate": lambda x, a, c: rotate(x, a),
    "Posterize": lambda x, a, c: posterize(x, a),
    "Solarize": lambda x, a, c: solarize(x, a),
    "SolarizeAdd": lambda x, a, c: solarize_add(x, a),
    "Color": lambda x, a, c: color(x, a),
    "Contrast": lambda x, a, c: contrast(x, a),
    "Brightness": lambda x, a, c: brightness(x, a),
    "Sharpness": lambda x, a, c: sharpness(x, a),
    "ShearX": lambda x, a, c: shear_x(x, a),
    "ShearY": lambda x, a, c: shear_y(x, a),
    "TranslateX": lambda x, a, c: translate_x(x, a),
    "TranslateY": lambda x, a, c: translate_y(x, a),
    "Cutout": lambda x, a, c: cutout(x, a, c),
}
_NAMES = tuple(OPS)
# Per step: (95,) op index, probability, unsigned argument.
_TABLES = tuple(
    (
        torch.tensor([_NAMES.index(sub[s][0]) for sub in POLICY]),
        torch.tensor([sub[s][1] for sub in POLICY], dtype=torch.float64),
        torch.tensor([level_to_arg(sub[s][0], sub[s][2]) for sub in POLICY], dtype=torch.float64),
    )
    for s in range(2)
)
_STEP_OPS = tuple(sorted({_NAMES.index(sub[s][0]) for sub in POLICY}) for s in range(2))
_on_device: dict[torch.device, tuple] = {}


def bernoulli(u: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
    """TF's floor(u + p) as a bool, in float32; u stays below 1 after rounding."""
    u32 = u.to(F32).clamp(max=1.0 - 2.0**-24)
    p32 = p.to(F32) if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=F32)
    return torch.floor(u32 + p32) >= 1.0


def _uniform_int(u: torch.Tensor, n: int) -> torch.Tensor:
    return torch.floor(u * n).to(torch.int64).clamp_(0, n - 1)


def autoaugment(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Apply one sub-policy of POLICY per image, as chosen by its row of `draws` (N, DRAWS) in [0, 1).

    Column CHOICE picks the sub-policy (floor(u·95)); GATE_1/GATE_2 apply step 1/2 when
    floor(u + p) >= 1; SIGN_1/SIGN_2 keep the magnitude of a Rotate/Shear/Translate step positive when
    u >= 0.5, else negate it; CUTOUT_ROW/CUTOUT_COL give the Cutout centre (floor(u·H), floor(u·W)).
    Each image depends only on itself and its row. Work is batched per (step, op).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if draws.shape != (images.shape[0], DRAWS) or not draws.is_floating_point():
        raise ValueError(f"draws must be float (N, {DRAWS}), got {draws.dtype} {tuple(draws.shape)}")
    device = images.device
    if device not in _on_device:
        _on_device[device] = tuple(tuple(t.to(device) for t in step) for step in _TABLES)
    draws = draws.to(device, torch.float64)
    h, w = images.shape[-2:]
    choice = _uniform_int(draws[:, CHOICE], len(POLICY))
    centre = torch.stack([_uniform_int(draws[:, CUTOUT_ROW], h), _uniform_int(draws[:, CUTOUT_COL], w)], 1)
    out = images.clone()
    for step, (ops, probs, args) in enumerate(_on_device[device]):
        op, arg = ops[choice], args[choice]
        apply = bernoulli(draws[:, GATE_1 + step], probs[choice])
        positive = bernoulli(draws[:, SIGN_1 + step], 0.5)
        signed_arg = torch.where(positive, arg, -arg)
        for j in _STEP_OPS[step]:
            index = torch.nonzero(apply & (op == j)).squeeze(1)
            if index.numel() == 0:
                continue
            name = _NAMES[j]
            a = (signed_arg if name in SIGNED else arg)[index]
            out[index] = OPS[name](out[index], a, centre[index])
    return out
