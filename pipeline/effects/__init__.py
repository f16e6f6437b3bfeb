"""The hardware model as a set of effects, each in a module of this package, found here by itself.

Every module (but ``base``) defining an :class:`~pipeline.effects.base.Effect` (a ``KernelEffect``
or ``OutputEffect``) adds it to :data:`EFFECTS` (see "Adding an effect" in docs/hardware-model.md),
in the order a layer applies them: kernel effects by ``order``, the accumulation, output effects by
``order``. The configuration,
command line, curves, plots, summaries, comparison columns and sweep space derive from it.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.effects.base import Effect, EffectParams, OutputEffect, Sampling, SearchRange, Site


def discover() -> tuple[Effect, ...]:
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)
               if info.name != "base" and not info.name.startswith("_")]
    effects = sorted((value() for module in modules for value in vars(module).values() if isinstance(value, type)
                      and issubclass(value, Effect) and value.__module__ == module.__name__),  # abstract: TypeError
                     key=lambda effect: (list(Site).index(effect.site), effect.order))
    owners: dict[tuple, list[str]] = {}  # (what, value) -> the effects that declare it: each must be unique
    for e in effects:
        for key in [("name", e.name), ("site order", (e.site.value, e.order)), *(("parameter", n) for n in e.params.field_names()),
                    *([("stream", e.stream)] if e.stream >= 0 else [])]:
            owners.setdefault(key, []).append(e.name)
    if clashes := [f"the {what} {value!r} ({', '.join(names)})" for (what, value), names in owners.items() if len(names) > 1]:
        raise TypeError(f"effects must not share {'; '.join(clashes)}")
    return tuple(effects)


EFFECTS: tuple[Effect, ...] = discover()
KERNEL_EFFECTS = tuple(effect for effect in EFFECTS if effect.site is Site.KERNEL)
OUTPUT_EFFECTS = tuple(effect for effect in EFFECTS if effect.site is Site.OUTPUT)
EFFECT_NAMES = tuple(effect.name for effect in EFFECTS)
PARAMETERS = {name: effect for effect in EFFECTS for name in effect.params.field_names()}  #: parameter -> its effect


def converter_range(levels: dict, context):
    """What a converter reads on each partial: the limits of the active output effects (the last one's
    wins: saturation), else the clean range; ``levels`` by effect name, Python values or variables."""
    from pipeline.effects.base import select

    lo, hi = context.clean_range()
    for effect in OUTPUT_EFFECTS:
        if (limits := effect.limits(levels[effect.name], context)) is not None:
            on = effect.is_on(levels[effect.name])
            lo, hi = select(on, limits[0], lo), select(on, limits[1], hi)
    return lo, hi


def saturated_statically(levels: dict) -> bool:
    """Whether an output effect with limits (saturation) is on for sure (Python levels: training), so
    the values a converter reads already lie in its full scale and need no clip of their own."""
    return any(type(effect).limits is not OutputEffect.limits and effect.is_on(levels[effect.name]) is True
               for effect in OUTPUT_EFFECTS)


def markdown_table() -> str:
    """The table of docs/hardware-model.md (``python -m pipeline.effects --page docs/hardware-model.md``)."""
    plain = lambda value: str(getattr(value, "value", value)).replace("None", "none")  # noqa: E731
    lines = ["| effect (`<name>_grid`, `robust_auc_<name>`) | parameters (default) | acts on | sampled | formula | curve axis |",
             "|---|---|---|---|---|---|"]
    for effect in EFFECTS:
        defaults = ", ".join(f"`{name}` ({plain(getattr(effect.params(), name))})" for name in effect.params.field_names())
        lines.append(f"| `{effect.name}` | {defaults} | {effect.site.value} | {effect.sampling.value} | {effect.formula} | "
                     f"{effect.curve.label}{' (log)' if effect.curve.log else ''} |")
    return "\n".join(lines) + "\n"


__all__ = ["EFFECTS", "EFFECT_NAMES", "Effect", "EffectParams", "KERNEL_EFFECTS", "OUTPUT_EFFECTS", "PARAMETERS", "Sampling",
           "SearchRange", "converter_range", "markdown_table", "saturated_statically"]
