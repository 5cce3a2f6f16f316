"""The tokenizer as formatted_data's spawned workers receive it: what the batch paths read (the Rust backend, the
chat templates, the special tokens) unpickles without transformers' tokenizer classes, whose import pulls in torch (a
second of every worker's start-up); anything else is answered by the whole tokenizer, unpickled on first use."""

from __future__ import annotations

import pickle
from functools import cached_property
from typing import Any


def fast_backend(tokenizer) -> Any:
    """A fast tokenizer's Rust backend (tokenizers.Tokenizer, with the batch API the data stages call), else None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return backend if hasattr(backend, "encode_batch_fast") else None


def shippable(tokenizer) -> Any:
    """`tokenizer` as a worker should receive it: a WorkerTokenizer for a fast tokenizer, any other as it is."""
    return WorkerTokenizer(tokenizer) if fast_backend(tokenizer) is not None else tokenizer


class WorkerTokenizer:
    """A fast tokenizer's backend (tokenizers.Tokenizer: pickled as its JSON), split_special_tokens, the special
    tokens map and the chat template get_chat_template picks with and without tools (or the error it raises), all
    read in the parent; every other attribute and call goes to the whole tokenizer."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer._tokenizer
        self.split_special_tokens = tokenizer.split_special_tokens
        self.special_tokens_map = dict(tokenizer.special_tokens_map)
        self.templates: dict[bool, str | ValueError] = {}
        for with_tools in (False, True):  # transformers picks by `tools is not None` alone (no name given)
            try:
                self.templates[with_tools] = tokenizer.get_chat_template(None, [] if with_tools else None)
            except ValueError as error:
                self.templates[with_tools] = error
        self.pickled = pickle.dumps(tokenizer)

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        if chat_template is not None:
            return self.whole.get_chat_template(chat_template, tools)
        found = self.templates[tools is not None]
        if isinstance(found, ValueError):
            raise ValueError(*found.args)
        return found

    @cached_property
    def whole(self):
        try:
            return pickle.loads(self.pickled)
        except AttributeError as error:  # raised from a property, it would read as "no attribute 'whole'"
            raise RuntimeError(f"the worker could not unpickle its tokenizer: {error}") from error

    def __getstate__(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "whole"}  # shipped again: still without transformers

    def __getattr__(self, name: str) -> Any:
        if name in ("whole", "pickled", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)  # unpickling looks attributes up before the state is set
        return getattr(self.whole, name)

    def __call__(self, *args, **kwargs):
        return self.whole(*args, **kwargs)
