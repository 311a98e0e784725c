"""ARM, the affinity refinement module of LCAR (paper eqs. 7-11; docs/method.md, section 4).

For a batch of B images, from the graph-cut eigenvector map ``E_l`` (B, h, w):

1. ``E_h`` = bilinear upsampling of ``E_l`` to the image size (H, W), min-max scaled per image to
   [-0.5, 0.5] (:func:`upsample_eigenmap`).
2. Affinities ``kappa_aff`` (B, |N|, H, W) from the RGB image in [0, 1] only (eqs. 7-8),
   computed once (:func:`affinities_reference`).
3. ``k`` updates of eq. 9 with replicate padding at the borders (:func:`propagate_reference`),
   then per-image min-max to [0, 1].
4. Orientation with the SD-CAM seed (eqs. 10-11, :func:`orient`), shared by all backends.

Steps 2-3 run on one of three backends computing the same function: ``"reference"`` (this
module, plain torch, float64), ``"cpp"`` (``lcar_deploy._arm_cpu``: C++ with OpenMP) and
``"cuda"`` (``lcar_deploy._arm_cuda``: CUDA kernels on torch CUDA tensors). The native backends
evaluate the affinities in double, store them and iterate eq. 9 in float32; they agree with the
reference within 1e-5 (tests/test_arm.py). Memory: 4 |N| H W bytes of affinities per image.
:func:`refine` is the public entry point and picks ``cuda`` (only where a GPU is usable) >
``cpp`` > ``reference`` unless told which.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..config_check import check_fields, check_length, check_range
from ..names import ArmBackend

ArrayLike = np.ndarray | torch.Tensor


AFA_DILATIONS = (1, 2, 4, 8, 12, 24)
"""The neighbour set of AFA's PAR (the pipeline's default; the paper's 8-way set is ``(1,)``)."""


@dataclass(frozen=True)
class ArmConfig:
    """Settings of the ARM; paper symbols (eqs. 7-9) in brackets.

    Attributes:
        eta: [eta] update rate of eq. 9, the share of the previous value kept at each update
            (paper: 0.1).
        iterations: [k] number of eq. 9 updates (paper: 50).
        w_p: [w_p] position term factor of eq. 8 (paper: 0.01). The affinities of a pixel sum to
            1 + w_p; as in the paper and AFA's PAR they are not renormalised (the final min-max
            makes the growth irrelevant).
        dilations: the neighbour set N of eqs. 8-9: for each dilation d the 8 pixels at
            (+-d, 0), (0, +-d), (+-d, +-d), centre excluded, so |N| = 8 len(dilations). The
            paper's 8-way neighbourhood is (1,), the default; AFA's PAR uses (1, 2, 4, 8, 12, 24).
            At most 16 dilations (the CUDA kernels pass the table by value).
        w_rgb: AFA's extra scale w1 inside the square of the colour kernel (eq. 7):
            ``kappa_rgb = -(|I_ij - I_kl| / (w_rgb (sigma_rgb_ij + sigma_eps)))^2`` per channel,
            then averaged over the 3 channels, where sigma_rgb_ij is the unbiased standard
            deviation of the |N| neighbour values of that channel at pixel ij (as PAR).
            Default 0.3 as PAR, the code LCAR builds on; the paper's eq. 7 read literally is
            w_rgb = 1. Smaller values make the colour softmax sharper.
        w_pos: the same scale for the position kernel (eq. 7):
            ``kappa_pos = -(|P_ij - P_kl| / (w_pos (sigma_pos + sigma_eps)))^2`` with |P_ij - P_kl|
            = d for axial and sqrt(2) d for diagonal neighbours and sigma_pos the unbiased
            standard deviation of these |N| distances (a constant of the dilation set), as PAR,
            which uses its w1 = 0.3 here too.
        sigma_eps: added to sigma_rgb and sigma_pos before dividing (1e-8 as PAR).
        align_corners: of the bilinear upsampling E_l -> E_h. Default False (torch's default:
            pixel areas aligned, as cv2.resize); PAR's upsampling uses True.
    """

    eta: float = 0.1
    iterations: int = 50
    w_p: float = 0.01
    dilations: tuple[int, ...] = (1,)
    w_rgb: float = 0.3
    w_pos: float = 0.3
    sigma_eps: float = 1e-8
    align_corners: bool = False

    max_dilations: ClassVar[int] = 16

    def __post_init__(self) -> None:
        check_fields(self)
        check_length(self, "dilations", 1, self.max_dilations)
        check_range(self, "dilations", 1)
        check_range(self, "eta", 0.0, 1.0)
        check_range(self, "iterations", 0)
        check_range(self, "w_p", 0.0)
        check_range(self, "w_rgb", 0.0, low_open=True)
        check_range(self, "w_pos", 0.0, low_open=True)
        check_range(self, "sigma_eps", 0.0)

    @property
    def num_neighbours(self) -> int:
        """|N| = 8 len(dilations)."""
        return 8 * len(self.dilations)

    def native_params(self, module: ModuleType) -> object:
        """These settings as ``module.ArmParams``, the struct every native ARM function takes.

        ``module`` is ``lcar_deploy._arm_cpu`` or ``lcar_deploy._arm_cuda`` (each has its own
        ArmParams type). Every field is passed (the struct has no defaults; they are this
        class's); its constructor checks them again at the C++ boundary. ``align_corners`` is
        not native: the upsampling runs in torch.
        """
        return module.ArmParams(
            dilations=self.dilations,
            eta=self.eta,
            iterations=self.iterations,
            w_p=self.w_p,
            w_rgb=self.w_rgb,
            w_pos=self.w_pos,
            sigma_eps=self.sigma_eps,
        )


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """The neighbour set N as (dy, dx) offsets, |N| = 8 len(dilations), in PAR's order.

    For each dilation d: (-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d).
    All backends use this order.
    """
    unit = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(dy * d, dx * d) for d in dilations for dy, dx in unit]


def position_term(cfg: ArmConfig) -> torch.Tensor:
    """Second term of eq. 8, ``w_p softmax_N(kappa_pos)``: (|N|,) float64, pixel independent."""
    offsets = neighbour_offsets(cfg.dilations)
    dist = torch.tensor([math.hypot(dy, dx) for dy, dx in offsets], dtype=torch.float64)
    sigma_pos = dist.std()
    kappa_pos = -((dist / (cfg.w_pos * (sigma_pos + cfg.sigma_eps))) ** 2)
    return cfg.w_p * torch.softmax(kappa_pos, dim=0)


def minmax_normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max of x (B, H, W) to [0, 1], same dtype; a constant image becomes 0."""
    lo = x.amin(dim=(1, 2), keepdim=True)
    span = x.amax(dim=(1, 2), keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - lo) / safe, torch.zeros_like(x))


def upsample_eigenmap(
    e_low: torch.Tensor, size: tuple[int, int], align_corners: bool = False
) -> torch.Tensor:
    """``E_h`` from ``E_l``: bilinear upsampling, then per-image min-max to [-0.5, 0.5].

    Args:
        e_low: E_l, (B, h, w) floating tensor.
        size: (H, W), the image size; a map already of that size is only rescaled.
        align_corners: passed to the bilinear interpolation (see ArmConfig.align_corners).

    Returns:
        E_h, (B, H, W), same dtype and device as e_low; a constant map gives -0.5 everywhere.
    """
    up = F.interpolate(e_low[:, None], size=size, mode="bilinear", align_corners=align_corners)
    return minmax_normalise(up[:, 0]) - 0.5


def _neighbours(x: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Neighbour values, borders by replicate padding: x (B, C, H, W) -> (B, C, |N|, H, W)."""
    h, w = x.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return torch.stack(
        [padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offsets],
        dim=2,
    )


def affinities_reference(
    images: torch.Tensor, cfg: ArmConfig, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Eqs. 7-8: the affinities ``kappa_aff`` of every pixel to its neighbours.

    Args:
        images: (B, 3, H, W) RGB in [0, 1] (not mean/std normalised).
        cfg: ARM settings (dilations, w_p, w_rgb, w_pos, sigma_eps).
        dtype: computation and result dtype.

    Returns:
        (B, |N|, H, W): ``softmax_N(kappa_rgb) + w_p softmax_N(kappa_pos)``, neighbours in
        :func:`neighbour_offsets` order.
    """
    img = images.to(dtype)
    nb = _neighbours(img, neighbour_offsets(cfg.dilations))  # (B, 3, |N|, H, W)
    sigma_rgb = nb.std(dim=2, keepdim=True)  # unbiased, per pixel and channel
    scale = cfg.w_rgb * (sigma_rgb + cfg.sigma_eps)
    ratio = (nb - img[:, :, None]).abs_().div_(scale)  # |I_ij - I_kl| / scale, in place
    kappa_rgb = -ratio.square_().mean(dim=1)  # (B, |N|, H, W)
    pos = position_term(cfg).to(device=img.device, dtype=dtype)
    return torch.softmax(kappa_rgb, dim=1) + pos[None, :, None, None]


def propagate_reference(e_h: torch.Tensor, aff: torch.Tensor, cfg: ArmConfig) -> torch.Tensor:
    """Eq. 9 applied ``cfg.iterations`` times (replicate padding), without normalisation.

    Args:
        e_h: (B, H, W) map, E_h_0.
        aff: (B, |N|, H, W) affinities from :func:`affinities_reference`.
        cfg: ARM settings (eta, iterations, dilations).

    Returns:
        E_h_k, (B, H, W) in aff's dtype.
    """
    offsets = neighbour_offsets(cfg.dilations)
    pad = max(cfg.dilations)
    h, w = e_h.shape[-2:]
    e = e_h.to(aff.dtype)
    for _ in range(cfg.iterations):
        padded = F.pad(e[:, None], (pad, pad, pad, pad), mode="replicate")[:, 0]
        acc = torch.zeros_like(e)
        for k, (dy, dx) in enumerate(offsets):
            acc += aff[:, k] * padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        e = cfg.eta * e + (1.0 - cfg.eta) * acc
    return e


def refine_reference(
    e_h: torch.Tensor,
    images: torch.Tensor,
    cfg: ArmConfig,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Eqs. 7-9 and the final min-max in plain torch.

    Args:
        e_h: E_h (B, H, W), normally from :func:`upsample_eigenmap`.
        images: (B, 3, H, W) RGB in [0, 1].
        cfg: ARM settings.
        dtype: computation dtype (float64: the reference the other backends are tested against).

    Returns:
        (B, H, W) float32 in [0, 1] (a constant result becomes 0), not yet oriented.
    """
    aff = affinities_reference(images, cfg, dtype)
    return minmax_normalise(propagate_reference(e_h, aff, cfg)).float()


def orientation_ratios(
    refined: torch.Tensor, seed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: shares of the SD-CAM seed inside the high and the low part of each map.

    ``E_m = E > mean(E)`` per image; ``R_h = sum(E_m seed) / sum(E_m)``,
    ``R_l = sum((1 - E_m) seed) / sum(1 - E_m)``.

    Args:
        refined: (B, H, W) floating, the refined maps E_h_k.
        seed: (B, H, W) bool, M_seed.

    Returns:
        R_h, R_l: (B,) float64 each; NaN where the part is empty (a constant map has no pixel
        above its mean).
    """
    e = refined.to(torch.float64)
    high = e > e.mean(dim=(1, 2), keepdim=True)
    s = seed.to(device=e.device, dtype=torch.bool)
    n_high = high.sum(dim=(1, 2)).to(torch.float64)
    n_low = (~high).sum(dim=(1, 2)).to(torch.float64)
    seed_high = (high & s).sum(dim=(1, 2)).to(torch.float64)
    seed_low = (~high & s).sum(dim=(1, 2)).to(torch.float64)
    r_high = torch.where(n_high > 0, seed_high / n_high.clamp(min=1), torch.nan)
    r_low = torch.where(n_low > 0, seed_low / n_low.clamp(min=1), torch.nan)
    return r_high, r_low


def _orient_tensor(refined: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """:func:`orient` on validated (B, H, W) tensors."""
    r_high, r_low = orientation_ratios(refined, seed)
    flip = (r_high < r_low).to(refined.device)[:, None, None]
    return torch.where(flip, 1.0 - refined, refined)


def orient(refined: ArrayLike, seed: ArrayLike) -> ArrayLike:
    """Eqs. 10-11: flip each map (``1 - E``) whose seed lies more in its low part (R_h < R_l).

    A map is kept when R_h >= R_l, which covers the cases the paper leaves open: an empty seed
    (R_h = R_l = 0), a seed covering the whole image (R_h = R_l = 1), and ties. A constant map
    (R_h undefined, see :func:`orientation_ratios`) is kept too.

    Args:
        refined: (B, H, W) or (H, W) maps in [0, 1], numpy or torch.
        seed: bool (or 0/1 integer) array of the same shape, numpy or torch.

    Returns:
        The oriented maps, float32, of the same kind (numpy / torch, device) and shape as refined.
    """
    maps = _as_float_tensor(refined, "refined")
    if maps.ndim not in (2, 3):
        raise ValueError(f"refined must be (B, H, W) or (H, W), got shape {tuple(maps.shape)}")
    _check_finite(maps, "refined")
    unbatched = maps.ndim == 2
    if unbatched:
        maps = maps[None]
    mask = _as_seed(seed, tuple(maps.shape), unbatched)
    out = _orient_tensor(maps, mask)
    return _like(out[0] if unbatched else out, refined)


def _as_float_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Any real numeric array or tensor -> float32 tensor (same device); else ValueError."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(_as_numpy(x, name))
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_int(t)):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t.to(torch.float32)


def _as_numpy(x: object, name: str) -> np.ndarray:
    """np.asarray with a clear error for things that are not numeric arrays."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not an array: {exc}") from exc
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _as_seed(seed: ArrayLike, shape: tuple[int, ...], unbatched: bool) -> torch.Tensor:
    """Validated seed mask as a (B, H, W) bool tensor; shape is the (B, H, W) of the maps."""
    s = seed if isinstance(seed, torch.Tensor) else torch.from_numpy(_as_numpy(seed, "seed"))
    given = tuple(s.shape)
    if unbatched:
        s = s[None]
    if tuple(s.shape) != shape:
        want = shape[1:] if unbatched else shape
        raise ValueError(f"seed must have shape {want} like the maps, got {given}")
    if s.dtype != torch.bool:
        if s.is_floating_point() or s.is_complex() or not bool(((s == 0) | (s == 1)).all()):
            raise ValueError(f"seed must be a bool (or 0/1 integer) mask, got dtype {s.dtype}")
        s = s != 0
    return s


def _like(out: torch.Tensor, template: ArrayLike) -> ArrayLike:
    """out as a torch tensor on template's device if template is one, else as numpy."""
    if isinstance(template, torch.Tensor):
        return out.to(template.device)
    return out.detach().cpu().numpy()


@functools.cache
def _extension(name: str) -> tuple[ModuleType | None, str]:
    """Import lcar_deploy.<name> once: (module, "") or (None, why it is unavailable)."""
    try:
        return importlib.import_module(f"lcar_deploy.{name}"), ""
    except ImportError as exc:
        return None, str(exc)


@functools.cache
def cuda_usable() -> bool:
    """Whether the CUDA backend can run here.

    True when the module is built, torch and the module both see a GPU, and a 1-pixel probe
    runs (the kernels are built for compute capabilities 8.0 and 9.0 plus PTX; a GPU they cannot
    run on makes the probe fail, and "auto" then falls back to the C++ backend).
    """
    module, _ = _extension("_arm_cuda")
    if module is None or not torch.cuda.is_available() or module.device_count() < 1:
        return False
    device = torch.device("cuda", torch.cuda.current_device())
    # e_h, image, affinities, work, out of one 1 x 1 image with |N| = 8.
    bufs = [torch.zeros(n, dtype=torch.float32, device=device) for n in (1, 3, 8, 1, 1)]
    try:
        module.refine(
            *(b.data_ptr() for b in bufs),
            1,
            1,
            1,
            ArmConfig(iterations=1).native_params(module),
            device=device.index,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
        torch.cuda.synchronize(device)
    except RuntimeError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends that can run here, in :func:`refine`'s order of preference."""
    names = ["cuda"] if cuda_usable() else []
    if _extension("_arm_cpu")[0] is not None:
        names.append("cpp")
    return [*names, "reference"]


def resolve_backend(backend: str = "auto") -> str:
    """The backend :func:`refine` runs for ``backend``; RuntimeError if a forced one can't run."""
    if backend == "auto":
        return available_backends()[0]
    if backend == "cpp":
        _cpu_module()
    elif backend == "cuda":
        _cuda_module()
    elif backend != "reference":
        raise ValueError(f"backend must be 'auto', 'cuda', 'cpp' or 'reference', got {backend!r}")
    return backend


def _cpu_module() -> ModuleType:
    module, why = _extension("_arm_cpu")
    if module is None:
        raise RuntimeError(f"ARM backend 'cpp' unavailable (extension not built: {why})")
    return module


def _cuda_module() -> ModuleType:
    module, why = _extension("_arm_cuda")
    if module is None:
        raise RuntimeError(f"ARM backend 'cuda' unavailable (extension not built: {why})")
    if not cuda_usable():
        raise RuntimeError("ARM backend 'cuda' unavailable (no usable CUDA GPU)")
    return module


def affinities_cpp(
    images: np.ndarray, cfg: ArmConfig, num_threads: int | None = None
) -> np.ndarray:
    """Eqs. 7-8 with the C++ backend: images (B, 3, H, W) -> (B, |N|, H, W) float32."""
    module = _cpu_module()
    return module.affinities(
        _as_numpy(images, "images"), cfg.native_params(module), num_threads=num_threads or 0
    )


def refine_cpp(
    e_h: np.ndarray, images: np.ndarray, cfg: ArmConfig, num_threads: int | None = None
) -> np.ndarray:
    """Eqs. 7-9 and min-max with the C++ backend (float32, OpenMP over rows).

    Args:
        e_h: E_h (B, H, W).
        images: (B, 3, H, W) RGB in [0, 1].
        cfg: ARM settings.
        num_threads: OpenMP threads; None for all available.

    Returns:
        (B, H, W) float32 in [0, 1], not yet oriented.
    """
    module = _cpu_module()
    return module.refine(
        _as_numpy(e_h, "e_h"),
        _as_numpy(images, "images"),
        cfg.native_params(module),
        num_threads=num_threads or 0,
    )


def _cuda_inputs(images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Contiguous float32 CUDA images (B, 3, H, W), the device index and the current stream."""
    if images.device.type != "cuda":
        raise ValueError(f"the cuda backend needs CUDA tensors, got device {images.device}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    device = images.device.index if images.device.index is not None else 0
    stream = torch.cuda.current_stream(images.device).cuda_stream
    return images.to(torch.float32).contiguous(), device, stream


def affinities_cuda(images: torch.Tensor, cfg: ArmConfig) -> torch.Tensor:
    """Eqs. 7-8 with the CUDA backend: CUDA images (B, 3, H, W) -> (B, |N|, H, W) float32."""
    module = _cuda_module()
    img, device, stream = _cuda_inputs(images)
    b, _, h, w = img.shape
    aff = torch.empty((b, cfg.num_neighbours, h, w), dtype=torch.float32, device=img.device)
    params = cfg.native_params(module)
    module.affinities(img.data_ptr(), aff.data_ptr(), b, h, w, params, device, stream)
    return aff


def refine_cuda(
    e_h: torch.Tensor, images: torch.Tensor, cfg: ArmConfig, max_scratch_bytes: int = 1 << 28
) -> torch.Tensor:
    """Eqs. 7-9 and min-max with the CUDA backend, on the current stream of images' device.

    Args:
        e_h: E_h (B, H, W) CUDA tensor.
        images: (B, 3, H, W) RGB in [0, 1], CUDA tensor on the same device.
        cfg: ARM settings.
        max_scratch_bytes: the batch is processed in chunks whose affinity buffer stays under
            this size (at least one image per chunk).

    Returns:
        (B, H, W) float32 CUDA tensor in [0, 1], not yet oriented.
    """
    module = _cuda_module()
    img, device, stream = _cuda_inputs(images)
    b, _, h, w = img.shape
    if tuple(e_h.shape) != (b, h, w) or e_h.device != img.device:
        raise ValueError(f"e_h must be ({b}, {h}, {w}) on {img.device}, got {tuple(e_h.shape)}")
    e = e_h.to(torch.float32).contiguous()
    out = torch.empty_like(e)
    chunk = max(1, max_scratch_bytes // (4 * cfg.num_neighbours * h * w))
    aff = torch.empty(
        (min(chunk, b), cfg.num_neighbours, h, w), dtype=torch.float32, device=e.device
    )
    work = torch.empty((min(chunk, b), h, w), dtype=torch.float32, device=e.device)
    params = cfg.native_params(module)
    for start in range(0, b, chunk):
        n = min(chunk, b - start)
        ptrs = (e[start], img[start], aff, work, out[start])
        module.refine(*(t.data_ptr() for t in ptrs), n, h, w, params, device, stream)
    return out


def refine(
    e_map: ArrayLike,
    images: ArrayLike,
    cfg: ArmConfig | None = None,
    backend: ArmBackend = "auto",
    seed: ArrayLike | None = None,
    num_threads: int | None = None,
) -> ArrayLike:
    """The ARM: refine graph-cut eigenvector maps with the images (eqs. 7-9), orient (10-11).

    Args:
        e_map: E_l (B, h, w) at any resolution (e.g. the 14 x 14 token grid), or a map already
            at image size; either is upsampled (if needed) and min-max scaled to [-0.5, 0.5].
        images: (B, 3, H, W) RGB in [0, 1] (not mean/std normalised). The colour kernel divides
            by the local standard deviation, so the result hardly depends on the value range.
        cfg: ARM settings; None for the paper's.
        backend: "auto" (cuda if a GPU is usable, else cpp, else reference) or one to force;
            a forced backend that cannot run raises RuntimeError.
        seed: the SD-CAM seed M_seed, bool (B, H, W); given, the maps are oriented (:func:`orient`).
        num_threads: OpenMP threads of the cpp backend (None: all); ignored by the others.

    An unbatched call ((h, w) map, (3, H, W) image, (H, W) seed) returns an (H, W) map. Numeric
    dtypes are converted to float32 and any layout is accepted; NaN / inf, wrong shapes, and
    non-numeric data raise ValueError.

    Returns:
        (B, H, W) float32 in [0, 1]: numpy if images is numpy, else a tensor on images' device.
    """
    cfg = cfg or ArmConfig()
    if num_threads is not None and (isinstance(num_threads, bool) or num_threads < 1):
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads!r}")
    name = resolve_backend(backend)
    e = _as_float_tensor(e_map, "e_map")
    img = _as_float_tensor(images, "images")
    unbatched = img.ndim == 3 and img.shape[0] == 3
    if unbatched:
        if e.ndim != 2:
            raise ValueError(f"e_map must be (h, w) with one (3, H, W) image, got {tuple(e.shape)}")
        e, img = e[None], img[None]
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB, got shape {tuple(img.shape)}")
    if e.ndim != 3 or e.shape[0] != img.shape[0]:
        raise ValueError(
            f"e_map must be (B, h, w) with B = {img.shape[0]} images, got {tuple(e.shape)}"
        )
    b, _, h, w = img.shape
    if min(h, w, e.shape[1], e.shape[2]) < 1:
        raise ValueError(f"empty image or map: images {tuple(img.shape)}, e_map {tuple(e.shape)}")
    _check_finite(e, "e_map")
    _check_finite(img, "images")
    mask = None if seed is None else _as_seed(seed, (b, h, w), unbatched)
    if name != "cuda":
        device = torch.device("cpu")
    elif img.device.type == "cuda":
        device = img.device
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    e, img = e.to(device), img.to(device)
    if b == 0:
        out = torch.zeros((0, h, w), dtype=torch.float32, device=device)
    else:
        e_h = upsample_eigenmap(e, (h, w), cfg.align_corners)
        if name == "cuda":
            out = refine_cuda(e_h, img, cfg)
        elif name == "cpp":
            out = torch.from_numpy(refine_cpp(e_h.numpy(), img.numpy(), cfg, num_threads))
        else:
            out = refine_reference(e_h, img, cfg)
    if mask is not None:
        out = _orient_tensor(out, mask.to(out.device))
    return _like(out[0] if unbatched else out, images)
