"""A trained reward model read as a reward function (`--reward rm:DIR`): what text it reads and where its
score is taken. Training it is reward_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoConfig, AutoModelForSequenceClassification

from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import Completion, Prompt, render_completion, render_prompt
from rlhf_toy.generation.sampling import context_length
from rlhf_toy.lm.models import is_adapter_folder, load_tokenizer, position_ids


def sequence_texts(tokenizer, prompts: list[Prompt], responses: list[Completion]) -> list[str]:
    """What the reward model reads: the prompt as the policy reads it, then the response up to what ends it (eos, or a
    chat template's end of turn; chat.render_completion). Its score is read at the last token that is not padding: that
    one, or, where the tokenizer pads with its eos (GPT-2's, which has no pad token), the response's last token, as TRL's
    RewardTrainer reads it too."""
    return [render_prompt(tokenizer, p) + render_completion(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Scalar scores `[N]`. Padding and truncation are on the left, so each text ends at the last position, also
    when it is longer than the context; the model reads its score at the last token that is not padding
    (sequence_texts). Positions count from each text's first token, so a text's score does not depend on the padding
    that the longest text of its batch gives it."""
    scores = []
    tokenizer.truncation_side = "left"
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=context_length(model), add_special_tokens=False).to(model.device)
        scores.append(model(**batch, position_ids=position_ids(batch["attention_mask"])).logits.squeeze(-1).float())
    return torch.cat(scores)


def load_reward_model(model_dir: str):
    """A reward model folder of train_reward_model.py as a plain AutoModelForSequenceClassification with one output: a whole
    model, or LoRA adapters (with --use-peft), merged into their base model's weights here."""
    if is_adapter_folder(model_dir):
        if json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("task_type") != "SEQ_CLS":
            raise ConfigError(f"{model_dir} holds LoRA adapters of a causal LM, not of a reward model; pass the model/ folder of "
                              "scripts/train_reward_model.py (rm:RUN_DIR/model)")
        return AutoPeftModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).merge_and_unload()
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"reward model folder {model_dir} not found (no config.json); train one with "
                          "scripts/train_reward_model.py and pass rm:RUN_DIR/model")
    labels = AutoConfig.from_pretrained(model_dir).num_labels
    if labels != 1:  # a causal LM's config says 2, and the class would load it with a fresh, random head
        raise ConfigError(f"{model_dir} is not a reward model: it has {labels} outputs, a reward model 1; pass the "
                          "model/ folder of scripts/train_reward_model.py (rm:RUN_DIR/model)")
    return AutoModelForSequenceClassification.from_pretrained(model_dir)


class RewardModelScorer:
    """A saved reward model as a reward function (`rm:DIR`)."""

    def __init__(self, model_dir: str):
        self.model = load_reward_model(model_dir).eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.__name__ = f"rm:{model_dir}"

    @torch.inference_mode()
    def __call__(self, prompts: list[Prompt], completions: list[Completion], **_) -> list[float]:
        return score_texts(self.model, self.tokenizer, sequence_texts(self.tokenizer, prompts, completions)).tolist()
