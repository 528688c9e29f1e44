"""One module per algorithm family; each exposes a config dataclass and `train(cfg, logger, evaluator)`."""

from classic_rl.algos import ppo

ALGOS = {"ppo": (ppo.PPOConfig, ppo.train)}
