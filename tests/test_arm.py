"""ARM (eqs. 7-11): reference by hand, C++ / CUDA parity with the reference, orientation, inputs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lcar_deploy.stages import arm
from lcar_deploy.stages.arm import AFA_DILATIONS, ArmConfig

PARITY_ATOL = 1e-5

needs_cpp = pytest.mark.skipif(
    "cpp" not in arm.available_backends(), reason="C++ ARM extension not built"
)


def _inputs(
    rng: np.random.Generator, b: int, h: int, w: int, low: int = 14
) -> tuple[np.ndarray, np.ndarray]:
    """Random images (B, 3, H, W) in [0, 1] with some structure, and coarse maps (B, low, low)."""
    noise = rng.random((b, 3, h, w), dtype=np.float32)
    blocks = rng.random((b, 3, 1, 1), dtype=np.float32) * (np.arange(w) > w // 2)
    images = np.clip(0.5 * noise + 0.5 * blocks, 0.0, 1.0).astype(np.float32)
    e_low = rng.standard_normal((b, low, low)).astype(np.float32)
    return images, e_low


def _e_h(e_low: np.ndarray, h: int, w: int) -> np.ndarray:
    return arm.upsample_eigenmap(torch.from_numpy(e_low), (h, w)).numpy()


# ---------------------------------------------------------------- config and building blocks


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eta": -0.1},
        {"eta": 1.5},
        {"iterations": -1},
        {"iterations": 2.5},
        {"dilations": ()},
        {"dilations": (0,)},
        {"dilations": (1.5,)},
        {"dilations": tuple(range(1, 18))},
        {"w_p": -1.0},
        {"w_rgb": 0.0},
        {"w_pos": float("nan")},
        {"sigma_eps": -1.0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ArmConfig(**kwargs)


def test_config_defaults_are_the_papers() -> None:
    cfg = ArmConfig(dilations=[1, 2])
    assert cfg.dilations == (1, 2)
    assert cfg.num_neighbours == 16
    d = ArmConfig()
    assert (d.eta, d.iterations, d.w_p, d.dilations, d.w_rgb) == (0.1, 50, 0.01, (1,), 0.3)


def test_neighbour_offsets_order() -> None:
    assert arm.neighbour_offsets((1,)) == [
        (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)
    ]  # fmt: skip
    assert arm.neighbour_offsets((1, 3))[8:10] == [(-3, -3), (-3, 0)]


def test_position_term_by_hand() -> None:
    cfg = ArmConfig()
    dist = np.array([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)])
    logit = -((dist / (0.3 * (dist.std(ddof=1) + 1e-8))) ** 2)
    expected = 0.01 * np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
    np.testing.assert_allclose(arm.position_term(cfg).numpy(), expected, rtol=1e-12)
    # The axial neighbours dominate: w_p / 4 each.
    np.testing.assert_allclose(expected[[1, 3, 4, 6]], 0.0025, rtol=1e-9)


def test_upsample_eigenmap() -> None:
    e_low = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    e_h = arm.upsample_eigenmap(e_low, (7, 9))
    assert e_h.shape == (1, 7, 9)
    assert float(e_h.min()) == -0.5
    assert float(e_h.max()) == 0.5
    same = arm.upsample_eigenmap(e_low, (2, 2))
    np.testing.assert_allclose(same.numpy(), [[[-0.5, -1 / 6], [1 / 6, 0.5]]], atol=1e-7)
    assert torch.all(arm.upsample_eigenmap(torch.ones(1, 3, 3), (5, 5)) == -0.5)


def _affinities_by_hand(image: np.ndarray, cfg: ArmConfig) -> np.ndarray:
    """Eqs. 7-8 with explicit loops (float64): image (3, H, W) -> (|N|, H, W)."""
    _, h, w = image.shape
    offsets = arm.neighbour_offsets(cfg.dilations)
    dist = np.array([math.hypot(dy, dx) for dy, dx in offsets])
    pos_logit = -((dist / (cfg.w_pos * (dist.std(ddof=1) + cfg.sigma_eps))) ** 2)
    pos = np.exp(pos_logit) / np.exp(pos_logit).sum()
    out = np.zeros((len(offsets), h, w))
    for y in range(h):
        for x in range(w):
            nb = np.array(
                [
                    image[:, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
                    for dy, dx in offsets
                ],
                dtype=np.float64,
            )  # (|N|, 3)
            sigma = nb.std(axis=0, ddof=1)
            k_rgb = -((np.abs(nb - image[:, y, x]) / (cfg.w_rgb * (sigma + cfg.sigma_eps))) ** 2)
            k_rgb = k_rgb.mean(axis=1)
            soft = np.exp(k_rgb - k_rgb.max())
            out[:, y, x] = soft / soft.sum() + cfg.w_p * pos
    return out


@pytest.mark.parametrize("dilations", [(1,), (1, 2)])
def test_reference_affinities_by_hand(dilations: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((3, 4, 5))
    cfg = ArmConfig(dilations=dilations)
    ref = arm.affinities_reference(torch.from_numpy(image)[None], cfg)[0].numpy()
    np.testing.assert_allclose(ref, _affinities_by_hand(image, cfg), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ref.sum(axis=0), 1.0 + cfg.w_p, rtol=1e-12)


def test_reference_propagation_by_hand() -> None:
    rng = np.random.default_rng(2)
    e = rng.random((1, 3, 4))
    aff = rng.random((1, 8, 3, 4))
    cfg = ArmConfig(iterations=1, eta=0.25)
    expected = np.empty((3, 4))
    for y in range(3):
        for x in range(4):
            acc = sum(
                aff[0, k, y, x] * e[0, min(max(y + dy, 0), 2), min(max(x + dx, 0), 3)]
                for k, (dy, dx) in enumerate(arm.neighbour_offsets((1,)))
            )
            expected[y, x] = 0.25 * e[0, y, x] + 0.75 * acc
    out = arm.propagate_reference(torch.from_numpy(e), torch.from_numpy(aff), cfg)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-12)


def test_refine_reference_composes_the_steps() -> None:
    rng = np.random.default_rng(3)
    images, e_low = _inputs(rng, 2, 9, 7)
    img = torch.from_numpy(images)
    e_h = torch.from_numpy(_e_h(e_low, 9, 7))
    cfg = ArmConfig(iterations=7, dilations=(1, 2))
    steps = arm.minmax_normalise(
        arm.propagate_reference(e_h, arm.affinities_reference(img, cfg), cfg)
    )
    out = arm.refine_reference(e_h, img, cfg)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, steps.float())
    torch.testing.assert_close(
        arm.refine(e_low, img, cfg, backend="reference"), out, rtol=0, atol=1e-7
    )


def test_flat_image_gives_uniform_colour_weights() -> None:
    cfg = ArmConfig(dilations=(1, 2))
    aff = arm.affinities_reference(torch.full((1, 3, 6, 6), 0.4), cfg)
    expected = 1.0 / 16 + arm.position_term(cfg)
    np.testing.assert_allclose(aff[0, :, 3, 3].numpy(), expected.numpy(), rtol=1e-12)


def test_reference_follows_the_image() -> None:
    """A coarse blob spreads inside the image region of its colour and stops at its edge."""
    h = w = 32
    image = torch.zeros(1, 3, h, w)
    image[:, :, 8:24, 8:24] = 1.0
    e_low = torch.zeros(1, 4, 4)
    e_low[0, 1:3, 1:3] = 1.0
    out = arm.refine(e_low, image, ArmConfig(iterations=50), backend="reference")
    inside, outside = out[0, 8:24, 8:24], out[0].clone()
    outside[8:24, 8:24] = float("nan")
    assert float(inside.min()) > float(np.nanmax(outside.numpy()))


# ---------------------------------------------------------------- C++ parity


@needs_cpp
def test_cpp_neighbour_table_matches() -> None:
    from lcar_deploy import _arm_cpu

    for dilations in [(1,), AFA_DILATIONS]:
        cfg = ArmConfig(dilations=dilations)
        offsets, pos = _arm_cpu.neighbour_table(cfg.native_params(_arm_cpu))
        assert [tuple(o) for o in offsets.tolist()] == arm.neighbour_offsets(dilations)
        np.testing.assert_allclose(pos, arm.position_term(cfg).numpy(), rtol=1e-12, atol=1e-300)


# (H, W, dilations, iterations, batch): 50 iterations where the float64 reference is cheap.
PARITY_CASES = [
    (1, 1, (1,), 50, 3),
    (1, 1, AFA_DILATIONS, 50, 2),
    (3, 5, (1,), 50, 3),
    (3, 5, AFA_DILATIONS, 50, 3),
    (37, 23, (1,), 50, 2),
    (37, 23, AFA_DILATIONS, 50, 2),
    (224, 224, (1,), 50, 2),
    (224, 224, AFA_DILATIONS, 2, 1),
    (321, 479, (1,), 5, 1),
    (321, 479, AFA_DILATIONS, 1, 1),
]


@needs_cpp
@pytest.mark.parametrize(("h", "w", "dilations", "iterations", "b"), PARITY_CASES)
def test_cpp_matches_reference_random(
    h: int, w: int, dilations: tuple[int, ...], iterations: int, b: int
) -> None:
    rng = np.random.default_rng(h * 1000 + w + len(dilations))
    images, e_low = _inputs(rng, b, h, w)
    e_h = _e_h(e_low, h, w)
    cfg = ArmConfig(dilations=dilations, iterations=iterations)
    aff_ref = arm.affinities_reference(torch.from_numpy(images), cfg)
    aff_cpp = arm.affinities_cpp(images, cfg)
    assert aff_cpp.shape == (b, 8 * len(dilations), h, w)
    assert np.abs(aff_cpp - aff_ref.numpy()).max() <= 1e-6
    ref = arm.minmax_normalise(arm.propagate_reference(torch.from_numpy(e_h), aff_ref, cfg))
    ref = ref.numpy()
    cpp = arm.refine_cpp(e_h, images, cfg, num_threads=2)
    assert cpp.dtype == np.float32
    assert cpp.shape == (b, h, w)
    assert np.abs(cpp - ref).max() <= PARITY_ATOL
    assert cpp.min() >= 0.0
    assert cpp.max() <= 1.0


@needs_cpp
def test_cpp_propagation_matches_reference() -> None:
    from lcar_deploy import _arm_cpu

    rng = np.random.default_rng(4)
    images, e_low = _inputs(rng, 2, 37, 23)
    e_h = _e_h(e_low, 37, 23)
    cfg = ArmConfig(dilations=AFA_DILATIONS, iterations=9, eta=0.2)
    aff = arm.affinities_reference(torch.from_numpy(images), cfg)
    ref = arm.propagate_reference(torch.from_numpy(e_h), aff, cfg).numpy()
    params = cfg.native_params(_arm_cpu)
    out = _arm_cpu.propagate(e_h, aff.float().numpy(), params, num_threads=0)
    assert np.abs(out - ref).max() <= 1e-6


@needs_cpp
def test_cpp_thread_count_does_not_change_the_result() -> None:
    rng = np.random.default_rng(5)
    images, e_low = _inputs(rng, 2, 45, 31)
    e_h = _e_h(e_low, 45, 31)
    cfg = ArmConfig(dilations=(1, 2, 4))
    one = arm.refine_cpp(e_h, images, cfg, num_threads=1)
    np.testing.assert_array_equal(one, arm.refine_cpp(e_h, images, cfg, num_threads=2))
    np.testing.assert_array_equal(one, arm.refine_cpp(e_h, images, cfg, num_threads=3))


@needs_cpp
def test_cpp_zero_iterations_is_the_rescaled_input() -> None:
    rng = np.random.default_rng(6)
    images, e_low = _inputs(rng, 2, 9, 11)
    e_h = _e_h(e_low, 9, 11)
    out = arm.refine_cpp(e_h, images, ArmConfig(iterations=0))
    np.testing.assert_allclose(out, e_h + 0.5, atol=1e-6)


def _real_images(root: Path, n: int) -> list[np.ndarray]:
    """The first n CUB images as float32 (H, W, 3) RGB in [0, 1]."""
    from PIL import Image

    cub = root / "CUB_200_2011"
    lines = (cub / "images.txt").read_text().split("\n")[:n]
    out = []
    for line in lines:
        with Image.open(cub / "images" / line.split()[1]) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    return out


def _coarse_map(image: np.ndarray, size: int = 14) -> np.ndarray:
    """A coarse stand-in for E_l: block means of the image's darkness, (size, size)."""
    import cv2

    grey = 1.0 - image.mean(axis=2)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


@needs_cpp
@pytest.mark.parametrize(("dilations", "iterations"), [((1,), 20), (AFA_DILATIONS, 2)])
def test_cpp_matches_reference_real_images(
    shared_data: Path, dilations: tuple[int, ...], iterations: int
) -> None:
    import cv2

    pictures = _real_images(shared_data, 2)
    images = np.stack([cv2.resize(p, (224, 224), interpolation=cv2.INTER_LINEAR) for p in pictures])
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    e_low = np.stack([_coarse_map(p) for p in pictures])
    cfg = ArmConfig(dilations=dilations, iterations=iterations)
    ref = arm.refine(e_low, images, cfg, backend="reference")
    cpp = arm.refine(e_low, images, cfg, backend="cpp")
    assert np.abs(cpp - ref).max() <= PARITY_ATOL


@needs_cpp
def test_cpp_matches_reference_real_image_odd_size(shared_data: Path) -> None:
    import cv2

    picture = _real_images(shared_data, 1)[0]
    odd = cv2.resize(picture, (479, 321), interpolation=cv2.INTER_LINEAR)  # H x W = 321 x 479
    image = np.ascontiguousarray(odd.transpose(2, 0, 1))
    cfg = ArmConfig(iterations=5)
    ref = arm.refine(_coarse_map(odd), image, cfg, backend="reference")
    cpp = arm.refine(_coarse_map(odd), image, cfg, backend="cpp")
    assert cpp.shape == (321, 479)
    assert np.abs(cpp - ref).max() <= PARITY_ATOL


# ---------------------------------------------------------------- CUDA parity


@pytest.mark.cuda
@pytest.mark.skipif(not arm.cuda_usable(), reason="no usable CUDA GPU")
@pytest.mark.parametrize(("h", "w", "dilations", "iterations", "b"), PARITY_CASES)
def test_cuda_matches_reference(
    h: int, w: int, dilations: tuple[int, ...], iterations: int, b: int
) -> None:
    rng = np.random.default_rng(h * 1000 + w + len(dilations))
    images, e_low = _inputs(rng, b, h, w)
    cfg = ArmConfig(dilations=dilations, iterations=iterations)
    dev = torch.device("cuda")
    img = torch.from_numpy(images).to(dev)
    e_h = arm.upsample_eigenmap(torch.from_numpy(e_low), (h, w)).to(dev)
    aff_ref = arm.affinities_reference(img.cpu(), cfg).numpy()
    aff_cuda = arm.affinities_cuda(img, cfg).cpu().numpy()
    assert np.abs(aff_cuda - aff_ref).max() <= 1e-6
    ref = arm.refine_reference(e_h.cpu(), img.cpu(), cfg).numpy()
    out = arm.refine_cuda(e_h, img, cfg)
    assert out.device.type == "cuda"
    assert np.abs(out.cpu().numpy() - ref).max() <= PARITY_ATOL
    # Chunked batches (one image per chunk) give the same maps.
    chunked = arm.refine_cuda(e_h, img, cfg, max_scratch_bytes=1)
    assert np.abs(chunked.cpu().numpy() - ref).max() <= PARITY_ATOL
    # The public entry point keeps CUDA tensors on the GPU.
    public = arm.refine(torch.from_numpy(e_low).to(dev), img, cfg, backend="cuda")
    assert public.device.type == "cuda"
    assert np.abs(public.cpu().numpy() - ref).max() <= PARITY_ATOL


# ---------------------------------------------------------------- orientation (eqs. 10-11)


def _left_high_map() -> np.ndarray:
    """4 x 4 map, high (0.9) on the left two columns, low (0.1) on the right."""
    m = np.full((4, 4), 0.1, dtype=np.float32)
    m[:, :2] = 0.9
    return m


def test_orientation_ratios_by_hand() -> None:
    m = _left_high_map()
    seed = np.zeros((4, 4), dtype=bool)
    seed[0, 0] = seed[1, 0] = seed[0, 3] = True  # 2 of 8 high pixels, 1 of 8 low ones
    r_h, r_l = arm.orientation_ratios(torch.from_numpy(m)[None], torch.from_numpy(seed)[None])
    assert float(r_h[0]) == pytest.approx(2 / 8)
    assert float(r_l[0]) == pytest.approx(1 / 8)


def test_orient_keeps_a_map_whose_seed_is_high() -> None:
    m = _left_high_map()
    seed = np.zeros((4, 4), dtype=bool)
    seed[:, 0] = True
    np.testing.assert_array_equal(arm.orient(m, seed), m)


def test_orient_flips_a_map_whose_seed_is_low() -> None:
    m = _left_high_map()
    seed = np.zeros((4, 4), dtype=bool)
    seed[1:3, 3] = True
    np.testing.assert_allclose(arm.orient(m, seed), 1.0 - m)


def test_orient_batched_and_torch() -> None:
    m = torch.from_numpy(np.stack([_left_high_map(), _left_high_map()]))
    seed = torch.zeros(2, 4, 4, dtype=torch.bool)
    seed[0, :, 0] = True  # high part: keep
    seed[1, :, 3] = True  # low part: flip
    out = arm.orient(m, seed)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out[0], m[0])
    torch.testing.assert_close(out[1], 1.0 - m[1])


@pytest.mark.parametrize("case", ["empty", "full", "tie"])
def test_orient_keeps_the_map_when_undecided(case: str) -> None:
    m = _left_high_map()
    seed = np.zeros((4, 4), dtype=bool)
    if case == "full":
        seed[:] = True
    elif case == "tie":
        seed[0, 0] = seed[0, 3] = True  # R_h = R_l = 1/8
    np.testing.assert_array_equal(arm.orient(m, seed), m)


def test_orient_keeps_a_constant_map() -> None:
    m = np.zeros((5, 5), dtype=np.float32)
    seed = np.ones((5, 5), dtype=bool)
    r_h, r_l = arm.orientation_ratios(torch.from_numpy(m)[None], torch.from_numpy(seed)[None])
    assert math.isnan(float(r_h[0]))
    assert float(r_l[0]) == 1.0
    np.testing.assert_array_equal(arm.orient(m, seed), m)


def test_orient_accepts_01_integers_and_rejects_float_seeds() -> None:
    m = _left_high_map()
    seed = np.zeros((4, 4), dtype=np.uint8)
    seed[:, 3] = 1
    np.testing.assert_allclose(arm.orient(m, seed), 1.0 - m)
    with pytest.raises(ValueError, match="seed"):
        arm.orient(m, seed.astype(np.float32))
    with pytest.raises(ValueError, match="seed"):
        arm.orient(m, seed * 2)
    with pytest.raises(ValueError, match="seed must have shape"):
        arm.orient(m, seed[:3])
    with pytest.raises(ValueError, match="seed must have shape"):
        arm.orient(m, [[True, False]])
    with pytest.raises(ValueError, match="NaN"):
        arm.orient(np.full((4, 4), np.nan), seed)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_refine_orients_with_the_seed(backend: str) -> None:
    rng = np.random.default_rng(7)
    images, e_low = _inputs(rng, 1, 20, 20)
    cfg = ArmConfig(iterations=5)
    plain = arm.refine(e_low, images, cfg, backend=backend)
    seed = plain < plain.mean()  # the seed sits in the low part: the map must flip
    oriented = arm.refine(e_low, images, cfg, backend=backend, seed=seed)
    np.testing.assert_allclose(oriented, 1.0 - plain, atol=1e-7)


# ---------------------------------------------------------------- public API and bad input


def test_backend_resolution() -> None:
    assert arm.available_backends()[-1] == "reference"
    assert arm.resolve_backend("reference") == "reference"
    assert arm.resolve_backend("auto") == arm.available_backends()[0]
    with pytest.raises(ValueError, match="backend"):
        arm.resolve_backend("gpu")
    if not arm.cuda_usable():
        with pytest.raises(RuntimeError, match="cuda"):
            arm.refine(np.zeros((1, 2, 2)), np.zeros((1, 3, 4, 4)), backend="cuda")


def test_fallback_without_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arm, "_extension", lambda name: (None, f"no module {name}"))
    monkeypatch.setattr(arm, "cuda_usable", lambda: False)
    assert arm.available_backends() == ["reference"]
    assert arm.resolve_backend("auto") == "reference"
    with pytest.raises(RuntimeError, match="'cpp' unavailable"):
        arm.resolve_backend("cpp")
    with pytest.raises(RuntimeError, match="'cuda' unavailable"):
        arm.resolve_backend("cuda")
    out = arm.refine(np.zeros((1, 2, 2)), np.random.default_rng(0).random((1, 3, 4, 4)))
    assert out.shape == (1, 4, 4)


@pytest.mark.parametrize("backend", ["auto", "reference", pytest.param("cpp", marks=needs_cpp)])
def test_refine_types_and_shapes(backend: str) -> None:
    rng = np.random.default_rng(8)
    images, e_low = _inputs(rng, 2, 12, 10, low=3)
    cfg = ArmConfig(iterations=4)
    out = arm.refine(e_low, images, cfg, backend=backend)
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, 12, 10)
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.0
    img_t = torch.from_numpy(images).requires_grad_()
    as_torch = arm.refine(torch.from_numpy(e_low), img_t, cfg, backend=backend)
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_torch.detach().numpy(), out)
    single = arm.refine(e_low[1], images[1], cfg, backend=backend)
    assert single.shape == (12, 10)
    np.testing.assert_allclose(single, out[1], atol=1e-6)
    empty = arm.refine(e_low[:0], images[:0], cfg, backend=backend)
    assert empty.shape == (0, 12, 10)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_refine_converts_dtype_and_layout(backend: str) -> None:
    rng = np.random.default_rng(9)
    images, e_low = _inputs(rng, 2, 11, 13, low=4)
    cfg = ArmConfig(iterations=6, dilations=(1, 3))
    expected = arm.refine(e_low, images, cfg, backend=backend)
    # float64 and non-contiguous (channels-last storage, transposed view) inputs.
    hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1)).astype(np.float64)
    view = hwc.transpose(0, 3, 1, 2)
    assert not view.flags.c_contiguous
    e_view = np.asfortranarray(e_low.astype(np.float64))
    out = arm.refine(e_view, view, cfg, backend=backend)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Integer images (0..255) are converted; the colour kernel is scale invariant.
    as_int = np.round(images * 255).astype(np.uint8)
    ints = arm.refine(e_low, as_int, cfg, backend=backend)
    assert ints.dtype == np.float32
    assert ints.shape == expected.shape


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize(
    ("e_shape", "img_shape", "message"),
    [
        ((2, 4, 4), (2, 4, 8, 8), "images must be"),
        ((2, 4, 4), (2, 8, 8), "images must be"),
        ((2, 4, 4), (8, 8), "images must be"),
        ((3, 4, 4), (2, 3, 8, 8), "e_map must be"),
        ((2, 4), (2, 3, 8, 8), "e_map must be"),
        ((2, 4, 4), (3, 8, 8), "e_map must be"),
        ((2, 4, 4), (2, 3, 0, 8), "empty"),
        ((2, 0, 4), (2, 3, 8, 8), "empty"),
    ],
)
def test_refine_rejects_bad_shapes(
    backend: str, e_shape: tuple[int, ...], img_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        arm.refine(np.zeros(e_shape), np.zeros(img_shape), backend=backend)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refine_rejects_non_finite(backend: str, bad: float) -> None:
    images = np.zeros((1, 3, 5, 5))
    e_low = np.zeros((1, 2, 2))
    images[0, 1, 2, 2] = bad
    with pytest.raises(ValueError, match="images contains NaN or inf"):
        arm.refine(e_low, images, backend=backend)
    images[0, 1, 2, 2] = 0.0
    e_low[0, 1, 1] = bad
    with pytest.raises(ValueError, match="e_map contains NaN or inf"):
        arm.refine(e_low, images, backend=backend)


def test_refine_rejects_non_numeric_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="images must hold real numbers"):
        arm.refine(np.zeros((1, 2, 2)), np.full((1, 3, 2, 2), "a"))
    with pytest.raises(ValueError, match="images must hold real numbers"):
        arm.refine(np.zeros((1, 2, 2)), np.zeros((1, 3, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="e_map must hold real numbers"):
        arm.refine(np.zeros((1, 2, 2), dtype=np.complex64), np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="e_map is not an array"):
        arm.refine([[1.0], [1.0, 2.0]], np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="num_threads"):
        arm.refine(np.zeros((1, 2, 2)), np.zeros((1, 3, 2, 2)), num_threads=0)
    with pytest.raises(ValueError, match="seed must have shape"):
        arm.refine(np.zeros((1, 2, 2)), np.zeros((1, 3, 2, 2)), seed=np.zeros((1, 3, 3), bool))


@needs_cpp
def test_cpp_bindings_validate_their_input() -> None:
    from lcar_deploy import _arm_cpu

    p = ArmConfig().native_params(_arm_cpu)
    images = np.zeros((1, 3, 4, 4), dtype=np.float32)
    e_h = np.zeros((1, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        _arm_cpu.refine(e_h, np.zeros((1, 2, 4, 4), np.float32), p, 0)
    with pytest.raises(ValueError, match="e_h must be"):
        _arm_cpu.refine(np.zeros((1, 4, 5), np.float32), images, p, 0)
    with pytest.raises(ValueError, match="images must be"):
        _arm_cpu.affinities(np.zeros((3, 4, 4), np.float32), p, 0)
    with pytest.raises(ValueError, match="empty"):
        _arm_cpu.affinities(np.zeros((1, 3, 0, 4), np.float32), p, 0)
    with pytest.raises(ValueError, match="NaN"):
        _arm_cpu.refine(np.full((1, 4, 4), np.nan, np.float32), images, p, 0)
    p12 = ArmConfig(dilations=(1, 2)).native_params(_arm_cpu)
    with pytest.raises(ValueError, match="aff must be"):
        _arm_cpu.propagate(e_h, np.zeros((1, 8, 4, 4), np.float32), p12, 0)
    # float64 and non-contiguous arrays are converted.
    rng = np.random.default_rng(10)
    img64 = rng.random((1, 4, 4, 3)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(
        _arm_cpu.affinities(img64, p, 0),
        _arm_cpu.affinities(np.ascontiguousarray(img64, dtype=np.float32), p, 0),
        atol=1e-7,
    )


# ---------------------------------------------------------------- the native settings struct

NATIVE_MODULES = [
    pytest.param(module, id=name)
    for name in ("_arm_cpu", "_arm_cuda")
    if (module := arm._extension(name)[0]) is not None
]
NATIVE_FIELDS = ("dilations", "eta", "iterations", "w_p", "w_rgb", "w_pos", "sigma_eps")


def _fields_of(cfg: ArmConfig) -> dict:
    return {name: getattr(cfg, name) for name in NATIVE_FIELDS}


@pytest.mark.parametrize("module", NATIVE_MODULES)
@pytest.mark.parametrize(
    "cfg",
    [
        ArmConfig(),
        ArmConfig(
            eta=0.25,
            iterations=7,
            w_p=0.02,
            dilations=AFA_DILATIONS,
            w_rgb=1.0,
            w_pos=0.5,
            sigma_eps=1e-6,
        ),
    ],
    ids=["defaults", "custom"],
)
def test_native_params_are_the_configs(module, cfg: ArmConfig) -> None:
    p = cfg.native_params(module)
    assert isinstance(p, module.ArmParams)
    # The struct has exactly ArmConfig's fields, align_corners (torch upsampling) aside.
    properties = {
        n for n in dir(module.ArmParams) if isinstance(getattr(module.ArmParams, n), property)
    }
    assert properties - {"num_neighbours"} == set(NATIVE_FIELDS)
    assert {f.name for f in dataclasses.fields(ArmConfig)} - {"align_corners"} == set(NATIVE_FIELDS)
    got = {name: getattr(p, name) for name in NATIVE_FIELDS}
    got["dilations"] = tuple(got["dilations"])
    assert got == _fields_of(cfg)  # exactly: doubles cross the boundary unchanged
    assert p.num_neighbours == cfg.num_neighbours
    with pytest.raises(AttributeError):
        p.eta = 0.5  # read-only
    assert repr(p).startswith("ArmParams(dilations=")


@pytest.mark.parametrize("module", NATIVE_MODULES)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"eta": 2.0}, r"eta must be in \[0, 1\], got 2"),
        ({"eta": float("nan")}, "eta must be in"),
        ({"iterations": -1}, "iterations must be >= 0, got -1"),
        ({"dilations": list(range(1, 18))}, "at most 16 dilations, got 17"),
        ({"dilations": []}, "dilations must not be empty"),
        ({"dilations": [1, 0]}, "dilations must be >= 1, got 0"),
        ({"w_p": -1.0}, "w_p must be >= 0"),
        ({"w_rgb": 0.0}, "w_rgb must be > 0"),
        ({"w_pos": float("inf")}, "w_pos must be > 0"),
        ({"sigma_eps": -1e-8}, "sigma_eps must be >= 0"),
    ],
)
def test_native_params_refuse_bad_values(module, bad: dict, message: str) -> None:
    """The C++ constructor checks every field itself (ArmConfig is bypassed here)."""
    with pytest.raises(ValueError, match=message):
        module.ArmParams(**{**_fields_of(ArmConfig()), **bad})


@pytest.mark.parametrize("module", NATIVE_MODULES)
def test_native_params_take_every_field_by_keyword(module) -> None:
    fields = _fields_of(ArmConfig())
    for name in NATIVE_FIELDS:
        with pytest.raises(TypeError):
            module.ArmParams(**{k: v for k, v in fields.items() if k != name})
    with pytest.raises(TypeError):
        module.ArmParams(*fields.values())
    with pytest.raises(TypeError):
        module.ArmParams(**{**fields, "iterations": 2.5})
    # An integer for a float field is fine (ArmConfig may store one).
    assert module.ArmParams(**{**fields, "eta": 1}).eta == 1.0


@pytest.mark.parametrize("module", NATIVE_MODULES)
def test_native_functions_need_the_struct(module) -> None:
    """No defaults are left in the bindings, and the loose settings are no longer accepted."""
    for name in ("ArmParams", "neighbour_table", "affinities", "propagate", "refine"):
        fn = getattr(module, name, None)
        if fn is None:
            continue
        doc = (fn.__init__ if name == "ArmParams" else fn).__doc__
        signatures = [line for line in doc.splitlines() if "(" in line and "->" in line]
        assert signatures, doc
        assert all(" = " not in line for line in signatures), signatures
    p = ArmConfig().native_params(module)
    if module.__name__.endswith("_arm_cpu"):
        images = np.zeros((1, 3, 4, 4), dtype=np.float32)
        e_h = np.zeros((1, 4, 4), dtype=np.float32)
        with pytest.raises(TypeError):
            module.refine(e_h, images, [1], 0)  # the old loose list
        with pytest.raises(TypeError):
            module.refine(e_h, images, num_threads=0)
        with pytest.raises(TypeError):
            module.refine(e_h, images, p)  # num_threads has no default either
        with pytest.raises(TypeError):
            module.affinities(images, [1], 0)
        with pytest.raises(TypeError):
            module.propagate(e_h, np.zeros((1, 8, 4, 4), np.float32), [1], 0)
        with pytest.raises(TypeError):
            module.neighbour_table([1])
        assert module.refine(e_h, images, p, 0).shape == (1, 4, 4)
    else:
        # B = 0 returns before touching the GPU, so the bindings are checked without one.
        sizes = (0, 4, 4)
        assert module.refine(0, 0, 0, 0, 0, *sizes, p, 0, 0) is None
        assert module.affinities(0, 0, *sizes, p, 0, 0) is None
        with pytest.raises(TypeError):
            module.refine(0, 0, 0, 0, 0, *sizes, [1], 0, 0)
        with pytest.raises(TypeError):
            module.refine(0, 0, 0, 0, 0, *sizes, p)
        with pytest.raises(TypeError):
            module.affinities(0, 0, *sizes, [1], 0, 0)


@pytest.mark.skipif(len(NATIVE_MODULES) < 2, reason="needs both native modules built")
def test_both_modules_bind_their_struct() -> None:
    """Both modules import together: each binds ArmParams module-locally (a type registered
    globally could be registered only once per process)."""
    from lcar_deploy import _arm_cpu, _arm_cuda

    assert _arm_cpu.ArmParams is not _arm_cuda.ArmParams
    cfg = ArmConfig(dilations=(1, 2))
    assert repr(cfg.native_params(_arm_cpu)) == repr(cfg.native_params(_arm_cuda))
