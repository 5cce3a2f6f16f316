"""The whole recipe: its sections, the training stages it runs, and the checks that span sections."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from engine.recipe.clean import CleanSection
from engine.recipe.data import DataSection
from engine.recipe.evaluation import EvaluationSection
from engine.recipe.export import MergeSection, QuantizeSection
from engine.recipe.fields import Section
from engine.recipe.grpo import GrpoSection
from engine.recipe.launcher import LauncherSection
from engine.recipe.model import ModelSection
from engine.recipe.ppo import PpoSection
from engine.recipe.retention import RetentionSection
from engine.recipe.schedule import ScheduleSection
from engine.recipe.serve import ServeSection
from engine.recipe.training import DpoSection, PtSection, RewardSection, SftSection, StageName


ONLINE_RL = ("ppo", "grpo")  # a recipe runs at most one


class Recipe(Section):
    """One YAML file describes a whole run. Keys follow LLaMA-Factory's names where one exists."""
    name: str = Field("tiny", description="the run's name: served models are called <name>-<serve.model> unless "
                                          "serve.served_model_name says otherwise")
    stages: list[StageName] = Field(
        ["sft", "rm", "dpo"], description="the training stages that run, as LLaMA-Factory's `stage:` names them "
        "(pt, sft, rm, dpo, kto, ppo; grpo: online RL, tuneline's own); the others say \"not configured\". "
        "Any list: [dpo] alone trains DPO on the base model (or model.adapter_name_or_path); [] exports the base model (with its adapters) through merge, "
        "quantization, evaluation and deployment; kto is dpo with dpo.pref_loss kto")
    model: ModelSection = Field(ModelSection(), description="the base model, its adapters and precision")
    data: DataSection = Field(DataSection(), description="the datasets, chat-template rendering and train/eval split")
    clean: CleanSection = Field(CleanSection(), description="the cleaning steps, in order, and the clean_data checks")
    pt: PtSection = Field(PtSection(), description="continued pre-training on raw text (LLaMA-Factory's stage pt)")
    sft: SftSection = Field(SftSection(), description="supervised fine-tuning (LLaMA-Factory's stage sft)")
    reward: RewardSection = Field(RewardSection(), description="the reward model (LLaMA-Factory's stage rm)")
    dpo: DpoSection = Field(DpoSection(), description="preference training: DPO, IPO, ORPO or KTO (LLaMA-Factory's "
                                                      "stages dpo and kto)")
    ppo: PpoSection = Field(PpoSection(), description="online RL by PPO against a reward model (LLaMA-Factory's "
                                                      "stage ppo), hand-written: the pinned TRL has no PPOTrainer")
    grpo: GrpoSection = Field(GrpoSection(), description="online RL with GRPO from the SFT (and DPO) model, on the SFT "
                                                         "view's prompts (TRL's GRPOTrainer)")
    merge: MergeSection = Field(MergeSection(), description="the trained adapters merged into the base model")
    quantize: QuantizeSection = Field(QuantizeSection(), description="the GPTQ and AWQ exports of the merged model")
    evaluation: EvaluationSection = Field(EvaluationSection(), description="what every eval_* stage measures")
    serve: ServeSection = Field(ServeSection(), description="the deployment and `tuneline serve`")
    retention: RetentionSection = Field(RetentionSection(), description="how many artifacts each asset keeps")
    schedule: ScheduleSection = Field(ScheduleSection(), description="the retrain schedule and the incoming-data "
                                                                     "sensor")
    launcher: LauncherSection = Field(LauncherSection(), description="how training processes start: one process, "
                                                                     "torchrun, accelerate or Kubernetes pods")

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
        if len(online := [s for s in self.stages if s in ONLINE_RL]) > 1:
            raise ValueError(f"stages {self.stages} names {' and '.join(online)}: name one online RL stage")
        if "ppo" in self.stages and "rm" not in self.stages and not self.ppo.reward_model:
            raise ValueError(f"stages {self.stages} names ppo but no reward model: add rm to stages, or set "
                             "ppo.reward_model to a sequence-classification checkpoint folder")
        if "ppo" in self.stages and "rm" in self.stages and self.ppo.reward_model:
            raise ValueError(f"stages {self.stages} names rm, so ppo uses the graph's reward_model, and ppo.reward_model "
                             f"({self.ppo.reward_model}) would be ignored: unset it, or take rm out of stages")
        if "grpo" in self.stages and self.grpo.uses_reward_model() and "rm" not in self.stages:
            raise ValueError("grpo.rewards names a reward_model reward, but rm is not in stages: add rm, or score "
                             "with exact_match, format, length or scorer rewards")
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
