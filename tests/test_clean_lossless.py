"""Cleaning never changes meaning silently: defaults are lossless on code, markdown, tool calls, numbers and CJK,
each opt-in step changes only what it promises, and every rewritten text is recorded."""

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from engine.data.clean import CleanResult, clean, strip_html
from engine.data.ingest import content_hash
from engine.recipe import CleanSection, CleanStep, PiiStep, load_recipe
from engine.store.tables import REWRITE_COLUMNS

CODE = "```python\ndef add(a, b):\n\tif a:\n        return a + b  \n\n    return b\n```"
MARKDOWN = "# Title\n\nLine one  \nline two\n\n- item 1\n  - nested item\n\n| a | b |\n|---|---|\n| 1 | 2 |"
CJK = "你好，世界！这是「测试」。１２３ＡＢＣ"
TOOL_CALL = '{"name": "charge", "arguments": {"card": "4111 1111 1111 1111", "phone": "+1 415 555 2671"}}'
MATH = "Compute 4111 1111 1111 1111 + 1 and 3.14159265358 * 2 = 6.28318530716; x = 4155552671."
LOSSLESS = [CODE, MARKDOWN, CJK, MATH, "Tabs\tand  double  spaces\n\n\nthree newlines", "List<String> <noinput> ok"]


def sft(i, *turns, roles=None, source="s"):
    roles = roles or ["user", "assistant"] * (len(turns) // 2)
    messages = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=True)]
    return {"source": source, "row_id": f"{source}:{i}", "content_hash": content_hash(messages, None, None),
            "format": "sharegpt", "kind": "sft", "messages": json.dumps(messages, ensure_ascii=False),
            "chosen": None, "rejected": None, "tools": None, "label": None}


def steps(*specs):
    return CleanSection(steps=[TypeAdapter(CleanStep).validate_python(s) for s in specs])


def texts(result):
    return {r["row_id"]: [m["content"] for m in json.loads(r["messages"])] for r in result.rows}


def test_default_steps_leave_code_markdown_cjk_math_and_tool_calls_byte_identical():
    rows = [sft(i, text, "ok " + str(i)) for i, text in enumerate(LOSSLESS)]
    rows.append(sft(99, "Charge my card.", TOOL_CALL, "observation text", "Done.",
                    roles=["user", "function_call", "observation", "assistant"]))
    result = clean(rows, CleanSection(), ["s"])
    kept = texts(result)
    assert [kept[f"s:{i}"][0] for i in range(len(LOSSLESS))] == LOSSLESS
    assert kept["s:99"][1] == TOOL_CALL
    assert result.rewrites == [] and all(s["modified"] == 0 for s in result.report["steps"])


def test_default_recipe_normalizes_nfc_without_strip_html():
    names = [s.step for s in CleanSection().steps]
    assert "strip_html" not in names and CleanSection().steps[0].form == "NFC"
    tiny = load_recipe("tiny")[0].clean
    assert "strip_html" not in [s.step for s in tiny.steps] and tiny.steps[0].form == "NFC"


def test_normalize_unifies_line_endings_and_records_the_rewrite():
    decomposed = "cafe\u0301"  # e + combining acute: NFC composes it
    rows = [sft(0, "line one\r\nline two\rline three", decomposed)]
    result = clean(rows, steps({"step": "normalize"}), ["s"])
    assert texts(result)["s:0"] == ["line one\nline two\nline three", "caf\u00e9"]
    assert [(r["row_id"], r["step"], r["field"]) for r in result.rewrites] == [
        ("s:0", "normalize", "messages[0].content"), ("s:0", "normalize", "messages[1].content")]
    assert result.rewrites[0]["before"] == "line one\r\nline two\rline three"
    assert set(result.rewrites[0]) == set(REWRITE_COLUMNS)
    assert result.report["steps"][0]["modified"] == 1 and result.report["rewritten_by_step"] == {"normalize": 2}


def test_nfkc_is_opt_in_and_folds_full_width_punctuation():
    result = clean([sft(0, CJK, "ok")], steps({"step": "normalize", "form": "NFKC"}), ["s"])
    assert texts(result)["s:0"][0] == "你好,世界!这是「测试」。123ABC"
    rewrite = result.rewrites[0]
    assert rewrite["field"] == "messages[0].content" and rewrite["before"].startswith("你好，")


def test_trailing_spaces_are_stripped_only_when_asked():
    spec = {"step": "normalize", "strip_trailing_spaces": True}
    result = clean([sft(0, "a  \n    b\t\nc", "ok")], steps(spec), ["s"])
    assert texts(result)["s:0"][0] == "a\n    b\nc"


def test_excerpts_are_short_and_around_the_first_difference():
    long = "x" * 300 + "\r\n" + "y" * 300
    result = clean([sft(0, long, "ok")], steps({"step": "normalize"}), ["s"])
    before, after = result.rewrites[0]["before"], result.rewrites[0]["after"]
    assert len(before) <= 82 and "\r\n" in before and "\r" not in after and "\n" in after


@pytest.mark.parametrize("text", [
    "Use <noinput> when there is no input.", "A List<String> or Map<K, V> in Java.",
    "Render <Button onClick={go}>Go</Button> in React.", "Replace <placeholder> with your name.",
    "A lone <b> tag is not markup.", "Inline `<b>bold</b>` code stays.",
    "```html\n<p>Hello <b>world</b></p>\n```", "if a <b and c> d: pass", "Vec<u8> and Option<T>",
])
def test_strip_html_keeps_what_is_not_well_formed_html(text):
    assert strip_html(text) == text


def test_strip_html_removes_well_formed_elements_when_chosen():
    assert strip_html("<p>Write the words in <b>capitals</b>.</p>") == "Write the words in capitals."
    assert strip_html("one<br>two<hr/>three") == "one\ntwo three"
    assert strip_html('<a href="https://x.org">link</a> &amp; more') == "link & more"
    assert strip_html("<div>a</div><div>b</div>") == "a b"
    assert strip_html("keep<script>alert(1)</script> this") == "keep this"
    assert strip_html("See `<b>x</b>` and <i>this</i>") == "See `<b>x</b>` and this"
    result = clean([sft(0, "<p>Hi <b>there</b></p>", "ok")], steps({"step": "strip_html"}), ["s"])
    assert texts(result)["s:0"][0] == "Hi there" and result.rewrites[0]["step"] == "strip_html"


PII_KEEPS = [
    "Compute 4111 1111 1111 1111 + 1 now.", "pi is 3.14159265358 roughly", "order id 4539148803436467 shipped",
    "Set your new password in the settings.", "Type `mail bob@corp.example.com` in code.",
    "```\ncall +1 415 555 2671\nip 10.0.0.1\n```", "Upgrade to v1.2.3.4 today", "2024-01-15 at 10:30",
    "1234 + 5678 = 6912", "x = 4155552671", "the token is valid", "The secret: always write tests first.",
    "i = -223905 / 3245", "y = +4155552671",  # signed operands (LLaMA-Factory's dpo_en_demo.json has the first)
    "clone https://git@github.com/org/repo.git now",  # a URL's login, not an email address
    "git ftp -u anonymous ftp://username:password@ftp.example.com/Repository",  # a stand-in (kto_en_demo.json)
    "EMAIL_ADDRESS = 'your_email@example.com'\nEMAIL_PASSWORD = 'your_email_pa55'\n",  # unfenced Python (dpo_en_demo)
    "password = 'correcthorse1'", "api_key=abcdef123456",  # a line of code or configuration is code
    "Set DB_PASSWORD=$DB_PASS and token: ${TOKEN} first.",  # template variables, not secrets
]


@pytest.mark.parametrize("text", PII_KEEPS)
def test_pii_leaves_numbers_code_and_words_alone(text):
    result = clean([sft(0, text, "ok")], steps({"step": "pii"}), ["s"])
    assert texts(result)["s:0"][0] == text and result.rewrites == []


@pytest.mark.parametrize("text, expected", [
    ("card 4539 1488 0343 6467 please", "card <CREDIT_CARD> please"),
    ("pay 4539-1488-0343-6467", "pay <CREDIT_CARD>"),
    ("visa: 4539148803436467", "visa: <CREDIT_CARD>"),
    ("call (415) 555-2671 today", "call <PHONE> today"),
    ("ring +49 30 901820", "ring <PHONE>"),
    ("password: hunter22x", "password: <SECRET>"),
    ("your new password: aB3#fG7!kL9@. Save it.", "your new password: <SECRET>. Save it."),  # the period stays
    ("the password = 'c0rrect-h0rse' for now", "the password = '<SECRET>' for now"),
    ("send api_key=abcdef123456 in the header", "send api_key=<SECRET> in the header"),
    ("write to jane@example.com", "write to <EMAIL>"),
    ("get ftp://user:hunter22@files.example.com/a.txt", "get ftp://user:<SECRET>@files.example.com/a.txt"),
    ("server 192.168.1.20 is down", "server <IP> is down"),
    ("ssh admin@10.0.0.7, then ping 10.0.0.7-10.0.0.9", "ssh admin@<IP>, then ping <IP>-<IP>"),
])
def test_pii_scrubs_real_personal_data(text, expected):
    result = clean([sft(0, text, "ok")], steps({"step": "pii"}), ["s"])
    assert texts(result)["s:0"][0] == expected
    assert result.rewrites[0]["field"] == "messages[0].content" and result.rewrites[0]["step"] == "pii"


def test_pii_replaces_a_value_only_in_the_tool_call_there_and_keeps_the_json_valid():
    row = sft(0, "Charge it.", TOOL_CALL, '{"ok": true}', "Charged.", roles=["user", "function_call", "observation",
                                                                             "assistant"])
    result = clean([row], steps({"step": "pii"}), ["s"])
    call = texts(result)["s:0"][1]
    assert json.loads(call) == {"name": "charge", "arguments": {"card": "<CREDIT_CARD>", "phone": "<PHONE>"}}
    assert call == TOOL_CALL.replace("4111 1111 1111 1111", "<CREDIT_CARD>").replace("+1 415 555 2671", "<PHONE>")
    assert [r["field"] for r in result.rewrites] == ["messages[1].content"]


def test_phone_region_is_a_recipe_key():
    local = "ring 030 901820 now"
    assert texts(clean([sft(0, local, "ok")], steps({"step": "pii"}), ["s"]))["s:0"][0] == local  # not a US number
    de = clean([sft(0, local, "ok")], steps({"step": "pii", "phone_region": "DE"}), ["s"])
    assert texts(de)["s:0"][0] == "ring <PHONE> now"
    with pytest.raises(ValidationError, match="phone_region 'XX'"):
        PiiStep(step="pii", phone_region="XX")


def test_repetition_judges_each_message_on_its_own():
    text = " ".join(f"word{i}" for i in range(60))  # no repeats within itself
    spam = "buy cheap tickets now " * 20
    rows = [sft(0, text, text), sft(1, "Summarize.", spam)]
    result = clean(rows, steps({"step": "repetition"}), ["s"])
    assert [r["row_id"] for r in result.rows] == ["s:0"]  # the concatenation would repeat; each message does not
    assert result.quarantine[0]["reason"] == "repetitive" and result.quarantine[0]["detail"].startswith("messages[1]:")


def test_clean_result_shape():
    result = clean([sft(0, "a\r\nb", "ok")], CleanSection(), ["s"])
    assert isinstance(result, CleanResult)
    rows, quarantine, clusters, report = result  # the four-tuple unpacking still works
    assert rows is result.rows and report["rewritten"] == len(result.rewrites) == 1


def test_normalize_and_strip_html_never_touch_a_tool_call():
    call = '{"name": "render", "arguments": {"html": "<b>bold</b>", "text": "cafe\u0301\\r\\n", "to": "a@b.org"}}'
    row = sft(0, "Render it.", call, "done", "Rendered.", roles=["user", "function_call", "observation", "assistant"])
    result = clean([row], steps({"step": "normalize", "form": "NFKC"}, {"step": "strip_html"}), ["s"])
    assert texts(result)["s:0"][1] == call and result.rewrites == []
