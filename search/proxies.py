"""Zero-cost proxies: scores of an untrained network from one mini-batch.

Each proxy scores the weights of every layer kind of the search space: ``Conv1d``,
``Linear`` (also the projections of the ``attention`` op) and ``LSTM`` (input-hidden and
hidden-hidden matrices). Batch norm parameters and biases are not scored, as in
Abdelfattah et al. Every proxy runs on a deep copy, so the caller's model is unchanged.

References
----------
Abdelfattah, M. S., Mehrotra, A., Dudziak, Ł., & Lane, N. D. (2021). Zero-cost proxies for
lightweight NAS. ICLR.
Lee, N., Ajanthan, T., & Torr, P. H. S. (2019). SNIP: Single-shot network pruning based on
connection sensitivity. ICLR.
Wang, C., Zhang, G., & Grosse, R. (2020). Picking winning tickets before training by
preserving gradient flow (GraSP). ICLR.
Tanaka, H., Kunin, D., Yamins, D. L. K., & Ganguli, S. (2020). Pruning neural networks
without any data by iteratively conserving synaptic flow (synflow). NeurIPS.
Theis, L., Korshunova, I., Tejani, A., & Huszár, F. (2018). Faster gaze prediction with dense
networks and Fisher pruning. arXiv:1801.05787.
Mellor, J., Turner, J., Storkey, A., & Crowley, E. J. (2021). Neural architecture search
without training (jacob_cov). ICML.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sleepnas.runtime.errors import SleepnasError

logger = logging.getLogger(__name__)

#: The proxies `compute_proxies` computes, in the order of its output.
PROXY_NAMES: tuple[str, ...] = ("snip", "grasp", "grad_norm", "synflow", "fisher", "jacob_cov")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def scored_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the weights the proxies score: of ``Conv1d``, ``Linear`` and ``LSTM`` layers."""
    weights = {}
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            weights[f"{module_name}.weight"] = module.weight
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                if name.startswith("weight_"):
                    weights[f"{module_name}.{name}"] = param
    return weights


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    return loss_fn(model(inputs), targets)


def snip_per_weight(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Return SNIP per weight tensor: ``sum |w * dL/dw|``."""
    model = copy.deepcopy(model).train()
    weights = scored_weights(model)
    grads = torch.autograd.grad(_loss(model, inputs, targets, loss_fn), list(weights.values()),
                                allow_unused=True)
    return {name: _sum(w.detach() * g, absolute=True) for (name, w), g in zip(weights.items(), grads)}


def grad_norm_per_weight(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                         loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Return the L2 norm of the loss gradient per weight tensor."""
    model = copy.deepcopy(model).train()
    weights = scored_weights(model)
    grads = torch.autograd.grad(_loss(model, inputs, targets, loss_fn), list(weights.values()),
                                allow_unused=True)
    return {name: 0.0 if g is None else float(g.norm()) for name, g in zip(weights, grads)}


def grasp_per_weight(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                     loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Return GraSP per weight tensor: ``sum(-w * H g)``, with H the Hessian and g the gradient.

    ``H g`` comes from a second backward pass through ``g . dL/dw`` (double backpropagation).
    """
    model = copy.deepcopy(model).train()
    weights = scored_weights(model)
    params = list(weights.values())

    grads = torch.autograd.grad(_loss(model, inputs, targets, loss_fn), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]

    graph_grads = torch.autograd.grad(_loss(model, inputs, targets, loss_fn), params,
                                      create_graph=True, allow_unused=True)
    product = sum((g * gg).sum() for g, gg in zip(grads, graph_grads) if gg is not None)
    hessian_grads = torch.autograd.grad(product, params, allow_unused=True)
    return {name: _sum(-w.detach() * hg) for (name, w), hg in zip(weights.items(), hessian_grads)}


def synflow_per_weight(model: nn.Module, inputs: torch.Tensor, normalize: bool = True) -> dict[str, float]:
    """Return synflow per weight tensor: ``sum(w * dR/dw)``, R the sum of outputs.

    Computed in float64 on ``|w|`` with an all-ones input of one window and the model
    in eval mode. Abdelfattah et al. remove batch norm; that is ``normalize=False``.
    Without normalization the activations grow about tenfold per layer, so the LSTM
    gates saturate and their weights score exactly 0. With ``normalize=True`` (the
    default) each batch norm becomes a division by the mean absolute value of its
    input, detached from the graph, which keeps activations near 1.
    """
    model = copy.deepcopy(model).double().eval()
    _replace_batch_norm(model, _ScaleByMeanAbs if normalize else nn.Identity)
    with torch.no_grad():
        for param in model.parameters():
            param.abs_()
    weights = scored_weights(model)
    ones = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=inputs.device)
    output = model(ones).sum()
    grads = torch.autograd.grad(output, list(weights.values()), allow_unused=True)
    return {name: _sum(w.detach() * g) for (name, w), g in zip(weights.items(), grads)}


def fisher_per_layer(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                     loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Return the Fisher score per layer, summed over its output channels.

    Per channel the score is ``0.5 * mean_batch(sum_positions(a * dL/da)) ** 2``, where
    ``a`` is the output of each ``Conv1d``, ``Linear`` and ``LSTM`` layer.
    """
    model = copy.deepcopy(model).train()
    outputs: dict[str, tuple[torch.Tensor, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Linear, nn.LSTM)):
            channel_dim = 1 if isinstance(module, nn.Conv1d) else -1
            hooks.append(module.register_forward_hook(_keep_output(outputs, name, channel_dim)))
    try:
        loss = _loss(model, inputs, targets, loss_fn)
        names = list(outputs)
        grads = torch.autograd.grad(loss, [outputs[n][0] for n in names], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()

    scores = {}
    for name, grad in zip(names, grads):
        activation, channel_dim = outputs[name]
        if grad is None:
            scores[name] = 0.0
            continue
        product = (activation.detach() * grad).movedim(channel_dim, -1)
        per_channel = product.reshape(product.shape[0], -1, product.shape[-1]).sum(dim=1)
        scores[name] = float((0.5 * per_channel.pow(2).mean(dim=0)).sum())
    return scores


def jacob_cov(model: nn.Module, inputs: torch.Tensor) -> float:
    """Return the jacob_cov score: ``-sum(log(v + k) + 1 / (v + k))``, ``k = 1e-5``.

    ``v`` are the eigenvalues of the correlation matrix of the input gradients of
    the summed output, one row per window. Needs two or more windows.
    """
    if inputs.shape[0] < 2:
        raise SleepnasError(f"invalid batch of {inputs.shape[0]} window(s) for jacob_cov: expected 2 or more windows")
    model = copy.deepcopy(model).train()
    x = inputs.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    jacobian = grad.reshape(grad.shape[0], -1).double().cpu().numpy()
    correlations = np.corrcoef(jacobian)
    eigenvalues = np.linalg.eigvalsh(np.nan_to_num(correlations))
    k = 1e-5
    return float(-np.sum(np.log(np.clip(eigenvalues, 0.0, None) + k) + 1.0 / (np.clip(eigenvalues, 0.0, None) + k)))


def compute_proxies(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    names: Sequence[str] = PROXY_NAMES, *, seed: int = 0,
                    loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Compute zero-cost proxies of ``model`` on one mini-batch.

    Parameters
    ----------
    model : nn.Module
        The network to score; it is not changed.
    inputs : torch.Tensor, shape (batch, n_chans, n_times)
        One mini-batch of normalized windows (two or more for ``jacob_cov``).
    targets : torch.Tensor of int64, shape (batch,)
        Stage indices.
    names : sequence of str
        Proxies to compute, from `PROXY_NAMES`.
    seed : int
        Seed of torch's generator, for dropout and drop path in training mode.

    Returns
    -------
    dict
        Proxy name -> score, a sum over weight tensors (or layers for ``fisher``).
        A score that is not finite is logged as a warning.
    """
    unknown = [name for name in names if name not in PROXY_NAMES]
    if unknown:
        raise SleepnasError(f"unknown proxy {unknown[0]!r}: expected one of {', '.join(PROXY_NAMES)}")
    scores = {}
    for name in names:
        torch.manual_seed(seed)
        if name == "snip":
            scores[name] = sum(snip_per_weight(model, inputs, targets, loss_fn).values())
        elif name == "grasp":
            scores[name] = sum(grasp_per_weight(model, inputs, targets, loss_fn).values())
        elif name == "grad_norm":
            scores[name] = sum(grad_norm_per_weight(model, inputs, targets, loss_fn).values())
        elif name == "synflow":
            scores[name] = sum(synflow_per_weight(model, inputs).values())
        elif name == "fisher":
            scores[name] = sum(fisher_per_layer(model, inputs, targets, loss_fn).values())
        else:
            scores[name] = jacob_cov(model, inputs)
        if not math.isfinite(scores[name]):
            logger.warning("zero-cost proxy %s is not finite: %s", name, scores[name])
    return scores


def _sum(tensor: torch.Tensor | None, absolute: bool = False) -> float:
    if tensor is None:
        return 0.0
    return float((tensor.abs() if absolute else tensor).sum())


def _keep_output(outputs: dict, name: str, channel_dim: int) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        outputs[name] = (tensor, channel_dim)
    return hook


class _ScaleByMeanAbs(nn.Module):
    """Divide by the mean absolute value of the input, a constant for autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.detach().abs().mean().clamp_min(1e-30)


def _replace_batch_norm(model: nn.Module, replacement: Callable[[], nn.Module]) -> None:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, replacement())
        else:
            _replace_batch_norm(child, replacement)
