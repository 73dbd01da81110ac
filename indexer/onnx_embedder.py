"""The embedder on ONNX Runtime: the same sentence-transformers model, exported once to ONNX
(and, for `onnx-int8`, its weights quantized to int8), then run without torch in the loop.

The export is made on first use from the model's own weights (torch's exporter, no hub, no
optimum) and cached by the model's fingerprint under `embedding.cache_dir`; the tokenizer,
pooling and normalisation are the model's own (its `1_Pooling` config). bench/ingest.py
measures its speed and recall against the torch backend.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ragtune.errors import UsageError
from ragtune.settings import EmbeddingSettings

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_VERSION = "v2"  # in the cached file's name: a new way of exporting makes a new file


def _pooling(model_dir: Path) -> str:
    """mean or cls, as the model's sentence-transformers config says (mean when it says nothing)."""
    config = model_dir / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    modes = {k for k, v in json.loads(config.read_text()).items() if k.startswith("pooling_mode") and v is True}
    if modes <= {"pooling_mode_mean_tokens"}:
        return "mean"
    if modes == {"pooling_mode_cls_token"}:
        return "cls"
    raise UsageError(
        f"embedding.backend onnx supports mean or CLS pooling; {model_dir} asks for {sorted(modes)}: "
        "use RAGTUNE_EMBEDDING__BACKEND=torch for this model"
    )


def _export(model_dir: Path, target: Path, quantize: bool) -> None:
    """The model's transformer as ONNX at `target` (int8 weights if `quantize`), written atomically."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class Encoder(torch.nn.Module):  # keyword arguments: positional order changes across transformers versions
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    # eager attention: its graph runs ~1.3x faster in ONNX Runtime than the one traced from SDPA (bench/RESULTS.md)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    sample = AutoTokenizer.from_pretrained(model_dir)(["an example", "another example text"], padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        plain = Path(work) / "model.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encoder(model), tuple(sample[name] for name in INPUTS), str(plain), input_names=list(INPUTS),
                output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")},
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(work) / "model-int8.onnx"
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # its advice to pre-process the graph is for other models; this one is plain
            try:  # per channel: much closer to the fp32 vectors than per tensor (bench/RESULTS.md)
                quantize_dynamic(str(plain), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                root.setLevel(level)
            plain = quantized
        os.replace(plain, target)


class OnnxEmbedder:
    """Embedder (indexer/embedder.py) on ONNX Runtime, fp32 or int8 weights."""

    def __init__(self, settings: EmbeddingSettings, model_dir: Path, name: str, fingerprint: str):
        try:
            import onnxruntime
        except ImportError as exc:
            raise UsageError(
                f"embedding.backend {settings.backend} needs onnxruntime and onnx: pip install 'ragtune[onnx]', "
                "or set RAGTUNE_EMBEDDING__BACKEND=torch"
            ) from exc
        from transformers import AutoTokenizer

        if not (model_dir / "config.json").is_file():
            raise UsageError(f"embedding.backend {settings.backend} needs a local model directory; {model_dir} has no config.json")
        self.backend = settings.backend
        self.pooling = _pooling(model_dir)
        path = settings.cache_dir / "embedders" / f"{fingerprint}-{settings.backend}-{EXPORT_VERSION}.onnx"
        if not path.is_file():
            _export(model_dir, path, quantize=settings.backend == "onnx-int8")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        st_config = model_dir / "sentence_bert_config.json"
        max_seq = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
        self.max_seq_length = int(max_seq or self.tokenizer.model_max_length)
        self.special_tokens = self.tokenizer.num_special_tokens_to_add(pair=False)
        self.dimension = int(self._session.get_outputs()[0].shape[-1] or json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self.name, self.fingerprint = name, fingerprint
        self._batch_size = settings.batch_size

    @property
    def max_text_tokens(self) -> int:
        return self.max_seq_length - self.special_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np",
            )
            feed = {name: batch[name].astype(np.int64) for name in INPUTS if name in batch}
            feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
            hidden = self._session.run(None, feed)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows] = pooled / np.clip(norms, 1e-12, None)
        return out

    def identity(self) -> dict:
        return {
            "name": self.name, "dimension": self.dimension, "fingerprint": self.fingerprint,
            "max_seq_length": self.max_seq_length, "backend": self.backend,
        }
