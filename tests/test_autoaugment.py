"""The official AutoAugment CIFAR policy: each op against pixels worked out by hand from the TF definitions,
the level mappings, the draws' columns, and per-image independence."""

import time

import numpy as np
import pytest
import torch

from gnp import autoaugment as aa
from gnp.autoaugment import DRAWS, POLICY, autoaugment


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on 2 shared cores, OpenMP's second thread waits on a busy core and each op
    takes up to 100× longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def img(channels):
    """(1, 3, H, W) uint8 from three H×W lists, or one list used for all three channels."""
    t = torch.tensor(channels, dtype=torch.uint8)
    return (t.expand(3, *t.shape) if t.dim() == 2 else t).unsqueeze(0).clone()


def arg(*values):
    return torch.tensor(values, dtype=torch.float64)


def row(k, gate1=0.0, gate2=0.0, sign1=0.9, sign2=0.9, cut_row=0.0, cut_col=0.0):
    """Draws that pick sub-policy k, gates u (applied when u + p >= 1), signs (positive when >= 0.5)."""
    return torch.tensor([[(k + 0.5) / len(POLICY), gate1, gate2, sign1, sign2, cut_row, cut_col]],
                        dtype=torch.float64)


def grid(h, w, f=lambda y, x: 10 * y + x):
    return [[f(y, x) for x in range(w)] for y in range(h)]


def test_policy_is_the_95_cifar_sub_policies():
    """4 + 7 + 8 groups of 5 in policy_cifar; 15 distinct ops (no SolarizeAdd); one Cutout at most."""
    assert len(POLICY) == 95 and DRAWS == 7
    assert all(len(sub) == 2 for sub in POLICY)
    assert POLICY[0] == (("Invert", 0.1, 7), ("Contrast", 0.2, 6))
    assert POLICY[94] == (("Equalize", 0.6, 9), ("Equalize", 0.4, 4))
    names = {op for sub in POLICY for op, _, _ in sub}
    assert names == set(aa.OPS) - {"SolarizeAdd"}
    assert all(sum(op == "Cutout" for op, _, _ in sub) <= 1 for sub in POLICY)


def test_level_to_arg():
    """level/10 · 30°, · 0.3, · 250 px, · 1.8 + 0.1; int(level/10 · 4 | 256 | 100)."""
    assert aa.level_to_arg("Rotate", 2) == pytest.approx(6.0)
    assert aa.level_to_arg("Rotate", 7) == pytest.approx(21.0)
    assert aa.level_to_arg("ShearY", 8) == pytest.approx(0.24)
    assert aa.level_to_arg("TranslateY", 9) == pytest.approx(225.0)
    assert aa.level_to_arg("Color", 6) == pytest.approx(1.18)
    assert aa.level_to_arg("Contrast", 5) == 1.0  # 0.9 + 0.1: blend returns the image
    assert aa.level_to_arg("Brightness", 0) == pytest.approx(0.1)
    assert aa.level_to_arg("Posterize", 7) == 2  # int(2.8)
    assert [aa.level_to_arg("Solarize", v) for v in (0, 3, 5, 8)] == [0, 76, 128, 204]  # int(76.8), int(204.8)
    assert [aa.level_to_arg("Cutout", v) for v in (3, 4)] == [30, 40]
    assert aa.level_to_arg("SolarizeAdd", 3) == 33


def test_invert_solarize_posterize():
    x = img([[0, 127, 128, 200, 255]])
    assert aa.invert(x).tolist() == img([[255, 128, 127, 55, 0]]).tolist()
    assert aa.solarize(x, arg(128)).tolist() == img([[0, 127, 127, 55, 0]]).tolist()
    assert aa.solarize(x, arg(0)).tolist() == img([[255, 128, 127, 55, 0]]).tolist()  # level 0: all inverted
    y = img([[191, 63, 255, 64, 128]])
    assert aa.posterize(y, arg(2)).tolist() == img([[128, 0, 192, 64, 128]]).tolist()  # & 0b11000000
    assert aa.posterize(y, arg(0)).tolist() == img([[128, 0, 128, 0, 128]]).tolist()  # shift 8 clamped to 7
    z = img([[20, 100, 127, 128, 200]])
    assert aa.solarize_add(z, arg(110)).tolist() == img([[130, 210, 237, 128, 200]]).tolist()


def test_brightness():
    """0 + f·x: 1.36 (level 7): 33 → 44.88, 200 → 272 → 255, 7 → 9.52; 0.64 (level 3): 33 → 21.12."""
    x = img([[33, 200, 7]])
    assert aa.brightness(x, arg(1.36)).tolist() == img([[44, 255, 9]]).tolist()
    assert aa.brightness(x, arg(0.64))[0, 0, 0, 0].item() == 21


def test_contrast_blends_towards_pixel_count_over_256():
    """32×32: the "mean" is 1024/256 = 4. f = 1.18 (level 6): 4 + 1.18·(x − 4): 0 → −0.72 → 0,
    14 → 15.8, 100 → 117.28, 255 → 300.18 → 255. 4×4: 16/256 → 0, so 0.82·33 = 27.06."""
    values = [0, 14, 100, 255]
    x = img(grid(32, 32, lambda y, _: values[y % 4]))
    out = aa.contrast(x, arg(1.18))
    assert out[0, :, :4, 0].tolist() == [[0, 15, 117, 255]] * 3
    assert aa.contrast(img(grid(4, 4, lambda y, x: 33)), arg(0.82)).unique().tolist() == [27]


def test_color():
    """gray = trunc(255.5 · (0.2989 r + 0.587 g + 0.114 b) / 255): (255, 0, 0) → 76.37, (0, 255, 0) →
    149.98, (100, 120, 110) → 113.09. f = 0.1: 76 + 0.1·179 = 93.9, 76 − 7.6 = 68.4; 149 − 14.9 = 134.1,
    149 + 10.6 = 159.6. f = 1.72: 113 − 22.36 = 90.64, 113 + 12.04 = 125.04, 113 − 5.16 = 107.84."""
    x = img([[[255, 0, 100]], [[0, 255, 120]], [[0, 0, 110]]])
    assert aa._gray(x)[0, 0].tolist() == [[76, 149, 113]]
    assert aa.color(x, arg(0.1))[0, :, 0, :2].T.tolist() == [[93, 68, 68], [134, 159, 134]]
    assert aa.color(x, arg(1.72))[0, :, 0, 2].tolist() == [90, 125, 107]


def test_sharpness():
    """5×5, 100 in the centre: smoothed 500/13 = 38.46 there, 100/13 = 7.69 around it, the border kept.
    f = 0.28 (level 1): 7 − 1.96 = 5.04, 38 + 0.28·62 = 55.36; f = 1.72: 7 − 12.04 → 0, 38 + 106.64 = 144.64.
    Border 20, interior 0: corners of the interior see 5 border pixels (100/13 = 7.69), edges 3 (4.62),
    the centre none; f = 0.28: 5.04 → 5, 2.88 → 2; the border stays 20."""
    x = img(grid(5, 5, lambda y, x: 100 if (y, x) == (2, 2) else 0))
    inner = [[0] * 5, [0, 5, 5, 5, 0], [0, 5, 55, 5, 0], [0, 5, 5, 5, 0], [0] * 5]
    assert aa.sharpness(x, arg(0.28)).tolist() == img(inner).tolist()
    out = aa.sharpness(x, arg(1.72))
    assert out[0, 0, 2, 2].item() == 144 and out.sum().item() == 3 * 144
    bordered = img(grid(5, 5, lambda y, x: 20 if y in (0, 4) or x in (0, 4) else 0))
    expected = [[20] * 5, [20, 5, 2, 5, 20], [20, 2, 0, 2, 20], [20, 5, 2, 5, 20], [20] * 5]
    assert aa.sharpness(bordered, arg(0.28)).tolist() == img(expected).tolist()


def test_sharpness_flat_area_loses_one_as_in_tf():
    """A flat 3: nine fused multiply-adds acc + 3·(1/13) (5/13 in the centre) in float32, tap by tap as
    TF's kernel, give 2.9999998, truncated to 2; blended at 0.28: 2 + 0.28 = 2.28 → 2. The FMA is
    stepped here in float64, where each acc + k·3 is exact, then rounded once."""
    k1, k5 = np.float32(1) / np.float32(13), np.float32(5) / np.float32(13)
    acc = np.float32(0)
    for j in range(9):
        acc = np.float32(np.float64(acc) + np.float64(k5 if j == 4 else k1) * 3)
    assert acc < 3 and int(acc) == 2
    out = aa.sharpness(img(grid(3, 3, lambda y, x: 3)), arg(0.28))
    assert out[0, :, 1, 1].tolist() == [2, 2, 2] and out.sum().item() == 3 * (8 * 3 + 2)


def test_autocontrast():
    """Per channel: lo 10, hi 61: scale 5, offset −50: 10, 20, 61 → 0, 50, 255; constant 77 kept;
    lo 0, hi 255: scale 1, unchanged."""
    x = img([[[10, 20, 61]], [[77, 77, 77]], [[0, 255, 100]]])
    assert aa.autocontrast(x).tolist() == img([[[0, 50, 255]], [[77, 77, 77]], [[0, 255, 100]]]).tolist()


def test_equalize():
    """16×32 = 512 pixels: 256 of 10, 254 of 50, 2 of 200: step = (512 − 2) // 255 = 2;
    lut[v] = (count below v + 1) // 2: 10 → 0, 50 → 257 // 2 = 128, 200 → 511 // 2 = 255.
    A constant channel (step 0) and a 4×4 image (16 − top < 255) come back unchanged."""
    values = [10] * 256 + [50] * 254 + [200] * 2
    ch = [values[32 * y:32 * y + 32] for y in range(16)]
    x = img([ch, [[9] * 32] * 16, ch])
    out = aa.equalize(x)
    mapped = {10: 0, 50: 128, 200: 255}
    assert out[0, 0].tolist() == [[mapped[v] for v in r] for r in ch] == out[0, 2].tolist()
    assert out[0, 1].unique().tolist() == [9]
    small = img(grid(4, 4))
    assert torch.equal(aa.equalize(small), small)


# Sources for rotating a 4×4 by 21° (cos 0.93358, sin 0.35837): x_off = (3 − (3cos − 3sin))/2 = 0.63719,
# y_off = (3 − (3sin + 3cos))/2 = −0.43793; source (row, col) = (round(sin·x + cos·y + y_off),
# round(cos·x − sin·y + x_off)); e.g. (y, x) = (0, 3): (0.637, 3.438) → in[1][3] = 13. Nothing falls
# outside. −21° is its mirror image. Input in[r][c] = 10r + c.
ROT_21 = [[1, 2, 3, 13], [0, 11, 12, 23], [10, 21, 22, 33], [20, 30, 31, 32]]
ROT_MINUS_21 = [[10, 0, 1, 2], [20, 11, 12, 3], [30, 21, 22, 13], [31, 32, 33, 23]]


def test_rotate():
    x = img(grid(4, 4))
    assert aa.rotate(x, arg(21.0))[0, 0].tolist() == ROT_21
    assert aa.rotate(x, arg(-21.0))[0, 0].tolist() == ROT_MINUS_21
    assert torch.equal(aa.rotate(x, arg(0.0)), x)
    # 90°: cos −4.4e−8, sin 1: source (x, 3 − y): counterclockwise.
    assert aa.rotate(x, arg(90.0))[0, 0].tolist() == [[3, 13, 23, 33], [2, 12, 22, 32],
                                                     [1, 11, 21, 31], [0, 10, 20, 30]]


def test_shear_fills_128():
    """ShearY 0.24 (level 8) on 4×8: source row y + round(0.24x): shifts 0, 0, 0 (0.48), 1, 1, 1, 1, 2
    (1.68); rows past the bottom are 128. Negated: y − shift, and round(−0.48) = 0 (half away from zero).
    ShearX 0.12 (level 4) on 8×4: source column x + round(0.12y): shifts 0 ×5 (0.48 at y=4), then 1."""
    x = img(grid(4, 8))
    shift = [0, 0, 0, 1, 1, 1, 1, 2]
    down = [[10 * (y + shift[c]) + c if y + shift[c] < 4 else 128 for c in range(8)] for y in range(4)]
    up = [[10 * (y - shift[c]) + c if y - shift[c] >= 0 else 128 for c in range(8)] for y in range(4)]
    assert aa.shear_y(x, arg(0.24))[0, 1].tolist() == down
    assert aa.shear_y(x, arg(-0.24))[0, 2].tolist() == up
    x = img(grid(8, 4))
    shift = [0, 0, 0, 0, 0, 1, 1, 1]
    right = [[10 * y + c + shift[y] if c + shift[y] < 4 else 128 for c in range(4)] for y in range(8)]
    assert aa.shear_x(x, arg(0.12))[0, 0].tolist() == right


def test_translate():
    """TranslateX(p) reads column x + p; past the edge 128. Level 9 is 225 px: a 32×32 image is all 128."""
    x = img(grid(2, 8))
    assert aa.translate_x(x, arg(3.0))[0, 0].tolist() == [[3, 4, 5, 6, 7, 128, 128, 128],
                                                         [13, 14, 15, 16, 17, 128, 128, 128]]
    assert aa.translate_x(x, arg(-3.0))[0, 0].tolist() == [[128, 128, 128, 0, 1, 2, 3, 4],
                                                          [128, 128, 128, 10, 11, 12, 13, 14]]
    assert aa.translate_y(x, arg(1.0))[0, 0].tolist() == [[10, 11, 12, 13, 14, 15, 16, 17], [128] * 8]
    big = img(grid(32, 32, lambda y, x: 7))
    assert aa.translate_y(big, arg(-225.0)).unique().tolist() == [128]


def test_cutout():
    """pad 2, centre (1, 6) on 8×8: rows [−1, 3) → 0..2, columns [4, 8) set to 128."""
    x = img(grid(8, 8, lambda y, x: 5))
    out = aa.cutout(x, arg(2), torch.tensor([[1, 6]]))
    expected = [[128 if y < 3 and x >= 4 else 5 for x in range(8)] for y in range(8)]
    assert out[0, 0].tolist() == expected and torch.equal(out[0, 0], out[0, 2])


def test_gates_off_return_the_input_for_every_sub_policy():
    """No probability in policy_cifar is 1, so u = 0 (0 + p < 1) switches every step off."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (95, 3, 32, 32), dtype=torch.uint8, generator=gen)
    draws = torch.cat([row(k, sign1=0.1, sign2=0.7, cut_row=0.5, cut_col=0.5) for k in range(95)])
    assert torch.equal(autoaugment(x, draws), x)


def test_both_steps_apply_in_order():
    """Sub-policy 0 = Invert then Contrast (1.18) on 32×32 of 241: invert 14, contrast 4 + 1.18·10 =
    15.8 → 15. Contrast alone: 4 + 1.18·237 → 255. The other order would give 0."""
    x = img(grid(32, 32, lambda y, x: 241))
    assert autoaugment(x, row(0, 0.99, 0.99)).unique().tolist() == [15]
    assert autoaugment(x, row(0, 0.99, 0.0)).unique().tolist() == [14]
    assert autoaugment(x, row(0, 0.0, 0.99)).unique().tolist() == [255]


def test_gate_is_floor_u_plus_p():
    """Invert has p = 0.1: on from u + 0.1 >= 1."""
    x = img(grid(32, 32, lambda y, x: 241))
    assert autoaugment(x, row(0, 0.95)).unique().tolist() == [14]
    assert autoaugment(x, row(0, 0.85)).unique().tolist() == [241]


def test_sign_column_picks_the_rotation_direction():
    """Sub-policy 68: AutoContrast 0.3 (off), Rotate 0.2 level 7 = 21°; sign u >= 0.5 keeps it positive."""
    k = POLICY.index((("AutoContrast", 0.3, 5), ("Rotate", 0.2, 7)))
    x = img(grid(4, 4))
    assert autoaugment(x, row(k, 0.0, 0.9, sign2=0.5))[0, 0].tolist() == ROT_21
    assert autoaugment(x, row(k, 0.0, 0.9, sign2=0.49))[0, 0].tolist() == ROT_MINUS_21


def test_policy_translate_and_cutout_on_cifar_sized_images():
    """TranslateX level 9 (225 px) greys everything. Cutout level 3 (pad 30) centred at (31, 0): rows
    [1, 32), columns [0, 30) are 128."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 128, (1, 3, 32, 32), dtype=torch.uint8, generator=gen)
    assert autoaugment(x, row(1, 0.0, 0.9)).unique().tolist() == [128]
    k = POLICY.index((("TranslateY", 0.3, 6), ("Cutout", 0.3, 3)))
    out = autoaugment(x, row(k, 0.0, 0.9, cut_row=31.5 / 32, cut_col=0.0))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[1:, :30] = True
    assert (out[0][:, mask] == 128).all() and torch.equal(out[0][:, ~mask], x[0][:, ~mask])


def test_each_image_depends_only_on_itself_and_its_draws():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    draws = torch.rand(64, DRAWS, dtype=torch.float64, generator=gen)
    state = torch.get_rng_state()
    out = autoaugment(x, draws)
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG use
    perm = torch.randperm(64, generator=gen)
    assert torch.equal(autoaugment(x[perm], draws[perm]), out[perm])
    for i in range(0, 64, 9):
        assert torch.equal(autoaugment(x[i:i + 1], draws[i:i + 1]), out[i:i + 1])
    assert not torch.equal(out, x)


def test_throughput_256_cifar_images():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=gen)
    draws = torch.rand(256, DRAWS, dtype=torch.float64, generator=gen)
    autoaugment(x, draws)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        autoaugment(x, draws)
        times.append(time.perf_counter() - start)
    best, median = min(times), sorted(times)[3]
    print(f"\nautoaugment, 256 × 3×32×32 on CPU ({torch.get_num_threads()} thread): median {median * 1e3:.1f} ms "
          f"= {256 / median:.0f} images/s, best {best * 1e3:.1f} ms = {256 / best:.0f} images/s")
