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


def make_words(rng: random.Random, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7))))
    return sorted(words)


def task(rng: random.Random, words: list[str]) -> tuple[str, str, str]:
    """One (instruction, input, answer) triple; the variable part dominates, so distinct rows stay distinct."""
    kind = rng.choice(["reverse", "upper", "add", "sort", "initials"])
    phrase = rng.sample(words, rng.randint(3, 5))
    if kind == "reverse":
        return "Reverse the order of the words.", " ".join(phrase), " ".join(reversed(phrase))
    if kind == "upper":
        return "Write the words in capitals.", " ".join(phrase), " ".join(phrase).upper()
    if kind == "initials":
        return "Give the first letter of each word.", " ".join(phrase), "".join(w[0] for w in phrase)
    if kind == "sort":
        numbers = rng.sample(range(1, 1000), rng.randint(3, 5))
        return "Sort the numbers in ascending order.", ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers)))
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return "Add the two numbers.", f"{a} + {b}", str(a + b)


def wrong_answer(rng: random.Random, answer: str, query: str) -> str:
    """A plausible but wrong answer, or a refusal: what preference data contrasts with the right one."""
    return rng.choice([
        "Sorry, I cannot help with that.",
        "I am not sure, maybe ask someone else.",
        query,  # echoes the input unchanged
        answer[: max(1, len(answer) // 2)],  # stops halfway
    ])


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


def main() -> None:
    rng = random.Random(SEED)
    words = make_words(rng, 400)
    (HERE / "alpaca_tasks.json").write_text(json.dumps(alpaca_rows(rng, words, 1200), indent=1) + "\n")
    (HERE / "sharegpt_tasks.json").write_text(json.dumps(sharegpt_rows(rng, words, 400), indent=1) + "\n")
    (HERE / "openai_tasks.jsonl").write_text("\n".join(openai_rows(rng, words, 400)) + "\n")
    (HERE / "preference_tasks.json").write_text(json.dumps(preference_rows(rng, words, 700), indent=1) + "\n")
    kto_rng = random.Random(SEED + 1)  # its own stream: the files above stay byte-identical
    (HERE / "kto_tasks.json").write_text(json.dumps(kto_rows(kto_rng, words, 400), indent=1) + "\n")
    (HERE / "pt_corpus.jsonl").write_text("\n".join(pt_rows(random.Random(SEED + 2), words, 300)) + "\n")


if __name__ == "__main__":
    main()
