"""The hardware model as a set of effects: one module per non-ideality, found here by itself.

Every module of this package (but ``base``) that defines an :class:`~pipeline.effects.base.Effect`
subclass adds that effect to :data:`EFFECTS` -- adding a non-ideality is adding one module (see
``bit_errors.py`` and "Adding an effect" in docs/hardware-model.md). The order of :data:`EFFECTS` is the order
a layer applies them: kernel effects by ``order``, the accumulation, then output effects by ``order``.
Everything else -- the configuration, the command line, the robustness curves, plots, summaries,
the comparison columns, the sweep's space -- is derived from this registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.effects.base import Effect, EffectParams, Sampling, SearchRange, Stage

STAGE_ORDER = {Stage.KERNEL: 0, Stage.OUTPUT: 1}


def discover() -> tuple[Effect, ...]:
    """One instance of every Effect subclass defined in this package's modules, in application order."""
    found = []
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name == "base" or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        found += [value() for value in vars(module).values()
                  if isinstance(value, type) and issubclass(value, Effect) and value.__module__ == module.__name__]
    effects = tuple(sorted(found, key=lambda effect: (STAGE_ORDER[effect.stage], effect.order)))
    check_unique(effects)
    return effects


def check_unique(effects: tuple[Effect, ...]) -> None:
    """Names, random streams, stage positions and parameter names must not collide."""
    for what, key in (("name", lambda e: [e.name]), ("stream", lambda e: [e.stream] if e.stream >= 0 else []),
                      ("stage order", lambda e: [(e.stage, e.order)]), ("parameter", lambda e: list(e.params.field_names()))):
        seen: dict = {}
        for effect in effects:
            for value in key(effect):
                if value in seen:
                    raise TypeError(f"effects {seen[value]} and {effect.name} share the {what} {value!r}")
                seen[value] = effect.name


EFFECTS: tuple[Effect, ...] = discover()
KERNEL_EFFECTS = tuple(effect for effect in EFFECTS if effect.stage is Stage.KERNEL)
OUTPUT_EFFECTS = tuple(effect for effect in EFFECTS if effect.stage is Stage.OUTPUT)
EFFECT_NAMES = tuple(effect.name for effect in EFFECTS)
#: every effect parameter, by name -> the effect that declares it
PARAMETERS = {name: effect for effect in EFFECTS for name in effect.params.field_names()}


def effect_named(name: str) -> Effect:
    for effect in EFFECTS:
        if effect.name == name:
            return effect
    raise KeyError(f"no effect {name!r}; known: {', '.join(EFFECT_NAMES)}")


def plain(value) -> str:
    return str(getattr(value, "value", value)).replace("None", "none")


def markdown_table() -> str:
    """The hardware-model table of docs/hardware-model.md, generated from the registry (a test keeps them equal)."""
    lines = ["| effect (`<name>_grid`, `robust_auc_<name>`) | parameters (default) | acts on | sampled | formula | curve axis |",
             "|---|---|---|---|---|---|"]
    for effect in EFFECTS:
        ideal = effect.params()
        parameters = ", ".join(f"`{name}` ({plain(getattr(ideal, name))})" for name in effect.params.field_names())
        lines.append(f"| `{effect.name}` | {parameters} | {effect.stage.value} | {effect.sampling.value} | {effect.formula} | "
                     f"{effect.curve.label}{' (log)' if effect.curve.log else ''} |")
    return "\n".join(lines) + "\n"


__all__ = ["EFFECTS", "EFFECT_NAMES", "Effect", "EffectParams", "KERNEL_EFFECTS", "OUTPUT_EFFECTS", "PARAMETERS", "Sampling", "SearchRange",
           "effect_named", "markdown_table"]
