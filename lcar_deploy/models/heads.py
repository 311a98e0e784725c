"""SD-CAM heads (eqs. 2-6; docs/method.md, sections 2 and 7) and their ``heads.pt`` format.

- CAM head (student): a linear map over the grid, ``cams = grid @ W^T + b`` per cell, logits by
  global average pooling of the cams (eq. 5).
- Teacher head: an MLP over ``concat(global, mean(grid))`` (eq. 3); ``hidden = 0`` gives the
  linear-only teacher the paper uses on ILSVRC.

``heads.pt`` is a plain dict of tensors, strings and numbers, read with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import HeadsError
from ..io import write_atomic
from .safe_load import load_file

HEADS_FORMAT_VERSION = 2


@dataclass(frozen=True)
class HeadsConfig:
    """Shape of the two heads and what they were trained for.

    backbone, input_size, grid_layer, affinity_layer: the backbone the heads fit.
    grid_dim: D of the grid; global_dim: Dg of the global feature.
    num_classes: C; class_ids / class_names: dataset ids and names of the C outputs.
    teacher_hidden: width of the teacher's MLP block (0 = linear teacher).
    teacher_input: ``concat`` (global || mean(grid), eq. 3) or ``global``.
    foreground_layers: backbone layers read by the foreground head (empty = no head);
        foreground_dims: their widths; foreground_grid: the side of its output grid;
        foreground_classes: 0 (class-agnostic only) or C, when the head also has one map per
        class.
    """

    backbone: str
    input_size: int
    grid_layer: str
    affinity_layer: str
    grid_dim: int
    global_dim: int
    num_classes: int
    class_ids: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    teacher_hidden: int = 512
    teacher_input: str = "concat"
    foreground_layers: list[str] = field(default_factory=list)
    foreground_dims: list[int] = field(default_factory=list)
    foreground_grid: int = 0
    foreground_classes: int = 0

    def __post_init__(self) -> None:
        if self.teacher_input not in ("concat", "global"):
            raise HeadsError(
                f"teacher_input must be 'concat' or 'global', got {self.teacher_input!r}"
            )
        for name, values in (("class_ids", self.class_ids), ("class_names", self.class_names)):
            if values and len(values) != self.num_classes:
                raise HeadsError(f"{name} has {len(values)} entries for {self.num_classes} classes")
        if len(self.foreground_layers) != len(self.foreground_dims):
            raise HeadsError("foreground_layers and foreground_dims differ in length")
        if self.foreground_layers and self.foreground_grid < 1:
            raise HeadsError("a foreground head needs foreground_grid >= 1")
        if self.foreground_classes not in (0, self.num_classes) or (
            self.foreground_classes and not self.foreground_layers
        ):
            raise HeadsError(
                f"foreground_classes must be 0 or num_classes ({self.num_classes}) with a "
                f"foreground head, got {self.foreground_classes}"
            )

    @property
    def teacher_in_dim(self) -> int:
        return (
            self.global_dim + self.grid_dim if self.teacher_input == "concat" else self.global_dim
        )


class CamHead(nn.Module):
    """Student: per-cell linear classifier over the grid. (B, h, w, D) -> cams (B, C, h, w)."""

    def __init__(self, grid_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(grid_dim, num_classes)

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.fc(grid).permute(0, 3, 1, 2)
        return cams, cams.mean(dim=(2, 3))


class TeacherHead(nn.Module):
    """Teacher: MLP block + linear layer over ``concat(global, mean(grid))`` (eq. 3)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        if hidden > 0:
            self.mlp: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, in_dim)
            )
        else:
            self.mlp = nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mlp(features))


class ForegroundHead(nn.Module):
    """The learned class-agnostic localizer (beyond the paper, docs/method.md, section 7).

    Multi-scale frozen features (e.g. strides 8, 16, 32), each L2-normalised per cell and
    resized bilinearly to one ``grid`` x ``grid`` grid, concatenated, then one linear layer and a
    sigmoid: the probability that the cell shows an object of the dataset, whatever its class.
    Self-trained on the pipeline's own refined maps of the train split (:mod:`lcar_deploy.
    training.localizer`). stages {layer: (B, C, h, w)} -> (B, grid, grid) in [0, 1].

    With ``classes`` > 0 the head also holds one linear layer per class (``class_fc``), fitted
    on that class's train images only: :meth:`class_maps` gives (B, classes, grid, grid).
    """

    def __init__(self, layers: list[str], dims: list[int], grid: int, classes: int = 0) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.dims = tuple(dims)
        self.grid = grid
        self.classes = classes
        self.fc = nn.Linear(sum(dims), 1)
        self.class_fc = nn.Linear(sum(dims), classes) if classes else None

    def features(self, stages: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, grid, grid, sum(dims)): the concatenated, normalised, resized features."""
        parts = []
        for layer in self.layers:
            x = nn.functional.normalize(stages[layer].float(), dim=1)
            if tuple(x.shape[-2:]) != (self.grid, self.grid):
                x = nn.functional.interpolate(
                    x, size=(self.grid, self.grid), mode="bilinear", align_corners=False
                )
            parts.append(x)
        return torch.cat(parts, dim=1).permute(0, 2, 3, 1)

    def forward(self, stages: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.features(stages))[..., 0])

    def maps(self, stages: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The class-agnostic map (B, grid, grid) and, with ``classes``, the class maps
        (B, classes, grid, grid), from one pass over the features."""
        features = self.features(stages)
        agnostic = torch.sigmoid(self.fc(features)[..., 0])
        if self.class_fc is None:
            return (agnostic,)
        return agnostic, torch.sigmoid(self.class_fc(features)).permute(0, 3, 1, 2)


class Heads(nn.Module):
    """Both heads. forward(global (B, Dg), grid (B, h, w, D)) -> (logits, cam_logits, cams).

    ``foreground`` (optional, see :class:`ForegroundHead`) is applied by the exported model to
    the backbone's stage outputs.
    """

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.cam = CamHead(config.grid_dim, config.num_classes)
        self.teacher = TeacherHead(config.teacher_in_dim, config.num_classes, config.teacher_hidden)
        self.foreground = (
            ForegroundHead(
                config.foreground_layers,
                config.foreground_dims,
                config.foreground_grid,
                config.foreground_classes,
            )
            if config.foreground_layers
            else None
        )

    def teacher_features(self, global_feat: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.config.teacher_input == "global":
            return global_feat
        return torch.cat([global_feat, grid.mean(dim=(1, 2))], dim=1)

    def forward(
        self, global_feat: torch.Tensor, grid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cams, cam_logits = self.cam(grid)
        logits = self.teacher(self.teacher_features(global_feat, grid))
        return logits, cam_logits, cams


def classifier_heads(classifier: nn.Linear, config: HeadsConfig) -> Heads:
    """Plain-CAM heads from a backbone's own classifier (no trained heads; docs/method.md,
    section 2).

    Both heads use the classifier: the CAM head applies it per cell of the pre-pooling grid,
    the teacher applies it to the pooled (global) feature, so ``logits == cam_logits``.
    """
    heads = Heads(config)
    with torch.no_grad():
        heads.cam.fc.weight.copy_(classifier.weight)
        heads.cam.fc.bias.copy_(classifier.bias)
        heads.teacher.fc.weight.copy_(classifier.weight)
        heads.teacher.fc.bias.copy_(classifier.bias)
    return heads.eval()


def with_foreground(heads: Heads, foreground: ForegroundHead) -> Heads:
    """A copy of ``heads`` carrying ``foreground`` (its layers, widths, grid and weights)."""
    config = replace(
        heads.config,
        foreground_layers=list(foreground.layers),
        foreground_dims=list(foreground.dims),
        foreground_grid=foreground.grid,
        foreground_classes=foreground.classes,
    )
    new = Heads(config)
    state = {k: v for k, v in heads.state_dict().items() if not k.startswith("foreground.")}
    new.load_state_dict(state, strict=False)
    new.foreground.load_state_dict(foreground.state_dict())
    return new.eval()


def save_heads(heads: Heads, path: str | Path, extra: dict | None = None) -> None:
    """Write ``heads.pt`` (atomically): config, both state dicts, optional metadata."""
    path = Path(path)
    payload = {
        "format_version": HEADS_FORMAT_VERSION,
        "config": asdict(heads.config),
        "state_dict": {k: v.detach().cpu() for k, v in heads.state_dict().items()},
        "extra": extra or {},
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_heads(path: str | Path) -> tuple[Heads, dict]:
    """Read ``heads.pt`` without executing pickle code; clear errors for bad files."""
    payload = load_file(Path(path), HeadsError, "heads file")
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise HeadsError(f"{path}: not a heads file (expected keys 'config' and 'state_dict')")
    version = payload.get("format_version")
    if version != HEADS_FORMAT_VERSION:
        raise HeadsError(
            f"{path}: heads format version {version}, this lcar-deploy reads {HEADS_FORMAT_VERSION}"
        )
    try:
        config = HeadsConfig(**payload["config"])
        heads = Heads(config)
        heads.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise HeadsError(f"{path}: heads do not match their config ({exc})") from exc
    return heads.eval(), payload.get("extra", {})
