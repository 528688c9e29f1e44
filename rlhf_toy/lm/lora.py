"""How a trainer holds the model it trains. LoRA through peft, with TRL's flag names (`--use-peft`, `--lora-r`, `--lora-alpha`, `--lora-dropout`,
`--lora-target-modules`): the model's weights stay frozen and only low-rank adapters train,

    W x  ->  W x + (alpha / r) B A x,     A `[r, in]` random, B `[out, r]` zero, so training starts at the model itself

and, as in TRL, the reference of a LoRA run is the policy with its adapters disabled (`AdapterDisabled`): no second
copy of the weights is held, and at the first step the two are the same model, exactly. Checkpoints and the saved
policy hold the adapters (`adapter_model.safetensors`, loadable by `AutoPeftModelForCausalLM`); `--save-merged-model`
also writes the merged weights (loadable by `AutoModelForCausalLM`). `--gradient-checkpointing` trades compute for
activation memory, as transformers does it.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_positive
from rlhf_toy.lm.models import evaluation_mode


@dataclass
class ModelFields:
    """How an LM trainer holds the model it trains (mixed into every LM trainer's config): LoRA adapters, gradient
    checkpointing, sharding over processes."""

    use_peft: bool = config_field(False, "Train LoRA adapters (peft) instead of every weight; the reference is then the policy "
                                         "with its adapters disabled, so no second copy of the weights is held (as TRL)")
    lora_r: int = config_field(16, "LoRA rank r")
    lora_alpha: int = config_field(32, "LoRA alpha: the adapters' update is scaled by alpha / r")
    lora_dropout: float = config_field(0.05, "Dropout on the adapters' input (zeroed by --disable-dropout, as in TRL)")
    lora_target_modules: list[str] | None = config_field(None, "Modules that get adapters (default: peft's choice for the "
                                                              "architecture: c_attn for GPT-2, q_proj and v_proj for "
                                                              "Llama/Qwen2); all-linear for every linear layer but the output")
    save_merged_model: bool = config_field(False, "With --use-peft, also write the adapters merged into the weights to "
                                                  "RUN_DIR/merged (a plain model folder)")
    gradient_checkpointing: bool = config_field(False, "Recompute each layer's activations in the backward instead of keeping "
                                                       "them: less memory for about a third more compute (TRL's flag)")
    fsdp: bool = config_field(False, "In a launched run of N processes, shard the parameters, gradients and optimizer state "
                                     "over them with FSDP2 (each holds 1/N) instead of a whole copy each (DDP)")

    def check_lora(self) -> None:
        require_positive(lora_r=self.lora_r, lora_alpha=self.lora_alpha)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.save_merged_model and not self.use_peft:
            raise ConfigError("--save-merged-model merges LoRA adapters; give --use-peft too")

    def lora_config(self, task_type: str = "CAUSAL_LM", fan_in_fan_out: bool = False) -> LoraConfig:
        targets = self.lora_target_modules
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, task_type=task_type,
                          target_modules=targets[0] if targets == ["all-linear"] else targets, fan_in_fan_out=fan_in_fan_out)


def with_lora(model: PreTrainedModel, fields: ModelFields, task_type: str = "CAUSAL_LM") -> PeftModel:
    """model with fresh adapters (its own weights frozen), or a ConfigError naming what peft could not adapt."""
    conv1d = any(isinstance(module, Conv1D) for module in model.modules())  # GPT-2 keeps its linear weights [in, out]
    try:
        return get_peft_model(model, fields.lora_config(task_type, fan_in_fan_out=conv1d))
    except ValueError as err:  # target modules not found, or no default for this architecture
        raise ConfigError(f"--use-peft on a {model.config.model_type} model: {str(err).splitlines()[0]}; accepted: "
                          "--lora-target-modules naming its linear layers, or all-linear") from None


def prepare_for_training(model, fields: ModelFields):
    """model with gradient checkpointing on where asked (non-reentrant: it needs no gradient on the inputs, which frozen
    embeddings under LoRA would not give)."""
    if fields.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def is_peft(model) -> bool:
    return isinstance(model, PeftModel)


def trunk_of(model) -> torch.nn.Module:
    """The transformer without its language-model head (GPT2Model, LlamaModel), adapters included."""
    return (model.get_base_model() if is_peft(model) else model).base_model


def adapters_disabled(model) -> contextlib.AbstractContextManager:
    """A block in which a LoRA model computes as its base model (a no-op for any other model)."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


class AdapterDisabled(torch.nn.Module):
    """The reference of a LoRA run: the policy's forward with its adapters switched off (TRL's `disable_adapter()`), in
    eval mode, holding no weights of its own (the policy is not a submodule: moving, casting or switching the mode of the
    reference leaves it alone). Used where a reference is only run forward (log-probs, KL)."""

    def __init__(self, policy: PeftModel):
        super().__init__()
        object.__setattr__(self, "policy", policy)

    def forward(self, *args, **kwargs):
        with evaluation_mode(self.policy), self.policy.disable_adapter():
            return self.policy(*args, **kwargs)

    @property
    def config(self):
        return self.policy.config

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.policy.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self.policy.device


def save_merged(model: PeftModel, tokenizer, folder: Path) -> None:
    """The adapters merged into a copy of the weights, saved as a plain model folder (AutoModelForCausalLM)."""
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def trainable_model(load, model_name: str, resume_dir: Path | None, fields: ModelFields, task_type: str = "CAUSAL_LM"):
    """The model a trainer trains: load(name) of model_name (or of the checkpoint's model/ on resume), or with --use-peft
    model_name's weights with adapters, fresh or the checkpoint's; with gradient checkpointing where asked."""
    if not fields.use_peft:
        return prepare_for_training(load(str(resume_dir) if resume_dir else model_name), fields)
    base = load(model_name)
    return prepare_for_training(load_adapted(base, resume_dir) if resume_dir else with_lora(base, fields, task_type), fields)


def load_adapted(base: PreTrainedModel, adapter_dir: str | Path, trainable: bool = True) -> PeftModel:
    """base with the adapters saved in adapter_dir (a checkpoint's or a run's model/ folder)."""
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
