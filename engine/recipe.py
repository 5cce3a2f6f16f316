"""Recipes: one YAML file describes a whole run. Typed with pydantic, validated at load.

Keys follow LLaMA-Factory's names where one exists (model_name_or_path, template, cutoff_len,
lora_rank, lora_alpha, lora_target, learning_rate, num_train_epochs, per_device_train_batch_size,
pref_beta, pref_loss, export_quantization_bit), so its users feel at home.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from engine.data.dedup import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, MAX_SHINGLE
from engine.errors import RecipeError

RECIPE_DIR = Path(__file__).resolve().parent.parent / "pipelines" / "recipes"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModel(Section):
    """The built-in `tiny` preset: a random-init Qwen2-architecture model and a BPE tokenizer."""
    hidden_size: int = Field(128, ge=32, le=1024)
    intermediate_size: int = 384
    num_hidden_layers: int = Field(2, ge=1, le=12)
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = Field(1024, ge=300, le=32000)
    max_position_embeddings: int = 512
    initializer_range: float = Field(0.1, gt=0)  # wider than Qwen2's 0.02: random logits must be able to sharpen
    seed: int = 0


class ModelSection(Section):
    model_name_or_path: str = "tiny"  # "tiny", or a local HF checkpoint directory
    tiny: TinyModel = TinyModel()


class DataSection(Section):
    dataset_dir: str = "data"
    dataset_info: str = "datasets.yaml"  # a datasets.yaml or LLaMA-Factory dataset_info.json
    dataset: list[str] = Field(default_factory=list)  # registry names; empty = every registered one
    allowed_roots: list[str] = Field(default_factory=list)  # folders outside dataset_dir a file_name may use
    cutoff_len: int = Field(128, ge=8)
    overlength: Literal["truncate", "drop"] = "truncate"  # rows over cutoff_len: cut as LLaMA-Factory cuts, or quarantine
    val_size: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    decontamination_threshold: float | None = Field(0.8, gt=0, le=1)  # train rows this close to an eval row go; None: off


class NormalizeStep(Section):
    """Unicode normalization and line endings only: indentation, blank lines and spacing stay as they are.

    `form: NFC` (default) is lossless for text; `NFKC` is opt-in and folds compatibility characters, among them
    CJK full-width punctuation and letters (，→ ,  ！→ !  Ａ→ A), ligatures and superscripts (x² → x2)."""
    step: Literal["normalize"]
    form: Literal["NFC", "NFKC"] = "NFC"
    strip_trailing_spaces: bool = False  # spaces/tabs at line ends; off by default: Markdown's hard line break


class StripHtmlStep(Section):
    """Opt-in: removes well-formed markup of real HTML elements from prose, never code, JSX or <placeholders>."""
    step: Literal["strip_html"]


class LengthStep(Section):
    step: Literal["length"]
    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(4000, ge=1)
    min_tokens: int | None = Field(None, ge=0)  # counted with the base model's tokenizer over all of a row's texts
    max_tokens: int | None = Field(None, ge=1)

    def counts_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None


class RepetitionStep(Section):
    """Gopher's repetition filter: drop a row when too much of its text lies in repeated word n-grams."""
    step: Literal["repetition"]
    ngram: int = Field(5, ge=1)
    max_duplicate_fraction: float = Field(0.3, gt=0, le=1)
    min_words: int = Field(50, ge=1)  # shorter texts are not judged: chat turns repeat an instruction by design


class PiiStep(Section):
    """Personal data in prose becomes <EMAIL>, <PHONE>, <IP>, <CREDIT_CARD>, <SECRET>; code, arithmetic and tool
    calls keep their digits (real API-key formats are scrubbed everywhere)."""
    step: Literal["pii"]
    kinds: list[Literal["email", "phone", "ip", "credit_card", "secret"]] = ["email", "phone", "ip", "credit_card",
                                                                             "secret"]
    phone_region: str = "US"  # where numbers without a +country code are dialled (phonenumbers' region code)

    @model_validator(mode="after")
    def known_region(self):
        import phonenumbers
        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"phone_region {self.phone_region!r} is not a region code phonenumbers knows "
                             "(two letters, e.g. US, GB, DE, CN)")
        return self


class BlocklistStep(Section):
    step: Literal["blocklist"]
    words: list[str] = Field(default_factory=list)  # a row containing any of these (whole word, any case) is dropped


class ExactDedupStep(Section):
    step: Literal["exact_dedup"]
    ignore_whitespace: bool = True  # compare texts with whitespace runs as one space (the kept text is unchanged)


class NearDedupStep(Section):
    step: Literal["near_dedup"]
    threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(DEFAULT_NUM_PERM, ge=16)
    shingle_size: int = Field(DEFAULT_SHINGLE, ge=1, le=MAX_SHINGLE)  # characters per shingle
    bands: int | None = Field(None, ge=1)  # bands x rows <= num_perm; unset: chosen from the threshold
    rows: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def bands_and_rows_together(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        return self


CleanStep = Annotated[NormalizeStep | StripHtmlStep | LengthStep | RepetitionStep | PiiStep | BlocklistStep
                      | ExactDedupStep | NearDedupStep, Field(discriminator="step")]
DEFAULT_CLEAN_STEPS = [{"step": "normalize"}, {"step": "length"}, {"step": "repetition"},  # strip_html is opt-in
                       {"step": "pii"}, {"step": "exact_dedup"}, {"step": "near_dedup"}]


class CleanSection(Section):
    """Cleaning runs `steps` in order; each removes rows (to quarantine, with a reason) or rewrites them."""
    steps: list[CleanStep] = Field(default_factory=lambda: [TypeAdapter(CleanStep).validate_python(s)
                                                            for s in DEFAULT_CLEAN_STEPS])
    max_quarantine_ratio: float = Field(0.25, ge=0, le=1)  # the clean_data check fails above this

    def counts_tokens(self) -> bool:
        return any(isinstance(s, LengthStep) and s.counts_tokens() for s in self.steps)


class TrainSection(Section):
    finetuning_type: Literal["lora", "dora", "full", "freeze"] = "lora"
    freeze_trainable_layers: int = 2  # freeze: train the last n decoder layers (negative: the first n)
    quantization_bit: Literal[4, 8] | None = None  # QLoRA: the frozen base loaded in 4/8 bits by bitsandbytes (CUDA)
    lora_rank: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target: str = "all"  # "all" or comma-separated module names, as in LLaMA-Factory
    loraplus_lr_ratio: float | None = Field(None, gt=0)  # LoRA+: B matrices learn this many times faster than A
    report_to: Literal["none", "tensorboard", "mlflow"] = "none"  # in the artifact: tensorboard/ or mlflow.db
    learning_rate: float = Field(1e-3, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    logging_steps: int = Field(10, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def adapter_options_need_an_adapter(self):
        adapter = self.finetuning_type in ("lora", "dora")
        if self.freeze_trainable_layers == 0:
            raise ValueError("freeze_trainable_layers: 0 trains nothing; use n > 0 (last n layers) or n < 0 (first n)")
        if self.quantization_bit and not adapter:
            raise ValueError(f"quantization_bit (QLoRA) trains an adapter on a frozen quantized base: it needs "
                             f"finetuning_type lora or dora, not {self.finetuning_type}")
        if self.loraplus_lr_ratio and not adapter:
            raise ValueError(f"loraplus_lr_ratio needs finetuning_type lora or dora, not {self.finetuning_type}")
        return self


class PtSection(TrainSection):
    """Continued pre-training on raw text before SFT (LLaMA-Factory's stage pt). Off while `dataset` is empty."""
    dataset: list[str] = Field(default_factory=list)  # registry names; each row's `prompt` column is the text
    learning_rate: float = Field(5e-4, gt=0)


class SftSection(TrainSection):
    packing: bool = False  # pack several rows into one cutoff_len sequence (boundaries kept, no cross-row attention)


class RewardSection(TrainSection):
    min_accuracy: float = Field(0.6, ge=0, le=1)  # held-out pairwise accuracy the check demands


class DpoSection(TrainSection):
    pref_beta: float = Field(0.1, gt=0)
    pref_loss: Literal["sigmoid", "ipo", "orpo", "kto"] = "sigmoid"  # kto trains on the KTO view (kto_tag data)
    learning_rate: float = Field(5e-4, gt=0)
    min_reward_gain: float = 0.0  # gate: the DPO model's mean reward-model score minus the SFT model's, at least this


class MergeSection(Section):
    logits_atol: float = Field(1e-3, gt=0)  # merged vs adapter model logits, absolute tolerance


class QuantizeSection(Section):
    export_quantization_bit: Literal[4] = 4
    group_size: int = Field(32, ge=8)
    calibration_samples: int = Field(64, ge=1)
    max_ppl_ratio: float = Field(1.5, ge=1)  # quantized eval perplexity may be at most this x merged
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)  # gate: task accuracy may fall at most this far below merged


class EvaluationSection(Section):
    """Held-out perplexity (whole eval split), task accuracy by generation, the reward model's mean score."""
    max_samples: int = Field(128, ge=1)  # eval rows answered by greedy generation
    max_new_tokens: int = Field(32, ge=1)
    scorer: str = "exact_match"  # or char_similarity, or "module:function": (prediction, reference) -> score in [0, 1]
    lm_eval_tasks: list[str] = Field(default_factory=list)  # run through lm-eval (must be installed) on full models
    lm_eval_limit: int | None = Field(None, ge=1)  # examples per lm-eval task; None: all


class ServeSection(Section):
    """The `deployment` asset and `tuneline serve`: an OpenAI-compatible server for one export."""
    model: Literal["merged", "gptq", "awq"] = "awq"
    served_model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # None: <recipe>-<model>
    infer_backend: Literal["auto", "vllm", "huggingface"] = "auto"  # auto: vLLM when importable with a GPU
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_model_len: int | None = Field(None, ge=8)  # None: the model's max_position_embeddings
    startup_timeout_seconds: int = Field(300, ge=5)  # the health check waits this long before giving up


class RetentionSection(Section):
    keep_last: int = Field(5, ge=1)  # artifacts kept per asset, most recently used first; older ones are removed


class ScheduleSection(Section):
    cron: str = "0 3 * * 1"  # when the retrain schedule runs (it starts switched off in the UI)
    timezone: str = "UTC"
    watch_interval_seconds: int = Field(60, ge=5)  # how often the incoming-data sensor hashes the sources


class Recipe(Section):
    name: str = "tiny"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    clean: CleanSection = CleanSection()
    pt: PtSection = PtSection()
    sft: SftSection = SftSection()
    reward: RewardSection = RewardSection()
    dpo: DpoSection = DpoSection()
    merge: MergeSection = MergeSection()
    quantize: QuantizeSection = QuantizeSection()
    evaluation: EvaluationSection = EvaluationSection()
    serve: ServeSection = ServeSection()
    retention: RetentionSection = RetentionSection()
    schedule: ScheduleSection = ScheduleSection()


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe is a YAML path, or the name of one shipped in pipelines/recipes/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist (expected a YAML recipe)")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise RecipeError(f"no recipe named {name_or_path!r}: expected a .yaml path or one of {names}")
    return shipped


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[Recipe, Path]:
    """Load, override (dotted keys, e.g. {"sft.learning_rate": 1e-4}) and validate a recipe.

    Returns the recipe and its file path. Raises RecipeError naming the key and what was expected.
    """
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return Recipe.model_validate(raw), path
    except ValidationError as exc:
        raise RecipeError(f"recipe {path}:\n" + "\n".join(describe(e) for e in exc.errors())) from None


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def describe(error: dict) -> str:
    """One line per validation error, with a did-you-mean for unknown keys."""
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] != "extra_forbidden":
        return f"  {key}: {error['msg']} (got {error.get('input')!r})"
    model: type[BaseModel] = Recipe
    for part in error["loc"][:-1]:
        model = model.model_fields[str(part)].annotation
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
    hint = f"; did you mean {'.'.join([*map(str, error['loc'][:-1]), close[0]])!r}?" if close else ""
    return f"  {key}: unknown key{hint} (expected one of: {', '.join(known)})"
