"""What every training loop stands on, classic RL and RLHF alike (no `transformers` here).

    errors.py       the three exceptions a run can end with, and the input checks that raise ConfigError
    cli.py          dataclass configs as command lines (kebab and snake flags, --config FILE, one-line errors)
    run_folder.py   the run folder: creating it, atomic writes, config.json, seeding
    checkpoints.py  Checkpoints: when one is due, writing it, resuming from the newest; Ctrl-C as a request
    metrics.py      RunLogger (metrics.jsonl + TensorBoard) and MeanStats
    plots.py        PNG line and scatter plots
"""
