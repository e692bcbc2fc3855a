"""The typed reading of JSON configs (``wavedensity.configfile``) that TrainConfig and TransplantConfig share."""

from dataclasses import dataclass, field

import pytest

from wavedensity.configfile import typed_values
from wavedensity.train import ConfigError, TrainConfig
from wavedensity.transplant.config import TransplantConfig


@dataclass
class Example:
    steps: int = 1
    lr: float = 1e-3
    name: str = ""
    flag: bool = False
    betas: tuple = (0.9, 0.95)
    floor: float | None = None
    extra: dict | None = None
    layers: str | list | dict = "all"
    items: list = field(default_factory=list)


def values(**raw):
    return typed_values(Example, raw, "f.json", ConfigError)


def test_values_of_each_json_type_are_taken_and_tuples_come_from_lists():
    got = values(steps=3, lr=2, name="x", flag=True, betas=[0.8, 0.9], floor=None, extra={"a": 1}, layers=[0, 1],
                 items=[])
    assert got == {"steps": 3, "lr": 2, "name": "x", "flag": True, "betas": (0.8, 0.9), "floor": None,
                   "extra": {"a": 1}, "layers": [0, 1], "items": []}
    assert values(floor=0.5, layers={"every": 2}) == {"floor": 0.5, "layers": {"every": 2}}


@pytest.mark.parametrize("raw, message", [
    ({"steps": True}, "f.json: steps must be an integer, got True"),
    ({"steps": 1.5}, "f.json: steps must be an integer, got 1.5"),
    ({"lr": False}, "f.json: lr must be a number, got False"),
    ({"lr": "fast"}, "f.json: lr must be a number, got 'fast'"),
    ({"flag": 1}, "f.json: flag must be true or false, got 1"),
    ({"betas": 0.9}, "f.json: betas must be a list, got 0.9"),
    ({"floor": "low"}, "f.json: floor must be a number or null, got 'low'"),
    ({"extra": []}, "f.json: extra must be an object or null, got []"),
    ({"layers": 3}, "f.json: layers must be a string, a list or an object, got 3"),
    ({"name": None}, "f.json: name must be a string, got None"),
])
def test_wrong_types_are_refused_by_key(raw, message):
    with pytest.raises(ConfigError) as err:
        values(**raw)
    assert str(err.value) == message


def test_unknown_keys_are_named_with_the_closest_known_key():
    with pytest.raises(ConfigError) as err:
        values(step=3, colour="red")
    assert str(err.value) == ("f.json: unknown keys ['colour', 'step'] (did you mean 'step' -> 'steps'?); known keys: "
                              "['betas', 'extra', 'flag', 'floor', 'items', 'layers', 'lr', 'name', 'steps']")
    with pytest.raises(ConfigError, match=r"unknown keys \['x'\]; docs/x.md lists the known keys$"):
        typed_values(Example, {"x": 1}, "f.json", ConfigError, keys_doc="docs/x.md")
    with pytest.raises(ConfigError, match="f.json: expected a JSON object"):
        typed_values(Example, [1], "f.json", ConfigError)


def test_a_field_without_a_json_type_is_a_programming_error():
    @dataclass
    class Loose:
        anything: object = None

    with pytest.raises(TypeError, match="need a JSON type"):
        typed_values(Loose, {}, "f.json", ConfigError)


def test_both_configs_read_through_it():
    with pytest.raises(ConfigError, match=r"unknown keys \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1})
    assert TrainConfig.from_dict({"betas": [0.8, 0.9]}).betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"wda_num_mask'\] \(did you mean 'wda_num_mask' -> 'wda_num_masks'\?\); "
                                          "docs/transplant.md lists the known keys"):
        TransplantConfig.from_dict({"teacher_model_id": "t", "dataset_path": "d", "wda_num_mask": 4})
    with pytest.raises(ConfigError, match="wda_layers must be a string, a list or an object, got 3"):
        TransplantConfig.from_dict({"teacher_model_id": "t", "dataset_path": "d", "wda_layers": 3})
