"""The `clean` section: the ordered cleaning steps (one class per step kind) and the clean_data check's bounds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, model_validator

from engine.data.constants import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, MAX_SHINGLE
from engine.recipe.fields import Float, Int, Section, check_threshold


def step_kind(name: str) -> str:
    return f"the step's kind: {name}"


class NormalizeStep(Section):
    """Unicode normalization and line endings only: indentation, blank lines and spacing stay as they are.

    `form: NFC` (default) is lossless for text; `NFKC` is opt-in and folds compatibility characters, among them
    CJK full-width punctuation and letters (，→ ,  ！→ !  Ａ→ A), ligatures and superscripts (x² → x2)."""
    step: Literal["normalize"] = Field(description=step_kind("normalize"))
    form: Literal["NFC", "NFKC"] = Field("NFC", description="the Unicode normalization form: NFC is lossless for "
                                                            "text; NFKC also folds compatibility characters "
                                                            "(full-width punctuation, ligatures, superscripts)")
    strip_trailing_spaces: bool = Field(False, description="remove spaces and tabs at line ends; off by default: "
                                                           "Markdown reads two of them as a hard line break")


class StripHtmlStep(Section):
    """Opt-in: removes well-formed markup of real HTML elements from prose, never code, JSX or <placeholders>."""
    step: Literal["strip_html"] = Field(description=step_kind("strip_html"))


class LengthStep(Section):
    """Drops rows by length. No maximum unless set: formatted_data truncates a long row at data.cutoff_len as
    LLaMA-Factory does (data.overlength), so a long row is cut, not lost."""
    step: Literal["length"] = Field(description=step_kind("length"))
    min_chars: Int = Field(1, ge=0, description="rows with fewer characters go")
    max_chars: Int | None = Field(None, ge=1, description="rows with more characters go; unset: no maximum (the row "
                                                          "is truncated at data.cutoff_len instead)")
    min_tokens: Int | None = Field(None, ge=0, description="rows with fewer tokens go, counted with the base model's "
                                                           "tokenizer over all of a row's texts (not with the tiny "
                                                           "preset); unset: no minimum")
    max_tokens: Int | None = Field(None, ge=1, description="rows with more tokens go, counted as min_tokens; unset: "
                                                           "no maximum")

    def counts_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None


class RepetitionStep(Section):
    """A loop filter on prose only: a request or an answer goes when most of its prose repeats its own earlier word
    n-grams, or one of its prose lines recurs more than max_line_repeats times. Code, list items, formulas, tool
    JSON, rejected answers and undesirable KTO answers are never judged; a recurring line (a chorus) counts once."""
    step: Literal["repetition"] = Field(description=step_kind("repetition"))
    ngram: Int = Field(5, ge=1, description="words per n-gram compared with the text's earlier ones")
    max_duplicate_fraction: Float = Field(
        0.5, gt=0, le=1, description="the most of a text's prose characters that may repeat an earlier n-gram (its "
        "copies, not its first occurrence): quoting a passage once stays under 0.5, three copies of one sentence "
        "are 0.67 (LLaMA-Factory's demo files: at most 0.36)")
    min_words: Int = Field(50, ge=1, description="texts with fewer prose words are not judged: chat turns repeat an "
                                                 "instruction by design")
    max_line_repeats: Int = Field(8, ge=1, description="how often a prose line of ngram or more words may recur: a "
                                                       "song's chorus (the demo files: at most 4), not a loop")


class PiiStep(Section):
    """Opt-in. Personal data in prose becomes <EMAIL>, <PHONE>, <IP>, <CREDIT_CARD>, <SECRET>, the same value with
    the same placeholder in every text of the row (tool calls, tool results and tools too); code and arithmetic
    keep their text. A row where a found value cannot be replaced everywhere (it stands in code, or in a tool's
    JSON as a number) is quarantined as pii_inconsistent."""
    step: Literal["pii"] = Field(description=step_kind("pii"))
    kinds: list[Literal["email", "phone", "ip", "credit_card", "secret"]] = Field(
        ["email", "phone", "ip", "credit_card", "secret"], description="which kinds of personal data are replaced "
        "(secret: a password, API key, token or access key assigned in text)")
    phone_region: str = Field("US", description="where numbers without a +country code are dialled (a phonenumbers "
                                                "region code: two letters, e.g. US, GB, DE, CN)")

    @model_validator(mode="after")
    def known_region(self):
        import phonenumbers
        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"phone_region {self.phone_region!r} is not a region code phonenumbers knows "
                             "(two letters, e.g. US, GB, DE, CN)")
        return self


class BlocklistStep(Section):
    """Opt-in: drops every row that contains a listed word."""
    step: Literal["blocklist"] = Field(description=step_kind("blocklist"))
    words: list[str] = Field(default_factory=list, description="a row containing any of these (whole word, any "
                                                               "case) is dropped")


class ExactDedupStep(Section):
    """Drops all but the first of rows whose texts are equal."""
    step: Literal["exact_dedup"] = Field(description=step_kind("exact_dedup"))
    ignore_whitespace: bool = Field(True, description="compare texts with whitespace runs as one space (the kept "
                                                      "text is unchanged)")


class NearDedupStep(Section):
    """Opt-in. Drops all but the first of rows whose texts (every turn but the system prompt) are near-duplicates
    by MinHash; rows shorter than min_chars are never judged."""
    step: Literal["near_dedup"] = Field(description=step_kind("near_dedup"))
    threshold: Float = Field(0.8, gt=0, le=1, description="the Jaccard similarity from which two rows are "
                                                          "near-duplicates")
    num_perm: Int = Field(DEFAULT_NUM_PERM, ge=16, description="MinHash permutations: more estimate the similarity "
                                                               "better, and cost time")
    shingle_size: Int = Field(DEFAULT_SHINGLE, ge=1, le=MAX_SHINGLE, description="characters per shingle")
    bands: Int | None = Field(None, ge=1, description="LSH bands (bands x rows <= num_perm); unset, with rows: chosen "
                                                      "from the threshold")
    rows: Int | None = Field(None, ge=1, description="MinHash values per LSH band; set with bands, or neither")
    min_chars: Int = Field(
        256, ge=0, description="characters (every turn but the system prompt) below which a row is never a "
        "near-duplicate: there one changed word is another question (identity.json's `hi` / `hello` rows, 93 "
        "characters)")

    @model_validator(mode="after")
    def bands_and_rows_together(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        return self


CleanStep = Annotated[NormalizeStep | StripHtmlStep | LengthStep | RepetitionStep | PiiStep | BlocklistStep
                      | ExactDedupStep | NearDedupStep, Field(discriminator="step")]
# LLaMA-Factory cleans nothing: the default steps keep every row it would train on (text as written, no length cap,
# repetition judged on prose only) but exact duplicates. strip_html, pii, blocklist and near_dedup are opt-in.
DEFAULT_CLEAN_STEPS = [{"step": "normalize"}, {"step": "length"}, {"step": "repetition"}, {"step": "exact_dedup"}]


def llamafactory_clean_section() -> dict:
    """The clean section of a recipe imported from LLaMA-Factory configs: the default steps with every key that has
    a value written out, so the imported YAML shows what runs."""
    return {"steps": [TypeAdapter(CleanStep).validate_python(s).model_dump(exclude_none=True)
                      for s in DEFAULT_CLEAN_STEPS]}


class CleanSection(Section):
    """Cleaning runs `steps` in order; each removes rows (to quarantine, with a reason) or rewrites them."""
    steps: list[CleanStep] = Field(
        default_factory=lambda: [TypeAdapter(CleanStep).validate_python(s) for s in DEFAULT_CLEAN_STEPS],
        description="the cleaning steps, run in order, each named by its `step` key; the default keeps every row "
        "LLaMA-Factory would train on (LLaMA-Factory cleans nothing) but exact duplicates. strip_html, pii, "
        "blocklist and near_dedup are opt-in")
    max_quarantine_ratio: Float = check_threshold(0.25, ge=0, le=1, description="check: the clean_data check fails "
                                                                                "when cleaning removes more than "
                                                                                "this share of all rows")
    max_source_loss_ratio: Float = check_threshold(
        0.5, ge=0, le=1, description="check: the share of one source's rows cleaning may remove: losing more than "
        "half usually means a wrong column mapping or a format the steps misjudge, not dirty data (the shipped "
        "sources each lose at most 10%, alpaca_tasks with its planted duplicates the most; LLaMA-Factory's demo "
        "files at most 18% under the tiny recipe)")

    def counts_tokens(self) -> bool:
        return any(isinstance(s, LengthStep) and s.counts_tokens() for s in self.steps)
