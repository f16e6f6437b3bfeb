"""Crossbar tiles: a layer's fan-in split into arrays of at most R rows, each read on its own, summed digitally.

A targeted layer of fan-in N (dense: its N inputs; convolution: its im2col rows, N = kh kw C_in, in
the kernel's (kh, kw, C_in) order: row (r kw + c) C_in + ch) is split into
``T = ceil(N / R)`` tiles of R rows (``tile_rows``), the last one ``N - (T - 1) R``. A layer reading
8-bit pixels whose counters count XNORs (``acc_format=popcount``) is also read **bit-serially**, as
the deployment computes it: P = 8 passes per tile, pass b reading the pixel code's bit plane
``t_b = 2 bit_b(p) - 1`` (``p = round((x + 1) 127.5)``). Each (tile, pass) gives one **partial sum**

    s_tb = sum_{i in tile t} t_ib w_i   (bit-serial),   s_t = sum_{i in tile t} x_i w_i   (otherwise)

and the layer's output is their digital sum ``y = sum_t sum_b (2^b / 255) s_tb`` (``y = sum_t s_t``).
The output effects act on every partial on its own: partials are folded into the batch axis,
example-major (``[B * T * P, ...]``), so an effect sees each as an example of its own -- relative
noise takes the RMS of the tile's own partial, saturation and the ADC read the tile's own range.
One tile and no passes (``tile_rows`` none or >= N) is exactly the layer's plain sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import pipeline  # noqa: F401
import tensorflow as tf

from pipeline.hwmodel.quantizers import PIXEL_BITS


@dataclass(frozen=True)
class Tiling:
    """How one layer's fan-in maps onto tiles and passes (static: fixed when the layer is built)."""

    fan_in: int  #: N
    tile_rows: int  #: R (N when the layer is one tile)
    passes: int = 1  #: P: 8 for a bit-serial pixel layer, else 1

    @classmethod
    def of(cls, fan_in: int, tile_rows: int | None, bit_serial: bool) -> Tiling:
        return cls(fan_in, min(tile_rows or fan_in, fan_in), PIXEL_BITS if bit_serial else 1)

    @property
    def tiles(self) -> int:
        return math.ceil(self.fan_in / self.tile_rows)

    @property
    def count(self) -> int:
        """Partial sums per example: tiles x passes."""
        return self.tiles * self.passes

    @property
    def rows(self) -> list[int]:
        """The rows of each tile (the last one shorter)."""
        return [min(self.tile_rows, self.fan_in - start) for start in range(0, self.fan_in, self.tile_rows)]

    @property
    def partial_rows(self) -> np.ndarray:
        """N_t of every partial, in the folded order (tile-major, then pass)."""
        return np.repeat(np.asarray(self.rows, np.float32), self.passes)

    @property
    def weights(self) -> np.ndarray:
        """The digital sum's weight of every partial: 2^b / 255 per pass b, 1 without passes."""
        per_pass = 2.0 ** np.arange(self.passes) / (2**PIXEL_BITS - 1) if self.passes > 1 else np.ones(1)
        return np.tile(per_pass, self.tiles).astype(np.float32)

    # ------------------------------------------------------------------ inputs and kernels
    def planes(self, inputs):
        """Bit-serial inputs: ``[B, ..., N]`` pixels in [-1, 1] -> ``[B, P, ..., N]`` planes of +-1 (bit b at index b)."""
        code = tf.clip_by_value(tf.round((inputs + 1.0) * 127.5), 0.0, 2.0**PIXEL_BITS - 1)
        bits = [tf.math.floormod(tf.floor(code * 2.0**-b), 2.0) for b in range(self.passes)]
        return tf.stack([2.0 * bit - 1.0 for bit in bits], axis=1)

    def block_kernel(self, kernel):
        """A convolution's ``[kh, kw, C_in, C_out]`` kernel as ``[kh, kw, C_in, T * C_out]``: block t is
        the kernel on tile t's im2col rows, zero elsewhere (one convolution gives every tile's partial)."""
        rows = tf.range(self.fan_in)
        masks = [tf.cast((rows >= t * self.tile_rows) & (rows < (t + 1) * self.tile_rows), kernel.dtype) for t in range(self.tiles)]
        flat = tf.reshape(kernel, [self.fan_in, -1])
        return tf.reshape(tf.concat([flat * mask[:, None] for mask in masks], axis=1), [*kernel.shape[:-1], -1])

    # ------------------------------------------------------------------ partial sums
    def dense(self, inputs, kernel):
        """Partials ``[B * count, M]`` of flat ``inputs`` ``[B, N]`` and ``kernel`` ``[N, M]``; a stack of
        kernels ``[C, N, M]`` reads ``inputs`` as C equal parts, part c on kernel c. One product per
        tile, of its own rows (no padding: twice as fast as one padded batched product, forward and back)."""
        units, chips = kernel.shape[-1], kernel.shape.rank == 3
        x = self.planes(inputs) if self.passes > 1 else inputs  # [B, P, N] or [B, N]
        x = tf.reshape(x, [kernel.shape[0], -1, self.fan_in] if chips else [-1, self.fan_in])  # [C, b P, N] or [B P, N]
        tiles = [tf.matmul(part, rows) for part, rows in zip(tf.split(x, self.rows, axis=-1), tf.split(kernel, self.rows, axis=-2))]
        y = tf.reshape(tf.concat(tiles, axis=-1), [-1, self.passes, self.tiles, units])  # [B, P, T, M] (a concat: faster than a stack)
        return tf.reshape(tf.transpose(y, [0, 2, 1, 3]) if self.passes > 1 else y, [-1, units])  # [B T P, M]

    def convolution(self, convolve, inputs, kernel):
        """Partials ``[B * count, H, W, C_out]`` of ``convolve(inputs, kernel)`` (NHWC) per tile and pass."""
        units = kernel.shape[-1]
        x = inputs
        if self.passes > 1:  # [B, P, H, W, C] -> [B * P, H, W, C], example-major
            x = tf.reshape(self.planes(inputs), tf.concat([[-1], tf.shape(inputs)[1:]], axis=0))
        y = convolve(x, self.block_kernel(kernel) if self.tiles > 1 else kernel)  # [B P, H', W', T C_out]
        shape = tf.shape(y)
        y = tf.reshape(y, tf.stack([-1, self.passes, shape[1], shape[2], self.tiles, units]))
        y = tf.transpose(y, [0, 4, 1, 2, 3, 5])  # [B, T, P, H', W', C_out]
        return tf.reshape(y, tf.stack([-1, shape[1], shape[2], units]))

    def combine(self, partials):
        """The digital sum: ``[B * count, ...]`` -> ``[B, ...]``, ``y = sum_p weight_p s_p``."""
        shape = tf.shape(partials)
        grouped = tf.reshape(partials, tf.concat([[-1, self.count], shape[1:]], axis=0))
        weights = tf.reshape(tf.constant(self.weights), [1, self.count] + [1] * (partials.shape.rank - 1))
        return tf.reduce_sum(grouped * weights, axis=1) if self.passes > 1 else tf.reduce_sum(grouped, axis=1)

    def per_partial(self, values, like):
        """``values`` (one per partial, ``[count]``) broadcastable to the folded ``like`` ``[B * count, ...]``."""
        values = tf.convert_to_tensor(values, tf.float32)
        examples = tf.shape(like)[0] // self.count
        tiled = tf.tile(values, [examples])
        return tf.reshape(tiled, tf.concat([[-1], tf.ones([like.shape.rank - 1], tf.int32)], axis=0))

    def partial_range(self, partials):
        """[min, max] of every partial over a batch of folded ``partials``: two ``[count]`` tensors."""
        grouped = tf.reshape(partials, [-1, self.count, tf.reduce_prod(tf.shape(partials)[1:])])
        # the contiguous axis first: several times faster than one reduction over the outer and inner axes
        return tf.reduce_min(tf.reduce_min(grouped, axis=2), axis=0), tf.reduce_max(tf.reduce_max(grouped, axis=2), axis=0)
