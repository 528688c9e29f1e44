"""Small networks for classic control, saved and loaded as safetensors with their constructor
arguments in the file's metadata. Their speed work (an MLP that runs its own backward, numpy forwards for
rollouts, one flat parameter for Adam and the clip) is in fast_mlp.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from classic_rl import distributions
from classic_rl.fast_mlp import MLP, accumulate_grad, numpy_function
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import atomic_write


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std`, constant bias (the PPO implementation-details recipe)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, hidden_sizes: list[int], out_dim: int, out_std: float | None, activation: type[nn.Module] = nn.Tanh) -> MLP:
    """Linear -> activation stacks with orthogonal init; the last layer gets gain out_std. out_std None keeps
    torch's default init throughout, as SB3 and CleanRL build SAC's and TD3's networks."""
    layers: list[nn.Module] = []
    init = (lambda layer, std=None: layer) if out_std is None else layer_init
    for size in hidden_sizes:
        layers += [init(nn.Linear(in_dim, size)), activation()]
        in_dim = size
    layers.append(init(nn.Linear(in_dim, out_dim), std=out_std))
    return MLP(*layers)


class ObsNormalizer(nn.Module):
    """Running mean/variance of observations (Chan et al. parallel update), clipped z-scores.

    Its statistics are buffers, so they are saved and loaded with the policy that owns them.
    Disabled, it is the identity.
    """

    def __init__(self, dim: int, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """Fold a batch `[B, dim]` into the running statistics."""
        if not self.enabled:
            return
        batch = batch.to(torch.float64)
        batch_mean, batch_var, n = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.fill_(total)

    def forward(self, obs: Tensor) -> Tensor:
        if not self.enabled:
            return obs
        z = (obs - self.mean.to(obs.dtype)) / torch.sqrt(self.var.to(obs.dtype) + self.eps)
        return z.clamp(-self.clip, self.clip)


class SavableModule(nn.Module):
    """A module that remembers its constructor arguments so `load_agent` can rebuild it."""

    init_kwargs: dict

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        raise NotImplementedError


class ActorCritic(SavableModule):
    """Actor and critic MLPs over (optionally normalised) observations: separate networks, or
    (shared=True) one trunk of hidden layers with a policy head and a value head. The actor's head goes
    through `distribution` (classic_rl/distributions.py): categorical for `n_actions` discrete actions, a
    diagonal Gaussian for `action_dim` real ones.

    Rollouts call `sampler()` (a numpy function: obs `[B, obs_dim]` -> action, log-prob, value), PPO's
    update `forward_for_update`, the other algorithms `get_action_and_value` (-> action, log-prob,
    entropy, value). Observations passed in are already normalised (see `normalize`), so a rollout
    stores exactly what the update will see.
    """

    def __init__(self, obs_dim: int, n_actions: int | None = None, hidden_sizes: list[int] = (64, 64), normalize_obs: bool = False,
                 shared: bool = False, activation: str = "tanh", action_dim: int | None = None):
        super().__init__()
        self.init_kwargs = dict(obs_dim=obs_dim, n_actions=n_actions, hidden_sizes=list(hidden_sizes),
                                normalize_obs=normalize_obs, shared=shared, activation=activation, action_dim=action_dim)
        self.obs_normalizer = ObsNormalizer(obs_dim, enabled=normalize_obs)
        self.distribution = distributions.make(n_actions, action_dim)
        head_dim, act = self.distribution.head_dim, ACTIVATIONS[activation]
        self.shared = shared
        if shared:
            self.trunk = nn.Sequential(*mlp(obs_dim, hidden_sizes[:-1], hidden_sizes[-1], out_std=math.sqrt(2), activation=act), act())
            self.actor = layer_init(nn.Linear(hidden_sizes[-1], head_dim), std=0.01)
            self.critic = layer_init(nn.Linear(hidden_sizes[-1], 1), std=1.0)
        else:
            self.trunk = nn.Identity()
            self.actor = mlp(obs_dim, hidden_sizes, head_dim, out_std=0.01, activation=act)
            self.critic = mlp(obs_dim, hidden_sizes, 1, out_std=1.0, activation=act)

    def normalize(self, obs: np.ndarray, update: bool = False) -> Tensor:
        """Raw numpy observations `[B, obs_dim]` -> normalised float32 tensor (updating the stats if asked)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        if update:
            self.obs_normalizer.update(obs_t)
        return self.obs_normalizer(obs_t)

    def policy_parameters(self) -> list[nn.Parameter]:
        """The parameters pi(a|s) depends on with separate networks: the actor's and the distribution's (a log-std)."""
        return [*self.actor.parameters(), *self.distribution.parameters()]

    def get_value(self, obs: Tensor) -> Tensor:
        return self.critic(self.trunk(obs)).squeeze(-1)

    def policy_params(self, obs: Tensor) -> Tensor:
        """The action distribution's parameters at obs (see distributions)."""
        return self.distribution.params(self.actor(self.trunk(obs)))

    def get_action_and_value(self, obs: Tensor, action: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        hidden = self.trunk(obs)
        params = self.distribution.params(self.actor(hidden))
        action = self.distribution.sample(params) if action is None else action
        return action, self.distribution.log_prob(params, action), self.distribution.entropy(params), self.critic(hidden).squeeze(-1)

    def forward_for_update(self, obs: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], None]]:
        """(distribution parameters `[B, P]`, value `[B]`, backward): backward(loss) fills every parameter's
        .grad, as loss.backward() would. With separate networks only the loss's own math, from the head and
        the value on, runs on autograd, and each MLP runs its hand-written backward (see MLP)."""
        if self.shared:
            hidden = self.trunk(obs)
            return self.distribution.params(self.actor(hidden)), self.critic(hidden).squeeze(-1), Tensor.backward
        head, actor_inputs = self.actor.forward_keeping_inputs(obs)
        value, critic_inputs = self.critic.forward_keeping_inputs(obs)
        head.requires_grad_()
        value = value.squeeze(-1).requires_grad_()  # squeezed before autograd sees it: one node fewer
        own = list(self.distribution.parameters())  # a log-std: its gradient comes from autograd directly

        def backward(loss: Tensor) -> None:
            grad_head, grad_value, *grad_own = torch.autograd.grad(loss, (head, value, *own), allow_unused=True, materialize_grads=True)
            self.actor.backward_into_grads(grad_head, actor_inputs)
            self.critic.backward_into_grads(grad_value.unsqueeze(-1), critic_inputs)
            for param, grad in zip(own, grad_own, strict=True):
                accumulate_grad(param, grad)

        return self.distribution.params(head), value, backward

    def sampler(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """What a rollout step needs, for the weights as they are now: a numpy function from normalised
        float32 obs `[B, obs_dim]` to (action `[B, ...]`, log-prob `[B]`, value `[B]`) (see numpy_function),
        with the draws from torch's random stream. Make a new one after each update."""
        trunk, actor, critic = numpy_function(self.trunk), numpy_function(self.actor), numpy_function(self.critic)
        draw = self.distribution.numpy_sampler()

        def sample(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            hidden = trunk(obs)
            action, logprob = draw(actor(hidden))
            return action, logprob, critic(hidden)[:, 0]
        return sample

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations `[B, obs_dim]`: the distribution's mode, or a draw with deterministic=False."""
        return act_from(self.distribution, self.policy_params(self.normalize(obs)), deterministic)


class ContinuousActor(SavableModule):
    """An actor for a bounded Box action space (SAC's and TD3's): obs `[B, obs_dim]` -> MLP (ReLU) -> a head,
    the algorithms working in actions scaled to (-1, 1)^d, which `to_env` maps to the env's [low, high]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: list[int], low: list[float], high: list[float], head_dim: int):
        super().__init__()
        self.init_kwargs = dict(obs_dim=obs_dim, action_dim=action_dim, hidden_sizes=list(hidden_sizes), low=list(low), high=list(high))
        self.net = mlp(obs_dim, hidden_sizes, head_dim, out_std=None, activation=nn.ReLU)
        self.low, self.half_range = np.array(low, dtype=np.float32), (np.array(high, dtype=np.float32) - np.array(low, dtype=np.float32)) / 2

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions in [-1, 1] `[B, d]` -> the env's units: low + (a + 1) (high - low) / 2."""
        return self.low + (actions + 1) * self.half_range

    def scaled_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions in the env's units for raw observations `[B, obs_dim]`."""
        return self.to_env(self.scaled_action(torch.as_tensor(obs, dtype=torch.float32), deterministic).numpy())


class SquashedGaussianActor(ContinuousActor):
    """SAC's policy: a TanhGaussian (classic_rl/distributions.py) whose mean and log-std the MLP outputs."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: list[int], low: list[float], high: list[float]):
        super().__init__(obs_dim, action_dim, hidden_sizes, low, high, head_dim=2 * action_dim)
        self.distribution = distributions.TanhGaussian(action_dim)

    def forward(self, obs: Tensor) -> Tensor:
        """The distribution's parameters `[B, 2 d]`."""
        return self.distribution.params(self.net(obs))

    def scaled_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        params = self(obs)
        return self.distribution.mode(params) if deterministic else self.distribution.sample(params)


class DeterministicActor(ContinuousActor):
    """TD3's (and DDPG's) policy mu(s) = tanh(MLP(s)) in (-1, 1)^d; exploration noise is the algorithm's."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: list[int], low: list[float], high: list[float]):
        super().__init__(obs_dim, action_dim, hidden_sizes, low, high, head_dim=action_dim)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))

    def scaled_action(self, obs: Tensor, deterministic: bool) -> Tensor:
        return self(obs)


class QCritics(nn.Module):
    """n action-value networks Q_i(s, a), each an MLP (ReLU) over the observation and the action side by side:
    (obs `[B, obs_dim]`, actions in [-1, 1] `[B, d]`) -> `[n, B]`. SAC and TD3 take n = 2 and the minimum."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: list[int], n_critics: int):
        super().__init__()
        self.nets = nn.ModuleList(mlp(obs_dim + action_dim, hidden_sizes, 1, out_std=None, activation=nn.ReLU)
                                  for _ in range(n_critics))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        inputs = torch.cat([obs, actions], -1)
        return torch.stack([net(inputs).squeeze(-1) for net in self.nets])

    def first(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q_1(s, a) `[B]` alone (TD3's actor loss), without running the other critics."""
        return self.nets[0](torch.cat([obs, actions], -1)).squeeze(-1)


class QTable(SavableModule):
    """Action values `[n_states, n_actions]` as a buffer, so it saves like any other policy.

    For a Box observation space the table carries its own discretisation (`bins` per dimension
    over [low, high]), so a saved table acts on the env's raw observations anywhere.
    """

    def __init__(self, n_states: int, n_actions: int, bins: list[int] | None = None,
                 low: list[float] | None = None, high: list[float] | None = None):
        super().__init__()
        self.init_kwargs = dict(n_states=n_states, n_actions=n_actions, bins=bins, low=low, high=high)
        self.bins = None if bins is None else np.array(bins)
        self.low, self.high = (None if x is None else np.array(x, dtype=np.float64) for x in (low, high))
        self.register_buffer("q", torch.zeros(n_states, n_actions, dtype=torch.float64))

    def state_index(self, obs: np.ndarray) -> np.ndarray:
        """Integer states `[B]`. Box observations `[B, d]`: each dimension is clipped to [low, high],
        cut into equal-width bins, and the bin indices are flattened row-major."""
        if self.bins is None:
            return np.asarray(obs, dtype=np.int64)
        fraction = (np.asarray(obs, dtype=np.float64) - self.low) / (self.high - self.low)
        cells = np.clip((fraction * self.bins).astype(np.int64), 0, self.bins - 1)
        return np.ravel_multi_index(tuple(cells.T), tuple(self.bins))

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Greedy actions for a batch of observations (ties broken towards the lowest action)."""
        return self.q[torch.as_tensor(self.state_index(obs))].argmax(-1).numpy()


class QNetwork(SavableModule):
    """Action values from an MLP: obs `[B, obs_dim]` -> Q `[B, n_actions]`.

    dueling=True splits the last layer into a state value V and advantages A and recombines
    them as Q = V + A - mean(A) (Wang et al. 2016), which makes V identifiable.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: list[int], dueling: bool = False):
        super().__init__()
        self.init_kwargs = dict(obs_dim=obs_dim, n_actions=n_actions, hidden_sizes=list(hidden_sizes), dueling=dueling)
        self.dueling = dueling
        width = hidden_sizes[-1]
        self.trunk = mlp(obs_dim, hidden_sizes[:-1], width, out_std=math.sqrt(2), activation=nn.ReLU)
        self.head = nn.Sequential(nn.ReLU(), layer_init(nn.Linear(width, n_actions + int(dueling)), std=1.0))

    def forward(self, obs: Tensor) -> Tensor:
        out = self.head(self.trunk(obs))
        if not self.dueling:
            return out
        value, advantages = out[:, :1], out[:, 1:]
        return value + advantages - advantages.mean(1, keepdim=True)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self(torch.as_tensor(obs, dtype=torch.float32)).argmax(-1).numpy()


class SoftmaxPolicy(SavableModule):
    """pi(.|s) = softmax(f(s)) with f linear (weights `[obs_dim, n_actions]`, starting at zero, with an
    optional bias) or an MLP (`activation` between its hidden layers)."""

    def __init__(self, obs_dim: int, n_actions: int, kind: str = "linear", hidden_sizes: list[int] | None = None,
                 activation: str = "tanh", bias: bool = True):
        super().__init__()
        self.init_kwargs = dict(obs_dim=obs_dim, n_actions=n_actions, kind=kind, hidden_sizes=list(hidden_sizes or []),
                                activation=activation, bias=bias)
        self.kind, self.distribution = kind, distributions.Categorical(n_actions)
        if kind == "linear":
            self.weight = nn.Parameter(torch.zeros(obs_dim, n_actions, dtype=torch.float64))
            self.bias = nn.Parameter(torch.zeros(n_actions, dtype=torch.float64)) if bias else None
        else:
            self.net = mlp(obs_dim, hidden_sizes or [64], n_actions, out_std=0.01, activation=ACTIVATIONS[activation])

    def logits(self, obs: Tensor) -> Tensor:
        if self.kind == "linear":
            logits = obs.to(torch.float64) @ self.weight
            return logits if self.bias is None else logits + self.bias
        return self.net(obs.float())

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for observations `[B, obs_dim]`: argmax, or sampled from pi when deterministic=False."""
        return act_from(self.distribution, self.logits(torch.as_tensor(obs)), deterministic)


def act_from(distribution: distributions.ActionDistribution, params: Tensor, deterministic: bool) -> np.ndarray:
    """Actions `[B, ...]` from a distribution's parameters: its mode, or a draw."""
    return (distribution.mode(params) if deterministic else distribution.sample(params)).numpy()


MODEL_CLASSES: dict[str, type[SavableModule]] = {
    cls.__name__: cls for cls in (ActorCritic, QTable, QNetwork, SoftmaxPolicy, SquashedGaussianActor, DeterministicActor)
}


def save_agent(model: SavableModule, path: str | Path) -> None:
    """Weights and buffers as safetensors, class name and constructor arguments as metadata."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy: views (flatten_parameters) share memory
    metadata = {"class": type(model).__name__, "init_kwargs": json.dumps(model.init_kwargs)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_agent(path: str | Path) -> SavableModule:
    """Rebuild a model saved by save_agent (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no saved model at {path}; expected a .safetensors file written by a training run")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise ConfigError(f"{path} is not a readable .safetensors file ({err})") from None
    cls = MODEL_CLASSES.get(metadata.get("class", ""))
    if cls is None:
        raise ConfigError(f"{path} does not name a known model class; accepted: {', '.join(MODEL_CLASSES)}")
    model = cls(**json.loads(metadata["init_kwargs"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
