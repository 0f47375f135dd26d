"""The exported graph: a trained model wrapped to take edgecnn's wire format, and its torch.onnx export.

    images uint8 [N,H,W,C] -> Transpose (still uint8: 4x fewer bytes to move than float)
        -> Cast float -> [Sub mean/scale] -> first Conv with scale/std folded into its weights
        -> rest of the model -> logits [N,K] -> Softmax -> probabilities [N,K]

Why fold: ``(x*scale - mean)/std`` is three elementwise passes over the image; folded, it is
at most one (the Sub). The Sub stays when the first conv pads its input, because padding
with zeros must keep meaning "zero after normalisation", i.e. the channel mean before it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from edgecnn.export.metadata import INPUT_NAME, LOGITS, PROBABILITIES
from edgecnn.export.quiet import quiet_logger
from edgecnn.train.normalisation import Normalisation

EXAMPLE_BATCH = 2  # >= 2, or the exporter specialises the batch axis to 1
FOLD_TOLERANCE = 1e-5  # a fold that moves any logit more than this is not used (parity allows 1e-4 in all)


class WireFormatClassifier(nn.Module):
    """uint8 NHWC images -> (logits, probabilities), with the normalisation inside the graph."""

    def __init__(
        self, model: nn.Module, normalisation: Normalisation, image_shape: tuple[int, int, int], *, fold: bool = True
    ):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        channels = len(normalisation.mean)
        scale = torch.tensor(normalisation.scale, dtype=torch.float32)
        mean = torch.tensor(normalisation.mean, dtype=torch.float32).view(1, channels, 1, 1)
        std = torch.tensor(normalisation.std, dtype=torch.float32).view(1, channels, 1, 1)
        conv = _first_conv(self.model, image_shape) if fold else None
        if conv is None:
            self.folded = "none"
            self.register_buffer("multiplier", scale / std)
            self.register_buffer("offset", mean / scale)
        else:
            self.folded = _fold_into_conv(conv, scale, mean, std)
            self.register_buffer("multiplier", None)
            self.register_buffer("offset", mean / scale if self.folded == "weights" else None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float()
        if self.offset is not None:
            x = x - self.offset
        if self.multiplier is not None:
            x = x * self.multiplier
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=-1)


def wrap_for_export(
    model: nn.Module, normalisation: Normalisation, image_shape: tuple[int, int, int]
) -> WireFormatClassifier:
    """The wrapped model, folded where the fold is numerically faithful (checked on random images)."""
    folded = WireFormatClassifier(model, normalisation, image_shape, fold=True)
    if folded.folded == "none":
        return folded
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, *image_shape), dtype=np.uint8))
    plain = WireFormatClassifier(model, normalisation, image_shape, fold=False)
    with torch.no_grad():
        difference = (folded(images)[0] - plain(images)[0]).abs().max().item()
    return folded if difference <= FOLD_TOLERANCE else plain


def export_onnx(wrapper: nn.Module, image_shape: tuple[int, int, int], opset: int) -> onnx.ModelProto:
    """torch.onnx.export with the dynamo exporter and a dynamic batch axis, in memory.

    dynamo=True is deliberate: the TorchScript exporter (dynamo=False) is deprecated in torch
    2.13 and warns that it will be removed; both keep the batch axis dynamic for these models,
    and the dynamo graph is the cleaner of the two (BatchNorm folded, no Constant nodes).
    """
    example = torch.zeros((EXAMPLE_BATCH, *image_shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[LOGITS, PROBABILITIES],
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    _drop_exporter_annotations(proto)
    return proto


def _first_conv(model: nn.Module, image_shape: tuple[int, int, int]) -> nn.Conv2d | None:
    """The Conv2d that receives the model's input tensor itself, if the model starts with one."""
    height, width, channels = image_shape
    found: list[nn.Conv2d] = []
    probe = torch.zeros(1, channels, height, width)

    def hook(module: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
        if not found and inputs and inputs[0] is probe:
            found.append(module)  # type: ignore[arg-type]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(probe)
    except Exception:  # a model that rejects the probe's size: export it without the fold
        return None
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    conv = found[0]
    if conv.groups != 1 or conv.padding_mode != "zeros" or conv.in_channels != channels:
        return None
    return conv


def _fold_into_conv(conv: nn.Conv2d, scale: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> str:
    """Fold scale/std into the conv weights; with no padding also fold the mean into its bias.

    Returns "weights+bias" (the graph feeds raw pixel values) or "weights" (the graph still
    subtracts mean/scale per channel, so zero padding keeps its meaning).
    """
    with torch.no_grad():
        per_channel = (scale / std).view(1, -1, 1, 1)
        weight = conv.weight.double() * per_channel.double()
        unpadded = conv.padding == "valid" or all(p == 0 for p in _as_tuple(conv.padding))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
        if unpadded:
            offset = (mean / scale).double().view(1, -1, 1, 1)
            bias = bias - (weight * offset).sum(dim=(1, 2, 3))
        conv.weight.copy_(weight.float())
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.float())
        else:
            conv.bias.copy_(bias.float())
    return "weights+bias" if unpadded else "weights"


def _as_tuple(padding: Any) -> tuple:
    return (padding,) if isinstance(padding, (int, str)) else tuple(padding)


def _drop_exporter_annotations(proto: onnx.ModelProto) -> None:
    """torch records its own bookkeeping in per-value metadata; a served model does not need it."""
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        del value.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
    for initializer in graph.initializer:
        del initializer.metadata_props[:]
