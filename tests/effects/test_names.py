"""An effect has one name: its registry name is its module's name and, in CamelCase, its class's."""

import pytest

from pipeline.effects import EFFECTS


@pytest.mark.parametrize("effect", EFFECTS, ids=[effect.name for effect in EFFECTS])
def test_module_class_and_registry_name_agree(effect):
    camel = "".join(part.capitalize() for part in effect.name.split("_"))
    assert type(effect).__module__ == f"pipeline.effects.{effect.name}"
    assert type(effect).__name__ == camel and effect.params.__name__ == f"{camel}Params"
