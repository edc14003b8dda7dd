"""Test helpers: a tiny BERT-style model built from scratch (no download) and free ports.

The tiny model is deliberately small (1 layer, 32-d) so that the whole pipeline (export, ingest,
search, training) runs in seconds. It is built with a fixed seed, so its outputs are reproducible.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

#: a hand-written collection (24 docs, 8 queries, qrels; BEIR layout)
TINY_COLLECTION = Path(__file__).parent / "data" / "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_texts() -> list[str]:
    texts = []
    for line in (TINY_COLLECTION / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        texts.append(f"{d['title']} {d['text']}")
    for line in (TINY_COLLECTION / "queries.jsonl").read_text().splitlines():
        texts.append(json.loads(line)["text"])
    return texts


def _tiny_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(tiny_texts(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    fast.save_pretrained(out)
    return fast


def _tiny_config(vocab_size: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **extra,
    )


def build_tiny_bi_encoder(out: Path, *, seed: int = 0, pooling: str = "mean") -> Path:
    """Write a tiny sentence-transformers bi-encoder (BERT, mean pooling, normalized) to ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertModel

    out = Path(out)
    hf = out / "_hf"
    hf.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fast = _tiny_tokenizer(hf)
    BertModel(_tiny_config(len(fast))).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=64)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    st.save(str(out))
    return out


def build_tiny_cross_encoder(out: Path, *, seed: int = 0) -> Path:
    """Write a tiny cross-encoder (BERT with a 1-logit sequence-classification head) to ``out``."""
    import torch
    from transformers import BertForSequenceClassification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fast = _tiny_tokenizer(out)
    BertForSequenceClassification(_tiny_config(len(fast), num_labels=1)).save_pretrained(out)
    return out
