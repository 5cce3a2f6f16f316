"""Recipes: one YAML file describes a whole run. Typed with pydantic, validated at load.

Keys follow LLaMA-Factory's names where one exists (model_name_or_path, template, cutoff_len,
lora_rank, lora_alpha, lora_target, learning_rate, num_train_epochs, per_device_train_batch_size,
pref_beta, pref_loss, export_quantization_bit), so its users feel at home.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter,
                      ValidationError, model_validator)

from engine.data.constants import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, MAX_SHINGLE
from engine.errors import RecipeError

RECIPE_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "recipes"


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# YAML's `true` is not 1: integers are strict (no booleans, no 3.0, no "3"). Floats take ints (`learning_rate: 1`)
# and numeric strings, because PyYAML reads `1e-4` (no dot) as a string; booleans are refused there too.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]

IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
LORA_TARGET = re.compile(rf"all|{IDENTIFIER}(\.{IDENTIFIER})*(\s*,\s*{IDENTIFIER}(\.{IDENTIFIER})*)*")


def _lora_target_syntax(value: str) -> str:
    """"all", or comma-separated module names (PEFT matches each as a name suffix); which names the model has
    is checked when the model is loaded."""
    if not LORA_TARGET.fullmatch(value.strip()) or (value.strip() != "all" and "all" in
                                                     [t.strip() for t in value.split(",")]):
        raise ValueError('expected "all" or comma-separated module names such as "q_proj,v_proj"')
    return value.strip()


def _scheduler_type(value: str) -> str:
    from transformers.trainer_utils import SchedulerType  # imported only when a recipe names one: it loads torch
    names = [s.value for s in SchedulerType]
    if value not in names:
        raise ValueError(f"expected one of transformers' schedulers: {', '.join(names)}")
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError('expected an IANA time zone name such as "UTC" or "Europe/Berlin"') from None
    return value


class Section(BaseModel):
    # every float is finite: a recipe's .inf or .nan would only fail hours later, inside training
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_threshold(default: Any, **constraints: Any) -> Any:
    """A field that only a check or gate reads: it is not part of any artifact's fingerprint, so changing it
    re-runs the check, never the stage."""
    return Field(default, json_schema_extra={"threshold": True}, **constraints)


def operational(default: Any, **constraints: Any) -> Any:
    """A field that says how a stage runs, never what it makes (how often it checkpoints): the stage reads it,
    its fingerprint leaves it out, so changing it rebuilds nothing."""
    return Field(default, json_schema_extra={"operational": True}, **constraints)


def is_threshold(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("threshold"))


def is_fingerprinted(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return not (isinstance(extra, dict) and (extra.get("threshold") or extra.get("operational")))


def fingerprint_value(value: Any) -> Any:
    """A recipe value as a fingerprint sees it: a section without its check thresholds and operational keys, in
    JSON form."""
    if isinstance(value, BaseModel):
        return {name: fingerprint_value(getattr(value, name)) for name in type(value).model_fields
                if is_fingerprinted(type(value), name)}
    if isinstance(value, (list, tuple)):
        return [fingerprint_value(v) for v in value]
    return value


def get_dotted(recipe: BaseModel, dotted: str) -> Any:
    """The value at a dotted key such as "sft.learning_rate" (KeyError naming the key when there is none)."""
    value: Any = recipe
    for part in dotted.split("."):
        if not isinstance(value, BaseModel) or part not in type(value).model_fields:
            raise KeyError(f"recipe key {dotted!r} does not exist")
        value = getattr(value, part)
    return value


class TinyModel(Section):
    """The built-in `tiny` preset: a random-init Qwen2-architecture model and a BPE tokenizer."""
    hidden_size: Int = Field(128, ge=32, le=1024)
    intermediate_size: Int = 384
    num_hidden_layers: Int = Field(2, ge=1, le=12)
    num_attention_heads: Int = 4
    num_key_value_heads: Int = 2
    vocab_size: Int = Field(1024, ge=300, le=32000)
    max_position_embeddings: Int = 512
    initializer_range: Float = Field(0.1, gt=0)  # wider than Qwen2's 0.02: random logits must be able to sharpen
    seed: Int = 0


class ModelSection(Section):
    """The model, and LLaMA-Factory's precision keys (engine/models/device.py holds the whole policy): every stage that
    loads a model reads them. None set: float32 weights on a CPU (training under bf16 autocast where the CPU computes
    bf16 natively, as TRL does), bf16 frozen weights on a GPU that has it (else fp16)."""
    # "tiny", a local HF checkpoint directory, or a GGUF file (dequantized into a safetensors folder by base_model);
    # "package:<module>/<file>" names a file inside an installed Python package (the smol recipe's GGUF)
    model_name_or_path: str = "tiny"
    # which eos wins when the tokenizer's eos_token is not one the generation config stops on: tokenizer or
    # generation_config; unset: such a checkpoint is refused (generation would run past the end of a turn)
    eos_source: Literal["tokenizer", "generation_config"] | None = None
    # LLaMA-Factory's key: local PEFT adapter directories (comma-separated) merged into the base, in order, before any
    # stage trains (pt_model is then base + adapters): a preference stage without sft starts from an SFT adapter made
    # elsewhere, and a recipe without training stages exports base + adapters. LLaMA-Factory goes on training the last
    # adapter; tuneline trains a new one on the merged model (LLaMA-Factory's create_new_adapter: true)
    adapter_name_or_path: str | None = None
    tiny: TinyModel = TinyModel()
    # true: bfloat16 weights, bf16 mixed-precision training (a CPU runs it too); false: neither, not even the CPU's
    # default autocast; unset: the device decides
    bf16: bool | None = None
    fp16: bool = False  # float16 weights, fp16 mixed-precision training (a GPU only)
    pure_bf16: bool = False  # bfloat16 everywhere, trainable weights too, no mixed precision
    infer_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # inference loads and the merged export

    @model_validator(mode="after")
    def one_half_precision(self):
        if self.fp16 and (self.bf16 or self.pure_bf16):
            raise ValueError(f"fp16 and {'bf16' if self.bf16 else 'pure_bf16'} are both set; choose one half precision")
        return self

    def adapters(self) -> list[str]:
        """adapter_name_or_path as a list of directories, in the order they are merged."""
        return [a.strip() for a in (self.adapter_name_or_path or "").split(",") if a.strip()]


class DataSection(Section):
    dataset_dir: str = "data"
    # a datasets.yaml or LLaMA-Factory's dataset_info.json (found by itself where no datasets.yaml is)
    dataset_info: str = "datasets.yaml"
    dataset: list[str] = Field(default_factory=list)  # registry names; empty = every registered one
    allowed_roots: list[str] = Field(default_factory=list)  # folders outside dataset_dir a file_name may use
    cutoff_len: Int = Field(128, ge=8)
    # LLaMA-Factory's key: store only each dataset's first max_samples records (the rest are counted, not stored)
    max_samples: Int | None = Field(None, ge=1)
    # LLaMA-Factory's template name: the checkpoint's own chat template renders every row, and formatted_data stops
    # when it does not render turns as this LLaMA-Factory template does (None: no such check). tuneline never swaps
    # in another template: a model is served with the template it was trained with
    template: str | None = None
    # LLaMA-Factory's default_system: the system prompt of every rendered row that has none of its own (replacing the
    # chat template's default, e.g. SmolLM2's "You are a helpful AI assistant named SmolLM..."); None: the template's
    default_system: str | None = None
    overlength: Literal["truncate", "drop"] = "truncate"  # rows over cutoff_len: cut as LLaMA-Factory cuts, or quarantine
    val_size: Float = Field(0.1, gt=0, lt=1)
    seed: Int = 42
    # train rows this close (Jaccard) to an eval row go; None: off
    decontamination_threshold: Float | None = Field(0.8, gt=0, le=1)
    # the fewest rows the eval split a preference stage is judged on may hold (preference pairs for rm and dpo, KTO
    # rows for kto): below it the formatted_data check fails, since an accuracy from a handful of pairs means nothing
    min_eval_pairs: Int = check_threshold(32, ge=1)


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
    """Drops rows by length. No maximum unless set: formatted_data truncates a long row at data.cutoff_len as
    LLaMA-Factory does (data.overlength), so a long row is cut, not lost."""
    step: Literal["length"]
    min_chars: Int = Field(1, ge=0)
    max_chars: Int | None = Field(None, ge=1)  # None: no maximum (the row is truncated at cutoff_len instead)
    min_tokens: Int | None = Field(None, ge=0)  # counted with the base model's tokenizer over all of a row's texts
    max_tokens: Int | None = Field(None, ge=1)

    def counts_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None


class RepetitionStep(Section):
    """A loop filter on prose only: a request or an answer goes when most of its prose repeats its own earlier word
    n-grams, or one of its prose lines recurs more than max_line_repeats times. Code, list items, formulas, tool
    JSON, rejected answers and undesirable KTO answers are never judged; a recurring line (a chorus) counts once."""
    step: Literal["repetition"]
    ngram: Int = Field(5, ge=1)
    # share of prose characters that repeat an earlier n-gram (its copies, not its first occurrence): quoting a
    # passage once stays under 0.5, three copies of one sentence are 0.67 (LLaMA-Factory's demo files: at most 0.36)
    max_duplicate_fraction: Float = Field(0.5, gt=0, le=1)
    min_words: Int = Field(50, ge=1)  # texts with less prose are not judged: chat turns repeat an instruction by design
    # a prose line of ngram or more words may recur this often: a song's chorus (the demo files: at most 4), not a loop
    max_line_repeats: Int = Field(8, ge=1)


class PiiStep(Section):
    """Opt-in. Personal data in prose becomes <EMAIL>, <PHONE>, <IP>, <CREDIT_CARD>, <SECRET>, the same value with
    the same placeholder in every text of the row (tool calls, tool results and tools too); code and arithmetic
    keep their text. A row where a found value cannot be replaced everywhere (it stands in code, or in a tool's
    JSON as a number) is quarantined as pii_inconsistent."""
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
    """Opt-in. Drops all but the first of rows whose texts (every turn but the system prompt) are near-duplicates
    by MinHash; rows shorter than min_chars are never judged."""
    step: Literal["near_dedup"]
    threshold: Float = Field(0.8, gt=0, le=1)
    num_perm: Int = Field(DEFAULT_NUM_PERM, ge=16)
    shingle_size: Int = Field(DEFAULT_SHINGLE, ge=1, le=MAX_SHINGLE)  # characters per shingle
    bands: Int | None = Field(None, ge=1)  # bands x rows <= num_perm; unset: chosen from the threshold
    rows: Int | None = Field(None, ge=1)
    # characters (every turn but the system prompt) below which a row is never a near-duplicate: there one changed
    # word is another question (identity.json's `hi` / `hello` rows, 93 characters)
    min_chars: Int = Field(256, ge=0)

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
    steps: list[CleanStep] = Field(default_factory=lambda: [TypeAdapter(CleanStep).validate_python(s)
                                                            for s in DEFAULT_CLEAN_STEPS])
    max_quarantine_ratio: Float = check_threshold(0.25, ge=0, le=1)  # the clean_data check fails above this
    # the share of one source's rows cleaning may remove: losing more than half usually means a wrong column mapping
    # or a format the steps misjudge, not dirty data (the shipped sources each lose at most 10%, alpaca_tasks with
    # its planted duplicates the most; LLaMA-Factory's demo files at most 18% under the tiny recipe)
    max_source_loss_ratio: Float = check_threshold(0.5, ge=0, le=1)

    def counts_tokens(self) -> bool:
        return any(isinstance(s, LengthStep) and s.counts_tokens() for s in self.steps)


class TrainSection(Section):
    finetuning_type: Literal["lora", "dora", "full", "freeze"] = "lora"
    freeze_trainable_layers: Int = 2  # freeze: train the last n decoder layers (negative: the first n)
    quantization_bit: Literal[4, 8] | None = None  # QLoRA: the frozen base loaded in 4/8 bits by bitsandbytes (CUDA)
    lora_rank: Int = Field(16, ge=1)
    lora_alpha: Int = Field(32, ge=1)
    lora_dropout: Float = Field(0.0, ge=0, lt=1)
    lora_target: Annotated[str, AfterValidator(_lora_target_syntax)] = "all"  # "all" or comma-separated module names
    loraplus_lr_ratio: Float | None = Field(None, gt=0)  # LoRA+: B matrices learn this many times faster than A
    report_to: Literal["none", "tensorboard", "mlflow"] = "none"  # in the artifact: tensorboard/ or mlflow.db
    learning_rate: Float = Field(1e-3, gt=0)
    num_train_epochs: Float = Field(1.0, gt=0)
    max_steps: Int = -1
    per_device_train_batch_size: Int = Field(16, ge=1)
    gradient_accumulation_steps: Int = Field(1, ge=1)
    lr_scheduler_type: Annotated[str, AfterValidator(_scheduler_type)] = "cosine"  # transformers' SchedulerType
    warmup_ratio: Float = Field(0.05, ge=0, lt=1)
    logging_steps: Int = Field(10, ge=1)
    seed: Int = 42
    # speed levers (bench/train_throughput.py measures them): recompute activations in the backward pass only when
    # asked (saves memory, costs 20-50% time; TRL would turn it on by default), the attention kernel, Liger kernels
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] = "sdpa"
    enable_liger_kernel: bool = False  # LLaMA-Factory's key: Liger's fused kernels (liger-kernel, a CUDA GPU)
    # a checkpoint every save_steps optimizer steps; a run that dies resumes from the last complete one
    save_steps: Int = operational(500, ge=1)
    save_total_limit: Int | None = operational(None, ge=1)  # checkpoints kept while training; None: all

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
    learning_rate: Float = Field(5e-4, gt=0)


class SftSection(TrainSection):
    # each batch's rows laid end to end in one sequence with per-row positions, no padding: the same rows in the same
    # order as padded batches, the same losses (tests/test_packing.py), none of the padding's compute. Unset: on with
    # flash_attention_2 (its varlen kernel attends within rows), and with sdpa/eager only where the flattened batch's
    # attention (quadratic in the batch's tokens) costs less than the padding it saves (engine/train/sft.py)
    padding_free: bool | None = None
    # rows packed into cutoff_len sequences (best fit, none split), no padding; each attends to itself only. Off by
    # default: it changes which rows share an optimizer step (LLaMA-Factory's neat_packing turns it on)
    packing: bool = False


class RewardSection(TrainSection):
    min_accuracy: Float = check_threshold(0.6, ge=0, le=1)  # held-out pairwise accuracy the check demands


class DpoSection(TrainSection):
    pref_beta: Float = Field(0.1, gt=0)
    pref_loss: Literal["sigmoid", "ipo", "orpo", "kto"] = "sigmoid"  # kto trains on the KTO view (kto_tag data)
    # LLaMA-Factory's pref_ftx: weight of the SFT loss on the chosen answers added to sigmoid/ipo (TRL's "sft"
    # loss), which keeps DPO from lowering the likelihood of the very answers it prefers. orpo's loss holds its own
    # SFT term and TRL's kto has none: there it is not used (dpo_adapter's metrics say pref_ftx_applied: false)
    pref_ftx: Float = Field(0.0, ge=0)
    learning_rate: Float = Field(5e-4, gt=0)
    min_reward_gain: Float = check_threshold(0.0)  # gate: the DPO model's mean reward-model score minus SFT's, at least this
    min_reward_margin: Float = check_threshold(0.0)  # check: held-out mean chosen-minus-rejected reward above this
    # the reference model's log-probs computed once, before training (sigmoid/ipo/kto), not at every step of every epoch
    precompute_ref_log_probs: bool = True


class MergeSection(Section):
    # merged vs adapter model logits, absolute tolerance; a float32 one. Half precision moves logits of ~10 by ~0.1-0.3
    # (the tiny model): a bf16 run (model.bf16, infer_dtype bfloat16), or a bf16 checkpoint merged back into bf16
    # (the merge writes the base's dtype), needs about 0.5; model.infer_dtype: float32 writes float32 instead
    logits_atol: Float = check_threshold(1e-3, gt=0)


class QuantizeSection(Section):
    export_quantization_bit: Literal[4] = 4
    group_size: Int = Field(32, ge=8)
    calibration_samples: Int = Field(64, ge=1)
    max_ppl_ratio: Float = check_threshold(1.5, ge=1)  # quantized eval perplexity may be at most this x merged
    max_accuracy_drop: Float = check_threshold(0.05, ge=0, le=1)  # gate: task accuracy may fall at most this far below merged


class EvaluationSection(Section):
    """Held-out perplexity (whole eval split), task accuracy by generation, the reward model's mean score."""
    max_samples: Int = Field(128, ge=1)  # eval rows answered by greedy generation
    max_new_tokens: Int = Field(32, ge=1)
    # what generates the greedy answers (LLaMA-Factory's key): auto: vLLM when importable with a CUDA GPU, else
    # transformers; vllm where it cannot run stops the recipe before any work
    infer_backend: Literal["auto", "vllm", "huggingface"] = "auto"
    scorer: str = "exact_match"  # or char_similarity, or "module:function": (prediction, reference) -> score in [0, 1]
    lm_eval_tasks: list[str] = Field(default_factory=list)  # run through lm-eval (must be installed) on full models
    lm_eval_limit: Int | None = Field(None, ge=1)  # examples per lm-eval task; None: all


class ServeSection(Section):
    """The `deployment` asset and `tuneline serve`: an OpenAI-compatible server for one export."""
    model: Literal["merged", "gptq", "awq"] = "awq"
    served_model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # None: <recipe>-<model>
    infer_backend: Literal["auto", "vllm", "huggingface"] = "auto"  # auto: vLLM when importable with a GPU
    host: str = "127.0.0.1"  # another address exposes the model to the network: set an API key (api_key_env)
    port: Int = Field(8000, ge=1, le=65535)
    # the environment variable holding the API key (never the key itself in YAML); when it is set, every request
    # but /health needs `Authorization: Bearer <key>`. `tuneline serve --api-key` wins over it. null: no key.
    api_key_env: str | None = Field("TUNELINE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_model_len: Int | None = Field(None, ge=8)  # None: the model's max_position_embeddings
    startup_timeout_seconds: Int = Field(300, ge=5)  # the health check waits this long before giving up


class RetentionSection(Section):
    keep_last: Int = Field(5, ge=1)  # artifacts kept per asset, most recently used first; older ones are removed


class KubernetesSection(Section):
    """A pod per training stage (launcher.type kubernetes, through dagster-k8s' PipesK8sClient). Every pod mounts
    the artifact root at the same path (a ReadWriteMany volume): the spec, parents and work directory are there."""
    image: str | None = None  # an image with this project installed (the same versions as the orchestrator)
    namespace: str | None = None  # None: the current one, else "default"
    gpus_per_pod: Int = Field(1, ge=0)  # nvidia.com/gpu; more than 1 starts torchrun inside the pod
    volume_claim: str | None = None  # the PersistentVolumeClaim holding the artifact root
    service_account: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)


class LauncherSection(Section):
    """How a training stage's processes start: one process (`local`; with several visible GPUs it starts torchrun
    itself, as LLaMA-Factory does), `torchrun`, or `accelerate launch` with an accelerate config (DeepSpeed ZeRO-2/3,
    FSDP). Only the process of rank 0 writes and reports."""
    type: Literal["local", "torchrun", "accelerate", "kubernetes"] = "local"
    nproc_per_node: Int | None = Field(None, ge=1)  # None: one per visible GPU (one on a CPU)
    nnodes: Int = Field(1, ge=1)
    node_rank: Int = Field(0, ge=0)
    rdzv_endpoint: str | None = None  # host:port of node 0, for nnodes > 1
    accelerate_config: str | None = None  # an accelerate config YAML (type accelerate)
    deepspeed: str | None = None  # LLaMA-Factory's key: a DeepSpeed JSON (ZeRO-2/3), run by accelerate launch
    kubernetes: KubernetesSection = KubernetesSection()

    @model_validator(mode="after")
    def complete(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.type == "kubernetes" and not (self.kubernetes.image and self.kubernetes.volume_claim):
            raise ValueError("type kubernetes needs kubernetes.image (this project installed) and "
                             "kubernetes.volume_claim (the volume every pod mounts the artifact root from)")
        if self.type == "accelerate" and not (self.accelerate_config or self.deepspeed):
            raise ValueError("type accelerate needs accelerate_config (a YAML from `accelerate config`, e.g. a "
                             "DeepSpeed ZeRO-3 or FSDP2 one) or deepspeed (a DeepSpeed JSON)")
        return self


class ScheduleSection(Section):
    cron: str = "0 3 * * 1"  # when the retrain schedule runs (switched off at first)
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    watch_interval_seconds: Int = Field(60, ge=5)  # how often the incoming-data sensor hashes the sources


# LLaMA-Factory's stage names. pt runs whenever pt.dataset names a corpus (naming pt here then only confirms it)
StageName = Literal["pt", "sft", "rm", "dpo", "kto"]


class Recipe(Section):
    name: str = "tiny"
    # the training stages that run, as LLaMA-Factory's `stage:` names them; the others say "not configured". Any
    # list: [dpo] alone trains DPO on the base model (or model.adapter_name_or_path); [] exports the base model
    # (with its adapters) through merge, quantization, evaluation and deployment
    stages: list[StageName] = ["sft", "rm", "dpo"]
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
    launcher: LauncherSection = LauncherSection()

    @model_validator(mode="before")
    @classmethod
    def kto_is_dpo(cls, data: Any) -> Any:
        """LLaMA-Factory's stage kto is the dpo stage with the KTO loss: stored as such, so that one model has one
        fingerprint however it was asked for; a dpo.pref_loss other than kto next to it is an error."""
        stages = data.get("stages") if isinstance(data, dict) else None
        if not isinstance(stages, list) or "kto" not in stages or "dpo" in stages:
            return data
        dpo = data.get("dpo") or {}
        if isinstance(dpo, dict) and dpo.get("pref_loss", "kto") != "kto":
            raise ValueError(f"stages names kto but dpo.pref_loss is {dpo['pref_loss']}: set it to kto, or name dpo "
                             "in stages")
        dpo = {**dpo, "pref_loss": "kto"} if isinstance(dpo, dict) else dpo
        return {**data, "stages": ["dpo" if s == "kto" else s for s in stages], "dpo": dpo}

    @model_validator(mode="after")
    def known_stages(self):
        if "pt" in self.stages and not self.pt.dataset:
            raise ValueError(f"stages {self.stages} names pt, but pt.dataset is empty: name its raw-text corpus "
                             "(registry names), or take pt out of stages")
        if len(set(self.stages)) != len(self.stages) or {"dpo", "kto"} <= set(self.stages):
            raise ValueError(f"stages {self.stages}: name each stage once (kto is dpo with dpo.pref_loss kto)")
        return self

    def runs(self, stage: str) -> bool:
        """Whether a LLaMA-Factory stage (pt, sft, rm, dpo) runs: named in stages (pt: or given a corpus)."""
        return stage in self.stages or (stage == "pt" and bool(self.pt.dataset))

    @model_validator(mode="after")
    def token_limits_need_a_real_tokenizer(self):
        if self.clean.counts_tokens() and self.model.model_name_or_path == "tiny":
            raise ValueError("clean: the length step's min_tokens/max_tokens count with the model's tokenizer, and the "
                             "tiny preset trains its tokenizer on the cleaned rows; use min_chars/max_chars, or set "
                             "model.model_name_or_path to a local checkpoint")
        return self


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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a recipe that sets a key twice is refused instead."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges, and keys beside it may override what it brings
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    earlier = first_line.get(key)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if earlier is not None:
                    raise DuplicateKeyError(None, None, f"key {key!r} appears twice, at line {earlier} and "
                                                        f"line {line}", key_node.start_mark)
                first_line[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """A YAML file as Python data; a non-UTF-8 byte, a syntax error or a repeated key is a one-line RecipeError."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"{what} {path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"(line {line}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise RecipeError(f"{what} {path}: {exc.problem}; a key may be set once") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise RecipeError(f"{what} {path} is not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from None


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[Recipe, Path]:
    """Load, override (dotted keys, e.g. {"sft.learning_rate": 1e-4}) and validate a recipe.

    Returns the recipe and its file path. Raises RecipeError naming the key and what was expected, one line per
    problem.
    """
    path = resolve_recipe_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return Recipe.model_validate(raw), path
    except ValidationError as exc:
        raise RecipeError("\n".join(f"recipe {path}: {describe(e)}" for e in exc.errors())) from None


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `sft.learning_rate` (or `clean.steps.6.threshold`: a number picks a list item) in a raw recipe."""
    parts = dotted.split(".")
    if not all(parts):
        raise RecipeError(f"override {dotted!r}: expected a dotted recipe key such as sft.learning_rate")
    node: Any = tree
    for depth, key in enumerate(parts):
        path = ".".join(parts[:depth])
        if isinstance(node, list):
            if not (key.isdigit() and int(key) < len(node)):
                raise RecipeError(f"override {dotted!r}: {path} is a list of {len(node)} items; "
                                  f"expected an index from 0 to {len(node) - 1}, not {key!r}")
            key = int(key)
        elif not isinstance(node, dict):
            raise RecipeError(f"override {dotted!r}: {path} is {node!r}, a value, not a section with keys")
        if depth == len(parts) - 1:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:  # absent, or an empty section (`sft:`)
                parent = section_at(tuple(parts[:depth]))
                if parent is not None and key in parent.model_fields and section_at(tuple(parts[:depth + 1])) is None:
                    raise RecipeError(f"override {dotted!r}: {'.'.join(parts[:depth + 1])} is a value, "
                                      "not a section with keys")
                node[key] = {}
            node = node[key]


def _unwrap(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def section_at(loc: tuple) -> type[BaseModel] | None:
    """The recipe section a validation error's location points into (None where it cannot tell)."""
    node: Any = Recipe
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int) and typing.get_origin(node) is list:
            node = typing.get_args(node)[0]
        elif isinstance(node, type) and issubclass(node, BaseModel) and str(part) in node.model_fields:
            node = node.model_fields[str(part)].annotation
        elif typing.get_origin(node) in (typing.Union, types.UnionType):  # a clean step, named by its `step` tag
            node = next((m for m in typing.get_args(node) if isinstance(m, type) and issubclass(m, BaseModel)
                         and part in typing.get_args(m.model_fields["step"].annotation)), None)
        else:
            return None
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def describe(error: dict) -> str:
    """One line per validation error, with a did-you-mean for unknown keys."""
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] != "extra_forbidden":
        message = error["msg"].removeprefix("Value error, ")
        if not key:  # a check across sections: its message names the keys, the input is the whole recipe
            return message
        return f"{key}: {message} (got {error.get('input')!r})"
    section = section_at(error["loc"][:-1])
    if section is None:
        return f"{key}: unknown key"
    known = list(section.model_fields)
    close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
    hint = f"; did you mean {'.'.join([*map(str, error['loc'][:-1]), close[0]])!r}?" if close else ""
    return f"{key}: unknown key{hint} (expected one of: {', '.join(known)})"
