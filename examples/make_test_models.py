"""Export the small real-architecture models that ember's model tests run (tests/models/).

Each is a scaled-down copy of a well-known architecture with seeded random weights: a
ResNet-style CNN, a MobileNetV2-style CNN (depthwise convs, ReLU6 as Clip, HardSwish), a
BERT encoder and a GPT-2 decoder from transformers. They are small (well under 5 MB each)
so they can live in the repository, and they use the op mixes real exports produce
(BatchNormalization, Gemm, LayerNormalization, Softmax, Gather, Where, shape arithmetic).

torch and transformers are development tools only; ember never imports them:

    python examples/make_test_models.py [--out tests/models]
"""

from __future__ import annotations

import argparse
import collections
import io
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

__all__ = ["ResNetMini", "MobileNetV2Mini", "export_all", "op_histogram"]

OPSET = 17
SEED = 1234
# transformers' default init (std 0.02) leaves attention almost uniform, which hides softmax
# and masking errors; a larger std gives peaked, input-dependent attention.
TRANSFORMER_INIT_STD = 0.1


# -- ResNet-style CNN ----------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 conv+BN, ReLU, residual add; a strided block downsamples with a 1x1 conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.down is None else self.down(x)
        return torch.relu(out + skip)


class ResNetMini(nn.Module):
    """Stem 7x7/2 conv + BN + ReLU + 3x3/2 maxpool, three stages, global average pool, FC."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            blocks.append(BasicBlock(w, w, 1))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# -- MobileNetV2-style CNN -----------------------------------------------------------------
class InvertedResidual(nn.Module):
    """1x1 expand + BN + act, 3x3 depthwise + BN + act, 1x1 project + BN; residual when the
    shape allows. act is ReLU6 (exported as Clip(0, 6)) or HardSwish."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int,
                 act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), act(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Mini(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4, act=nn.Hardswish),
            InvertedResidual(32, 32, 1, 4),
            InvertedResidual(32, 48, 2, 4),
        )
        self.head = nn.Sequential(nn.Conv2d(48, 128, 1, bias=False), nn.BatchNorm2d(128),
                                  nn.ReLU6())
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def _randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Fresh BatchNorm layers hold mean 0 / var 1 / scale 1 / shift 0, which would make BN an
    identity; give them random statistics and affine parameters so it computes something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


# -- exporting -----------------------------------------------------------------------------
def _export(model: nn.Module, args: tuple[Any, ...], path: Path, input_names: list[str],
            output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None,
            training: torch.onnx.TrainingMode = torch.onnx.TrainingMode.EVAL) -> None:
    """TorchScript-based export (dynamo=False): stable op choices at opset 17, and with
    TrainingMode.PRESERVE on an eval-mode model BatchNormalization stays a node instead of
    being folded into the preceding Conv, so ember's own BN handling is exercised."""
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True,
                          training=training)
    proto = onnx.load_model_from_string(buffer.getvalue())
    proto.producer_name = "ember/examples/make_test_models.py"
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))


def op_histogram(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def export_resnet(out: Path) -> Path:
    torch.manual_seed(SEED)
    model = ResNetMini()
    _randomize_bn(model, torch.Generator().manual_seed(SEED))
    path = out / "resnet_mini.onnx"
    _export(model, (torch.randn(1, 3, 64, 64),), path, ["input"], ["logits"], None,
            torch.onnx.TrainingMode.PRESERVE)
    return path


def export_mobilenet(out: Path) -> Path:
    torch.manual_seed(SEED + 1)
    model = MobileNetV2Mini()
    _randomize_bn(model, torch.Generator().manual_seed(SEED + 1))
    path = out / "mobilenetv2_mini.onnx"
    _export(model, (torch.randn(1, 3, 64, 64),), path, ["input"], ["logits"], None,
            torch.onnx.TrainingMode.PRESERVE)
    return path


class _BertWrapper(nn.Module):
    """BertModel returns a ModelOutput; the exporter wants plain tensors."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class _GPT2Wrapper(nn.Module):
    def __init__(self, gpt2: nn.Module) -> None:
        super().__init__()
        self.gpt2 = gpt2

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # An all-ones mask keeps transformers off its packed-sequence detection (torch.diff,
        # which has no ONNX export); the causal mask is still built from it in the graph.
        mask = torch.ones_like(input_ids)
        return self.gpt2(input_ids=input_ids, attention_mask=mask, use_cache=False,
                         return_dict=True).logits


def export_bert(out: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED + 2)
    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=512,
                        max_position_embeddings=256, initializer_range=TRANSFORMER_INIT_STD,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    model = _BertWrapper(BertModel(config))
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    path = out / "bert_mini.onnx"
    dyn = {"input_ids": {0: "batch", 1: "sequence"},
           "attention_mask": {0: "batch", 1: "sequence"},
           "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}}
    _export(model, (ids, mask), path, ["input_ids", "attention_mask"],
            ["last_hidden_state", "pooler_output"], dyn)
    return path


def export_gpt2(out: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED + 3)
    config = GPT2Config(vocab_size=1000, n_positions=256, n_embd=128, n_layer=2, n_head=2,
                        initializer_range=TRANSFORMER_INIT_STD, resid_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0,
                        embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    config._attn_implementation = "eager"
    model = _GPT2Wrapper(GPT2LMHeadModel(config))
    ids = torch.randint(0, 1000, (1, 16))
    path = out / "gpt2_mini.onnx"
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    _export(model, (ids,), path, ["input_ids"], ["logits"], dyn)
    return path


EXPORTERS = {"resnet_mini": export_resnet, "mobilenetv2_mini": export_mobilenet,
             "bert_mini": export_bert, "gpt2_mini": export_gpt2}


def export_all(out: Path, names: list[str] | None = None,
               exporters: dict[str, Any] | None = None) -> list[Path]:
    """Run the named exporters (all of `exporters`, this script's by default), printing each
    file's size and op counts."""
    paths = []
    for name, fn in (EXPORTERS if exporters is None else exporters).items():
        if names and name not in names:
            continue
        path = fn(out)
        hist = op_histogram(path)
        size = path.stat().st_size
        print(f"{path}  {size / 1e6:.2f} MB  {sum(hist.values())} nodes")
        print("   " + ", ".join(f"{op} {n}" for op, n in hist.items()))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "tests" / "models")
    parser.add_argument("names", nargs="*", help=f"subset of {sorted(EXPORTERS)}")
    args = parser.parse_args()
    export_all(args.out, args.names)


if __name__ == "__main__":
    main()
