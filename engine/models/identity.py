"""A model's tokenizer by content: the digest of its tokenizer files (what clean_data's fingerprint reads when its
length step counts tokens)."""

from __future__ import annotations

from engine.models.load import check_local_model
from engine.store.content import ContentHasher

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def tokenizer_identity(model_path: str, hasher: ContentHasher) -> dict:
    """A local checkpoint's tokenizer, by the content of its tokenizer files (a GGUF file's: the whole file)."""
    root = check_local_model(model_path)
    if root.is_file():
        return {"sha256": hasher.file(root)}
    return {"sha256": hasher.tree(root, [root / name for name in TOKENIZER_FILES if (root / name).is_file()])}
