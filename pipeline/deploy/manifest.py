"""The hardware hand-off of a trained model: per layer, what a chip has to compute, as plain JSON data.

Units: every number of a layer (clean range, clip bounds, ADC step, thresholds) is in that layer's
**accumulator units**, the layer's own output before BatchNorm::

    y_u = sum_i x_i w_iu        (dense: over its N inputs; conv: over the kh x kw x C_in window, N = kh kw C_in)

with ``x`` the layer's quantized input and ``w`` its quantized weights:

* 1-bit (Larq ``ste_sign``, sign(0) = +1): levels {-1, +1};
* k-bit DoReFa, M = 2^k - 1: weights ``(2l - M)/M``, inputs ``j/M`` (l, j = 0..M);
* the first layer's input: 8-bit pixels p, ``x = p/127.5 - 1 = (2p - 255)/255``;
* 32 bits: float (no quantizer).

With binary inputs and weights ``y`` is an integer in [-N, N] with the parity of N; otherwise
``y * integer_scale`` is an integer (integer_scale = the product of the input and weight levels'
denominators, e.g. 255 for a 1-bit first layer), or ``y`` is real (float layers).

* **clean_range**: [min, max] of y over the calibration images, plain model -- measured by
  :func:`pipeline.hwmodel.chips.calibrate`, the same measurement relative saturation uses at evaluation.
* **effects** (``trained_with``, ``target``): the active effects' parameters, only on the layers
  the configuration targets (null: not targeted; {}: targeted, nothing active), and ``tiles``: one
  entry per partial sum (:mod:`pipeline.hwmodel.tiles`: a tile of ``rows`` rows, and its bit-serial
  ``pass`` b), in that partial's **integer hardware units** (``unit`` x y; a bit-serial pass: its
  own +-1 popcount sum): its ``clean_range`` (calibrated, plain model), the saturation ``bounds``
  (absolute, clip_fraction x the tile's clean range -- in training each batch's own -- or the
  acc_bits register; a popcount tile also gives its counter's ``count_range`` [0, min(N_t, 2^k - 1)])
  and the ADC's ``levels`` = 2^out_bits and ``step`` = (hi - lo) / (levels - 1) over what it reads.
* **batchnorm**: the BatchNorm after the layer folded per unit, ``BN(y) = scale*y + offset``,
  ``scale = gamma / sqrt(var + eps)``, ``offset = beta - mean*scale`` (gamma = 1 in these models,
  BatchNorm ``scale=False``). A max pool between layer and BatchNorm acts on y first; max commutes
  with an increasing per-unit map (scale > 0), so pooling y, BN(y) or the thresholded outputs
  gives the same next input.
* **activation**: what the next layer receives.
  ``sign`` (1-bit next input): +1 if y >= threshold else -1 (y <= threshold where scale < 0);
  ``dorefa`` (k-bit next input ``round(clip(BN(y), 0, 1) M)/M``): ``levels[j]`` with j the number
  of the unit's M thresholds t passed (y >= t; y <= t where scale < 0);
  ``relu``: ``max(0, scale*y + offset)``; ``logits``: class = argmax of ``scale*y + offset``.
  Thresholds are exact for the float32 Keras model: each is the first accumulator value (an
  integer where y is integer-valued, else a float32) at which the model's own BatchNorm and input
  quantizer, evaluated in float32, switch -- found by bisection, not by rounding -offset/scale.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.effects import EFFECTS, OUTPUT_EFFECTS, converter_range
from pipeline.effects.base import OutputContext
from pipeline.hwmodel.chips import attach_hardware, calibrate, hardware_layers, model_targets
from pipeline.perturbation import PerturbationConfig
from pipeline.hwmodel.quantizers import PIXEL_BITS, input_precision, kernel_precision, precision_of, quantized_layers

INPUT_ENCODING = "8-bit pixels p, x = p/127.5 - 1"
PIXEL_LEVELS = [p / 127.5 - 1.0 for p in range(2**PIXEL_BITS)]
CONVENTIONS = (
    "Per layer, all numbers are in its accumulator units: y = sum_i x_i w_i before BatchNorm. "
    "BN(y) = scale*y + offset per unit; a max pool before BatchNorm acts on y (max commutes with the increasing BN). "
    "activation = what the next layer receives: sign: +1 if y >= threshold else -1; dorefa: levels[j], j = number of "
    "thresholds t with y >= t (<= for units with scale < 0); relu: max(0, BN(y)); logits: class = argmax BN(y). "
    "Thresholds reproduce the float32 model exactly. effects: null = layer not targeted, {} = targeted, nothing active; "
    "relative clip bounds = clip_fraction x clean_range."
)
PASSING_LAYERS = (tf.keras.layers.MaxPooling2D, tf.keras.layers.BatchNormalization, tf.keras.layers.Activation,
                  tf.keras.layers.Flatten)
PASSING_ACTIVATIONS = ("relu", "softmax", "linear")  #: softmax only after the last layer: argmax is unchanged
FLOAT32_MAX = np.float32(np.finfo(np.float32).max)


def hardware_manifest(model: tf.keras.Model, images: np.ndarray, trained_with: PerturbationConfig | None = None,
                      target: PerturbationConfig | None = None) -> dict[str, Any]:
    """The JSON-able hand-off of ``model`` (built by :func:`pipeline.learning.models.build_model`, plain or
    hardware-aware): one entry per quantized layer, clean ranges measured on ``images`` (float32 in
    [-1, 1], the validation split), effects of ``trained_with`` / ``target`` on the layers each targets."""
    layers = quantized_layers(model)
    names = [layer.name for layer in layers]
    ranges = calibrate(attach_hardware(model, PerturbationConfig(), names), np.asarray(images, np.float32))
    perturbations = {"trained_with": trained_with, "target": target}
    targets = {key: model_targets(model, config.perturb_layers) if config else () for key, config in perturbations.items()}
    tiled = {key: config and tiled_layers(model, config, targets[key], images) for key, config in perturbations.items()}
    entries = [layer_entry(model, layer, index == 0, ranges[layer.name][0],
                           {key: config and tiled[key].get(layer.name) and (config, tiled[key][layer.name])
                            for key, config in perturbations.items()})
               for index, layer in enumerate(layers)]
    return {
        "model": model.name, "bits": entries[0]["weight_bits"], "input_encoding": INPUT_ENCODING, "conventions": CONVENTIONS,
        "perturbations": {key: config and {"label": config.label, "perturb_layers": config.perturb_layers,
                                           "targets": list(targets[key])} for key, config in perturbations.items()},
        "layers": entries,
    }


def tiled_layers(model: tf.keras.Model, config: PerturbationConfig, targets, images: np.ndarray) -> dict[str, tuple]:
    """Per layer ``config`` targets: the layer as attached with it (its tiles) and its partials' clean ranges."""
    copy = attach_hardware(model, config, targets)
    ranges = calibrate(copy, np.asarray(images, np.float32))
    return {layer.name: (layer, ranges[layer.name]) for layer in hardware_layers(copy)}


def layer_entry(model: tf.keras.Model, layer, first: bool, clean_range: tuple[float, float],
                perturbations: dict[str, tuple | None]) -> dict[str, Any]:
    """One quantized layer; ``perturbations``: each configuration with the layer attached with it and its
    partials' clean ranges, or None where it does not target the layer."""
    pool, bn, relu, following = successors(model, layer)
    weight_levels = kernel_precision(layer).levels
    input_levels = PIXEL_LEVELS if first else input_precision(layer).levels
    accumulator = accumulator_entry(layer, input_levels, weight_levels, clean_range)
    return {
        "name": layer.name, **geometry(layer),
        "weight_bits": kernel_precision(layer).storage_bits,
        "input_bits": PIXEL_BITS if first else input_precision(layer).storage_bits,
        "weight_levels": weight_levels, "input_levels": input_levels,
        "accumulator": accumulator,
        "effects": {key: given and effect_entries(*given) for key, given in perturbations.items()},
        "pool": pool and {"kind": "max", "pool_size": list(pool.pool_size), "strides": list(pool.strides)},
        "batchnorm": folded(bn),
        "activation": activation(bn, relu, following, fan_in(layer) if accumulator["integer"] else None),
    }


def successors(model: tf.keras.Model, layer):
    """The max pool (or None) and BatchNorm after ``layer``, whether a ReLU follows, and the next
    quantized layer (None after the last); a ValueError for any other layer in between."""
    after = model.layers[model.layers.index(layer) + 1:]
    quantized = quantized_layers(model)
    following = next((other for other in after if other in quantized), None)
    block = after[: after.index(following)] if following else after
    if unknown := [other.name for other in block if not isinstance(other, PASSING_LAYERS)
                   or isinstance(other, tf.keras.layers.Activation) and activation_name(other) not in PASSING_ACTIVATIONS]:
        raise ValueError(f"{layer.name}: cannot describe the layer(s) {unknown} before the next quantized layer")
    norms = [other for other in block if isinstance(other, tf.keras.layers.BatchNormalization)]
    if len(norms) != 1:
        raise ValueError(f"{layer.name}: expected one BatchNormalization after it; found {len(norms)}")
    pool = next((other for other in block if isinstance(other, tf.keras.layers.MaxPooling2D)), None)
    relu = any(isinstance(other, tf.keras.layers.Activation) and activation_name(other) == "relu" for other in block)
    return pool, norms[0], relu, following


def activation_name(layer: tf.keras.layers.Activation) -> str:
    return str(layer.get_config()["activation"])


def fan_in(layer) -> int:
    return int(np.prod(layer.kernel.shape[:-1]))


def geometry(layer) -> dict[str, Any]:
    units = int(layer.kernel.shape[-1])
    if isinstance(layer, lq.layers.QuantConv2D):
        return {"kind": "conv2d", "fan_in": fan_in(layer), "units": units, "kernel_size": list(layer.kernel_size),
                "strides": list(layer.strides), "padding": layer.padding}
    return {"kind": "dense", "fan_in": fan_in(layer), "units": units}


def denominator(levels: list[float]) -> int:
    """The smallest d with every level * d an integer."""
    values = np.asarray(levels)
    return next(d for d in range(1, 2**16) if np.allclose(values * d, np.rint(values * d), rtol=0, atol=1e-9))


def accumulator_entry(layer, input_levels, weight_levels, clean_range) -> dict[str, Any]:
    n = fan_in(layer)
    binary = input_levels == [-1.0, 1.0] and weight_levels == [-1.0, 1.0]
    scale = denominator(input_levels) * denominator(weight_levels) if input_levels and weight_levels else None
    if binary:
        values = f"integers in [-{n}, {n}] with the parity of {n} ({'odd' if n % 2 else 'even'})"
    elif scale:
        values = f"real; y * {scale} is an integer in [-{n * scale}, {n * scale}]"
    else:
        values = "real (float weights or inputs)"
    return {"formula": "y = sum_i x_i w_i", "values": values, "integer": binary, "integer_scale": scale,
            "clean_range": [float(clean_range[0]), float(clean_range[1])]}


def effect_entries(config: PerturbationConfig, attached: tuple) -> dict[str, Any]:
    """The active effects' parameters, and ``tiles``: per partial sum, what each output effect records
    in that partial's integer hardware units (its ``manifest_entry``)."""
    levels = config.parameters()
    entries: dict[str, Any] = {effect.name: {name: levels[name] for name in params.field_names()}
                               for effect, params in config if params.active}
    return {**entries, "tiles": tile_entries(config, *attached)} if entries else entries


def tile_entries(config: PerturbationConfig, layer, ranges: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """One entry per partial of ``layer`` (attached with ``config``), in integer hardware units."""
    tiling, accumulator = layer.tiling, layer.accumulator()
    lo, hi = (np.array([bound[side] for bound in ranges], np.float32) for side in (0, 1))
    context = OutputContext(lambda: (tf.constant(lo), tf.constant(hi)), normal=None, accumulator=accumulator)
    levels = {effect.name: effect.run_levels(config.params(effect)) for effect in EFFECTS}
    scale = accumulator.unit or 1.0
    read = [np.broadcast_to(np.asarray(bound, np.float64), lo.shape) * scale for bound in converter_range(levels, context)]
    entries = []
    for index, rows in enumerate(tiling.partial_rows.astype(int).tolist()):
        entry = {"tile": index // tiling.passes, "rows": rows, **({"pass": index % tiling.passes} if tiling.passes > 1 else {}),
                 "unit": scale, "clean_range": [float(lo[index]) * scale, float(hi[index]) * scale]}
        full_scale = (float(read[0][index]), float(read[1][index]))
        for effect in OUTPUT_EFFECTS:
            if config.params(effect).active and (recorded := effect.manifest_entry(config.params(effect), full_scale)):
                entry[effect.name] = recorded
        entries.append(entry)
    return entries


def folded(bn: tf.keras.layers.BatchNormalization) -> dict[str, Any]:
    scale, offset = affine(bn)
    return {"scale": scale.tolist(), "offset": offset.tolist(), "epsilon": float(bn.epsilon),
            "formula": "BN(y) = scale*y + offset = gamma*(y - mean)/sqrt(var + eps) + beta"}


def affine(bn: tf.keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    mean, variance = (np.asarray(v.numpy(), np.float64) for v in (bn.moving_mean, bn.moving_variance))
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def activation(bn, relu: bool, following, integer_bound: int | None) -> dict[str, Any]:
    """What the next layer receives; thresholds are integers in [-bound - 1, bound + 1] given ``integer_bound``."""
    if following is None:
        return {"kind": "logits", "rule": "class = argmax_u (scale_u*y_u + offset_u)"}
    quantizer = following.input_quantizer
    if quantizer is None:
        return {"kind": "relu", "rule": "x = max(0, scale*y + offset)"} if relu else {"kind": "affine", "rule": "x = BN(y)"}
    levels = precision_of(quantizer).levels
    direction = np.where(affine(bn)[0] < 0, -1.0, 1.0)
    normalized = lambda y: bn(y, training=False)  # noqa: E731
    code = switch_code(lambda y: quantizer(tf.nn.relu(normalized(y)) if relu else normalized(y)), bn, levels, direction)
    thresholds = exact_thresholds(code, len(levels) - 1, len(direction), integer_bound) * direction
    values = thresholds.astype(int).tolist() if integer_bound is not None else thresholds.astype(float).tolist()
    return threshold_entry(levels, values, np.flatnonzero(direction < 0).tolist())


def threshold_entry(levels: list[float], thresholds: list[list], decreasing: list[int]) -> dict[str, Any]:
    """``thresholds``: (levels - 1) x units."""
    if levels == [-1.0, 1.0]:
        entry = {"kind": "sign", "levels": levels, "rule": "+1 if y >= threshold else -1", "threshold": thresholds[0]}
    else:
        entry = {"kind": "dorefa", "levels": levels, "rule": "x = levels[j], j = number of thresholds t with y >= t",
                 "thresholds": [list(row) for row in zip(*thresholds)]}
    if decreasing:
        entry.update(decreasing_units=decreasing, rule=entry["rule"] + " (decreasing units: y <= t)")
    return entry


def switch_code(received: Callable, bn, levels: list[float], direction: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``values`` (rows x units, times ``direction``) -> the index of the level the next layer
    ``received`` (the model's own BatchNorm and input quantizer, in float32), at the BatchNorm's input rank."""
    rank = len(bn.input_shape)

    def code(values: np.ndarray) -> np.ndarray:
        inputs = (values * direction).astype(np.float32).reshape(values.shape[0], *([1] * (rank - 2)), values.shape[1])
        outputs = received(tf.constant(inputs)).numpy().reshape(values.shape)
        return np.rint((outputs - levels[0]) / (levels[1] - levels[0])).astype(np.int64)

    return code


def exact_thresholds(code: Callable[[np.ndarray], np.ndarray], count: int, units: int, bound: int | None) -> np.ndarray:
    """(count x units): per unit the smallest value whose code reaches 1 .. count -- an integer in
    [-bound, bound + 1] (``bound`` given), else a float32 (bisection over the ordered float32 values)."""
    if bound is not None:  # keys: the integers themselves
        low, high = np.full((count, units), -bound - 1), np.full((count, units), bound + 1)

        def value(keys: np.ndarray) -> np.ndarray:
            return keys.astype(np.float32)
    else:  # keys: float32 values in order
        low, high = np.full((count, units), ordered(np.float32(-np.inf))), np.full((count, units), ordered(FLOAT32_MAX))
        value = unordered
    wanted = np.arange(1, count + 1)[:, None]
    while (high - low > 1).any():
        middle = low + (high - low) // 2
        reached = code(value(middle)) >= wanted
        low, high = np.where(reached, low, middle), np.where(reached, middle, high)
    return value(high)


def ordered(values) -> np.ndarray:
    """float32 -> int64 keys in the same order (-0.0 and 0.0 share 0)."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    return np.where(bits < 2**31, bits, -(bits - 2**31))


def unordered(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >= 0, keys, 2**31 - keys).astype(np.uint32)
    return bits.view(np.float32)
