"""The deployable model: a trained Keras model as the flatbuffer a device runs.

A float model goes through the TFLite converter (float32). A quantized model (1-bit or k-bit) is
first rewritten, with the same weights, into **binary convolutions on bit planes**, which Larq
Compute Engine packs to one bit per weight and plane (LCE packs binary convolutions, not binary
``Dense`` layers, so a dense layer becomes a 1x1 convolution on a 1x1xN input). Every quantized
value is a weighted sum of +-1 planes:

* input  ``x_i  = a0 + sum_b 2^b t_ib / A`` (``t in {-1, +1}``, ``b < P``);
* kernel ``w_iu = sum_c 2^c s_iuc / K``     (``s in {-1, +1}``, ``c < Q``);
* so ``y_u = a0 sum_i w_iu + sum_b sum_c 2^(b+c) (t_b * s_c)_u / (A K)``, where every
  ``(t_b * s_c)`` is one binary convolution (an integer count), and the planes ``t_b`` of a layer
  share its kernel planes (concatenated on the batch axis of a convolution, on the width of a
  dense layer's 1x1xN input). The integer sum is exact in float32 while
  ``N (2^P - 1)(2^Q - 1) < 2^24`` (N the fan-in: up to 6 bits for the default MLP, whose first
  layer has P = 8); beyond, it rounds as float32 arithmetic does.

================================  ====  ============  ====================================
quantized value                   P/Q   a0, A / K     planes
================================  ====  ============  ====================================
1-bit input or kernel (ste_sign)  1     0, 1          the sign itself (sign(0) = +1)
k-bit DoReFa kernel               k     -, 2^k - 1    w = (2l - M)/M, bits of l, M = 2^k - 1
k-bit DoReFa input                k     1/2, 2(2^k-1) a = j/M, bits of j = round(clip(x, 0, 1) M)
                                                       (round half to even, as tf.round)
first layer: 8-bit pixels         8     0, 255        x = p/127.5 - 1, bits of p (bit-serial)
================================  ====  ============  ====================================

The first layer sees the real-valued image, but the image is 8-bit pixels: processed bit-serially
(8 binary passes per kernel plane, weighted 2^b/255) it is exactly the layer Keras computes, with
its kernel at its own bit width. A first *convolution* stays float32 (its kernel is a few
hundred weights, and a binary convolution over one input channel is many times slower than the
float one). Any other layer with a real-valued input also stays float. A 1-bit layer whose input is 1-bit needs no planes: it is one
binary convolution, and LCE fuses the BatchNorm and sign that follow into per-unit thresholds.
k-bit layers run as k x k binary convolutions (k bits per weight stored). TFLite's own int8
quantization is not used for k-bit models: their levels (+-1/3 at 2 bits) are not int8-exact
and the predictions would drift from the Keras model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import larq as lq
import tensorflow as tf

from pipeline.hwmodel.quantizers import PIXEL_BITS, Precision, UnknownQuantizer, precision_of

LCE, TFLITE = "larq-compute-engine", "tflite"  #: the converters (tag ``tflite_converter``)
SHAPE_ONLY = (tf.keras.layers.Flatten, tf.keras.layers.Reshape)


class ExportError(ValueError):
    """The model has a layer this export cannot write (the reason is logged as ``tflite_converter``)."""


@dataclass(frozen=True)
class Planes:
    """A quantized value as ``offset + sum_b 2^b t_b / denominator`` over ``bits`` planes ``t_b = +-1``."""

    bits: int
    denominator: float
    offset: float = 0.0
    scale: float = 1.0  #: the input code q = round(clip(x * scale + shift, 0, 2^bits - 1)), halves to even
    shift: float = 0.0


SIGN = Planes(bits=1, denominator=1.0)
PIXELS = Planes(bits=PIXEL_BITS, denominator=255.0, scale=127.5, shift=127.5)


def dorefa_input(reads: Precision) -> Planes:
    return Planes(bits=reads.bits, denominator=2.0 * reads.top, offset=0.5, scale=float(reads.top))


def precision(quantizer) -> Precision:
    """The quantizer's :class:`Precision`; an ExportError for one without a bit-plane form."""
    try:
        return precision_of(quantizer)
    except UnknownQuantizer as error:
        raise ExportError(f"{error}: it has no bit-plane form") from None


def input_planes(layer, reads_pixels: bool) -> Planes | None:
    reads = precision(layer.input_quantizer)
    if reads.is_float:  # real-valued: bit-serial pixels for a first dense layer; otherwise the layer stays float
        return PIXELS if reads_pixels and isinstance(layer, lq.layers.QuantDense) else None
    return SIGN if reads.sign else dorefa_input(reads)


def kernel_planes(layer) -> tuple[list[np.ndarray], Planes]:
    """The +-1 kernel planes ``s_c`` (weights of 2^c) of a quantized layer and their :class:`Planes`."""
    stored = precision(layer.kernel_quantizer)
    quantized = layer.kernel_quantizer(tf.convert_to_tensor(layer.kernel)).numpy()
    if stored.sign:
        return [np.where(quantized >= 0, 1.0, -1.0).astype(np.float32)], SIGN
    codes = np.rint((quantized + 1.0) * stored.top / 2).astype(np.int64)  # l in 0..M: w = (2l - M)/M
    return [(2.0 * ((codes >> c) & 1) - 1.0).astype(np.float32) for c in range(stored.bits)], Planes(stored.bits, float(stored.top))


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class BitPlanes(tf.keras.layers.Layer):
    """``x`` -> its ``bits`` planes ``t_b = 2 bit_b(q) - 1`` of the code ``q = round(clip(x scale + shift, 0, 2^bits - 1))``
    (halves to even, as ``tf.round`` in Larq's DoReFa), concatenated on ``axis`` (the batch axis for
    a convolution, the width of a dense layer's 1x1xN input: one binary product of P rows). Written
    with ``floor`` only: exact under the converter's graph rewrites."""

    def __init__(self, bits: int, scale: float, shift: float, axis: int, **kwargs):
        super().__init__(**kwargs)
        self.bits, self.scale, self.shift, self.axis = int(bits), float(scale), float(shift), int(axis)

    def call(self, inputs):
        value = tf.clip_by_value(inputs * self.scale + self.shift, 0.0, 2.0**self.bits - 1.0)
        code = tf.floor(value + 0.5)
        tie = tf.cast(tf.equal(code - value, 0.5), tf.float32)  # a half: back to the even neighbour
        code -= tie * (code - 2.0 * tf.floor(code * 0.5))
        shifted = [tf.floor(code * 2.0**-b) for b in range(self.bits + 1)]  # floor(q / 2^b)
        return tf.concat([2.0 * (shifted[b] - 2.0 * shifted[b + 1]) - 1.0 for b in range(self.bits)], axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "scale": self.scale, "shift": self.shift, "axis": self.axis}


@tf.keras.utils.register_keras_serializable(package="hwlarq")
class PlaneSum(tf.keras.layers.Layer):
    """``y = bias + sum_b sum_c 2^(b+c) conv_c[plane b] / denominator`` over the kernel planes' binary
    convolutions ``conv_c`` (input planes concatenated on ``axis``); integer sums first (exact)."""

    def __init__(self, input_bits: int, denominator: float, axis: int, **kwargs):
        super().__init__(**kwargs)
        self.input_bits, self.denominator, self.axis = int(input_bits), float(denominator), int(axis)

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[0][-1],), initializer="zeros", trainable=False)

    def call(self, convolutions):
        total = 0.0
        for c, convolution in enumerate(convolutions):
            for b, plane in enumerate(tf.split(convolution, self.input_bits, axis=self.axis)):
                total += 2.0 ** (b + c) * plane
        return total / self.denominator + self.bias

    def get_config(self):
        return {**super().get_config(), "input_bits": self.input_bits, "denominator": self.denominator, "axis": self.axis}


def binary_convolution(layer, name: str) -> lq.layers.QuantConv2D:
    """A 1-bit convolution with ``layer``'s geometry (a dense layer: 1x1)."""
    geometry = ({"kernel_size": layer.kernel_size, "strides": layer.strides, "padding": layer.padding}
                if isinstance(layer, lq.layers.QuantConv2D) else {"kernel_size": 1})
    return lq.layers.QuantConv2D(layer.kernel.shape[-1], use_bias=False, input_quantizer="ste_sign",
                                 kernel_quantizer="ste_sign", kernel_constraint="weight_clip", name=name, **geometry)


def quantized_layer(layer, x, inputs: Planes):
    """``layer`` as binary convolutions on bit planes (see the module docstring), applied to ``x``."""
    planes, kernel = kernel_planes(layer)
    if isinstance(layer, lq.layers.QuantDense):
        planes = [plane.reshape(1, 1, *plane.shape) for plane in planes]
        if x.shape.rank == 2:
            x = tf.keras.layers.Reshape((1, 1, x.shape[-1]), name=f"{layer.name}_as_1x1")(x)
    elif layer.padding != "valid" and inputs.offset:
        raise ExportError(f"layer {layer.name}: padding {layer.padding!r} with a k-bit input has no bit-plane form (valid only)")
    if inputs is SIGN and kernel is SIGN:
        convolution = binary_convolution(layer, layer.name)
        y = convolution(x)
        convolution.set_weights([planes[0]])
        return y
    axis = 2 if isinstance(layer, lq.layers.QuantDense) else 0
    stacked = x if inputs is SIGN else BitPlanes(inputs.bits, inputs.scale, inputs.shift, axis, name=f"{layer.name}_planes")(x)
    convolutions = []
    for c, plane in enumerate(planes):
        convolution = binary_convolution(layer, f"{layer.name}_w{c}")
        convolutions.append(convolution(stacked))
        convolution.set_weights([plane])
    combine = PlaneSum(inputs.bits, inputs.denominator * kernel.denominator, axis, name=f"{layer.name}_sum")
    y = combine(convolutions)
    real_kernel = sum(2.0**c * plane for c, plane in enumerate(planes)) / kernel.denominator
    combine.set_weights([inputs.offset * real_kernel.reshape(-1, real_kernel.shape[-1]).sum(axis=0)])
    return y


def is_1x1(x) -> bool:
    """A dense layer's output in its 1x1xN convolution form."""
    return x.shape.rank == 4 and tuple(x.shape[1:3]) == (1, 1)


def is_quantized(layer) -> bool:
    return isinstance(layer, (lq.layers.QuantDense, lq.layers.QuantConv2D)) and not precision(layer.kernel_quantizer).is_float


def bit_plane_model(model: tf.keras.Sequential, batch_size: int | None = 1) -> tf.keras.Model:
    """``model`` (plain: :func:`pipeline.hwmodel.chips.strip_hardware`) with every quantized layer as binary
    convolutions on bit planes: the same predictions, in the form LCE packs."""
    inputs = tf.keras.Input(model.input_shape[1:], batch_size=batch_size, name="image")
    x, reads_pixels = inputs, True
    for layer in model.layers:
        if is_quantized(layer) and (planes := input_planes(layer, reads_pixels)) is not None:
            x = quantized_layer(layer, x, planes)
        else:
            config = layer.get_config()
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                config["axis"] = -1  # the dense layers' outputs are 1x1xN now
            if isinstance(layer, tf.keras.layers.Activation) and is_1x1(x):
                x = tf.keras.layers.Reshape((x.shape[-1],), name=f"{layer.name}_from_1x1")(x)
            clone = type(layer).from_config(config)
            x = clone(x)
            clone.set_weights(layer.get_weights())
        reads_pixels = reads_pixels and isinstance(layer, SHAPE_ONLY)
    if is_1x1(x) and len(model.output_shape) == 2:
        x = tf.keras.layers.Reshape((x.shape[-1],), name="output_from_1x1")(x)
    return tf.keras.Model(inputs, x, name=f"{model.name}_bit_planes")


@dataclass(frozen=True)
class Flatbuffer:
    content: bytes
    converter: str  #: :data:`LCE` or :data:`TFLITE`
    batch_size: int

    @property
    def nbytes(self) -> int:
        return len(self.content)


def convert(model: tf.keras.Sequential, batch_size: int = 1) -> Flatbuffer:
    """The flatbuffer of a plain model for ``batch_size`` images: LCE on the bit-plane form when a
    layer is quantized, TFLite (float32) otherwise. Raises :class:`ExportError` with the reason."""
    try:
        if any(is_quantized(layer) for layer in model.layers):
            import larq_compute_engine as lce

            return Flatbuffer(lce.convert_keras_model(bit_plane_model(model, batch_size)), LCE, batch_size)
        inputs = tf.keras.Input(model.input_shape[1:], batch_size=batch_size)
        fixed = tf.keras.Model(inputs, model(inputs))
        return Flatbuffer(tf.lite.TFLiteConverter.from_keras_model(fixed).convert(), TFLITE, batch_size)
    except ExportError:
        raise
    except Exception as error:  # the converters' own failures: an unsupported op, a shape
        raise ExportError(f"{type(error).__name__}: {str(error).splitlines()[0][:300]}") from error
