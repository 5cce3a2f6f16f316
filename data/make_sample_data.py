"""Generate tuneline's shipped sample data (seeded, deterministic): `python data/make_sample_data.py`.

The task is a family of string and arithmetic transforms with exactly one correct answer, so a tiny
model can learn it in minutes and quality checks mean something. The files use the formats
LLaMA-Factory users have (alpaca, sharegpt, OpenAI messages, alpaca-style preference pairs) and
carry planted problems: exact and near duplicates, empty fields, malformed rows, and PII.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYSTEM = "You are a precise assistant. Answer with the result only."


FRENCH = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "gray": "gris",
          "cat": "chat", "dog": "chien", "cow": "vache", "pig": "cochon", "hen": "poule", "fox": "renard",
          "sun": "soleil", "moon": "lune", "star": "etoile", "rain": "pluie", "snow": "neige", "wind": "vent",
          "tree": "arbre", "leaf": "feuille", "lake": "lac", "road": "route", "ship": "navire", "key": "cle"}
OPPOSITE = {"hot": "cold", "cold": "hot", "big": "small", "small": "big", "up": "down", "down": "up",
            "fast": "slow", "slow": "fast", "old": "new", "new": "old", "dark": "light", "light": "dark",
            "wet": "dry", "dry": "wet", "open": "shut", "shut": "open", "high": "low", "low": "high"}
WORDS = sorted(FRENCH)


def make_words(rng: random.Random, n: int) -> list[str]:
    """A closed vocabulary: every word recurs often enough to be one token of the tiny model's tokenizer."""
    return list(WORDS)


def task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    """One (instruction, input, answer) triple with exactly one right answer. Each answer hangs on the input's last
    word (a lookup a 2-layer model learns in a minute on a CPU), so the demo shows training working: the base model
    scores 0, SFT well above half."""
    kind = rng.choice(["last", "capital", "french", "opposite"])
    phrase = rng.sample(words, rng.randint(2, 4))
    if kind == "last":
        return "Give the last word.", " ".join(phrase), phrase[-1]
    if kind == "capital":
        return "Write the last word in capitals.", " ".join(phrase), phrase[-1].upper()
    if kind == "french":
        return "Translate the last word into French.", " ".join(phrase), FRENCH[phrase[-1]]
    phrase = rng.sample(sorted(OPPOSITE), rng.randint(2, 4))
    return "Give the opposite of the last word.", " ".join(phrase), OPPOSITE[phrase[-1]]


def near_miss(answer: str, query: str) -> str:
    """The mistake a half-trained model makes: the right operation on the wrong word (the first, not the last), or
    the opposite's word itself."""
    words = query.split()
    first = words[0]
    if answer == OPPOSITE.get(words[-1]):
        return words[-1]
    if answer == FRENCH.get(words[-1]):
        return FRENCH[first]
    return first.upper() if answer.isupper() else first


def wrong_answer(rng: random.Random, answer: str, query: str) -> str:
    """A plausible but wrong answer, or a refusal: what preference data contrasts with the right one."""
    return rng.choice([
        near_miss(answer, query),
        "Sorry, I cannot help with that.",
        query,  # echoes the input unchanged
        "".join(rng.choice(LETTERS + " ") for _ in range(rng.randint(6, 14))).strip() or "x",  # noise
    ])  # (never a prefix of the right answer: DPO would push down the right answer's first tokens with it)


PII = [
    " Contact me at jane.doe{n}@example.com.",
    " My phone is +1 (555) 301-{n:04d}.",
    " Sent from 192.168.{n}.17 today.",
]


def alpaca_rows(rng, words, n):
    rows = []
    for i in range(n):
        instruction, query, answer = task(rng, words)
        row = {"instruction": instruction, "input": query, "output": answer}
        if i % 7 == 0:
            row["system"] = SYSTEM
        if i % 97 == 5:
            row["instruction"] += PII[i % 3].format(n=i % 250)
        rows.append(row)
    rows += [dict(r) for r in rng.sample(rows, 40)]  # exact duplicates
    for r in rng.sample(rows[:n], 20):  # whitespace variants: duplicates once normalized
        rows.append({**r, "instruction": "  " + r["instruction"].replace(" ", "  ") + " "})
    for r in rng.sample(rows[:n], 20):  # near duplicates: one small edit to a long prompt
        long = r["instruction"] + " Think about it carefully and reply with only the final answer, no explanation."
        rows.append({**r, "instruction": long})
        rows.append({**r, "instruction": long.replace("carefully", "very carefully")})
    rows += [  # malformed rows: each must end in quarantine with its reason
        {"instruction": "Reverse the word.", "input": "abc"},
        {"instruction": 42, "input": "", "output": "x"},
        {"instruction": "Uppercase the word.", "input": "abc", "output": ""},
        {"instruction": "", "input": "", "output": "orphan answer"},
        "not an object",
    ]
    rng.shuffle(rows)
    return rows + CLEANING_CASES  # appended after the shuffle: they leave the seeded rows as they were


CLEANING_CASES = [  # one row for each cleaning step that must catch something
    {"instruction": "Summarize the text. " + "buy cheap tickets now and save big today " * 12, "input": "",
     "output": "Buy tickets."},  # repetition
    {"instruction": "<p>Write the words in <b>capitals</b>.</p>", "input": "lamp desk", "output": "LAMP DESK"},  # HTML
    {"instruction": "Charge card 4111 1111 1111 1111 and reply ok.", "input": "", "output": "ok"},  # Luhn-valid card
    {"instruction": "Set api_key=sk-test1234567890abcdefXYZ and say done.", "input": "", "output": "done"},  # secret
]


def sharegpt_rows(rng, words, n):
    rows = []
    for i in range(n):
        conv = [{"from": "system", "value": SYSTEM}] if i % 5 == 0 else []
        for _ in range(rng.choice([1, 2])):
            instruction, query, answer = task(rng, words)
            conv += [{"from": "human", "value": f"{instruction} {query}"}, {"from": "gpt", "value": answer}]
        rows.append({"conversations": conv})
    rows += [dict(r) for r in rng.sample(rows, 15)]
    rows += [
        {"conversations": [{"from": "human", "value": "Reverse the word. abc"}]},  # no answer
        {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "hello"}]},  # bad tag
        {"conversations": "Reverse the word. abc"},  # not a list
        {"dialogue": []},  # wrong column
    ]
    rng.shuffle(rows)
    return rows


def openai_rows(rng, words, n):
    rows = []
    for i in range(n):
        instruction, query, answer = task(rng, words)
        msgs = [{"role": "user", "content": f"{instruction} {query}"}, {"role": "assistant", "content": answer}]
        if i % 4 == 0:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        if i % 61 == 3:
            msgs[-2]["content"] += PII[(i + 1) % 3].format(n=i % 250)
        rows.append(json.dumps({"messages": msgs}))
    rows += rng.sample(rows, 15)
    rows += ['{"messages": [{"role": "user", "content": "truncated line', '{"messages": []}']
    rng.shuffle(rows)
    return rows


def preference_rows(rng, words, n):
    rows = []
    for _ in range(n):
        instruction, query, answer = task(rng, words)
        rows.append({"instruction": instruction, "input": query, "chosen": answer,
                     "rejected": wrong_answer(rng, answer, query)})
    rows += [dict(r) for r in rng.sample(rows, 20)]
    rows += [{"instruction": "Add the two numbers.", "input": "101 + 1", "chosen": "102"},
             {"instruction": "Add the two numbers.", "input": "1 + 2", "chosen": "", "rejected": "4"}]
    rng.shuffle(rows)
    return rows


def kto_rows(rng, words, n):
    """Single answers labelled desirable (true) or not (false): KTO's data, as LLaMA-Factory's kto_tag column."""
    rows = []
    for _ in range(n):
        instruction, query, answer = task(rng, words)
        good = rng.random() < 0.5
        rows.append({"instruction": instruction, "input": query,
                     "output": answer if good else wrong_answer(rng, answer, query), "label": good})
    return rows


def pt_rows(rng, words, n):
    """Plain prose about the tasks, one document per row: continued pre-training's raw text ({"text": ...})."""
    rows = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            instruction, query, answer = task(rng, words)
            sentences.append(f"{instruction[:-1]}: given {query}, the answer is {answer}.")
        rows.append(json.dumps({"text": " ".join(sentences)}))
    return rows + [json.dumps({"text": ""}), json.dumps({"text": 17})]  # an empty and a non-text row: quarantined


def main(out: Path = HERE) -> None:
    rng = random.Random(SEED)
    words = make_words(rng, 400)
    (out / "alpaca_tasks.json").write_text(json.dumps(alpaca_rows(rng, words, 900), indent=1) + "\n")
    (out / "sharegpt_tasks.json").write_text(json.dumps(sharegpt_rows(rng, words, 400), indent=1) + "\n")
    (out / "openai_tasks.jsonl").write_text("\n".join(openai_rows(rng, words, 400)) + "\n")
    (out / "preference_tasks.json").write_text(json.dumps(preference_rows(rng, words, 700), indent=1) + "\n")
    kto_rng = random.Random(SEED + 1)  # its own stream: the files above stay byte-identical
    (out / "kto_tasks.json").write_text(json.dumps(kto_rows(kto_rng, words, 400), indent=1) + "\n")
    (out / "pt_corpus.jsonl").write_text("\n".join(pt_rows(random.Random(SEED + 2), words, 300)) + "\n")


if __name__ == "__main__":
    import sys
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
