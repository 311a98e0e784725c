"""SGRM: the self-guided re-prediction module (paper eqs. 12-16; docs/method.md, section 5).

For each image a fresh, small convolutional *Aggregation Net* is trained from scratch on that
image alone. Its input is the image's RGB in [0, 1] and the refined map (the ARM output) in
[0, 1], 4 channels at H x W (the paper's input), by default followed by ``features`` semantic
channels from the backbone's affinity features (:func:`feature_channels`); its output is
2-class (background / object) logits per pixel. It is supervised by

- ``y_cls`` (eq. 12): the refined map thresholded at ``gamma_l1`` / ``gamma_h1`` (0 = background,
  1 = object, 255 = ignored), through the classification loss ``w1 L_cls+ + w2 L_cls-`` (eq. 15);
- ``y_s`` (eq. 13): the net's own argmax, voted by majority inside each Felzenszwalb superpixel
  (``y_pred``) and overridden where the superpixel-averaged refined map ``E_s`` is reliable
  (``y_s*``, eq. 12), through the superpixel consistency loss ``w3 L_spix`` (eq. 14).

Training is SGD (lr 0.05, momentum 0.9) and stops as soon as under 10% (paper; default 2%) of
the reliable pixels of ``y_cls`` disagree with the net's argmax, or after 200 steps. The output
mask is that argmax, by default voted inside the superpixels (``y_pred``); the box is the
bounding box of its largest 8-connected component (or of all foreground pixels).

Defaults that depart from the paper (its values are :data:`PAPER_CUB`): with the paper's
settings the mask bloats far beyond the object on ARM-refined maps of real CUB images. Why each
default is what it is: docs/method.md, section 5; the measurements: docs/experiments/2026-12-sgrm.md. The
changes:

- ``gamma_l1 = gamma_l2 = 0.6``, ``gamma_h1 = gamma_h2 = 0.75`` (paper 0.1 / 0.6 / 0.1 / 0.4):
  the net puts its boundary inside the ignored band between the thresholds, so the band must
  be narrow and around the refined map's own best threshold (its maximum is always 1, so
  thresholds relative to it would change nothing). Wider or lower bands give bigger masks; a
  narrower one often runs to ``max_steps``.
- ``w2 = 2`` (paper 0.1, so ``w1 / w2 = 20``): the object term then dominates, a fresh net first
  predicts the object nearly everywhere and needs many steps to clear the background; with
  ``w1 = w2`` the masks are as good in several times fewer steps.
- ``stop_error = 0.02`` (paper 0.1; the ``classifier`` preset 0.005): the 10% rule stops the
  net while a large part of the reliable background is still marked object; with the semantic
  channels (``features``) a 2% stop gave better boxes than 0.5% on the foreground head's maps,
  0.5% on the ImageNet classifier's.
- ``mask_vote = True``: the returned mask is the superpixel vote ``y_pred`` of the argmax
  (eq. 13) rather than the raw argmax, which snaps it to image edges and drops specks.

Choices the paper leaves open (all are :class:`SgrmConfig` settings):

- *Aggregation Net*: hidden convolutions of ``width`` channels with kernel sizes ``kernels``,
  each followed by a ReLU, then a 1x1 convolution to 2 logits; default a 3x3 then a 1x1
  convolution of 8 channels (a per-pixel MLP over 3x3 patches; why this size:
  docs/method.md). Replicate padding: zero padding makes the border pixels look different, and the
  net then marks them as object. No normalisation layers, so every image's net is independent
  and the batched path is exact. Inputs: RGB and the refined map mapped from [0, 1] to [-1, 1],
  then ``features`` semantic channels (:func:`feature_channels`: principal components of the
  backbone's affinity features, upsampled); with RGB and the map alone the net can only
  re-threshold the map it is trained to reproduce, the semantic channels let it tell object
  from background where their colours are alike. Initialisation is
  PyTorch's default for ``nn.Conv2d`` (weights and biases uniform in +-1/sqrt(fan_in)), drawn
  from a ``torch.Generator`` seeded per image, so the reference and the batched path start
  from identical weights; or, with ``init = "data"``, computed from the image itself with no
  randomness (:func:`data_init_params`), so the mask depends on no seed.
- *Training pixels*: the labels, the vote, the losses and the stop rule use the pixels of every
  ``train_stride``-th row and column (:func:`training_pixels`; default 2, a quarter of the
  pixels, as good masks at about half the cost); the mask is the trained net's argmax at every
  pixel, voted inside the full superpixels.
- *Losses*: ``L_spix`` is the mean cross-entropy over all H x W pixels (eq. 14); ``L_cls+`` /
  ``L_cls-`` are the cross-entropy over the pixels with ``y_cls`` = 1 / 0, by default averaged
  over those pixels (``cls_norm="class"``; 0 when there are none), or summed and divided by
  H x W as in eq. 14 (``"image"``); why ``"class"``: docs/method.md.
- *Vote*: a superpixel is foreground when strictly more than half of its pixels are predicted
  foreground (ties go to background); the same vote gives the output mask (``mask_vote``).
- *Stop rule*: checked on the forward pass of every step, before the update; the returned mask is
  the prediction that met it (or the one after the last update). ``steps`` counts updates. The
  paper's rule pools the errors over all reliable pixels (``stop_rule="pooled"``); by default
  the error rates of the reliable object and background pixels are averaged instead
  (``"balanced"``), because with pooling a net that predicts all background (as a freshly
  initialised one often does) stops at step 0 whenever the reliable object pixels are under
  ``stop_error`` of the reliable pixels, i.e. on small objects.

Behaviour to know: training stops at the first step where the reliable region is fitted, so the
mask keeps the net's state at that moment. It tends to spill a few pixels into the uncertain
band around the object, can keep small stray blobs (up to ``stop_error`` of the reliable
background may disagree; twice that with ``"balanced"``), and with ``init = "random"`` it
depends on the init seed (``sgrm_seed``; docs/experiments/2026-11-first-defaults.md gives the spread).

Two implementations: :func:`sgrm_reference` (one image, ``nn.Module`` + ``torch.optim.SGD``,
written to be read against the paper) and :func:`sgrm_batched` (the fast path: several images'
nets at once, the first layer as a matrix product over precomputed input patches, the loss
gradient in closed form, per-image SGD state and per-image early stopping, CPU or CUDA).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import felzenszwalb
from torch import nn

from ..boxes import Box, BoxMode, mask_to_box
from ..config_check import SettingError, check_fields, check_length, check_order, check_range, show

IGNORE = 255
"""Label value of pixels that no loss term looks at (eq. 12)."""

StopRule = Literal["pooled", "balanced"]
ClsNorm = Literal["class", "image"]
Init = Literal["random", "data"]
Bands = Literal["absolute", "mean"]


@dataclass(frozen=True)
class SgrmConfig:
    """Settings of SGRM; defaults are the paper's (CUB) where it gives them, except
    ``gamma_l1``, ``gamma_h1``, ``gamma_l2``, ``gamma_h2``, ``w2``, ``stop_error``,
    ``features``, ``train_stride`` and ``mask_vote`` (see the module docstring; the paper's
    values are :data:`PAPER_CUB`).

    Attributes:
        gamma_l1: ``gamma_l1``, eq. 12: refined map below it -> ``y_cls`` = 0 (background).
        gamma_h1: ``gamma_h1``, eq. 12: refined map above it -> ``y_cls`` = 1 (object).
        gamma_l2: ``gamma_l2``, eq. 12: ``E_s`` below it -> ``y_s*`` = 0.
        gamma_h2: ``gamma_h2``, eq. 12: ``E_s`` above it -> ``y_s*`` = 1 (paper: 0.4 on CUB,
            0.6 on ILSVRC).
        w1: ``w1``, eq. 15: weight of ``L_cls+`` (reliable object pixels).
        w2: ``w2``, eq. 15: weight of ``L_cls-`` (reliable background pixels).
        w3: ``w3``, eq. 16: weight of the superpixel consistency loss ``L_spix`` (eq. 14).
        cls_norm: what ``L_cls+`` / ``L_cls-`` (eq. 15) are normalised by: ``"image"``: H x W,
            as ``L_spix`` in eq. 14 (then ``w1``, ``w2``, ``w3`` are per-pixel weights on one
            scale); ``"class"``: the number of reliable object / background pixels (per-class
            means: the object term then weighs w1/w2 times the background term whatever
            their areas; with the paper's 20, masks bloat into the uncertain band).
        lr: SGD learning rate.
        momentum: SGD momentum (no dampening, no Nesterov, no weight decay).
        max_steps: most SGD updates per image.
        stop_error: stop once the share of reliable ``y_cls`` pixels that disagree with the
            net's argmax is strictly below this.
        stop_rule: ``"pooled"`` (the paper's words): errors over all reliable pixels / their
            count; ``"balanced"``: the mean of the error rates over the reliable object pixels
            and over the reliable background pixels (a class with no pixels left out), so a
            net that predicts all background cannot stop on an image whose reliable object
            region is under ``stop_error`` of the reliable pixels.
        width: channels of every hidden layer of the Aggregation Net (at most ``max_width``).
        kernels: kernel size of each hidden convolution of the Aggregation Net (each followed
            by a ReLU; then one 1x1 convolution to 2 logits): 1 to ``max_layers`` odd sizes of
            at most ``max_kernel``.
        features: semantic input channels of the Aggregation Net (the paper's input has none:
            RGB and the refined map only): the first ``features`` principal components of the
            backbone's affinity features (:func:`feature_channels`), upsampled to H x W and
            appended to the 4 input channels; 0 for none, at most ``max_features``.
        train_stride: the net is trained on the pixels of every ``train_stride``-th row and
            column (from ``train_stride // 2``; :func:`training_pixels`): labels, vote, losses
            and stop rule are taken over those pixels only, the mask is the trained net's
            argmax at every pixel. 1: every pixel (the paper's); at most ``max_train_stride``.
        fz_scale: Felzenszwalb ``scale`` (larger -> larger superpixels), for 224 px images.
        fz_sigma: Felzenszwalb Gaussian pre-smoothing ``sigma`` (0: none).
        fz_min_size: Felzenszwalb minimum superpixel size in pixels.
        box_mode: ``"largest"``: box of the largest 8-connected foreground component;
            ``"all"``: box of all foreground pixels.
        mask_vote: return the superpixel majority vote ``y_pred`` (eq. 13) of the final
            argmax as the mask (False: the raw argmax, the paper's output).
        keep_reliable: the returned mask keeps ``y_cls``'s reliable pixels (eq. 12) as they
            are, object above ``gamma_h1`` and background below ``gamma_l1``, so the net
            re-predicts the ignored band only (:func:`keep_reliable`; False: the paper's
            output, where up to ``stop_error`` of the reliable pixels may flip).
        bands: what the gammas of eq. 12 are read on: ``"absolute"``: the refined map as it is
            (the paper's); ``"mean"``: the map raised to the power ``p`` that takes its own
            mean to 0.5 (:func:`band_map`), so the bands follow each map's level: ARM's split
            of eq. 10 (``E > mean(E)``) sits at 0.5 whatever the map's spread (a peaked map,
            mean 0.1, has its object above 0.6 in a few pixels only).
        init: the Aggregation Net's initial weights: ``"random"``, PyTorch's default drawn
            from the image's seed (:func:`init_params`, the paper's fresh net), or ``"data"``,
            computed from the image itself with no randomness (:func:`data_init_params`: the
            first layer on the principal directions of the input patches, the output layer a
            least-squares fit to ``y_cls``), so the mask does not depend on a seed.
    """

    gamma_l1: float = 0.6
    gamma_h1: float = 0.75
    gamma_l2: float = 0.6
    gamma_h2: float = 0.75
    w1: float = 2.0
    w2: float = 2.0
    w3: float = 0.1
    cls_norm: ClsNorm = "class"
    lr: float = 0.05
    momentum: float = 0.9
    max_steps: int = 200
    stop_error: float = 0.02
    stop_rule: StopRule = "balanced"
    width: int = 8
    kernels: tuple[int, ...] = (3, 1)
    features: int = 8
    train_stride: int = 2
    fz_scale: float = 64.0
    fz_sigma: float = 0.5
    fz_min_size: int = 32
    box_mode: BoxMode = "largest"
    mask_vote: bool = True
    keep_reliable: bool = False
    init: Init = "random"
    bands: Bands = "absolute"

    max_width: ClassVar[int] = 256
    max_kernel: ClassVar[int] = 15
    max_layers: ClassVar[int] = 8
    max_features: ClassVar[int] = 64
    max_train_stride: ClassVar[int] = 8

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("gamma_l1", "gamma_h1", "gamma_l2", "gamma_h2"):
            check_range(self, name, 0.0, 1.0)
        check_order(self, "gamma_l1", "gamma_h1")
        check_order(self, "gamma_l2", "gamma_h2")
        for name in ("w1", "w2", "w3"):
            check_range(self, name, 0.0)
        check_range(self, "lr", 0.0, low_open=True)
        check_range(self, "momentum", 0.0, 1.0, high_open=True)
        check_range(self, "max_steps", 1)
        check_range(self, "stop_error", 0.0, 1.0, low_open=True)
        check_range(self, "width", 1, self.max_width)
        check_length(self, "kernels", 1, self.max_layers)
        check_range(self, "kernels", 1, self.max_kernel)
        if any(k % 2 == 0 for k in self.kernels):
            raise SettingError("kernels", f"must be odd sizes, got {show(self.kernels)}")
        check_range(self, "features", 0, self.max_features)
        check_range(self, "train_stride", 1, self.max_train_stride)
        check_range(self, "fz_scale", 0.0, low_open=True)
        check_range(self, "fz_sigma", 0.0)
        check_range(self, "fz_min_size", 1)


PAPER_CUB = SgrmConfig(
    gamma_l1=0.1,
    gamma_h1=0.6,
    gamma_l2=0.1,
    gamma_h2=0.4,
    w2=0.1,
    stop_error=0.1,
    stop_rule="pooled",
    features=0,
    train_stride=1,
    mask_vote=False,
)
"""The paper's CUB settings where the defaults depart from them (see the module docstring)."""


@dataclass(frozen=True)
class SgrmResult:
    """SGRM output for one image.

    Attributes:
        mask: (H, W) bool, the Aggregation Net's argmax (True = object), voted inside the
            superpixels when ``mask_vote``.
        box: ``(x0, y0, x1, y1)`` inclusive pixel coordinates of the mask (see
            :func:`mask_to_box`), or None for an empty mask.
        steps: SGD updates done.
        converged: True when the stop rule was met (False: stopped at ``max_steps``).
    """

    mask: np.ndarray
    box: Box | None
    steps: int
    converged: bool


# --------------------------------------------------------------------------------------------
# Superpixels and labels (eq. 12, 13)
# --------------------------------------------------------------------------------------------


def superpixels(image: np.ndarray, cfg: SgrmConfig) -> np.ndarray:
    """Felzenszwalb over-segmentation of an image.

    Args:
        image: (H, W, 3) float RGB in [0, 1].
        cfg: uses ``fz_scale``, ``fz_sigma``, ``fz_min_size``.

    Returns:
        (H, W) int64 segment ids, 0 .. S-1 (every id is used).
    """
    seg = felzenszwalb(
        image, scale=cfg.fz_scale, sigma=cfg.fz_sigma, min_size=cfg.fz_min_size, channel_axis=-1
    )
    return seg.astype(np.int64)


@functools.cache
def _native() -> ModuleType | None:
    """``lcar_deploy._arm_cpu`` (it holds SGRM's superpixels too), or None where not built."""
    try:
        return importlib.import_module("lcar_deploy._arm_cpu")
    except ImportError:
        return None


def superpixels_fast(image: np.ndarray, cfg: SgrmConfig) -> np.ndarray:
    """:func:`superpixels`, label for label, about four times faster: scikit-image's own
    Gaussian smoothing, then the graph merge in C++ (``csrc/sgrm_cpu.h``); :func:`superpixels`
    itself where the C++ module is not built."""
    return superpixels_batch(image[None], cfg)[0]


def superpixels_batch(images: np.ndarray, cfg: SgrmConfig, threads: int = 1) -> list[np.ndarray]:
    """:func:`superpixels_fast` of each of (B, H, W, 3) images, the graph merges on ``threads``
    threads."""
    module = _native()
    if module is None:
        return [superpixels(image, cfg) for image in images]
    from skimage.filters import gaussian
    from skimage.util import img_as_float64

    sigma = [cfg.fz_sigma, cfg.fz_sigma, 0]
    smooth = np.stack(
        [gaussian(img_as_float64(i), sigma=sigma, mode="reflect", channel_axis=-1) for i in images]
    )
    return list(module.felzenszwalb(smooth, cfg.fz_scale, cfg.fz_min_size, threads))


def superpixel_mean(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Average a map inside each superpixel (``E_s`` from the refined map).

    Args:
        values: (H, W) float map.
        segments: (H, W) int segment ids 0 .. S-1.

    Returns:
        (H, W) float32, every pixel holding the mean of ``values`` over its superpixel.
    """
    ids = segments.ravel()
    sums = np.bincount(ids, weights=values.ravel().astype(np.float64))
    counts = np.bincount(ids)
    means = sums / np.maximum(counts, 1)
    return means[ids].reshape(values.shape).astype(np.float32)


def threshold_labels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Three-way labels of eq. 12: 0 below ``low``, 1 above ``high``, :data:`IGNORE` between.

    Args:
        values: (H, W) float map in [0, 1].

    Returns:
        (H, W) uint8 in {0, 1, 255}.
    """
    labels = np.full(values.shape, IGNORE, dtype=np.uint8)
    labels[values < low] = 0
    labels[values > high] = 1
    return labels


def band_map(refined: np.ndarray, bands: str) -> np.ndarray:
    """The map the gammas of eq. 12 are read on: ``refined`` itself (``"absolute"``) or, for
    ``"mean"``, ``refined ** p`` with ``p = log 0.5 / log mean(refined)`` (the mean taken into
    [1e-3, 1 - 1e-3]): monotone, so the order of the pixels is kept, and the map's mean goes
    to 0.5."""
    if bands == "absolute":
        return refined
    mean = float(np.clip(np.mean(refined), 1e-3, 1 - 1e-3))
    power = np.log(0.5) / np.log(mean)
    return np.power(np.clip(refined, 0.0, 1.0), power).astype(refined.dtype)


def sgrm_labels(
    refined: np.ndarray, segments: np.ndarray, cfg: SgrmConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel labels ``y_cls`` and superpixel labels ``y_s*`` of eq. 12.

    Args:
        refined: (H, W) float refined map ``E_hk`` in [0, 1].
        segments: (H, W) int superpixel ids.
        cfg: uses ``gamma_l1``, ``gamma_h1``, ``gamma_l2``, ``gamma_h2`` on
            :func:`band_map` of ``refined`` by ``bands``.

    Returns:
        ``(y_cls, y_s_star)``, both (H, W) uint8 in {0, 1, 255}.
    """
    refined = band_map(refined, cfg.bands)
    y_cls = threshold_labels(refined, cfg.gamma_l1, cfg.gamma_h1)
    y_s_star = threshold_labels(superpixel_mean(refined, segments), cfg.gamma_l2, cfg.gamma_h2)
    return y_cls, y_s_star


def keep_reliable(mask: np.ndarray, y_cls: np.ndarray) -> np.ndarray:
    """The mask with ``y_cls``'s reliable pixels restored: True where ``y_cls`` is 1, False
    where it is 0, the mask elsewhere (``SgrmConfig.keep_reliable``). (H, W) bool."""
    return np.where(y_cls == IGNORE, mask, y_cls == 1)


def vote(pred: torch.Tensor, segments: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Majority vote of a binary prediction inside each superpixel (``y_pred``).

    Args:
        pred: (N,) int64 prediction in {0, 1} (N pixels, any number of images flattened
            together as long as their segment ids do not overlap).
        segments: (N,) int64 segment ids in 0 .. S-1.
        sizes: (S,) int64 pixels per segment (``torch.bincount(segments)``; a segment id with
            no pixel in ``segments`` is allowed).

    Returns:
        (N,) int64: 1 where strictly more than half of the pixel's superpixel is predicted 1.
    """
    ones = torch.zeros_like(sizes).scatter_add_(0, segments, pred)
    return (2 * ones > sizes).long()[segments]


def revise(y_pred: torch.Tensor, y_s_star: torch.Tensor) -> torch.Tensor:
    """Eq. 13: ``y_s = y_s*`` where ``y_s*`` is 0 or 1, else the vote ``y_pred``.

    Args:
        y_pred: (...) int64 in {0, 1}.
        y_s_star: (...) int64 in {0, 1, 255}, same shape.

    Returns:
        (...) int64 in {0, 1}.
    """
    return torch.where(y_s_star == IGNORE, y_pred, y_s_star)


def training_pixels(height: int, width: int, stride: int) -> torch.Tensor:
    """Flat indices of the pixels SGRM trains on: rows and columns ``stride // 2``, then every
    ``stride``-th (all pixels for 1).

    Returns:
        (M,) int64 indices into the H * W pixels, row-major.
    """
    start = stride // 2
    rows = torch.arange(start, height, stride)
    cols = torch.arange(start, width, stride)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def reliable_error(pred: torch.Tensor, y_cls: torch.Tensor, rule: StopRule) -> torch.Tensor:
    """Share of the reliable ``y_cls`` pixels that the prediction gets wrong (the stop rule).

    Args:
        pred: (A, N) int64 argmax in {0, 1} of A images.
        y_cls: (A, N) int64 labels in {0, 1, 255} (eq. 12).
        rule: ``"pooled"``: errors / reliable pixels; ``"balanced"``: mean of the error rates
            over the object and over the background pixels (see :class:`SgrmConfig`), a class
            without pixels left out. No reliable pixel at all: error 0.

    Returns:
        (A,) float32 error rates in [0, 1].
    """
    positive, negative = y_cls == 1, y_cls == 0
    err_pos = (positive & (pred == 0)).sum(1).float()
    err_neg = (negative & (pred == 1)).sum(1).float()
    n_pos, n_neg = positive.sum(1), negative.sum(1)
    if rule == "pooled":
        return (err_pos + err_neg) / (n_pos + n_neg).clamp_min(1)
    if rule == "balanced":
        rates = err_pos / n_pos.clamp_min(1) + err_neg / n_neg.clamp_min(1)
        return rates / ((n_pos > 0).float() + (n_neg > 0).float()).clamp_min(1)
    raise ValueError(f"unknown stop rule {rule!r}")


# --------------------------------------------------------------------------------------------
# Aggregation Net
# --------------------------------------------------------------------------------------------


def feature_channels(affinity: np.ndarray, count: int, size: tuple[int, int]) -> np.ndarray:
    """Semantic input channels of the Aggregation Net from the backbone's affinity features.

    The h x w cells' D-d features are L2-normalised and centred over the image; their first
    ``count`` principal components (right singular vectors, each signed so that its largest
    loading is positive, which makes the result deterministic) are scaled to a standard
    deviation of 0.5 over the cells (the spread of the [-1, 1] RGB inputs) and upsampled
    bilinearly (``align_corners=False``) to ``size``. Components beyond the rank (singular
    value under 1e-6 sqrt(h w)) are 0.

    Args:
        affinity: (h, w, D) float affinity features (the bundle's ``affinity`` output).
        count: number of components (``SgrmConfig.features``).
        size: ``(H, W)`` of the Aggregation Net's input.

    Returns:
        (count, H, W) float32.
    """
    h, w, dim = affinity.shape
    x = affinity.reshape(-1, dim).astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    # The right singular vectors as the eigenvectors of the D x D Gram matrix (squared singular
    # values, largest first): several times faster than an SVD of the h w x D cells.
    values, vectors = np.linalg.eigh(x.T @ x)
    vt = vectors[:, ::-1].T
    comps = np.zeros((count, dim))
    n = min(count, int((values > 1e-12 * len(x)).sum()))  # unit rows: s <= sqrt(n)
    comps[:n] = vt[:n] * np.sign(vt[np.arange(n), np.abs(vt[:n]).argmax(1)])[:, None]
    proj = x @ comps.T
    proj = 0.5 * proj / np.maximum(proj.std(0), 1e-12)
    grid = torch.from_numpy(proj.T.reshape(1, count, h, w).astype(np.float32))
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0].numpy()


def net_input(
    image: np.ndarray, refined: np.ndarray, features: np.ndarray | None = None
) -> torch.Tensor:
    """Aggregation Net input from an image, its refined map and its semantic channels.

    Args:
        image: (H, W, 3) float RGB in [0, 1].
        refined: (H, W) float in [0, 1].
        features: (K, H, W) :func:`feature_channels`, or None (K = 0).

    Returns:
        (4 + K, H, W) float32: RGB then the refined map, mapped to [-1, 1], then the K
        semantic channels as they are.
    """
    x = np.concatenate([image, refined[..., None]], axis=-1).astype(np.float32)
    x = torch.from_numpy(x).permute(2, 0, 1).mul(2.0).sub(1.0)
    if features is not None and len(features):
        x = torch.cat([x, torch.from_numpy(np.asarray(features, dtype=np.float32))])
    return x.contiguous()


def layer_shapes(cfg: SgrmConfig) -> list[tuple[int, int, int]]:
    """``(out_channels, in_channels, kernel)`` of every convolution of the Aggregation Net."""
    in_channels = [4 + cfg.features] + [cfg.width] * (len(cfg.kernels) - 1)
    shapes = [(cfg.width, c, k) for c, k in zip(in_channels, cfg.kernels, strict=True)]
    return [*shapes, (2, cfg.width, 1)]


def _semantic(
    affinity: np.ndarray | None, cfg: SgrmConfig, size: tuple[int, int]
) -> np.ndarray | None:
    """:func:`feature_channels` for ``cfg.features`` > 0 (then ``affinity`` is required)."""
    if cfg.features == 0:
        return None
    if affinity is None:
        raise ValueError(
            f"sgrm.features = {cfg.features} needs the backbone's affinity features; "
            "pass affinity, or set sgrm.features to 0"
        )
    return feature_channels(np.asarray(affinity), cfg.features, size)


def init_params(cfg: SgrmConfig, seed: int) -> list[torch.Tensor]:
    """Seeded initial weights of one Aggregation Net.

    PyTorch's ``nn.Conv2d`` default: weight and bias uniform in +-1/sqrt(fan_in), drawn layer by
    layer (weight, then bias) from a CPU generator seeded with ``seed``.

    Returns:
        ``[w_0, b_0, w_1, b_1, ...]``, ``w_l`` (out, in, k, k) and ``b_l`` (out,), float32 CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    params = []
    for out_ch, in_ch, k in layer_shapes(cfg):
        bound = 1.0 / float(np.sqrt(in_ch * k * k))
        params.append((torch.rand(out_ch, in_ch, k, k, generator=gen) * 2 - 1) * bound)
        params.append((torch.rand(out_ch, generator=gen) * 2 - 1) * bound)
    return params


def data_init_params(
    patches: torch.Tensor, y_cls: torch.Tensor, cfg: SgrmConfig
) -> list[torch.Tensor]:
    """Initial weights of one Aggregation Net computed from its own image, with no randomness
    (``SgrmConfig.init = "data"``).

    - First layer: the ``ceil(width / 2)`` leading principal directions ``v_j`` of the image's
      input patches (centred, at the training pixels), scaled by the inverse of their standard
      deviation ``s_j``, each as the pair of units ``relu(+-(v_j . (p - mean)) / s_j)``: the
      pair makes the eigenvectors' arbitrary signs irrelevant. Directions with ``s_j`` under
      1e-6 get zero weights.
    - Later hidden layers: the identity (centre tap 1; the inputs are already >= 0).
    - Output layer: ``d = z_1 - z_0`` fitted by least squares to +1 / -1 on the reliable object
      / background pixels of ``y_cls`` (each class weighted by the inverse of its pixel count,
      ridge 1e-3), split as ``z_1 = d / 2``, ``z_0 = -d / 2``.

    Args:
        patches: (C k^2, M) first-layer input patches (:func:`input_patches`) at the M training
            pixels (:func:`training_pixels`).
        y_cls: (M,) int64 labels in {0, 1, 255} at those pixels (eq. 12).

    Returns:
        ``[w_0, b_0, w_1, b_1, ...]`` as :func:`init_params`, float32, on ``patches``' device.
    """
    shapes = layer_shapes(cfg)
    width, in_ch, k = shapes[0]
    # The large products in float32 (inputs are in about [-1, 1]); eigh and solve in float64.
    x = patches.float()
    n_pixels = max(x.shape[1], 1)
    mean = x.mean(1)
    centred = x - mean[:, None]
    values, vectors = torch.linalg.eigh((centred @ centred.T).double() / n_pixels)
    n_dirs = min(-(-width // 2), len(values))
    spread = values.flip(0)[:n_dirs].clamp_min(0).sqrt()
    dirs = vectors.flip(1)[:, :n_dirs].T / spread.clamp_min(1e-12)[:, None]
    dirs[spread < 1e-6] = 0
    first = x.new_zeros(width, x.shape[0])
    pairs = torch.stack([dirs, -dirs], 1).reshape(-1, x.shape[0])[:width]
    first[: len(pairs)] = pairs.float()
    params = [first.reshape(width, in_ch, k, k), -(first @ mean)]
    for _, _, k_l in shapes[1:-1]:
        eye = x.new_zeros(width, width, k_l, k_l)
        eye[torch.arange(width), torch.arange(width), k_l // 2, k_l // 2] = 1
        params += [eye, x.new_zeros(width)]
    hidden = torch.cat([F.relu(first @ x + params[1][:, None]), torch.ones_like(x[:1])])
    positive, negative = (y_cls == 1).float(), (y_cls == 0).float()
    weight = positive / positive.sum().clamp_min(1) + negative / negative.sum().clamp_min(1)
    weighted = hidden * weight
    gram = (weighted @ hidden.T).double() + 1e-3 * torch.eye(
        width + 1, dtype=torch.float64, device=x.device
    )
    half = torch.linalg.solve(gram, (weighted @ (positive - negative)).double()).float() / 2
    params += [
        torch.stack([-half[:width], half[:width]]).reshape(2, width, 1, 1),
        torch.stack([-half[width], half[width]]),
    ]
    return params


class AggregationNet(nn.Module):
    """Per-image Aggregation Net: (k x k conv + ReLU) per ``kernels``, then a 1x1 conv to 2 logits.

    Input (N, 4, H, W), output (N, 2, H, W) logits (channel 0 background, 1 object).
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        super().__init__()
        convs = []
        for weight, bias in zip(params[::2], params[1::2], strict=True):
            out_ch, in_ch, k, _ = weight.shape
            conv = nn.Conv2d(in_ch, out_ch, k, padding=k // 2, padding_mode="replicate")
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            convs.append(conv)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        return self.convs[-1](x)


# --------------------------------------------------------------------------------------------
# Reference loop (one image)
# --------------------------------------------------------------------------------------------


def joint_loss(
    logits: torch.Tensor, y_s: torch.Tensor, y_cls: torch.Tensor, cfg: SgrmConfig
) -> torch.Tensor:
    """The joint loss of eqs. 14-16 for one image.

    Args:
        logits: (N, 2) Aggregation Net logits of the N pixels.
        y_s: (N,) int64 superpixel labels in {0, 1} (eq. 13).
        y_cls: (N,) int64 labels in {0, 1, 255} (eq. 12).
        cfg: uses ``w1``, ``w2``, ``w3``, ``cls_norm``.

    Returns:
        Scalar ``w3 L_spix + w1 L_cls+ + w2 L_cls-``.
    """
    loss = cfg.w3 * F.cross_entropy(logits, y_s)  # eq. 14, mean over all H x W pixels
    for label, weight in ((1, cfg.w1), (0, cfg.w2)):  # eq. 15: L_cls+, L_cls-
        target = torch.where(y_cls == label, y_cls, IGNORE)
        n_target = int((target != IGNORE).sum())
        if n_target == 0:
            continue
        ce_sum = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        loss = loss + weight * ce_sum / (len(y_cls) if cfg.cls_norm == "image" else n_target)
    return loss


def sgrm_reference(
    image: np.ndarray,
    refined: np.ndarray,
    cfg: SgrmConfig | None = None,
    seed: int = 0,
    segments: np.ndarray | None = None,
    affinity: np.ndarray | None = None,
) -> SgrmResult:
    """SGRM on one image, written to follow the paper step by step (CPU).

    Args:
        image: (H, W, 3) float32 RGB in [0, 1].
        refined: (H, W) float32 refined map in [0, 1].
        cfg: settings (default: the paper's).
        seed: seed of the Aggregation Net's initial weights.
        segments: (H, W) int superpixel ids, computed with :func:`superpixels` when None.
        affinity: (h, w, D) backbone affinity features, for ``cfg.features`` > 0.

    Returns:
        The mask, its box, the number of updates and whether the stop rule was met.
    """
    cfg = cfg or SgrmConfig()
    if segments is None:
        segments = superpixels(image, cfg)
    y_cls_np, y_s_star_np = sgrm_labels(refined, segments, cfg)
    height, width = refined.shape
    seg = torch.from_numpy(segments).reshape(-1).long()
    sizes = torch.bincount(seg)
    train = training_pixels(height, width, cfg.train_stride)
    seg_t = seg[train]
    sizes_t = torch.bincount(seg_t, minlength=len(sizes))  # pixels per segment that vote
    y_cls = torch.from_numpy(y_cls_np).reshape(-1).long()[train]
    y_s_star = torch.from_numpy(y_s_star_np).reshape(-1).long()[train]

    x = net_input(image, refined, _semantic(affinity, cfg, refined.shape))[None]
    if cfg.init == "data":
        params = data_init_params(input_patches(x, cfg.kernels[0])[0][:, train], y_cls, cfg)
    else:
        params = init_params(cfg, seed)
    net = AggregationNet(params)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum)

    steps, converged = 0, False
    while True:
        logits = net(x)[0].reshape(2, -1).t()  # (H*W, 2)
        pred = logits.argmax(1)
        logits_t, pred_t = logits[train], pred[train]
        if float(reliable_error(pred_t[None], y_cls[None], cfg.stop_rule)) < cfg.stop_error:
            converged = True
            break
        if steps == cfg.max_steps:
            break
        y_s = revise(vote(pred_t, seg_t, sizes_t), y_s_star)  # eq. 13
        loss = joint_loss(logits_t, y_s, y_cls, cfg)  # eqs. 14-16
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1

    if cfg.mask_vote:
        pred = vote(pred, seg, sizes)
    mask = pred.reshape(height, width).numpy().astype(bool)
    if cfg.keep_reliable:
        mask = keep_reliable(mask, y_cls_np)
    return SgrmResult(mask, mask_to_box(mask, cfg.box_mode), steps, converged)


# --------------------------------------------------------------------------------------------
# Batched fast path
# --------------------------------------------------------------------------------------------


def _in_parts(
    n_parts: int,
    images: np.ndarray,
    refined: np.ndarray,
    cfg: SgrmConfig,
    seeds: Sequence[int],
    segments: Sequence[np.ndarray] | None,
    affinity: np.ndarray | Sequence[np.ndarray] | None,
) -> list[SgrmResult]:
    """:func:`sgrm_batched` (CPU) on ``n_parts`` interleaved parts of the images at once, each
    part on its own Python thread with one torch thread (torch's operations release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..threads import compute_threads

    def pick(values: Sequence[Any] | np.ndarray | None, rows: list[int]) -> list[Any] | None:
        return None if values is None else [values[i] for i in rows]

    parts = [list(range(p, len(refined), n_parts)) for p in range(n_parts)]
    with compute_threads(1), ThreadPoolExecutor(n_parts, thread_name_prefix="lcar-sgrm") as pool:
        futures = [
            pool.submit(
                sgrm_batched,
                images[rows],
                refined[rows],
                cfg,
                "cpu",
                pick(seeds, rows),
                pick(segments, rows),
                pick(affinity, rows),
                1,
            )
            for rows in parts
        ]
        answers = [f.result() for f in futures]
    by_image = {
        i: result
        for rows, answer in zip(parts, answers, strict=True)
        for i, result in zip(rows, answer, strict=True)
    }
    return [by_image[i] for i in range(len(refined))]


def _replicate_pad(x: torch.Tensor, k: int) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) by ``k // 2`` on each side (a k x k convolution's padding)."""
    p = k // 2
    return F.pad(x, (p, p, p, p), mode="replicate") if p else x


def input_patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k x k patches of the Aggregation Nets' inputs (replicate padding), for the first layer.

    Args:
        x: (A, 4, H, W) inputs (:func:`net_input`).
        k: the first layer's kernel size.

    Returns:
        (A, 4 k^2, H * W).
    """
    return F.unfold(_replicate_pad(x, k), k)


def _strided_patches(
    padded: torch.Tensor,
    k: int,
    stride: int,
    row: int,
    col: int,
    size: tuple[int, int],
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`input_patches` of the pixels in rows ``row``, ``row + stride``, ... and columns
    ``col``, ``col + stride``, ... only: the same values, in row-major order of those pixels.

    Args:
        padded: (A, C, H + k - 1, W + k - 1) inputs, replicate-padded (``_replicate_pad``).
        size: ``(H, W)``.
        buffer: float32 CPU storage of at least the result's size to write them into (fresh
            memory is slow to touch, and these are tens of MB).

    Returns:
        (A, C k^2, ceil((H - row) / stride) * ceil((W - col) / stride)), a view of ``buffer``
        when given and used.
    """
    height, width = size
    n_nets, channels = padded.shape[:2]
    rows, cols = -(-(height - row) // stride), -(-(width - col) // stride)
    shape = (n_nets, channels * k * k, rows * cols)
    module = _native()
    if padded.device.type != "cpu" or module is None:  # F.unfold's im2col: slower on CPU
        return F.unfold(padded[:, :, row:, col:], k, stride=stride)
    if buffer is None:
        out = torch.empty(shape)
    else:
        out = buffer.reshape(-1)[: shape[0] * shape[1] * shape[2]].view(shape)
    module.strided_patches(
        padded.numpy(), out.numpy(), k, stride, row, col, rows, cols, torch.get_num_threads()
    )
    return out


def _keep_rows(rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``rows[keep]`` for a contiguous tensor, moved to the front of its own memory (a view;
    ``rows`` is overwritten): no fresh memory to touch."""
    kept = torch.nonzero(keep).flatten().tolist()
    for new, old in enumerate(kept):
        if new != old:
            rows[new].copy_(rows[old])
    return rows[: len(kept)]


def _pointwise_argmax(
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    k: int,
    stride: int,
    known: torch.Tensor | None = None,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """``batched_forward(input_patches(x, k), params, size) > 0`` for nets whose later layers
    are all 1x1, without the full grid's patches. On the CPU with the C++ module, in one pass
    that reads the k x k windows straight from the padded input (``csrc/sgrm_net_cpu.cpp``;
    ``known`` and ``buffer`` are then not needed). Elsewhere the pixels go through in
    ``stride`` x ``stride`` interleaved sub-grids (each pixel's logits are its own patch's;
    the same sums); ``known``: (A, M) the argmax at the training pixels
    (:func:`training_pixels`), already computed with these weights, so that sub-grid is not
    computed again; ``buffer``: float32 CPU storage the patches may be written into
    (:func:`_strided_patches`).

    Returns:
        (A, H * W) bool.
    """
    n_nets, channels, height, width = x.shape
    padded = _replicate_pad(x, k)
    module = _native()
    if x.device.type == "cpu" and module is not None:
        units = params[0].shape[1]
        hidden = params[2:-2]
        if hidden:
            wh = torch.stack([w.flatten(2) for w in hidden[::2]], 1)
            bh = torch.stack(list(hidden[1::2]), 1)
        else:
            wh, bh = x.new_zeros(n_nets, 0, units, units), x.new_zeros(n_nets, 0, units)
        out_w, out_b = params[-2].flatten(2), params[-1]
        masks = module.pointwise_argmax(
            *(
                t.detach().contiguous().numpy()
                for t in (padded, params[0], params[1], wh, bh, out_w[:, 1] - out_w[:, 0])
            ),
            (out_b[:, 1] - out_b[:, 0]).detach().contiguous().numpy(),
            torch.get_num_threads(),
        )
        return torch.from_numpy(masks).reshape(n_nets, -1)
    out = torch.empty(n_nets, height, width, dtype=torch.bool, device=x.device)
    largest = n_nets * channels * k * k * -(-height // stride) * -(-width // stride)
    if x.device.type != "cpu":
        buffer = None
    elif buffer is None or buffer.numel() < largest:
        buffer = torch.empty(largest)
    for row in range(stride):
        for col in range(stride):
            sub = out[:, row::stride, col::stride]
            if known is not None and row == col == stride // 2:
                sub.copy_(known.reshape(sub.shape))
                continue
            patches = _strided_patches(padded, k, stride, row, col, (height, width), buffer)
            diff = batched_forward(patches, params, (sub.shape[1], sub.shape[2]))
            sub.copy_((diff > 0).reshape(sub.shape))
    return out.reshape(n_nets, -1)


def batched_forward(
    patches: torch.Tensor, params: Sequence[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """Forward of A independent Aggregation Nets at once.

    The first convolution is a batched matrix product over the input's patches, which are
    computed once per image (``F.unfold``; the input never changes). Later convolutions with
    k > 1 run as one grouped convolution (``groups`` = A), 1x1 ones (including the output
    layer) as batched matrix products.

    Args:
        patches: (A, 4 k^2, H * W) :func:`input_patches` of the inputs.
        params: ``[w_0, b_0, w_1, b_1, ...]`` stacked over the nets: ``w_l`` (A, out, in, k, k),
            ``b_l`` (A, out).
        size: ``(H, W)``.

    Returns:
        (A, H * W) logit differences ``z_object - z_background``.
    """
    n_nets = patches.shape[0]
    height, width = size
    h = torch.baddbmm(params[1][..., None], params[0].flatten(2), patches)
    n_layers = len(params) // 2
    for i in range(1, n_layers):
        h = F.relu(h)
        weight, bias = params[2 * i], params[2 * i + 1]
        k = weight.shape[-1]
        if k == 1:
            h = torch.baddbmm(bias[..., None], weight.flatten(2), h)
        else:
            h = F.conv2d(
                _replicate_pad(h.reshape(1, -1, height, width), k),
                weight.flatten(0, 1),
                bias.flatten(),
                groups=n_nets,
            ).reshape(n_nets, -1, height * width)
    return h[:, 1] - h[:, 0]


def cls_pixel_weights(y_cls: torch.Tensor, cfg: SgrmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel weights of ``w1 L_cls+ + w2 L_cls-`` (eq. 15) as sums over pixels.

    Args:
        y_cls: (A, N) int64 labels in {0, 1, 255} (eq. 12).
        cfg: uses ``w1``, ``w2``, ``cls_norm``.

    Returns:
        ``(w_pos, w_neg)``, (A, N) float32: ``w1 / norm`` on reliable object pixels and
        ``w2 / norm`` on reliable background pixels, 0 elsewhere; ``norm`` is N or the class's
        pixel count (``cfg.cls_norm``).
    """
    positive, negative = (y_cls == 1).float(), (y_cls == 0).float()
    if cfg.cls_norm == "image":
        return cfg.w1 * positive / y_cls.shape[1], cfg.w2 * negative / y_cls.shape[1]
    n_pos = positive.sum(1, keepdim=True).clamp_min(1)
    n_neg = negative.sum(1, keepdim=True).clamp_min(1)
    return cfg.w1 * positive / n_pos, cfg.w2 * negative / n_neg


def joint_loss_grad(
    diff: torch.Tensor,
    y_s: torch.Tensor,
    w_pos: torch.Tensor,
    w_neg: torch.Tensor,
    w_spix: float,
) -> torch.Tensor:
    """Gradient of the joint loss (eqs. 14-16) with respect to the logit differences.

    With ``d = z_1 - z_0`` the 2-class cross-entropy is ``softplus(-d)`` for target 1 and
    ``softplus(d)`` for target 0, so one image's loss is
    ``sum_i a_i softplus(-d_i) + b_i softplus(d_i)`` with ``a_i = w_spix [y_s=1] + w_pos_i``
    and ``b_i = w_spix [y_s=0] + w_neg_i``; its gradient is ``(a_i + b_i) sigmoid(d_i) - a_i``.
    The loss value itself is never needed.

    Args:
        diff: (A, N) logit differences.
        y_s: (A, N) int64 superpixel labels in {0, 1} (eq. 13).
        w_pos, w_neg: (A, N) from :func:`cls_pixel_weights`.
        w_spix: ``w3 / N``.

    Returns:
        (A, N) d loss / d diff.
    """
    return (w_pos + w_neg + w_spix) * torch.sigmoid(diff) - w_pos - w_spix * y_s


def sgrm_batched(
    images: np.ndarray,
    refined: np.ndarray,
    cfg: SgrmConfig | None = None,
    device: torch.device | str = "cpu",
    seeds: Sequence[int] | None = None,
    segments: Sequence[np.ndarray] | None = None,
    affinity: np.ndarray | Sequence[np.ndarray] | None = None,
    threads: int | None = None,
) -> list[SgrmResult]:
    """SGRM on several images at once, each with its own Aggregation Net and SGD state.

    The B nets run together (:func:`batched_forward`); every net gets exactly its own
    image's gradient (:func:`joint_loss_grad`), and SGD with momentum is element-wise, so each
    image has its own optimiser state. An image that meets the stop rule is dropped from the
    batch. Same seeds give the same initial weights as :func:`sgrm_reference`; the results
    agree with it up to floating-point rounding (which can flip a few pixels near the decision
    boundary, and so, rarely, the step at which an image stops).

    Args:
        images: (B, H, W, 3) float32 RGB in [0, 1].
        refined: (B, H, W) float32 refined maps in [0, 1].
        cfg: settings (default: the paper's).
        device: where the nets are trained (superpixels are always computed on the CPU).
        seeds: per-image init seeds (default 0 for every image, as :func:`sgrm_reference`, so
            an image's result does not depend on its place in the batch).
        segments: per-image (H, W) superpixel ids; computed with :func:`superpixels` when None.
        affinity: per-image (h, w, D) backbone affinity features, for ``cfg.features`` > 0.
        threads: CPU threads (default: torch's). On the CPU, with two or more, the images are
            split into that many interleaved parts trained at once, each on one thread (torch's
            pool set to 1 meanwhile): SGRM's small operations gain little from torch's own
            threads (docs/experiments/2026-12-speed-and-memory.md, "SGRM on two threads").

    Returns:
        One :class:`SgrmResult` per image, in input order.
    """
    cfg = cfg or SgrmConfig()
    device = torch.device(device)
    n_images, height, width = refined.shape
    seeds = [0] * n_images if seeds is None else list(seeds)
    n_parts = min(threads or torch.get_num_threads(), n_images) if device.type == "cpu" else 1
    if n_parts > 1:
        return _in_parts(n_parts, images, refined, cfg, seeds, segments, affinity)
    if segments is None:
        segments = superpixels_batch(images, cfg, torch.get_num_threads())

    # Labels on the CPU, then everything on the device as (B, M) rows over the M training
    # pixels (training_pixels; M = H * W for train_stride 1).
    train = training_pixels(height, width, cfg.train_stride).to(device)
    labels = [sgrm_labels(r, s, cfg) for r, s in zip(refined, segments, strict=True)]
    y_cls = torch.from_numpy(np.stack([lab[0] for lab in labels])).reshape(n_images, -1)
    y_s_star = torch.from_numpy(np.stack([lab[1] for lab in labels])).reshape(n_images, -1)
    y_cls = y_cls.to(device).long()[:, train]
    y_s_star = y_s_star.to(device).long()[:, train]
    w_pos, w_neg = cls_pixel_weights(y_cls, cfg)
    # Segment ids made disjoint across images; ids of dropped images simply stay unused.
    offsets = np.cumsum([0] + [int(s.max()) + 1 for s in segments])
    all_seg = np.stack([s.reshape(-1) + o for s, o in zip(segments, offsets[:-1], strict=True)])
    all_seg = torch.from_numpy(all_seg).to(device).long()
    all_sizes = torch.bincount(all_seg.reshape(-1), minlength=int(offsets[-1]))
    seg = all_seg[:, train]
    sizes = torch.bincount(seg.reshape(-1), minlength=int(offsets[-1]))
    affinities = [None] * n_images if affinity is None else list(affinity)
    x = torch.stack(
        [
            net_input(i, r, _semantic(a, cfg, (height, width)))
            for i, r, a in zip(images, refined, affinities, strict=True)
        ]
    ).to(device)
    # With 1x1 later layers every pixel is computed alone: train on the training pixels' patches
    # only (the full grid's are never made). A later k x k layer needs the full grid: compute
    # it, then take the training pixels.
    pointwise = all(k == 1 for k in cfg.kernels[1:])
    stride = cfg.train_stride
    patches = (
        _strided_patches(
            _replicate_pad(x, cfg.kernels[0]),
            cfg.kernels[0],
            stride,
            stride // 2,
            stride // 2,
            (height, width),
        )
        if pointwise
        else input_patches(x, cfg.kernels[0])
    )
    n_train = len(train)
    storage = patches  # the training patches' memory, reused for the final argmax's

    if cfg.init == "data":
        train_patches = patches if pointwise else patches[:, :, train]
        inits = [data_init_params(p, y, cfg) for p, y in zip(train_patches, y_cls, strict=True)]
    else:
        inits = [init_params(cfg, s) for s in seeds]
    params = [torch.stack(p).to(device).requires_grad_() for p in zip(*inits, strict=True)]
    buffers = [torch.zeros_like(p) for p in params]

    final: list[list[torch.Tensor]] = [[] for _ in range(n_images)]  # each net's last weights
    final_pred: list[torch.Tensor] = [torch.empty(0)] * n_images  # and their training argmax
    steps = [cfg.max_steps] * n_images
    converged = [False] * n_images
    index = list(range(n_images))  # original index of each row still training
    for step in range(cfg.max_steps + 1):
        diff = batched_forward(patches, params, (height, width))
        if not pointwise:
            diff = diff[:, train]
        pred = (diff.detach() > 0).long()
        done = reliable_error(pred, y_cls, cfg.stop_rule) < cfg.stop_error
        done_list = done.tolist()  # the one host-device sync per step
        last = step == cfg.max_steps or all(done_list)
        for row, (i, finished) in enumerate(zip(index, done_list, strict=True)):
            if finished:
                steps[i], converged[i] = step, True
            if finished or last:
                final[i] = [p.detach()[row].clone() for p in params]
                final_pred[i] = pred[row] > 0
        if last:
            break
        keep = ~done
        y_s = revise(vote(pred.reshape(-1), seg.reshape(-1), sizes), y_s_star.reshape(-1))
        grad_diff = joint_loss_grad(
            diff.detach(), y_s.reshape(pred.shape), w_pos, w_neg, cfg.w3 / n_train
        )
        grads = torch.autograd.grad(diff, params, grad_diff * keep[:, None])
        with torch.no_grad():
            for p, buf, g in zip(params, buffers, grads, strict=True):
                buf.mul_(cfg.momentum).add_(g)
                p.sub_(cfg.lr * buf)
        if any(done_list):  # drop the finished images from the batch
            index = [i for i, finished in zip(index, done_list, strict=True) if not finished]
            patches, seg = _keep_rows(patches, keep), seg[keep]
            y_cls, y_s_star, w_pos, w_neg = y_cls[keep], y_s_star[keep], w_pos[keep], w_neg[keep]
            params = [p.detach()[keep].requires_grad_() for p in params]
            buffers = [buf[keep] for buf in buffers]

    with torch.no_grad():  # every net's argmax at every pixel
        weights = [torch.stack(p) for p in zip(*final, strict=True)]
        if pointwise:
            known = torch.stack(final_pred)
            masks = _pointwise_argmax(x, weights, cfg.kernels[0], stride, known, storage)
        else:
            full = input_patches(x, cfg.kernels[0])
            masks = batched_forward(full, weights, (height, width)) > 0
    if cfg.mask_vote:
        masks = vote(masks.reshape(-1).long(), all_seg.reshape(-1), all_sizes).bool()
    masks_np = masks.reshape(n_images, height, width).cpu().numpy()
    if cfg.keep_reliable:
        masks_np = np.stack(
            [keep_reliable(m, lab[0]) for m, lab in zip(masks_np, labels, strict=True)]
        )
    return [
        SgrmResult(mask, mask_to_box(mask, cfg.box_mode), n_steps, done_)
        for mask, n_steps, done_ in zip(masks_np, steps, converged, strict=True)
    ]
