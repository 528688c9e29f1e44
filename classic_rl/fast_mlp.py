"""The classic update's speed work, kept off the reading path: each piece gives the numbers of the library code it
replaces, and tests/test_nets.py checks it against that code.

    MLP                         an nn.Sequential that can run its own backward (against autograd)
    numpy_function              a module's forward in numpy, for one observation per env (against torch)
    flatten_parameters          every parameter a view into one flat tensor, so Adam and the clip make one call each
    clip_flat_grad_norm_        torch.nn.utils.clip_grad_norm_ on that flat gradient
    FlatAdam                    torch.optim.Adam on that flat parameter, without Optimizer.step's per-call Python
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear, activation, ..., Linear, alternating (as `mlp` builds it): an nn.Sequential (same
    state-dict keys) that can also run its own backward pass, which PPO's update uses
    (`ActorCritic.forward_for_update`).

    Why by hand: at PPO's sizes (a [256, 64] minibatch, 64-wide layers) a gradient step is a
    hundred tiny kernels, and autograd's bookkeeping around them costs as much as the matmuls.
    The backward is the textbook one, per Linear layer z = x W^T + b with input x:
        dW = dz^T x,   db = sum_rows dz,   dx = dz W,   then through the activation before it;
    tests/test_nets.py checks it against autograd. tanh is computed as 2 sigmoid(2z) - 1, the
    same function: this wheel's tanh kernel is scalar on some CPUs (35 us against 4 us for
    sigmoid on [256, 64], AMD EPYC), and autograd's backward formula needs only the output.
    """

    @torch.no_grad()
    def forward_keeping_inputs(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(output `[B, out]`, the input `[B, in]` of each Linear layer) for `backward_into_grads`."""
        inputs, layers = [], list(self)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                inputs.append(x)
                before_tanh = i + 1 < len(layers) and isinstance(layers[i + 1], nn.Tanh)
                scale = 2 if before_tanh else 1  # the tanh needs 2z, which addmm gives at no cost (and exactly)
                x = torch.addmm(layer.bias, x, layer.weight.t(), beta=scale, alpha=scale)
            elif isinstance(layer, nn.Tanh):
                x = x.sigmoid_().mul_(2).sub_(1)  # in place: x is this layer's own fresh 2z
            else:
                x = layer(x)
        return x, inputs

    @torch.no_grad()
    def backward_into_grads(self, grad_out: Tensor, inputs: list[Tensor]) -> None:
        """Accumulate d(loss)/d(parameters) into each parameter's .grad, like loss.backward(), from
        grad_out = d(loss)/d(output) `[B, out]` and the inputs kept by `forward_keeping_inputs`."""
        layers = list(self)
        for i in range(len(layers) - 1, -1, -2):  # the Linear layers, last first
            linear, x = layers[i], inputs[i // 2]
            accumulate_grad(linear.weight, _weight_grad(grad_out, x))
            accumulate_grad(linear.bias, grad_out.sum(0))
            if i > 0:  # x is the previous activation's output, which is all its derivative needs
                grad_out = _activation_backward(layers[i - 1], grad_out @ linear.weight, x)


def _weight_grad(grad_out: Tensor, x: Tensor) -> Tensor:
    """dW = dz^T x `[out, in]`, as (x^T dz)^T when the input is the narrower side: MKL is 3x faster
    with the narrow dimension as the product's rows ([256, 4] inputs: 14 -> 5 us)."""
    return (x.t() @ grad_out).t() if x.shape[1] < grad_out.shape[1] else grad_out.t() @ x


def accumulate_grad(param: nn.Parameter, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)  # in place, so a gradient that is a view (flatten_parameters) stays one


def _activation_backward(activation: nn.Module, grad_output: Tensor, output: Tensor) -> Tensor:
    """d(loss)/d(input) of an activation from its output, with the ATen kernels autograd itself calls."""
    if isinstance(activation, nn.Tanh):
        return torch.ops.aten.tanh_backward(grad_output, output)  # grad * (1 - output^2)
    if isinstance(activation, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad_output, output, 0)  # grad * (output > 0)
    raise TypeError(f"no hand-written backward for {type(activation).__name__}; accepted: Tanh, ReLU")


def numpy_function(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """module's forward as a numpy function, float32 `[B, in]` -> `[B, out]`, over a copy of its current
    weights, for a module built of Linear, Tanh, ReLU, Identity and Sequential.

    Why: a rollout step runs the networks on one observation per env ([8, 4] for CartPole), where a
    torch call's fixed overhead is most of the cost; numpy's is a fifth of it (actor and critic:
    40 -> 15 us). The copy keeps the function valid while the module trains.
    """
    if isinstance(module, nn.Sequential):
        layers = [numpy_function(layer) for layer in module]

        def forward(x: np.ndarray) -> np.ndarray:
            for layer in layers:
                x = layer(x)
            return x
        return forward
    if isinstance(module, nn.Linear):
        weight_t, bias = module.weight.detach().numpy().T.copy(), module.bias.detach().numpy().copy()
        return lambda x: x @ weight_t + bias
    if isinstance(module, nn.Tanh):
        return np.tanh
    if isinstance(module, nn.ReLU):
        return lambda x: np.maximum(x, 0)
    if isinstance(module, nn.Identity):
        return lambda x: x
    raise TypeError(f"no numpy forward for {type(module).__name__}; accepted: Linear, Tanh, ReLU, Identity, Sequential")


def flatten_parameters(module: nn.Module) -> nn.Parameter:
    """Make every parameter of `module` a view into one flat tensor, and its gradient a view into
    another; returns that flat tensor as a Parameter whose .grad holds every gradient.

    Optimise and clip the flat parameter instead of module.parameters(): one call each instead of one
    per tensor (for two 3-layer MLPs, Adam, the clip and zero_grad over 12 tensors are 200 us of a
    900 us PPO step). nn.LSTM.flatten_parameters does the same for cuDNN. Gradients must then be
    zeroed in place, zero_grad(set_to_none=False), for the views to stay views; and the module must
    not be moved or cast afterwards (that replaces each parameter's data). The state dict keeps its
    keys and shapes.
    """
    params = list(module.parameters())
    flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat.data[offset:offset + p.numel()].view_as(p)
        p.grad = flat.grad[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def clip_flat_grad_norm_(grad: Tensor, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ for the one flat gradient of flatten_parameters: scales `grad` in
    place to an L2 norm of at most max_norm (the same 1e-6 guard) and returns its norm before. Three
    kernels and no per-tensor bookkeeping: 10 us against 26 us for the library's on a 9k gradient."""
    norm = torch.linalg.vector_norm(grad)
    grad.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
    return norm


class FlatAdam(torch.optim.Adam):
    """torch.optim.Adam for the one flat parameter of flatten_parameters: the same state and state dict,
    and the same numbers as torch's single-tensor Adam (foreach=False, fused=False), from a step of eight
    small kernels without Optimizer.step's per-call Python. That Python (a profiler record, hook
    loops, grouping, dispatch) was 45 of the 55 us a PPO gradient step spent in Adam. Step hooks are
    not called; weight decay, amsgrad and the other variants are not supported.
    """

    def __init__(self, flat_param: nn.Parameter, lr: float, eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__([flat_param], lr=lr, betas=betas, eps=eps, foreach=False)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One Adam step from flat_param.grad, with the group's current lr (which a schedule may set)."""
        group = self.param_groups[0]
        (param,) = group["params"]
        state = self.state[param]
        if not state:  # initialised as torch's Adam does, so each loads the other's state dict
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        (beta1, beta2), step = group["betas"], state["step"].add_(1).item()
        state["exp_avg"].lerp_(param.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))

    step.hooked = True  # tells Optimizer.__init__ not to wrap step in its profiler record and hook calls
