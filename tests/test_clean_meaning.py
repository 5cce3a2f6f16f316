"""Cleaning that LLaMA-Factory users can leave on: LLaMA-Factory cleans nothing, so the default steps keep every row
it would train on but exact duplicates; repetition is judged on prose only; near_dedup never judges short rows; PII
is opt-in and, when on, gives a value one placeholder in every turn, tool call and tool result of its row, or
quarantines the row, and never touches code."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from assets.clean_data import every_source_within_loss_bound, quarantine_ratio_within_bound
from engine.store.artifacts import Artifact
from engine.data.clean import clean
from engine.data.ingest import content_hash, ingest
from engine.data.registry import resolve_sources
from engine.importers.llamafactory import import_configs
from engine.recipe import CleanSection, CleanStep, Recipe, llamafactory_clean_section, load_recipe
from engine.store.tables import QUARANTINE_COLUMNS, ROW_COLUMNS, write_rows

STOCK = Path("tests/fixtures/llamafactory/data")
SELECTED = ["alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo"]
TOOL_ROLES = ["user", "function_call", "observation", "assistant"]


def row(i, *turns, roles=None, kind="sft", chosen=None, rejected=None, label=None, tools=None):
    roles = roles or ["user", "assistant"] * (len(turns) // 2)
    messages = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=True)]
    return {"source": "s", "row_id": f"s:{i}", "content_hash": content_hash(messages, chosen, rejected, tools, label),
            "format": "sharegpt", "kind": kind, "messages": json.dumps(messages, ensure_ascii=False),
            "chosen": chosen, "rejected": rejected, "tools": tools, "label": label}


def steps(*specs):
    return CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in specs])


def texts(result):
    return {r["row_id"]: [m["content"] for m in json.loads(r["messages"])] for r in result.rows}


def reasons(result):
    return {q["row_id"]: q["reason"] for q in result.quarantine}


# --- defaults: what LLaMA-Factory would train on stays

@pytest.fixture(scope="module")
def stock_rows():
    rows, quarantined, _ = ingest(resolve_sources(STOCK, "dataset_info.json", SELECTED))
    assert quarantined == []
    return rows


def test_default_steps_lose_no_stock_row_but_exact_duplicates(stock_rows):
    result = clean(stock_rows, CleanSection(), SELECTED)
    assert result.report["quarantine_by_reason"] == {"exact_duplicate": 54}
    assert result.report["rows_out_by_source"] == {"alpaca_en_demo": 985, "identity": 91,
                                                   "glaive_toolcall_en_demo": 265, "dpo_en_demo": 295,
                                                   "kto_en_demo": 300}
    assert result.rewrites == []  # and nothing is rewritten: NFC and LF line ends already


def test_the_tiny_recipes_bounds_pass_on_the_stock_files(stock_rows, tmp_path):
    recipe = load_recipe("tiny")[0]
    result = clean(stock_rows, recipe.clean, SELECTED)
    report = result.report
    write_rows(result.rows, tmp_path / "rows.parquet", ROW_COLUMNS)
    write_rows(result.quarantine, tmp_path / "quarantine.parquet", QUARANTINE_COLUMNS)
    artifact = Artifact("clean_data", "f" * 16, tmp_path, report)
    assert quarantine_ratio_within_bound(artifact, recipe)[0]
    assert every_source_within_loss_bound(artifact, recipe)[:2] == (
        True, "every source within 50.0%; most lost: glaive_toolcall_en_demo 18.3%")
    assert report["quarantine_by_reason"] == {"exact_duplicate": 54, "near_duplicate": 20}  # long tool chats
    assert report["rows_out_by_source"]["identity"] == 91 and report["rows_out_by_source"]["dpo_en_demo"] == 295


def test_an_imported_recipe_cleans_with_the_llamafactory_defaults(tmp_path):
    config = tmp_path / "llama3_lora_dpo.yaml"
    config.write_text(yaml.safe_dump({"stage": "dpo", "dataset": "dpo_en_demo", "cutoff_len": 2048,
                                      "finetuning_type": "lora"}))
    text, _ = import_configs([config])
    imported = yaml.safe_load(text)
    assert imported["clean"] == llamafactory_clean_section()
    assert [s["step"] for s in imported["clean"]["steps"]] == ["normalize", "length", "repetition", "exact_dedup"]
    assert "max_chars" not in imported["clean"]["steps"][1]  # no cap: cutoff_len truncates, as LLaMA-Factory
    assert Recipe.model_validate(imported).clean == CleanSection()


def test_a_long_row_is_kept_unless_a_maximum_is_set():
    long = row(0, "Count to 5000 in words.", " ".join(f"number{i}" for i in range(5000)))
    assert reasons(clean([long], CleanSection(), ["s"])) == {}
    capped = clean([long], steps({"step": "length", "max_chars": 4000}), ["s"])
    assert reasons(capped) == {"s:0": "too_long"}


def test_pii_and_near_dedup_are_opt_in():
    names = [s.step for s in CleanSection().steps]
    assert "pii" not in names and "near_dedup" not in names
    mail = row(0, "Write to jane@example.com please.", "Sure.")
    assert texts(clean([mail], CleanSection(), ["s"]))["s:0"][0] == "Write to jane@example.com please."


# --- repetition: prose only

SONG = """(Verse 1)
The river runs beneath the silver moon tonight
And every star above is burning clear and bright

(Chorus)
Sing it loud and let the mountains hear the sound
Sing it loud until the echoes come around
We will carry every note across the town

(Verse 2)
The morning finds us walking down the dusty road
With every step we lighten up the heavy load

(Chorus)
Sing it loud and let the mountains hear the sound
Sing it loud until the echoes come around
We will carry every note across the town

(Chorus)
Sing it loud and let the mountains hear the sound
Sing it loud until the echoes come around
We will carry every note across the town"""

PYTHON = """Here is a function that tells whether a year is a leap year:

def is_leap_year(year):
    if year % 4 == 0:
        if year % 100 == 0:
            if year % 400 == 0:
                return True
            else:
                return False
        else:
            return True
    else:
        return False

```python
print(is_leap_year(2000))  # True
print(is_leap_year(1900))  # False
print(is_leap_year(2024))  # True
print(is_leap_year(2023))  # False
```

A year divisible by 4 is a leap year unless it is divisible by 100 and not by 400, which is why 1900 is not one
while 2000 is, and the function checks these three conditions in that order from the most general to the rarest."""

ARITHMETIC = """To add two fractions, they must have a common denominator. The smallest common denominator for 3/4
and 2/3 is 12.

To convert 3/4 to a fraction with 12 as its denominator, multiply both its numerator and denominator by 3:

(3/4) * (3/3) = 9/12

To convert 2/3 to a fraction with 12 as its denominator, multiply both its numerator and denominator by 4:

(2/3) * (4/4) = 8/12

Now that we have equivalent fractions, we can add them:

3/4 + 2/3 = 9/12 + 8/12 = (9 + 8) / 12 = 17/12

In conclusion, 3/4 + 2/3 = 17/12, which is 1 5/12 as a mixed number."""

LIST = "There are several comparison operators, each with its own meaning:\n\n" + "\n".join(
    f"* `{op}` ({name}) - checks if the value of the left operand is {name} the value of the right operand."
    for op, name in [("<", "less than"), (">", "greater than"), ("<=", "less than or equal to"),
                     (">=", "greater than or equal to"), ("==", "equal to"), ("!=", "not equal to")])

QUOTE = ("Passage: The river Severn is the longest river in Great Britain, at about 220 miles, rising in the "
         "Cambrian Mountains in Wales and flowing through Shrewsbury, Worcester and Gloucester to the Bristol Channel."
         "\nQuestion: what is the longest river in Great Britain?")
QUOTED = ("The relevant sentence in the passage is: The river Severn is the longest river in Great Britain, at about "
          "220 miles, rising in the Cambrian Mountains in Wales and flowing through Shrewsbury, Worcester and "
          "Gloucester to the Bristol Channel. So the answer is the river Severn.")


@pytest.mark.parametrize("prompt, answer", [
    ("Write the lyrics of a short song about a river.", SONG),
    ("Write a function to find out whether a year is a leap year.", PYTHON),
    ("Add the following fractions: 3/4 + 2/3", ARITHMETIC),
    ("Explain the comparison operators in programming.", LIST),
    (QUOTE, QUOTED),
], ids=["lyrics", "python", "arithmetic", "list", "quote"])
def test_repetition_keeps_lyrics_code_arithmetic_lists_and_quotes(prompt, answer):
    result = clean([row(0, prompt, answer)], CleanSection(), ["s"])
    assert reasons(result) == {} and texts(result)["s:0"] == [prompt, answer]


def test_repetition_still_drops_a_loop_and_a_line_recurring_past_the_bound():
    loop = "I am sorry, but I cannot help with that request right now. " * 8
    chorus = "\n".join(["We will carry every note across the town"] * 12)
    result = clean([row(0, "Help me.", loop), row(1, "Sing.", chorus)], CleanSection(), ["s"])
    assert reasons(result) == {"s:0": "repetitive", "s:1": "repetitive"}
    details = {q["row_id"]: q["detail"] for q in result.quarantine}
    assert details["s:0"].startswith("messages[1]: 88% of prose characters repeat an earlier 5-gram > 50%")
    assert details["s:1"].startswith("messages[1]: a line recurs 12 times > max_line_repeats 8")
    bounded = clean([row(1, "Sing.", chorus)], steps({"step": "repetition", "max_line_repeats": 12}), ["s"])
    assert reasons(bounded) == {}  # the recipe sets the bound


def test_a_rejected_or_undesirable_answer_is_not_judged():
    loop = "I am sorry, but I cannot help with that request right now. " * 8
    pair = row(0, "Add 2 and 3.", roles=["user"], kind="preference", chosen="5", rejected=loop)
    bad = row(1, "Add 2 and 3.", loop, kind="kto", label="false")
    good = row(2, "Add 2 and 4.", loop, kind="kto", label="true")
    assert reasons(clean([pair, bad, good], CleanSection(), ["s"])) == {"s:2": "repetitive"}


# --- near_dedup: short rows are never near-duplicates

IDENTITY = "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"


@pytest.mark.parametrize("section", [steps({"step": "near_dedup"}), load_recipe("tiny")[0].clean],
                         ids=["default", "tiny"])
def test_near_dedup_keeps_distinct_short_questions(section):
    rows = [row(0, "hi", IDENTITY), row(1, "hello", IDENTITY),
            row(2, "谁训练了你？", "{{author}} 训练了我，我的目的是回答用户问题并提供必要的支持。"),
            row(3, "谁制作了你？", "{{author}} 制作了我，我的目的是回答用户问题并提供必要的支持。")]
    assert reasons(clean(rows, section, ["s"])) == {}


def test_near_dedup_still_drops_long_near_duplicates():
    story = ("Summarize the following report in two sentences: the quarterly numbers show revenue up eleven percent, "
             "costs flat, and the new plant in the north running at full capacity since the spring, while the "
             "southern division missed its target for the third quarter in a row because of supply delays.")
    rows = [row(0, story, "Revenue rose, costs held."), row(1, story + " Thanks!", "Revenue rose, costs held.")]
    assert reasons(clean(rows, steps({"step": "near_dedup"}), ["s"])) == {"s:1": "near_duplicate"}
    assert reasons(clean(rows, steps({"step": "near_dedup", "min_chars": 1000}), ["s"])) == {}


# --- PII: one placeholder per value in every text of the row, code never touched

PII = steps({"step": "pii"})


def test_an_email_gets_one_placeholder_in_the_user_turn_and_the_tool_call():
    call = ('{"name": "send_email", "arguments": {"recipient": "boss@company.com", "subject": "Project Update", '
            '"message": "Done."}}')
    tools = json.dumps([{"name": "send_email", "description": "Send an email",
                         "parameters": {"type": "object", "properties": {"recipient": {"type": "string"}}}}])
    chat = row(0, "The recipient's email is boss@company.com. The subject is \"Project Update\".", call,
               '{"status": "success"}', "The email has been sent to boss@company.com.", roles=TOOL_ROLES, tools=tools)
    result = clean([chat], PII, ["s"])
    user, sent, observation, answer = texts(result)["s:0"]
    assert user == "The recipient's email is <EMAIL>. The subject is \"Project Update\"."
    assert json.loads(sent) == {"name": "send_email", "arguments": {"recipient": "<EMAIL>", "subject": "Project Update",
                                                                    "message": "Done."}}
    assert sent == call.replace("boss@company.com", "<EMAIL>")  # in place: spacing and key order as written
    assert observation == '{"status": "success"}' and answer == "The email has been sent to <EMAIL>."
    assert result.rows[0]["tools"] == tools
    assert [r["field"] for r in result.rewrites] == ["messages[0].content", "messages[1].content",
                                                      "messages[3].content"]
    assert result.report["pii_scrubbed"] == {"email": 3}


def test_a_password_a_tool_returned_gets_the_same_placeholder_in_the_answer():
    chat = row(0, "I would like it to be 12 characters long.",
               '{"name": "generate_password", "arguments": {"length": 12}}', '{"password": "aB3#fG7!kL9@"}', "Here is your new password: aB3#fG7!kL9@. Please save it.",
               roles=TOOL_ROLES)
    result = clean([chat], PII, ["s"])
    _, call, observation, answer = texts(result)["s:0"]
    assert observation == '{"password": "<SECRET>"}'
    assert answer == "Here is your new password: <SECRET>. Please save it."  # what the tool said, as the tool said it
    assert call == '{"name": "generate_password", "arguments": {"length": 12}}'


def test_a_value_in_a_preference_pair_gets_one_placeholder_in_prompt_and_answers():
    pair = row(0, "My card is 4539 1488 0343 6467. Read it back.", roles=["user"], kind="preference",
               chosen="Your card is 4539 1488 0343 6467.", rejected="I cannot read 4539 1488 0343 6467.")
    kept = clean([pair], PII, ["s"]).rows[0]
    assert (json.loads(kept["messages"])[0]["content"], kept["chosen"], kept["rejected"]) == (
        "My card is <CREDIT_CARD>. Read it back.", "Your card is <CREDIT_CARD>.", "I cannot read <CREDIT_CARD>.")


UNFENCED = """Here is a script that sends the report by mail:

import smtplib
SMTP_SERVER = 'smtp.example.com'
EMAIL_ADDRESS = 'your_email@example.com'
EMAIL_PASSWORD = 'your_email_pa55word'

def send(body):
    with smtplib.SMTP(SMTP_SERVER, 587) as server:
        server.login(EMAIL_ADDRESS, EMAIL_PASSWORD)

Replace the address and the password with your own before running it."""


@pytest.mark.parametrize("answer", [
    UNFENCED,
    "Use `git ftp -u anonymous ftp://username:password@ftp.example.com/Repository` or the same URL in prose: "
    "ftp://username:password@ftp.example.com/Repository",
], ids=["unfenced-python", "ftp-url"])
def test_pii_leaves_code_and_stand_ins_alone(answer):
    result = clean([row(0, "How do I do it?", answer)], PII, ["s"])
    assert texts(result)["s:0"][1] == answer and result.rewrites == [] and result.quarantine == []


@pytest.mark.parametrize("chat, where", [
    (row(0, "Send it to jane@corp.example.com.", "```python\nsend('jane@corp.example.com')\n```"),
     "messages[1].content: the email found in messages[0].content also stands in code here"),
    (row(1, "Mail jane@corp.example.com.", '{"name": "mail", "arguments": {"to": "jane\\u0040corp.example.com"}}',
         '{"ok": true}', "Sent.", roles=TOOL_ROLES),
     "messages[1].content: the email found in messages[0].content cannot be replaced in this JSON in place"),
    (row(2, "Why does this fail?", "OPENAI_API_KEY = 'sk-proj-abcdefghijklmnopqrstuvwxyz12'\nclient = OpenAI()"),
     "messages[1].content: the secret stands in code here"),
], ids=["email-in-fenced-code", "escaped-in-tool-json", "api-key-in-code"])
def test_a_value_that_cannot_be_replaced_everywhere_quarantines_its_row(chat, where):
    result = clean([chat], PII, ["s"])
    assert result.rows == [] and result.rewrites == []
    (quarantined,) = result.quarantine
    assert quarantined["reason"] == "pii_inconsistent" and quarantined["stage"] == "clean:pii"
    assert quarantined["detail"].startswith(where)
    assert "jane" not in quarantined["detail"] and "sk-" not in quarantined["detail"]  # the detail never leaks it
