"""The generated key reference (docs/recipe-keys.md) and JSON Schema (docs/recipe.schema.json) match the schema."""

import json

import engine.recipe.reference as reference
from engine.recipe import Recipe, Section
from engine.recipe.reference import KEYS_FILE, SCHEMA_FILE, key_reference, main, outputs, sections


def test_the_key_reference_and_the_schema_are_up_to_date():
    for path, text in outputs().items():
        assert path.is_file() and path.read_text() == text, \
            f"{path} is out of date: run `python -m engine.recipe.reference` and commit it"


def test_every_key_has_its_row_under_its_section():
    text = key_reference()
    for dotted, section, _ in sections(Recipe):
        heading = f"## `{dotted}`" if dotted else "## Top level"
        table = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        for name, field in section.model_fields.items():
            if dotted or not isinstance(field.get_default(call_default_factory=True), Section):  # own table
                assert f"| `{name}` |" in table, f"{dotted}.{name}"
    assert "## `clean.steps[step: near_dedup]`" in text and "## `launcher.kubernetes`" in text


def test_a_row_gives_type_bounds_default_and_description():
    text = key_reference()
    assert ("| `lora_rank` | integer, >= 1 | `16` | LLaMA-Factory's key: the rank of each LoRA update. "
            "LLaMA-Factory's default: 8 |").replace(">", "&gt;") in text
    assert "| `eos_source` | one of: tokenizer, generation_config or null | `null` |" in text
    assert "<EMAIL>" not in text and "&lt;EMAIL&gt;" in text  # a placeholder is not read as an HTML tag


def test_the_json_schema_is_pydantics_with_every_description():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False  # an unknown key is flagged in the editor, as at load
    sft = schema["$defs"]["SftSection"]["properties"]
    assert sft["lora_rank"] == {"default": 16, "description": Recipe.model_fields["sft"].annotation.model_fields[
        "lora_rank"].description, "minimum": 1, "title": "Lora Rank", "type": "integer"}
    for name, definition in schema["$defs"].items():
        for key, prop in definition.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{key}"


def test_check_names_a_stale_file_and_writing_fixes_it(tmp_path, monkeypatch, capsys):
    assert main(["--check"]) == 0
    keys, schema = tmp_path / "recipe-keys.md", tmp_path / "recipe.schema.json"
    monkeypatch.setattr(reference, "DOCS", tmp_path)
    monkeypatch.setattr(reference, "KEYS_FILE", keys)
    monkeypatch.setattr(reference, "SCHEMA_FILE", schema)
    keys.write_text("# stale\n")
    assert main(["--check"]) == 1
    assert f"{keys} is out of date" in capsys.readouterr().err and not schema.exists()
    assert main([]) == 0 and main(["--check"]) == 0
    assert keys.read_text() == KEYS_FILE.read_text() and schema.read_text() == SCHEMA_FILE.read_text()

