"""The speed levers' decisions, as the trainers receive them: padding-free SFT batches where they pay, the
SFT loss beside DPO's (pref_ftx), no training process where nothing is trained, and the start-up's imports
without the cycle collector. (Their speed is measured by bench/train_throughput.py, never in a test.)"""

import gc
import random

import pytest
import torch

from engine.models.attention import ROW_SDPA, training_attention
from engine.models.device import TrainingKernels, training_kernels
from engine.recipe import DpoSection, SftSection, load_recipe
from engine.runtime.startup import collector_paused
from engine.train.dpo import dpo_arguments
from engine.train.lm_head import labelled_positions_only
from engine.train.sft import padding_free, sft_arguments


def row_lengths(n: int, low: int, high: int) -> list[int]:
    generator = random.Random(0)
    return [generator.randint(low, high) for _ in range(n)]


def test_an_explicit_padding_free_key_wins():
    lengths = row_lengths(256, 20, 80)
    assert padding_free(SftSection(padding_free=True), lengths, 128) is True
    assert padding_free(SftSection(padding_free=False), lengths, 4096) is False
    assert padding_free(SftSection(packing=True), lengths, 128) is True  # packed sequences carry no padding either


def test_unset_padding_free_is_on_where_rows_attend_within_themselves():
    short_rows = row_lengths(512, 20, 70)
    # sdpa trains as the row attention (engine/models/attention.py), FlashAttention-2 has its varlen kernel and FlexAttention
    # a block-sparse mask: each row attends at its own cost, so flattening only saves the padding
    for implementation in ("sdpa", "flash_attention_2", "flex_attention"):
        cfg = SftSection(per_device_train_batch_size=32, attn_implementation=implementation)
        assert padding_free(cfg, short_rows, 128) is True, implementation


def test_unset_padding_free_with_eager_follows_the_cost_of_attention_over_the_flattened_batch():
    short_rows = row_lengths(512, 20, 70)
    # a wide model: the padding's linear-layer compute outweighs attention over 16 rows laid end to end
    assert padding_free(SftSection(per_device_train_batch_size=16, attn_implementation="eager"), short_rows,
                        512) is True
    # a narrow one: 32 rows end to end make attention (quadratic in the batch's tokens) the larger cost
    assert padding_free(SftSection(per_device_train_batch_size=32, attn_implementation="eager"), short_rows,
                        128) is False
    # rows of one length have no padding to save
    assert padding_free(SftSection(per_device_train_batch_size=16, attn_implementation="eager"), [40] * 64,
                        512) is False


def test_sft_arguments_carry_the_decision(tmp_path):
    flat = sft_arguments(SftSection(), 128, tmp_path, flat=True)
    assert flat.padding_free and flat.max_length is None  # rows are truncated to cutoff_len by formatted_data
    padded = sft_arguments(SftSection(), 128, tmp_path, flat=False)
    assert not padded.padding_free and padded.max_length == 128 and not padded.gradient_checkpointing
    # tokens/s counts a flat batch whole (it has no padding) and a padded one without its padding
    assert (flat.include_num_input_tokens_seen, padded.include_num_input_tokens_seen) == ("all", "non_padding")


def test_training_processes_keep_freed_memory_for_reuse_unless_the_caller_says_otherwise(monkeypatch):
    from engine.train.launch import ALLOCATOR, training_environment
    for name in ALLOCATOR:  # the caller's own settings would win
        monkeypatch.delenv(name, raising=False)
    assert training_environment() == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert "MALLOC_MMAP_MAX_" not in training_environment()  # the caller's own setting stands


def test_pref_ftx_adds_the_sft_loss_on_chosen_answers(tmp_path):
    plain = dpo_arguments(DpoSection(), 128, tmp_path)
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights == [1.0] and plain.precompute_ref_log_probs
    mixed = dpo_arguments(DpoSection(pref_loss="ipo", pref_ftx=0.5), 128, tmp_path)
    assert mixed.loss_type == ["ipo", "sft"] and mixed.loss_weights == [1.0, 0.5]


def test_continued_pretraining_off_starts_no_training_process():
    from engine.graph import PT_MODEL as STAGE
    recipe = load_recipe("tiny")[0]
    assert not recipe.pt.dataset and not STAGE.runs_out_of_process(recipe)  # it only names the base model
    assert STAGE.runs_out_of_process(load_recipe("tiny", {"pt.dataset": ["pt_corpus"]})[0])


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_for_the_imports_and_restored(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(ImportError), collector_paused():
            import a_module_that_does_not_exist  # noqa: F401
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize(("device", "row_attention", "labelled_lm_head"),
                         [("cpu", True, True), ("cuda", False, False)])
def test_the_device_policy_chooses_attention_and_lm_head_per_device(device, row_attention, labelled_lm_head):
    """On a CPU tuneline's row attention and labelled-only LM head; on a GPU what stock TRL at its best runs there
    (transformers' sdpa over the flattened batch, TRL's own LM head). Device objects only: no GPU needed."""
    on = torch.device(device)
    assert training_kernels(on) == TrainingKernels(row_attention=row_attention, labelled_lm_head=labelled_lm_head)
    assert training_attention("sdpa", on=on) == (ROW_SDPA if row_attention else "sdpa")
    for named in ("eager", "flash_attention_2", "flex_attention"):  # other implementations train as named
        assert training_attention(named, on=on) == named


def test_the_lm_head_switch_changes_trls_decision_only_where_the_policy_says():
    from trl.trainer import utils
    trl_decision = utils._use_triton
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with labelled_positions_only():
        assert utils._use_triton(cpu) is True  # labelled positions only on a CPU
        assert utils._use_triton(cuda) == trl_decision(cuda)  # TRL's own choice on a GPU (Triton where present)
    assert utils._use_triton is trl_decision
