"""LLaMA-Factory's chat templates, by name, as far as tuneline needs them: which are multimodal, and how each renders
the start of a user turn. Read from src/llamafactory/data/template.py at hiyouga/LLaMA-Factory
ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30: a template registered with an mm_plugin is multimodal; a user marker is the
text of format_user before {{content}} (templates whose user turn starts with no text of its own are left out).

tuneline renders with the checkpoint's own chat template, never LLaMA-Factory's: a recipe's `data.template` is a check
that the two agree, so that a model trained here answers as it would have from LLaMA-Factory.
"""

from __future__ import annotations

from engine.errors import RecipeError

MULTIMODAL_TEMPLATES = {'llava_next_video', 'paligemma', 'paligemma_chat', 'youtu_vl', 'minicpm_v', 'gemma4n', 'kimi_vl', 'llava_next_video_yi', 'qwen2_omni', 'qwen3_5', 'glm4_5v', 'keye_vl', 'qwen3_5_nothink', 'mllama', 'qwen3_vl', 'intern_s1', 'gemma4', 'qwen3_vl_nothink', 'yi_vl', 'gemma3', 'ministral3', 'minicpm_v_4_6', 'mistral_small', 'llava_next_mistral', 'qwen3_6', 'llava_next_llama3', 'llava_next', 'gemma3n', 'llava_next_video_mistral', 'llava', 'video_llava', 'dots_ocr', 'ernie_vl', 'intern_vl', 'llava_next_yi', 'minicpm_o', 'pixtral', 'mimo_vl', 'granite3_vision', 'llama4', 'lfm2_vl', 'qwen2_audio', 'glm_ocr', 'qwen3_omni_nothink', 'glm4v', 'qwen3_omni', 'llava_next_qwen', 'moss_vl', 'qwen2_vl'}
USER_MARKERS = {
    'aeva': '<|user|>\n',
    'alpaca': '### Instruction:\n',
    'bailing': '<role>HUMAN</role>',
    'bailing_v2': '<role>HUMAN</role>',
    'breeze': '[INST] ',
    'chatml': '<|im_start|>user\n',
    'chatml_de': '<|im_start|>user\n',
    'cpm4': '<|im_start|>user\n',
    'dbrx': '<|im_start|>user\n',
    'deepseek': 'User: ',
    'deepseek3': '<｜User｜>',
    'deepseekcoder': '### Instruction:\n',
    'deepseekr1': '<｜User｜>',
    'default': 'Human: ',
    'ernie': '<|im_start|>user\n',
    'ernie_nothink': 'User: ',
    'exaone': '[|user|]',
    'falcon': 'User: ',
    'falcon_h1': '<|im_start|>user\n',
    'gemma': '<start_of_turn>user\n',
    'gemma2': '<start_of_turn>user\n',
    'glm4': '<|user|>\n',
    'glm4_7': '<|user|>\n',
    'glm4_moe': '<|user|>\n',
    'glmz1': '<|user|>\n',
    'gpt_oss': '<|start|>user<|message|>',
    'hunyuan_small': '<｜hy_User｜>',
    'hy3': '<｜hy_User｜>',
    'hy_dense_1_8b': '<｜hy_User｜>',
    'index': 'reserved_0',
    'intern2': '<|im_start|>user\n',
    'lfm2': '<|im_start|>user\n',
    'llama3': '<|start_header_id|>user<|end_header_id|>\n\n',
    'mimo': '<|im_start|>user\n',
    'mimo_v2': '<|im_start|>user\n',
    'minimax2': ']~b]user\n',
    'ministral': '[INST]',
    'mistral': '[INST] ',
    'olmo': '<|user|>\n',
    'openchat': 'GPT4 Correct User: ',
    'opencoder': '<|im_start|>user\n',
    'phi': '<|user|>\n',
    'phi4_mini': '<|user|>',
    'phi_small': '<|user|>\n',
    'qwen': '<|im_start|>user\n',
    'qwen3': '<|im_start|>user\n',
    'qwen3_nothink': '<|im_start|>user\n',
    'sailor': '<|im_start|>question\n',
    'smollm': '<|im_start|>user\n',
    'smollm2': '<|im_start|>user\n',
    'solar': '### User:\n',
    'starchat': '<|user|>\n',
    'telechat2': '<_user>',
    'vicuna': 'USER: ',
    'xuanyuan': 'Human: ',
    'yi': '<|im_start|>user\n',
    'youtu': '<|User|>',
    'zephyr': '<|user|>\n',
}

PROBE = "tuneline-template-probe"


def check_template(tokenizer, name: str | None) -> None:
    """data.template: the checkpoint's chat template must start a user turn as LLaMA-Factory's template `name` does
    (RecipeError naming both renderings otherwise)."""
    if name is None:
        return
    if name in MULTIMODAL_TEMPLATES:
        raise RecipeError(f"data.template {name!r} is a multimodal LLaMA-Factory template: tuneline trains text-only "
                          "models")
    if name not in USER_MARKERS:
        raise RecipeError(f"data.template {name!r}: not a LLaMA-Factory text template whose user turn tuneline can "
                          f"compare (known: {', '.join(sorted(USER_MARKERS))}); remove the key to use the checkpoint's "
                          "own template unchecked")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False,
                                             add_generation_prompt=True)
    before = rendered[:rendered.find(PROBE)]
    if not before.endswith(USER_MARKERS[name]):
        raise RecipeError(f"data.template {name!r}: the checkpoint's chat template starts a user turn with "
                          f"{before[-40:]!r}, LLaMA-Factory's {name} template with {USER_MARKERS[name]!r}; tuneline "
                          "renders with the checkpoint's own template: remove data.template, or use the checkpoint "
                          "that template belongs to")
