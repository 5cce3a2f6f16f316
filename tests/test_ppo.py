"""PPO (hand-written, engine/train/ppo_loop.py): its maths against hand computations and a toy problem, the recipe's
refusals, and the stage on the tiny model."""

import math

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from engine.recipe import Recipe
from engine.recipe.ppo import PpoSection
from engine.train.ppo_loop import AdaptiveKLController, PpoSettings, Rollouts, gae, ppo_update, token_rewards, whiten


def test_gae_matches_a_hand_computation():
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    rewards = torch.tensor([[0.0, 0.1, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is past the row's end: it counts for nothing
    gamma, lam = 0.9, 0.8
    # by hand, backwards: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}
    d2 = 1.0 + 0.9 * 0 - 0.1
    d1 = 0.1 + 0.9 * 0.1 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    advantages, returns = gae(values, rewards, mask, gamma, lam)
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1, 0.0]]))


def test_token_rewards_put_the_score_on_the_last_completion_token_minus_the_kl():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    logprobs, ref = torch.full((2, 4), -1.0), torch.full((2, 4), -1.5)
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.2)
    assert torch.allclose(kl, 0.5 * mask)
    assert torch.allclose(rewards, torch.tensor([[0.0, -0.1, 1.9, 0.0], [0.0, 0.0, -0.1, -1.1]]))


def test_whiten_gives_zero_mean_unit_variance_over_the_mask():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)[mask.bool()]
    assert abs(w.mean().item()) < 1e-6 and abs(w.var(unbiased=False).item() - 1) < 1e-4


def test_adaptive_kl_moves_toward_its_target_and_a_fixed_one_does_not():
    up, down, fixed = (AdaptiveKLController(0.2, 6.0), AdaptiveKLController(0.2, 6.0),
                       AdaptiveKLController(0.2, 6.0, adaptive=False))
    up.update(12.0, 1000)  # KL above target: a larger penalty (error clipped at +0.2)
    down.update(0.0, 1000)
    fixed.update(12.0, 1000)
    assert math.isclose(up.value, 0.2 * 1.02) and math.isclose(down.value, 0.2 * 0.98) and fixed.value == 0.2


class ToyPolicy(torch.nn.Module):
    """A one-token bandit over 4 tokens after a fixed prompt token, with a value head: reward 1 for token 3."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(4))
        self.value = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        n, length = input_ids.shape
        return self.logits.expand(n, length, 4), self.value.expand(n, length)


def test_a_toy_policy_learns_the_rewarded_token():
    torch.manual_seed(0)
    model = ToyPolicy()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    settings = PpoSettings(ppo_epochs=2, mini_batch_size=16, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2,
                           vf_coef=0.1, whiten_rewards=False)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rewarded = []
    for _ in range(30):
        with torch.no_grad():
            tokens = torch.distributions.Categorical(logits=model.logits).sample((32,))
            ids = torch.stack([torch.zeros_like(tokens), tokens], 1)
            logprobs = torch.log_softmax(model.logits, -1)[tokens][:, None]
            rollouts = Rollouts(ids, torch.ones_like(ids), torch.ones(32, 1), logprobs, logprobs.clone(),
                                model.value.expand(32, 1).clone(), (tokens == 3).float())
        ppo_update(model, rollouts, 0.0, settings, step)
        rewarded.append(rollouts.scores.mean().item())
    assert sum(rewarded[-5:]) / 5 > sum(rewarded[:5]) / 5 + 0.3
    assert torch.softmax(model.logits, -1)[3] > 0.8


def test_ppo_needs_a_reward_model():
    with pytest.raises(ValidationError, match="names ppo but no reward model: add rm to stages, or set ppo.reward_model"):
        Recipe(stages=["sft", "ppo"])
    assert Recipe(stages=["sft", "ppo"], ppo={"reward_model": "/somewhere/rm"}).ppo.reward_model == "/somewhere/rm"


def test_ppo_refuses_a_reward_model_it_cannot_use():
    with pytest.raises(ValidationError, match="reward_model_type lora: only full"):
        PpoSection(reward_model_type="lora")
    with pytest.raises(ValidationError, match="ppo.reward_model .* would be ignored"):
        Recipe(stages=["sft", "rm", "ppo"], ppo={"reward_model": "/somewhere/rm"})


def test_every_ppo_field_is_described():
    assert all(f.description for f in PpoSection.model_fields.values())


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, formatted_dir, tmp_path_factory):
    from engine.recipe import RewardSection
    from engine.train.reward import train_reward
    rm = tmp_path_factory.mktemp("rm")
    train_reward(tiny_model_dir, formatted_dir, RewardSection(max_steps=2, per_device_train_batch_size=16), 128, rm)
    return rm


@pytest.mark.slow
def test_ppo_trains_on_the_tiny_model_and_writes_its_rollouts(tiny_model_dir, formatted_dir, reward_dir, tmp_path):
    from engine.train.ppo import train_ppo
    rm = reward_dir
    out = tmp_path / "ppo"
    out.mkdir()
    from engine.train.live import points_to
    points = []
    with points_to(points.append):
        metrics = train_ppo(tiny_model_dir, [], rm, formatted_dir,
                            PpoSection(max_steps=3, max_new_tokens=8, ppo_epochs=2, learning_rate=1e-3), out)
    # the live points carry each step's mean reward, KL and value loss (at most 4 a second: the last one at least)
    assert points and all({"train/reward", "train/kl", "train/value_loss"} <= set(p) for p in points)
    assert points[-1]["step"] == 3
    curve = metrics["reward_curve"]
    assert [p["step"] for p in curve] == [1, 2, 3] and metrics["steps"] == 3
    assert all(math.isfinite(p[k]) for p in curve for k in ("reward", "kl", "value_loss"))
    assert any(p["kl"] != 0 for p in curve[1:])  # the policy moved away from its reference
    assert metrics["train_prompts"] == 12 and metrics["offered_prompts"] == metrics["formatted_train_rows"] > 12
    assert metrics["prompts_dropped"] == {f"not reached: training stopped at max_steps {metrics['steps']}":
                                          metrics["offered_prompts"] - 12}
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "_trainer").exists()
    rollouts = pd.read_parquet(out / "rollouts.parquet")
    assert list(rollouts.columns) == ["step", "prompt", "completion", "score", "kl"]
    assert len(rollouts) == metrics["rollout_rows"] == 12 and rollouts["prompt"].str.contains("user").all()


EXAMPLES = "tests/fixtures/llamafactory/examples"  # LLaMA-Factory's examples/train_lora/llama3_lora_{sft,reward,ppo}.yaml


def test_llamafactory_s_ppo_example_imports_with_its_reward_model_and_generating_keys():
    from pathlib import Path

    import yaml

    from engine.importers.llamafactory import import_configs
    text, notes = import_configs([Path(EXAMPLES) / "llama3_lora_ppo.yaml"])
    recipe = yaml.safe_load(text)
    assert recipe["stages"] == ["ppo"]
    assert recipe["ppo"]["reward_model"] == "saves/llama3-8b/lora/reward"
    assert {k: recipe["ppo"][k] for k in ("max_new_tokens", "top_k", "top_p", "lora_rank")} == {
        "max_new_tokens": 512, "top_k": 0, "top_p": 0.9, "lora_rank": 8}


def test_beside_its_rm_config_an_imported_ppo_uses_the_graph_s_reward_model():
    from pathlib import Path

    import yaml

    from engine.importers.llamafactory import import_configs
    text, notes = import_configs([Path(EXAMPLES) / f"llama3_lora_{k}.yaml" for k in ("sft", "reward", "ppo")])
    recipe = yaml.safe_load(text)
    assert recipe["stages"] == ["sft", "rm", "ppo"] and "reward_model" not in recipe["ppo"]
    assert any("reward_model 'saves/llama3-8b/lora/reward' not imported" in n for n in notes)
    Recipe.model_validate(recipe)


@pytest.mark.slow
def test_a_stopped_ppo_resumes_with_its_weights_kl_coefficient_and_history(tiny_model_dir, formatted_dir, reward_dir,
                                                                           tmp_path, monkeypatch):
    """A run stopped at step 2 leaves its checkpoint (the LoRA, the value head, ppo_state.json); the rerun to step 4
    resumes from it and its reward curve runs 1..4."""
    import json

    import engine.train.skeleton
    from engine.train.ppo import train_ppo
    cfg = {"max_new_tokens": 8, "ppo_epochs": 1, "learning_rate": 1e-3, "save_steps": 2}
    out = tmp_path / "ppo"
    out.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(engine.train.skeleton, "remove_scratch", lambda out: None)  # keep its checkpoint, as a crash
        first = train_ppo(tiny_model_dir, [], reward_dir, formatted_dir, PpoSection(**cfg, max_steps=2), out)
    state = json.loads((out / "_trainer" / "checkpoint-2" / "ppo_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [1, 2] and state["kl_coef"] > 0
    resumed = train_ppo(tiny_model_dir, [], reward_dir, formatted_dir, PpoSection(**cfg, max_steps=4), out)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert [p["step"] for p in resumed["reward_curve"]] == [1, 2, 3, 4]
    assert resumed["reward_curve"][:2] == first["reward_curve"]
