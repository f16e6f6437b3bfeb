"""The peers' side of :mod:`benchmarks.peers`: PyTorch models with IBM aihwkit's (and aihwkit-lightning's) analog layers.

Imports torch and aihwkit: call :func:`benchmarks.peers.require` first for a clear message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
from aihwkit.inference.noise.base import BaseNoiseModel
from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogSequential
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType, WeightModifierType

from pipeline.config import ModelConfig
from pipeline.learning.data import IMAGE_SHAPE, NUM_CLASSES
from pipeline.learning.models import CNN_DENSE_UNITS, CNN_FILTERS

from benchmarks.peer_export import DenseBlock

THREADS = 2  #: torch's threads: the machine's two cores, as TensorFlow uses them


class ProcessVariation(BaseNoiseModel):
    """Our process variation in aihwkit's terms: every programmed conductance ``g (1 + d z)``, ``z ~ N(0, 1)``.

    With ``SinglePairConductanceConverter`` a weight ``w > 0`` is ``g+ = w g_max / w_max``, ``g- = 0``
    (and the mirror for ``w < 0``), so the weight read back is ``w (1 + d z)``: ``weight_dev_pct = 100 d``.
    No drift: ``drift_weights`` is never called; the conductances stay as programmed.
    """

    def __init__(self, deviation: float):
        super().__init__(SinglePairConductanceConverter())
        self.deviation = deviation

    def apply_programming_noise_to_conductance(self, g_target: torch.Tensor) -> torch.Tensor:
        return g_target * (1.0 + self.deviation * torch.randn_like(g_target)) if self.deviation else g_target.clone()

    def generate_drift_coefficients(self, g_target: torch.Tensor):
        return None

    def apply_drift_noise_to_conductance(self, g_prog: torch.Tensor, drift_noise_param, t_inference: float) -> torch.Tensor:
        return g_prog


def aihwkit_config(deviation: float, sigma: float, training: bool = False) -> TorchInferenceRPUConfig:
    """aihwkit's pure-torch inference tiles with our definitions: one tile, no input or output quantization,
    no bound, no noise or bound management, unscaled weights; ``out_noise`` = sigma; at inference the
    noise model :class:`ProcessVariation`, in training the modifier ``MULT_NORMAL`` (``w + w d z``)."""
    config = TorchInferenceRPUConfig()
    forward = config.forward
    forward.inp_res = forward.out_res = forward.out_bound = -1.0
    forward.inp_bound = 1.0
    forward.noise_management, forward.bound_management = NoiseManagementType.NONE, BoundManagementType.NONE
    forward.out_noise = sigma
    config.mapping.max_input_size = config.mapping.max_output_size = 0  # one tile per layer, as ours without tile_rows
    config.mapping.weight_scaling_omega = 0.0
    config.noise_model = ProcessVariation(deviation)
    config.drift_compensation = None
    if training and deviation:
        config.modifier.type, config.modifier.std_dev = WeightModifierType.MULT_NORMAL, deviation
    return config


def lightning_config(deviation: float, sigma: float):
    """aihwkit-lightning's training configuration nearest ours: ``ADD_NORMAL`` weight noise (``d max|w| z``)
    and ``out_noise`` (``sigma max|w| r`` with the input range ``r`` fixed at 1: the inputs are in [-1, 1])."""
    from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig as LightningConfig
    from aihwkit_lightning.simulator.parameters.enums import WeightNoiseInjectionType

    config = LightningConfig()
    config.forward.out_noise = sigma
    config.modifier.noise_type, config.modifier.std_dev = WeightNoiseInjectionType.ADD_NORMAL, deviation
    config.pre_post.input_range.enable = True
    config.pre_post.input_range.learn_input_range = False
    config.pre_post.input_range.init_from_data = 0
    config.pre_post.input_range.init_value = 1.0
    return config


class Sign(nn.Module):
    """larq's ``ste_sign``: +1 at and above 0, -1 below; the straight-through gradient inside [-1, 1]."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        hard = torch.where(values >= 0, 1.0, -1.0)
        soft = values.clamp(-1.0, 1.0)
        return soft + (hard - soft).detach()


def batch_norm(block: DenseBlock) -> nn.BatchNorm1d:
    norm = nn.BatchNorm1d(len(block.mean), eps=block.epsilon)
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.copy_(torch.from_numpy(block.beta))
        norm.running_mean.copy_(torch.from_numpy(block.mean))
        norm.running_var.copy_(torch.from_numpy(block.variance))
    return norm


def exported_torch_mlp(blocks: Sequence[DenseBlock], analog: Sequence[str], config: TorchInferenceRPUConfig) -> AnalogSequential:
    """The exported MLP in torch: ``analog`` layers aihwkit's ``AnalogLinear`` with ``config``, the others ``nn.Linear``."""
    modules: list[nn.Module] = [nn.Flatten()]
    for block in blocks:
        if block.signs_in:
            modules.append(Sign())
        fan_in, units = block.kernel.shape
        layer = AnalogLinear(fan_in, units, bias=False, rpu_config=config) if block.name in analog else nn.Linear(fan_in, units, bias=False)
        weight = torch.from_numpy(np.ascontiguousarray(block.kernel.T))
        if isinstance(layer, AnalogLinear):
            layer.set_weights(weight)
        else:
            with torch.no_grad():
                layer.weight.copy_(weight)
        modules += [layer, batch_norm(block)]
    return AnalogSequential(*modules).eval()


def chip_accuracies(blocks: Sequence[DenseBlock], analog: Sequence[str], deviation: float, sigma: float, images: np.ndarray,
                    labels: np.ndarray, chips: int, seed: int = 0) -> list[float]:
    """Accuracy of ``chips`` aihwkit chips, each programmed anew (``program_analog_weights``), on every image;
    built here, so its time includes every fixed cost."""
    torch.set_num_threads(THREADS)
    model = exported_torch_mlp(blocks, analog, aihwkit_config(deviation, sigma))
    inputs, truth = torch.from_numpy(images.reshape(len(images), -1)), torch.from_numpy(labels)
    found = []
    with torch.no_grad():
        for chip in range(chips):
            torch.manual_seed(seed + chip)
            model.program_analog_weights()
            found.append(float((model(inputs).argmax(dim=1) == truth).float().mean()))
    return found


# --- training steps ---------------------------------------------------------------------------------

def torch_model(arch: str, tool: str, deviation: float, sigma: float) -> nn.Module:
    """The default 1-bit MLP (hidden layers hardware-aware) or CNN (every layer) of :mod:`pipeline.learning.models`
    in torch: ``tool`` ``plain`` (torch's own layers), ``aihwkit`` or ``lightning`` (their analog layers)."""
    linear, conv = layer_makers(tool, deviation, sigma)
    if arch == "mlp":
        modules, fan_in = [nn.Flatten()], IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
        for units in ModelConfig().hidden_units:
            modules += [linear(fan_in, units), nn.BatchNorm1d(units), Sign()]
            fan_in = units
        return nn.Sequential(*modules, nn.Linear(fan_in, NUM_CLASSES, bias=False), nn.BatchNorm1d(NUM_CLASSES))
    modules, channels, size = [], 1, IMAGE_SHAPE[0]
    for index, filters in enumerate(CNN_FILTERS, start=1):
        modules += [conv(channels, filters)] + ([nn.MaxPool2d(2)] if index < len(CNN_FILTERS) else []) + [nn.BatchNorm2d(filters), Sign()]
        channels, size = filters, (size - 2) // 2 if index < len(CNN_FILTERS) else size - 2
    modules += [nn.Flatten(), linear(channels * size * size, CNN_DENSE_UNITS), nn.BatchNorm1d(CNN_DENSE_UNITS), Sign(),
                linear(CNN_DENSE_UNITS, NUM_CLASSES), nn.BatchNorm1d(NUM_CLASSES)]
    return nn.Sequential(*modules)


def layer_makers(tool: str, deviation: float, sigma: float) -> tuple[Callable, Callable]:
    if tool == "plain":
        return (lambda n, m: nn.Linear(n, m, bias=False)), (lambda c, f: nn.Conv2d(c, f, 3, bias=False))
    if tool == "aihwkit":
        config = aihwkit_config(deviation, sigma, training=True)
        return (lambda n, m: AnalogLinear(n, m, bias=False, rpu_config=config)), (lambda c, f: AnalogConv2d(c, f, 3, bias=False, rpu_config=config))
    if tool == "lightning":
        from aihwkit_lightning.nn import AnalogConv2d as LightningConv2d, AnalogLinear as LightningLinear

        config = lightning_config(deviation, sigma)
        return ((lambda n, m: LightningLinear(n, m, bias=False, rpu_config=config)),
                (lambda c, f: LightningConv2d(c, f, 3, bias=False, rpu_config=config)))
    raise ValueError(f"tool: plain, aihwkit or lightning; got {tool!r}")


def step_runner(model: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int) -> Callable[[], None]:
    """A function running ``steps`` training steps of ``model`` (Adam, cross-entropy) on the batch ``images``,
    after one warm-up call (the contract of :func:`benchmarks.timing.interleaved_seconds`)."""
    torch.set_num_threads(THREADS)
    inputs = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))  # NHWC -> NCHW
    truth = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    model.train()

    def run() -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            loss(model(inputs), truth).backward()
            optimizer.step()

    run()
    return run
