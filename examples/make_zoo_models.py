"""Export the model zoo tier (examples/models/zoo/): small seeded random-weight copies of
architectures that real exporters produce, which tests/test_zoo.py runs against onnxruntime.

- llama_decoder: transformers' LlamaForCausalLM (RMSNorm, rotary positions, grouped-query
  attention, SiLU-gated MLP) with its KV cache as inputs (`past_key_values.N.key/value`) and
  outputs (`present.N.key/value`), so one prefill and then steps of one token can run,
  each step fed the cache the previous one returned.
- llama_decoder_opset23: the same decoder and weights with SDPA attention, through torch's
  dynamo exporter at opset 23, which writes ONNX's RMSNormalization, RotaryEmbedding and
  Attention ops instead of their elementary expansions.
- whisper_encoder: transformers' WhisperEncoder (two Conv1d + GELU stem, sinusoidal
  positions, pre-norm attention blocks).
- unet_block: a Stable Diffusion style UNet block (ResNet block with GroupNorm + SiLU + conv
  and a time embedding, a spatial transformer with GroupNorm, self-attention and GEGLU).
- unet_block_opset21: the same block and weights through torch's dynamo exporter at
  opset 21, which writes GroupNorm as ONNX GroupNormalization (scale and bias per channel)
  instead of InstanceNormalization over reshaped groups.
- yolo_head: a YOLO-style conv detector whose decoded boxes and scores go through ONNX
  NonMaxSuppression, and the kept boxes are gathered (a data-dependent tail). The NMS and
  Gather nodes are added to the exported graph with onnx.helper (no torchvision needed).
- lstm_tagger: Embedding -> bidirectional LSTM -> Linear, one tag distribution per token.

All but llama_decoder_opset23 and unet_block_opset21 are exported by torch's TorchScript
exporter (dynamo=False) at opset 17, the opset ember's converters cover best; each file
stays well under 1 MB.
torch, transformers, onnx and onnxscript (the dynamo exporter's) are development tools
only, never ember dependencies; install them in a separate venv:

    python -m venv /tmp/zoo-venv && /tmp/zoo-venv/bin/pip install torch==2.13.0 \\
        transformers onnx onnxscript
    /tmp/zoo-venv/bin/python examples/make_zoo_models.py [--out DIR] [names...]

The run is deterministic (seeded weights; constant folding on), so re-running it rewrites
the same graphs.
"""

from __future__ import annotations

import argparse
import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch

# the sibling script (this folder is on sys.path when a script here runs): its file
# report and op counts
from make_test_models import export_all as export_models
from make_test_models import op_histogram
from onnx import TensorProto, helper, numpy_helper
from torch import nn

__all__ = ["EXPORTERS", "LLAMA", "export_all", "op_histogram"]

OPSET = 17
SEED = 2024
# transformers' default init (std 0.02) leaves attention almost uniform, which would hide
# softmax, mask and rotary errors; a larger std gives peaked, position-dependent attention.
INIT_STD = 0.1
# The YOLO head's prediction conv weights (see export_yolo).
PREDICT_STD = 3.0

# The Llama decoder's shape, also read by tests/test_zoo.py through the exported graph.
LLAMA = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64}


# -- exporting -----------------------------------------------------------------------------
def _export(model: nn.Module, args: tuple[Any, ...], input_names: list[str],
            output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None
            ) -> onnx.ModelProto:
    """TorchScript export at OPSET in eval mode, constant folding on; returns the proto so
    that a caller can still edit the graph before it is saved."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return onnx.load_model_from_string(buffer.getvalue())


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    proto.producer_name = "ember/examples/make_zoo_models.py"
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _strip_export_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The dynamo exporter annotates nodes and values with stack traces (absolute source
    paths and line numbers) and the FX graph; dropping them keeps the file small and its
    bytes independent of where the script and torch live."""
    graph = proto.graph
    for item in (*graph.node, *graph.value_info, *graph.input, *graph.output):
        del item.metadata_props[:]
    del graph.metadata_props[:]
    del proto.metadata_props[:]
    return proto


# -- Llama decoder with KV cache -----------------------------------------------------------
class _LlamaWithCache(nn.Module):
    """Tensors in, tensors out: the cache travels as one key and one value tensor per layer
    (batch, kv_heads, past, head_dim), which is how ONNX decoders are served."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(pairs)
        past_length = past[0].shape[2]
        # Positions continue after the cached tokens (left padding is not modelled).
        position_ids = torch.arange(input_ids.shape[1]).unsqueeze(0) + past_length
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=cache, use_cache=True,
                         return_dict=True)
        present = out.past_key_values
        flat: list[torch.Tensor] = []
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _llama(attention: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str]]:
    """The seeded Llama decoder (the same weights whatever the attention implementation),
    example inputs with a non-empty cache, so that the past length stays a graph value, and
    the input and output names."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(**LLAMA, initializer_range=INIT_STD, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=False, use_cache=True,
                         attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    config._attn_implementation = attention
    layers = LLAMA["num_hidden_layers"]
    model = _LlamaWithCache(LlamaForCausalLM(config), layers).eval()
    kv_heads = LLAMA["num_key_value_heads"]
    head_dim = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
    past_len, seq = 3, 2
    ids = torch.randint(0, LLAMA["vocab_size"], (1, seq))
    mask = torch.ones(1, past_len + seq, dtype=torch.int64)
    past = [torch.randn(1, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    past_names, present_names = [], []
    for i in range(layers):
        past_names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present_names += [f"present.{i}.key", f"present.{i}.value"]
    return (model, (ids, mask, *past), ["input_ids", "attention_mask", *past_names],
            ["logits", *present_names])


def export_llama(out: Path) -> Path:
    """Eager attention through the TorchScript exporter at OPSET: RMSNorm, rotary and
    attention come out as their elementary ops (Pow, ReduceMean, Sin, Cos, MatMul, Softmax)."""
    model, args, inputs, outputs = _llama("eager")
    dyn: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                      "attention_mask": {0: "batch", 1: "total_sequence"},
                                      "logits": {0: "batch", 1: "sequence"}}
    for name in inputs[2:]:
        dyn[name] = {0: "batch", 2: "past_sequence"}
    for name in outputs[1:]:
        dyn[name] = {0: "batch", 2: "total_sequence"}
    proto = _export(model, args, inputs, outputs, dyn)
    return _save(proto, out / "llama_decoder.onnx")


def export_llama_opset23(out: Path) -> Path:
    """The same decoder (same weights) with SDPA attention through the dynamo exporter at
    opset 23, which writes ONNX's own RMSNormalization, RotaryEmbedding and Attention."""
    model, args, inputs, outputs = _llama("sdpa")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    layers = LLAMA["num_hidden_layers"]
    dynamic_shapes = ({0: batch, 1: seq}, {0: batch, 1: total},
                      tuple({0: batch, 2: past} for _ in range(2 * layers)))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, opset_version=23,
                                    dynamic_shapes=dynamic_shapes, input_names=inputs,
                                    output_names=outputs, verbose=False)
    return _save(_strip_export_metadata(program.model_proto), out / "llama_decoder_opset23.onnx")


# -- Whisper encoder -----------------------------------------------------------------------
class _WhisperEncoderTensors(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features, return_dict=True).last_hidden_state


def export_whisper(out: Path) -> Path:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(SEED + 1)
    config = WhisperConfig(num_mel_bins=16, d_model=64, encoder_layers=2,
                           encoder_attention_heads=4, encoder_ffn_dim=128,
                           max_source_positions=32, init_std=INIT_STD, dropout=0.0,
                           attention_dropout=0.0, activation_dropout=0.0,
                           activation_function="gelu")
    config._attn_implementation = "eager"
    model = _WhisperEncoderTensors(WhisperEncoder(config))
    # Whisper's encoder takes exactly 2 * max_source_positions mel frames.
    features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions)
    proto = _export(model, (features,), ["input_features"], ["last_hidden_state"],
                    {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}})
    return _save(proto, out / "whisper_encoder.onnx")


# -- Stable Diffusion style UNet block -----------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
                       ) -> torch.Tensor:
    """Sinusoidal embedding of the (float) diffusion timestep, as in DDPM / Stable Diffusion."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, conv 3x3, + projected time embedding, GroupNorm, SiLU, conv 3x3,
    residual through a 1x1 conv when the width changes."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time_proj(nn.functional.silu(temb))[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, n, c))


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 2) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(value * nn.functional.gelu(gate))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv in, (LayerNorm, self-attention, LayerNorm, GEGLU) on the H*W
    tokens, 1x1 conv out, residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SelfAttention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.ff = GEGLUFeedForward(channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).reshape(b, c, h * w).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.ff(self.norm2(tokens))
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    """Time embedding MLP, then ResnetBlock + SpatialTransformer, as in one level of SD's UNet."""

    def __init__(self, cin: int = 16, channels: int = 32, temb: int = 64, heads: int = 4,
                 groups: int = 8) -> None:
        super().__init__()
        self.temb_dim = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, temb), nn.SiLU(),
                                      nn.Linear(temb, temb))
        self.resnet = ResnetBlock(cin, channels, temb, groups)
        self.transformer = SpatialTransformer(channels, heads, groups)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(timestep, self.temb_dim))
        return self.transformer(self.resnet(sample, temb))


def _randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Fresh norm layers have scale 1 and shift 0; random affine parameters make a wrong
    channel or group mapping visible."""
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def _unet() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The seeded UNet block and its example inputs, the same for every exporter."""
    torch.manual_seed(SEED + 2)
    model = UNetBlock()
    _randomize_norms(model, torch.Generator().manual_seed(SEED + 2))
    sample = torch.randn(1, 16, 16, 16)
    timestep = torch.tensor([500.0])
    return model, (sample, timestep)


def export_unet(out: Path) -> Path:
    model, args = _unet()
    proto = _export(model, args, ["sample", "timestep"], ["out_sample"],
                    {"sample": {0: "batch"}, "timestep": {0: "batch"},
                     "out_sample": {0: "batch"}})
    return _save(proto, out / "unet_block.onnx")


def export_unet_opset21(out: Path) -> Path:
    """The same block (same weights) through the dynamo exporter at opset 21, the first
    opset whose GroupNormalization takes a scale and bias per channel, which torch's
    GroupNorm then maps to directly (with Gelu and Split for the GEGLU)."""
    model, args = _unet()
    batch = torch.export.Dim("batch")
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, opset_version=21,
                                    dynamic_shapes=({0: batch}, {0: batch}),
                                    input_names=["sample", "timestep"],
                                    output_names=["out_sample"], verbose=False)
    proto = _strip_export_metadata(program.model_proto)
    return _save(proto, out / "unet_block_opset21.onnx")


# -- YOLO-style detector ending in NonMaxSuppression ---------------------------------------
class YoloHead(nn.Module):
    """A stride-8 conv backbone (Conv + BN + SiLU), then per grid cell one box: center
    offsets and size through sigmoid scaled to pixels, objectness times class scores.
    Outputs boxes (batch, cells, 4) as corners and scores (batch, classes, cells), the
    layout ONNX NonMaxSuppression takes."""

    def __init__(self, classes: int = 3, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.SiLU())

        self.backbone = nn.Sequential(block(3, width, 2), block(width, 2 * width, 2),
                                      block(2 * width, 2 * width, 1),
                                      block(2 * width, 2 * width, 2))
        self.predict = nn.Conv2d(2 * width, 5 + classes, 1)
        self.stride = 8
        self.classes = classes

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.predict(self.backbone(image))  # (b, 5 + classes, gh, gw)
        _, _, gh, gw = p.shape
        p = p.flatten(2)  # (b, 5 + classes, cells)
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()]).float()  # (2, cells)
        center = (torch.sigmoid(p[:, 0:2]) * 2 - 0.5 + grid) * self.stride
        size = (torch.sigmoid(p[:, 2:4]) * 2) ** 2 * (2 * self.stride)
        corners = torch.cat([center - size / 2, center + size / 2], dim=1)  # (b, 4, cells)
        scores = torch.sigmoid(p[:, 4:5]) * torch.sigmoid(p[:, 5:])
        return corners.transpose(1, 2), scores


def _append_nms(proto: onnx.ModelProto, max_per_class: int, iou: float,
                score: float) -> onnx.ModelProto:
    """NonMaxSuppression on the exported boxes and scores (center_point_box=0: corners as
    x1 y1 x2 y2, which NMS accepts in either order), then the kept boxes of image 0 gathered
    by the selected indices: two outputs whose length depends on the data."""
    graph = proto.graph
    graph.initializer.extend([
        numpy_helper.from_array(torch.tensor([max_per_class]).numpy(), "nms_max_per_class"),
        numpy_helper.from_array(torch.tensor([iou]).numpy(), "nms_iou_threshold"),
        numpy_helper.from_array(torch.tensor([score]).numpy(), "nms_score_threshold"),
        numpy_helper.from_array(torch.tensor([2]).numpy(), "nms_box_column"),
        numpy_helper.from_array(torch.tensor(0).numpy(), "nms_image"),
        numpy_helper.from_array(torch.tensor([1]).numpy(), "nms_squeeze_axis"),
    ])
    graph.node.extend([
        helper.make_node("NonMaxSuppression",
                         ["boxes", "scores", "nms_max_per_class", "nms_iou_threshold",
                          "nms_score_threshold"], ["selected_indices"],
                         name="nms", center_point_box=0),
        helper.make_node("Gather", ["selected_indices", "nms_box_column"], ["box_index"],
                         name="box_column", axis=1),
        # The axis is named: with k == 1 a plain Squeeze would drop both dims.
        helper.make_node("Squeeze", ["box_index", "nms_squeeze_axis"], ["box_index_flat"],
                         name="box_index_flat"),
        helper.make_node("Gather", ["boxes", "nms_image"], ["image_boxes"], name="image_0",
                         axis=0),
        helper.make_node("Gather", ["image_boxes", "box_index_flat"], ["selected_boxes"],
                         name="kept_boxes", axis=0),
    ])
    graph.output.extend([
        helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["selected", 3]),
        helper.make_tensor_value_info("selected_boxes", TensorProto.FLOAT, ["selected", 4]),
    ])
    return proto


def export_yolo(out: Path) -> Path:
    torch.manual_seed(SEED + 3)
    model = YoloHead()
    generator = torch.Generator().manual_seed(SEED + 3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    # Default init leaves every score near sigmoid(0)^2 = 0.25, so NMS's ranking would hang
    # on rounding; wider logits spread the scores and the box sizes.
    with torch.no_grad():
        model.predict.weight.normal_(0.0, PREDICT_STD, generator=generator)
    image = torch.randn(1, 3, 64, 64)
    proto = _export(model, (image,), ["image"], ["boxes", "scores"], None)
    proto = _append_nms(proto, max_per_class=12, iou=0.5, score=0.6)
    return _save(proto, out / "yolo_head.onnx")


# -- LSTM tagger ---------------------------------------------------------------------------
class LSTMTagger(nn.Module):
    def __init__(self, vocab: int = 100, embed: int = 32, hidden: int = 32,
                 tags: int = 9) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embed(tokens))
        return torch.log_softmax(self.out(states), dim=-1)


def export_lstm(out: Path) -> Path:
    torch.manual_seed(SEED + 4)
    model = LSTMTagger()
    tokens = torch.randint(0, 100, (2, 12))
    proto = _export(model, (tokens,), ["tokens"], ["tag_log_probs"],
                    {"tokens": {0: "batch", 1: "sequence"},
                     "tag_log_probs": {0: "batch", 1: "sequence"}})
    return _save(proto, out / "lstm_tagger.onnx")


EXPORTERS: dict[str, Callable[[Path], Path]] = {
    "llama_decoder": export_llama, "llama_decoder_opset23": export_llama_opset23,
    "whisper_encoder": export_whisper,
    "unet_block": export_unet, "unet_block_opset21": export_unet_opset21,
    "yolo_head": export_yolo, "lstm_tagger": export_lstm}


def export_all(out: Path, names: list[str] | None = None) -> list[Path]:
    return export_models(out, names, EXPORTERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent
                        / "models" / "zoo")
    parser.add_argument("names", nargs="*", help=f"subset of {sorted(EXPORTERS)}")
    args = parser.parse_args()
    export_all(args.out, args.names)


if __name__ == "__main__":
    main()
