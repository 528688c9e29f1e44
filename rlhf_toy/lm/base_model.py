"""The default base policy: pretrained from the project's own corpus on first use (about 1 minute on
2 cores with bf16 units, 2 without) and cached, so every command that needs a model without --model finds one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rlhf_toy.data import DATA_DIR
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain

BASE_MODEL_VERSION = "v4"  # bump when the corpus or recipe changes, so cached models are rebuilt (v3: bf16 where fast; v4: 400 steps, not 600)
ARITHMETIC_MODEL_VERSION = "v1"  # likewise for the arithmetic base model
BASE_MODELS = ("default", "arithmetic")  # the built-in base models: the little world's stories and answers, or those and sums


def cache_home() -> Path:
    """Where built artefacts are cached: $RLHF_TOY_HOME, else ~/.cache/rlhf-toy."""
    return Path(os.environ.get("RLHF_TOY_HOME", Path.home() / ".cache" / "rlhf-toy"))


def default_base_model(preset: str = "tiny", arithmetic: bool = False) -> str:
    """Folder of the default base policy (or with arithmetic, the one that has also read worked arithmetic),
    pretrained once with PretrainConfig's defaults and cached.

    Built in a temporary folder and renamed into place, so an interrupted build is never reused.
    """
    name = f"base-{preset}-arithmetic-{ARITHMETIC_MODEL_VERSION}" if arithmetic else f"base-{preset}-{BASE_MODEL_VERSION}"
    final = cache_home() / name
    if (final / "model" / "config.json").is_file():
        return str(final / "model")
    final.parent.mkdir(parents=True, exist_ok=True)
    building = final.with_name(final.name + ".building")
    print(f"building the {'arithmetic' if arithmetic else 'default'} base model ({preset}) once into {final} ...")
    # the arithmetic model keeps the recipe its pass@k was measured with (bench/reasoning.md): fp32, 1200 steps
    recipe = dict(max_steps=1200, learning_rate=3e-3, min_lr_ratio=0.1, warmup_steps=60, precision="fp32") if arithmetic else {}
    pretrain(PretrainConfig(preset=preset, data_dir=str(DATA_DIR), arithmetic=arithmetic, run_dir=str(building), overwrite=True, **recipe))
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    return str(final / "model")
