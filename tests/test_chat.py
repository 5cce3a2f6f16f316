import io

import pytest

from engine.serve.chat import chat_loop, load_chat_model, reply
from engine.errors import TunelineError
from engine.models.sample import decoded_answer
from pipelines.cli import main


def test_one_shot_prompt_gives_the_templated_greedy_answer(tiny_model_dir, capsys):
    prompt = "Add the two numbers.\n120 + 345"
    assert main(["chat", str(tiny_model_dir), "--prompt", prompt, "--system", "Be brief.", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_chat_model(tiny_model_dir)
    expected = reply(model, tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
                     max_new_tokens=6)
    assert printed == expected + "\n"
    said = []
    assert chat_loop(model, tokenizer, [prompt], said.append, system="Be brief.", max_new_tokens=6) == 1
    assert said == [f"Assistant: {expected}"]


class Recording:
    """The real chat model, keeping the prompt token ids of every generate() call: what the model receives."""

    def __init__(self, model):
        self.model, self.prompts = model, []

    @property
    def device(self):
        return self.model.device

    def generate(self, input_ids, **kwargs):
        self.prompts.append(input_ids[0].tolist())
        return self.model.generate(input_ids=input_ids, **kwargs)


def test_interactive_chat_keeps_history_clears_and_exits(tiny_model_dir, monkeypatch, capsys):
    import engine.serve.chat
    recorded = []

    def load_recording(path, dtype=None):
        model, tokenizer = load_chat_model(path, dtype)
        recorded.append(Recording(model))
        return recorded[-1], tokenizer
    monkeypatch.setattr(engine.serve.chat, "load_chat_model", load_recording)  # what `tuneline chat` loads
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhow are you\nclear\nagain\nexit\nnever read\n"))
    assert main(["chat", str(tiny_model_dir), "--max-new-tokens", "3", "--system", "Be brief."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Assistant", "Assistant", "(history cleared)", "Assistant"]
    first = lines[0].removeprefix("Assistant: ")
    (model,) = recorded
    _, tokenizer = load_chat_model(tiny_model_dir)
    system = {"role": "system", "content": "Be brief."}

    def received(*turns):
        return tokenizer.apply_chat_template([system, *turns], add_generation_prompt=True)["input_ids"]
    # the second turn carries the first exchange; after `clear` only the system prompt and the new turn; `exit`
    # ends before the last line is read
    assert model.prompts == [
        received({"role": "user", "content": "hello"}),
        received({"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                 {"role": "user", "content": "how are you"}),
        received({"role": "user", "content": "again"})]
    assert "hello" in tokenizer.decode(model.prompts[1]) and "hello" not in tokenizer.decode(model.prompts[2])


def test_chat_refuses_an_adapter_or_a_non_model(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(TunelineError, match="is a LoRA adapter"):
        load_chat_model(tmp_path)
    assert main(["chat", "0123abcd", "--artifact-root", str(tmp_path)]) == 2
    assert "is neither a model directory nor the fingerprint" in capsys.readouterr().err


class Answers:
    """A stand-in model whose answer is fixed token ids, to see what reply() makes of them."""
    device = "cpu"

    def __init__(self, ids: list[int]):
        self.ids = ids

    def generate(self, input_ids, **kwargs):
        import torch
        return torch.cat([input_ids, torch.tensor([self.ids])], dim=1)


def test_an_answer_cut_inside_a_character_ends_at_the_last_whole_one(tiny_model_dir):
    _, tokenizer = load_chat_model(tiny_model_dir)
    ok, face = (tokenizer.encode(text, add_special_tokens=False) for text in ("ok ", "\U0001F600"))
    assert len(face) > 1  # the emoji's 4 bytes are several byte-level tokens
    question = [{"role": "user", "content": "hi"}]
    cut = ok + face[:-1]
    assert tokenizer.decode(cut).endswith("\ufffd")  # what a plain decode shows for the cut bytes
    assert reply(Answers(cut), tokenizer, question, max_new_tokens=len(cut)) == "ok"
    whole = ok + face
    assert reply(Answers(whole), tokenizer, question, max_new_tokens=len(whole)) == "ok \U0001F600"
    # evaluation reads generated answers the same way: a cut one ends at its last whole character, a finished
    # one (its end token, then the batch's padding) is kept as decoded
    assert decoded_answer(tokenizer, cut) == "ok"
    finished = cut + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert decoded_answer(tokenizer, finished) == tokenizer.decode(cut, skip_special_tokens=True).strip()
