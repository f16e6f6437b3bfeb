"""What a quantizer is: the one place that reads Larq's quantizers.

A tensor of a quantized layer (its kernel, or the input it reads) is described by a :class:`Precision`:

* **float** (no quantizer): ``bits`` None -- stored at 32 bits; bit errors flip its sign bit;
* **sign** (``ste_sign``, ``approx_sign``, ``swish_sign``: Larq's ``precision`` 1): the values +-1;
* **DoReFa k-bit**, ``M = 2^k - 1``: weights ``(2l - M)/M``, activations ``j/M`` (``l, j = 0..M``);
* **pixels**: what the first layer reads, the image's 8-bit pixels ``p``, ``x = p/127.5 - 1 = (2p - 255)/255``.

A layer's accumulator ``y = sum_i x_i w_i`` times ``u`` = the product of its input's and kernel's
:attr:`Precision.denominator` is an integer (:func:`integer_unit`): 1 for +-1 x +-1, 255 for pixels x +-1.

Layers (which kernels stay +-1), the export (bit planes), the manifest (levels and bit widths), the
model size and the bit errors (how many states a stored weight has) all ask this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import pipeline  # noqa: F401
import larq as lq

SIGN_QUANTIZERS = (lq.quantizers.SteSign, lq.quantizers.ApproxSign, lq.quantizers.SwishSign)  #: only ever +-1
FLOAT_BITS = 32
PIXEL_BITS = 8  #: the image's pixels p in 0..255, given to the model as x = p/127.5 - 1


class UnknownQuantizer(ValueError):
    """A quantizer this project has no description of (known: sign quantizers and DoReFa)."""


@dataclass(frozen=True)
class Precision:
    """What one quantized tensor holds per value."""

    bits: int | None  #: 1 for a sign quantizer, k for DoReFa k-bit, None for a real-valued (float) tensor
    sign: bool = False  #: only ever +-1
    activations: bool = False  #: DoReFa in ``activations`` mode: levels j/M in [0, 1] instead of (2l - M)/M
    pixels: bool = False  #: the image's 8-bit pixels, (2p - 255)/255

    @property
    def is_float(self) -> bool:
        return self.bits is None

    @property
    def storage_bits(self) -> int:
        """Bits per stored value: the quantizer's, 32 for a float tensor."""
        return FLOAT_BITS if self.bits is None else self.bits

    @property
    def top(self) -> int:
        """``M = 2^k - 1``, the highest level index (1 for a sign)."""
        return 1 if self.bits is None else 2**self.bits - 1

    @property
    def states(self) -> int:
        """The states a stored value can read as: 2 for a sign (and a float's sign bit), 2^k for k bits."""
        return 2 if self.sign or self.bits is None else 2**self.bits

    @property
    def levels(self) -> list[float] | None:
        """The values the quantizer outputs, in increasing order (None: float)."""
        if self.bits is None:
            return None
        if self.sign:
            return [-1.0, 1.0]
        if self.pixels:
            return [p / 127.5 - 1.0 for p in range(self.top + 1)]  # = (2p - 255)/255
        top = self.top
        return [level / top if self.activations else (2 * level - top) / top for level in range(top + 1)]


    @property
    def denominator(self) -> int | None:
        """The smallest d making every level times d an integer: 1 (sign), M (DoReFa), 255 (pixels), None (float)."""
        return None if self.bits is None else 1 if self.sign else self.top


FLOAT = Precision(bits=None)
PIXELS = Precision(bits=PIXEL_BITS, pixels=True)


def integer_unit(inputs: Precision, kernel: Precision) -> int | None:
    """``u``: ``u * y`` is the integer a layer reading ``inputs`` with ``kernel`` accumulates (None: real-valued)."""
    return None if inputs.denominator is None or kernel.denominator is None else inputs.denominator * kernel.denominator


def precision_of(quantizer) -> Precision:
    """The :class:`Precision` of a Larq quantizer (None: float); :class:`UnknownQuantizer` for any other."""
    if quantizer is None:
        return FLOAT
    if isinstance(quantizer, SIGN_QUANTIZERS):
        return Precision(bits=1, sign=True)
    if isinstance(quantizer, lq.quantizers.DoReFa):
        return Precision(bits=int(quantizer.precision), activations=quantizer.mode == "activations")
    raise UnknownQuantizer(f"quantizer {type(quantizer).__name__} is not known (known: ste_sign, approx_sign, swish_sign, DoReFa)")


def kernel_precision(layer) -> Precision:
    return precision_of(layer.kernel_quantizer)


def input_precision(layer, reads_pixels: bool = False) -> Precision:
    """What ``layer`` reads: its input quantizer's values, or the image's pixels (``reads_pixels``: see :func:`reads_pixels`)."""
    precision = precision_of(layer.input_quantizer)
    return PIXELS if reads_pixels and precision.is_float else precision


def reads_pixels(model, layer) -> bool:
    """Whether ``layer`` reads the image itself: it is the first layer of ``model`` but for reshaping ones."""
    for other in model.layers:
        if other is layer:
            return True
        if type(other).__name__ not in ("Flatten", "Reshape"):
            return False
    return False


def quantized_layers(model) -> list:
    """The model's Larq dense and convolution layers, in order (hardware-aware ones included)."""
    return [layer for layer in model.layers if isinstance(layer, (lq.layers.QuantDense, lq.layers.QuantConv2D))]
