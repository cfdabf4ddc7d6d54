"""Corruptions: contracts (shape, dtype, determinism, severity), exact properties of single
corruptions, and the re-implemented helpers against the libraries the reference used
(scipy.ndimage, Pillow)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnets.data import corruptions as C
from resnets.data.corruptions import CORRUPTIONS, corrupt, severity_parameter
from resnets.errors import UserError


def natural_images(n: int, size: int, seed: int = 0, height: int | None = None) -> torch.Tensor:
    """Smooth colour fields with a few hard-edged rectangles: blur, noise and JPEG all show on them."""
    g = torch.Generator().manual_seed(seed)
    h = height or size
    base = torch.rand(n, 3, 5, 5, generator=g)
    x = F.interpolate(base, size=(h, size), mode="bicubic", align_corners=False).clamp(0, 1) * 0.7 + 0.15
    for i in range(n):
        for _ in range(3):
            top, left = torch.randint(0, h - 4, (2,), generator=g).tolist()
            x[i, :, top:top + h // 4, left:left + size // 4] = torch.rand(3, 1, 1, generator=g)
    return (x * 255).round().to(torch.uint8)


IMAGES = {32: natural_images(4, 32), 64: natural_images(2, 64, seed=1)}
_CACHE: dict = {}


def cached(name: str, size: int, severity: int, seed: int = 0) -> torch.Tensor:
    key = (name, size, severity, seed)
    if key not in _CACHE:
        _CACHE[key] = corrupt(IMAGES[size], name, severity, seed=seed)
    return _CACHE[key]


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# --- contracts, every corruption --------------------------------------------------------------

DETERMINISTIC = {"brightness", "contrast", "defocus_blur", "zoom_blur", "pixelate", "jpeg_compression"}


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("size", [32, 64])
def test_contract(name, size):
    images = IMAGES[size]
    clean = images.clone()
    s1, s5 = cached(name, size, 1), cached(name, size, 5)
    for out in (s1, s5):
        assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, clean)  # input untouched
    assert torch.equal(corrupt(images, name, 1, seed=0), s1)  # deterministic for the seed
    assert mad(s1, images) > 0 and mad(s5, images) > 0
    if name not in DETERMINISTIC:
        assert not torch.equal(corrupt(images, name, 5, seed=1), s5)
    if name not in NOT_MONOTONE:
        assert mad(s5, images) > mad(s1, images)


# Published parameters whose pixel change from the clean image does not grow with severity (see
# the two tests below).
NOT_MONOTONE = {"elastic_transform", "frost"}
needs_frost = pytest.mark.skipif("frost" not in CORRUPTIONS, reason=f"frost needs: {C.FROST_INSTALL}")


def test_elastic_severity_follows_the_published_parameters():
    # Published elastic parameters are not monotone in pixel change: severity 1 is a pure random
    # affine with the largest jitter (0.08 * size), severity 5 a small jitter plus a strong local
    # displacement field. Check the parameters rather than a pixel ordering.
    assert severity_parameter("elastic_transform", 1, "cifar") == (0, 0, 0.08)
    assert severity_parameter("elastic_transform", 5, "cifar") == (0.1, 0.03, 0.03)
    # severity 1 (alpha = 0): a global affine; severity 5: a non-affine displacement
    assert mad(cached("elastic_transform", 32, 5), IMAGES[32]) > 0


@needs_frost
def test_frost_severity_follows_the_published_parameters():
    # Frost is c0 * image + c1 * frost photograph, clipped: c1 / c0 grows with severity, but
    # severity 1 (c0 = 1) pushes bright pixels into the clip while severity 5 also darkens the
    # image, so the mean absolute change need not grow. The image's share of the result does
    # shrink: its correlation with the clean image falls.
    for param_set in C.PARAM_SETS:
        ratios = [c1 / c0 for c0, c1 in (severity_parameter("frost", s, param_set) for s in range(1, 6))]
        assert ratios == sorted(ratios) and len(set(ratios)) == 5, param_set
    for size in (32, 64):
        images = IMAGES[size].double().flatten(1)
        corr = [torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1]
                             for a, b in zip(cached("frost", size, s).double().flatten(1), images)]).mean()
                for s in (1, 5)]
        assert corr[1] < corr[0], size


def test_frost_availability_follows_the_imagecorruptions_package():
    assert ("frost" in CORRUPTIONS) == (C._frost_directory() is not None)
    assert ("frost" in C.LEFT_OUT) == ("frost" not in CORRUPTIONS)


def test_frost_without_the_imagecorruptions_package_names_the_install_command(monkeypatch):
    real_find_spec = C.importlib.util.find_spec
    monkeypatch.setattr(C.importlib.util, "find_spec",
                        lambda name, *args: None if name == "imagecorruptions" else real_find_spec(name, *args))
    assert C._frost_directory() is None
    # what the module sets up when the package is missing
    monkeypatch.setattr(C, "CORRUPTIONS", tuple(n for n in CORRUPTIONS if n != "frost"))
    monkeypatch.setattr(C, "LEFT_OUT", {"frost": C._FROST_MISSING})
    C._frost_photo.cache_clear()
    C._frost_layer.cache_clear()
    try:
        with pytest.raises(UserError, match=r"'frost' is left out.*pip install imagecorruptions-imaug"):
            corrupt(IMAGES[32], "frost", 1)
        with pytest.raises(UserError, match="pip install imagecorruptions-imaug"):
            C.severity_parameter("frost", 1, "cifar")
        # and if the images vanish after import, the corruption itself says the same
        with pytest.raises(UserError, match="pip install imagecorruptions-imaug"):
            C._frost(IMAGES[32], (1, 0.2), C._Random(0, 4), {"param_set": "cifar"})
    finally:
        C._frost_photo.cache_clear()
        C._frost_layer.cache_clear()


def test_non_square_images_and_any_size():
    images = natural_images(2, 48, seed=3, height=40)
    for name in CORRUPTIONS:
        out = corrupt(images, name, 3, seed=5)
        assert out.shape == images.shape and out.dtype == torch.uint8, name


def test_per_image_seeds_make_each_image_independent_of_its_batch():
    images = IMAGES[32]
    seeds = [10, 11, 12, 13]
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
                 "snow", "fog", "elastic_transform", *(("frost",) if "frost" in CORRUPTIONS else ())):
        batch = corrupt(images, name, 3, seed=seeds)
        for i in (0, 3):
            alone = corrupt(images[i:i + 1], name, 3, seed=[seeds[i]])
            assert torch.equal(batch[i:i + 1], alone), name
    with pytest.raises(ValueError, match="seeds"):
        corrupt(images, "gaussian_noise", 1, seed=[1, 2])


def test_empty_batch():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert corrupt(empty, "fog", 2).shape == empty.shape


# --- errors -----------------------------------------------------------------------------------


def test_unknown_name_lists_the_valid_ones():
    images = IMAGES[32]
    with pytest.raises(UserError, match="gaussian_noise.*jpeg_compression"):
        corrupt(images, "gausian_noise", 1)
    if "frost" in C.LEFT_OUT:  # without the imagecorruptions package
        with pytest.raises(UserError, match="frost.*left out.*pip install imagecorruptions-imaug"):
            corrupt(images, "frost", 1)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, "3", True])
def test_bad_severity(severity):
    with pytest.raises(UserError, match="1 to 5"):
        corrupt(IMAGES[32], "contrast", severity)


def test_bad_inputs():
    with pytest.raises(UserError, match="cifar, tinyimagenet, imagenet"):
        corrupt(IMAGES[32], "contrast", 1, param_set="svhn")
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES[32].float(), "contrast", 1)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        corrupt(IMAGES[32][:, :1], "contrast", 1)


def test_parameter_set_choice():
    assert C.default_param_set(32, 32) == "cifar"
    assert C.default_param_set(64, 64) == "cifar"
    assert C.default_param_set(224, 224) == "imagenet"
    assert severity_parameter("gaussian_noise", 5, "cifar") == 0.10
    assert severity_parameter("gaussian_noise", 5, "imagenet") == 0.38
    assert severity_parameter("jpeg_compression", 1, "tinyimagenet") == 65
    # an explicit parameter set overrides the size rule
    a = corrupt(IMAGES[32], "contrast", 1)
    b = corrupt(IMAGES[32], "contrast", 1, param_set="imagenet")
    assert IMAGES[32].float().std() > a.float().std() > b.float().std()


# --- exact properties ---------------------------------------------------------------------------


def gray(n=8, size=32, value=128) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.uint8)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_noise_std_matches_the_parameter(severity):
    c = severity_parameter("gaussian_noise", severity, "cifar")
    out = corrupt(gray(), "gaussian_noise", severity, seed=3).double()
    noise = out - 128
    # truncation to uint8 adds a uniform [-1, 0) error: mean -0.5, variance 1/12
    assert noise.std().item() == pytest.approx(np.sqrt((c * 255) ** 2 + 1 / 12), rel=0.03)
    assert noise.mean().item() == pytest.approx(-0.5, abs=5 * c * 255 / np.sqrt(noise.numel()))


def test_shot_noise_is_poisson():
    c = severity_parameter("shot_noise", 5, "cifar")  # 50 photons at full scale
    out = corrupt(gray(), "shot_noise", 5, seed=4).double() / 255
    x = 128 / 255
    assert out.var().item() == pytest.approx(x / c, rel=0.05)  # Var[Poisson(x c) / c] = x / c
    assert out.mean().item() == pytest.approx(x, abs=0.01)


def test_impulse_noise_flips_the_published_fraction():
    amount = severity_parameter("impulse_noise", 5, "cifar")
    out = corrupt(gray(), "impulse_noise", 5, seed=5)
    salt, pepper = (out == 255).double().mean().item(), (out == 0).double().mean().item()
    assert salt + pepper == pytest.approx(amount, rel=0.1)
    assert salt == pytest.approx(pepper, rel=0.2)
    assert ((out == 128) | (out == 255) | (out == 0)).all()


def test_brightness_increases_every_pixel():
    images = IMAGES[32]
    for severity in (1, 5):
        out = corrupt(images, "brightness", severity)
        assert out.float().mean() > images.float().mean()
        assert (out.int() >= images.int() - 1).all()  # at most truncation
    # in HSV terms: V = max channel rises by c (clipped), hue and saturation kept
    c = severity_parameter("brightness", 5, "cifar")
    v_in = images.amax(1).double() / 255
    v_out = corrupt(images, "brightness", 5).amax(1).double() / 255
    assert torch.allclose(v_out, (v_in + c).clamp(max=1), atol=1 / 255 + 1e-9)


def test_contrast_scales_deviations_from_the_channel_mean():
    images = IMAGES[64]
    for severity in (1, 5):
        c = severity_parameter("contrast", severity, "cifar")
        out = corrupt(images, "contrast", severity).double()
        x = images.double() / 255
        means = x.mean(dim=(2, 3), keepdim=True)
        expected = ((x - means) * c + means).clamp(0, 1) * 255
        assert (out - expected).abs().max() < 1.0 + 1e-9  # only the truncation
        assert out.std(dim=(2, 3)).lt(images.double().std(dim=(2, 3))).all()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("severity", [1, 5])
def test_pixelate_is_pillow_box_down_and_up(size, severity):
    from PIL import Image

    c = severity_parameter("pixelate", severity, "cifar")
    images = IMAGES[size]
    out = corrupt(images, "pixelate", severity)
    small = int(size * c)
    for i, arr in enumerate(images.permute(0, 2, 3, 1).numpy()):
        ref = Image.fromarray(arr).resize((small, small), Image.BOX).resize((size, size), Image.BOX)
        assert np.array_equal(np.asarray(ref), out[i].permute(1, 2, 0).numpy())
    # piecewise constant: just `small` distinct columns and rows, the same in every image
    col_changes = (out[..., 1:] != out[..., :-1]).any(dim=(0, 1, 2))
    row_changes = (out[..., 1:, :] != out[..., :-1, :]).any(dim=(0, 1, 3))
    assert col_changes.sum() <= small - 1 and row_changes.sum() <= small - 1


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_matches_pillow_round_trip(severity):
    from PIL import Image

    quality = severity_parameter("jpeg_compression", severity, "cifar")
    images = IMAGES[32]
    out = corrupt(images, "jpeg_compression", severity)
    for i, arr in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, "JPEG", quality=quality)
        ref = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert np.array_equal(ref, out[i].permute(1, 2, 0).numpy())


def test_motion_blur_keeps_flat_images_flat_and_blurs_along_a_line():
    assert torch.equal(corrupt(gray(2), "motion_blur", 5, seed=1), gray(2))
    dot = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    dot[:, :, 16, 16] = 255
    out = corrupt(dot, "motion_blur", 5, seed=2)
    lit = out[0, 0].nonzero()
    radius, _ = severity_parameter("motion_blur", 5, "cifar")
    assert 1 < len(lit) <= 2 * radius + 1  # one pixel per kernel tap at most
    # the kernel is normalised: the dot's light is spread, not lost (up to rounding per pixel)
    assert abs(out[0, 0].double().sum().item() - 255) <= 0.5 * len(lit)
    rows, cols = lit[:, 0], lit[:, 1]
    assert (rows.max() - rows.min()) <= 2 * radius and (cols.max() - cols.min()) <= 2 * radius


def test_glass_blur_without_blur_only_moves_pixels():
    # CIFAR severity 1 has sigma 0.05: a one-tap Gaussian, so only the local pixel copies act.
    images = IMAGES[32]
    out = corrupt(images, "glass_blur", 1, seed=7)
    assert not torch.equal(out, images)
    for i in range(images.shape[0]):
        colours_in = {tuple(p) for p in images[i].reshape(3, -1).T.tolist()}
        colours_out = {tuple(p) for p in out[i].reshape(3, -1).T.tolist()}
        assert colours_out <= colours_in


def test_glass_blur_equals_the_reference_loop_given_the_same_shifts():
    """make_cifar_c.py's glass_blur, run verbatim on numpy arrays (its tuple "swap" of numpy views
    included), with the shifts corrupt() draws: the outputs are identical."""
    from scipy.ndimage import gaussian_filter

    images = torch.randint(0, 256, (2, 3, 24, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for severity in (1, 5):
        sigma, delta, iterations = severity_parameter("glass_blur", severity, "cifar")
        out = corrupt(images, "glass_blur", severity, seed=5)
        shifts = C._Random(5, 2).randint((iterations, 24 - 2 * delta, 30 - 2 * delta, 2), -delta, delta).numpy()

        def blur(a):  # skimage.filters.gaussian(multichannel=True)
            return gaussian_filter(a, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)

        for n in range(2):
            x = np.uint8(blur(images[n].permute(1, 2, 0).numpy() / 255.0) * 255)
            for i in range(iterations):
                for hi, h in enumerate(range(24 - delta, delta, -1)):
                    for wi, w in enumerate(range(30 - delta, delta, -1)):
                        dx, dy = shifts[n, i, hi, wi]
                        h_prime, w_prime = h + dy, w + dx
                        x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
            ref = np.uint8(np.clip(blur(x / 255.0), 0, 1) * 255)
            assert np.array_equal(ref, out[n].permute(1, 2, 0).numpy())


def test_zoom_blur_equals_the_reference_with_scipy_zoom():
    from scipy.ndimage import zoom

    images = IMAGES[32]
    for severity in (1, 5):
        factors = np.arange(*severity_parameter("zoom_blur", severity, "cifar"))
        out = corrupt(images, "zoom_blur", severity)
        for n in range(images.shape[0]):
            x = (images[n].permute(1, 2, 0).numpy() / 255.0).astype(np.float32)
            acc = np.zeros_like(x)
            for factor in factors:  # make_cifar_c.py clipped_zoom
                crop = int(np.ceil(32 / factor))
                top = (32 - crop) // 2
                z = zoom(x[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
                trim = (z.shape[0] - 32) // 2
                acc += z[trim:trim + 32, trim:trim + 32]
            ref = np.uint8(np.clip((x + acc) / (len(factors) + 1), 0, 1) * 255)
            diff = np.abs(ref.astype(int) - out[n].permute(1, 2, 0).numpy().astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float32 rounding at truncation ties


def test_snow_and_fog_move_towards_white_and_grey():
    images = IMAGES[32]
    assert corrupt(images, "snow", 5).float().mean() > images.float().mean()
    fogged = corrupt(images, "fog", 5).float()
    assert fogged.std() < images.float().std()


# --- helpers against scipy.ndimage and OpenCV-equivalent arithmetic ----------------------------


@pytest.mark.parametrize("mode,scipy_mode", [("edge", "nearest"), ("symmetric", "reflect"), ("reflect101", "mirror")])
def test_gaussian_filter_matches_scipy(mode, scipy_mode):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    for n, sigma, truncate in ((32, 0.05, 4.0), (32, 0.4, 4.0), (17, 1.5, 3.0), (32, 40.0, 3.0)):
        a = rng.random((n, n + 5))
        ref = gaussian_filter(a, sigma, mode=scipy_mode, truncate=truncate)
        got = C._gaussian_filter(torch.from_numpy(a), sigma, mode, truncate=truncate).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-12)


def test_clipped_zoom_matches_scipy_zoom():
    from scipy.ndimage import zoom

    rng = np.random.default_rng(1)
    for n in (32, 64):
        a = rng.random((n, n))
        for factor in list(np.arange(1, 1.31, 0.03)) + [1.75, 2.25, 4.5]:
            crop = int(np.ceil(n / factor))
            top = (n - crop) // 2
            zoomed = zoom(a[top:top + crop, top:top + crop], factor, order=1)
            trim = (zoomed.shape[0] - n) // 2
            ref = zoomed[trim:trim + n, trim:trim + n]
            got = C._clipped_zoom(torch.from_numpy(a), float(factor)).numpy()
            np.testing.assert_allclose(got, ref, atol=1e-12)


def test_bilinear_sampling_matches_scipy_map_coordinates():
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(2)
    h, w = 20, 27
    img = rng.random((h, w))
    ys = np.arange(h)[:, None] + rng.normal(0, 6, (h, w))  # well past the borders
    xs = np.arange(w)[None, :] + rng.normal(0, 6, (h, w))
    ref = map_coordinates(img, (ys, xs), order=1, mode="reflect")
    got = C._interp_linear_2d(torch.from_numpy(img)[None, None], torch.from_numpy(ys)[None],
                              torch.from_numpy(xs)[None], "symmetric")[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_hsv_conversions_match_colorsys():
    import colorsys

    rng = np.random.default_rng(3)
    # random colours plus many ties between channels (greys, two equal maxima)
    rgb = np.concatenate([rng.random((300, 3)), rng.integers(0, 3, (300, 3)) / 2.0])
    hsv = C._rgb_to_hsv(torch.from_numpy(rgb.T.copy()).view(1, 3, -1, 1))[0, :, :, 0].numpy().T
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-12)
    back = C._hsv_to_rgb(torch.from_numpy(hsv.T.copy()).view(1, 3, -1, 1))[0, :, :, 0].numpy().T
    np.testing.assert_allclose(back, [colorsys.hsv_to_rgb(*p) for p in hsv], atol=1e-12)
    np.testing.assert_allclose(back, rgb, atol=1e-12)


def test_defocus_fft_equals_direct_correlation():
    images = natural_images(2, 24, seed=9)
    for c in (severity_parameter("defocus_blur", 5, "cifar"), severity_parameter("defocus_blur", 1, "imagenet")):
        kernel = torch.from_numpy(C._disk_kernel(*c).astype(np.float64))
        r = kernel.shape[0] // 2
        x = images.double() / 255
        idx = C._fold(torch.arange(-r, 24 + r), 24, "reflect101")
        padded = x.index_select(2, idx).index_select(3, idx)
        direct = F.conv2d(padded.reshape(-1, 1, 24 + 2 * r, 24 + 2 * r), kernel[None, None]).view_as(x)
        diff = (C._to_uint8(direct).int() - C._defocus_blur(images, c, None, None).int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 1e-3  # equal up to rare truncation ties


def test_warp_affine_identity_and_shift():
    x = natural_images(1, 32, seed=2).float() / 255
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert torch.equal(C._warp_affine(x, identity[None]), x)
    shift = np.array([[1.0, 0, 2.0], [0, 1.0, 0]])  # dst(x) = src(x - 2), reflect-101 at the left
    out = C._warp_affine(x, shift[None])
    assert torch.equal(out[..., 2:], x[..., :-2])
    assert torch.equal(out[..., 0], x[..., 2]) and torch.equal(out[..., 1], x[..., 1])


def test_imagenet_sized_images():
    images = natural_images(2, 224, seed=4)
    for name in CORRUPTIONS:
        s1, s5 = corrupt(images, name, 1), corrupt(images, name, 5)
        assert s1.shape == images.shape and s5.dtype == torch.uint8
        if name not in NOT_MONOTONE:
            assert mad(s5, images) > mad(s1, images), name
