"""Validation reports every error at once, each with ComfyUI's type, its node and input, and the exact shapes."""

from __future__ import annotations

import pytest

from athena.graph.validate import NodeError, check, comfy_node_errors, validate
from tests.graph.toy import registry


def out(src: str = "c") -> dict:
    return {"class_type": "Out", "inputs": {"value": [src, 0]}}


def const(v=1) -> dict:
    return {"class_type": "Const", "inputs": {"value": v}}


CASES = [
    ("required_input_missing", {"c": const(), "a": {"class_type": "Add", "inputs": {"b": 1}}, "o": out("a")}, "a", "a"),
    ("bad_linked_input", {"a": {"class_type": "Add", "inputs": {"a": ["nope", 0], "b": 1}}, "o": out("a")}, "a", "a"),
    ("bad_linked_input", {"c": const(), "a": {"class_type": "Add", "inputs": {"a": ["c", 3], "b": 1}}, "o": out("a")}, "a", "a"),
    ("return_type_mismatch", {"g": {"class_type": "Big", "inputs": {"mb": 1, "value": 0}},
                              "a": {"class_type": "Add", "inputs": {"a": ["g", 0], "b": 1}}, "o": out("a")}, "a", "a"),
    ("invalid_input_type", {"c": const("seven"), "o": out()}, "c", "value"),
    ("invalid_input_type", {"s": {"class_type": "Step", "inputs": {"x": "big.npy"}}, "o": out("s")}, "s", "x"),
    ("value_smaller_than_min", {"c": const(-5000), "o": out()}, "c", "value"),
    ("value_bigger_than_max", {"c": const(5000), "o": out()}, "c", "value"),
    ("value_not_in_list", {"p": {"class_type": "Pick", "inputs": {"choice": "blue"}}, "o": out("p")}, "p", "choice"),
    ("custom_validation_failed", {"r": {"class_type": "ReadFile", "inputs": {"path": "/no/such/file"}}, "o": out("r")},
     "r", None),
    ("unknown_node", {"c": {"class_type": "Sharpen3000", "inputs": {}}, "o": out()}, "c", None),
    ("dependency_cycle", {"a": {"class_type": "Add", "inputs": {"a": ["b", 0], "b": 1}},
                          "b": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": 1}}, "o": out("a")}, "a", None),
    ("prompt_no_outputs", {"c": const()}, None, None),
]


@pytest.mark.parametrize("code,prompt,node,input_name", CASES, ids=[c[0] for c in CASES])
def test_each_error_type_names_its_node_and_input(code, prompt, node, input_name):
    errors = validate(prompt, registry())
    hits = [e for e in errors if e.code == code]
    assert hits, errors
    assert hits[0].node_id == node and hits[0].input_name == input_name
    if input_name is not None:
        assert repr(input_name) in hits[0].message  # the message names the input it is about


def test_every_error_is_reported_at_once():
    prompt = {"c": const(5000), "p": {"class_type": "Pick", "inputs": {"choice": "blue"}},
              "a": {"class_type": "Add", "inputs": {"b": "x"}}, "o1": out("c"), "o2": out("p"), "o3": out("a")}
    codes = sorted((e.node_id, e.code, e.input_name) for e in validate(prompt, registry()))
    assert codes == [("a", "invalid_input_type", "b"), ("a", "required_input_missing", "a"),
                     ("c", "value_bigger_than_max", "value"), ("p", "value_not_in_list", "choice")]


def test_the_exact_shapes_of_an_error_and_of_comfyuis_node_errors():
    prompt = {"c": const(5000), "o": out("c"), "ok": {"class_type": "Const", "inputs": {"value": 2}},
              "o2": out("ok")}
    checked = check(prompt, registry())
    assert checked.outputs == ["o2"]  # the broken output is dropped; the other still runs
    err = checked.errors[0]
    assert err == NodeError("c", "value_bigger_than_max", "'value' is 5000, above its maximum 1000", "value", "Const",
                            {"received_value": 5000,
                             "input_config": ["INT", {"default": 0, "min": -1000, "max": 1000, "step": 1}]})
    assert str(err) == "node c (Const) input 'value': value_bigger_than_max: 'value' is 5000, above its maximum 1000"
    assert comfy_node_errors(checked, prompt) == {"c": {
        "errors": [{"type": "value_bigger_than_max", "message": "'value' is 5000, above its maximum 1000",
                    "details": "value", "extra_info": {"input_name": "value", "received_value": 5000,
                                                       "input_config": ["INT", {"default": 0, "min": -1000,
                                                                                "max": 1000, "step": 1}]}}],
        "dependent_outputs": ["o"], "class_type": "Const"}}


def test_constants_are_converted_as_comfyui_does():
    prompt = {"c": const("12"), "a": {"class_type": "Add", "inputs": {"a": ["c", 0], "b": 2.0}}, "o": out("a")}
    checked = check(prompt, registry())
    assert checked.errors == [] and checked.constants["c"] == {"value": 12} and checked.constants["a"] == {"b": 2}


def test_boxed_widget_values_from_the_frontend_are_unwrapped():
    prompt = {"c": {"class_type": "Const", "inputs": {"value": {"__value__": 3}}}, "o": out("c")}
    checked = check(prompt, registry())
    assert checked.errors == [] and checked.constants["c"] == {"value": 3}


def test_a_node_that_checks_its_inputs_itself_accepts_names_beyond_its_list():
    prompt = {"p": {"class_type": "PickAny", "inputs": {"choice": "x.png [output]"}}, "o": out("p")}
    assert validate(prompt, registry()) == []
    prompt["p"]["inputs"]["choice"] = "blue"
    assert [e.code for e in validate(prompt, registry())] == ["custom_validation_failed"]


def test_malformed_nodes_are_errors_not_crashes():
    for inputs in ([], None, "x"):
        errors = validate({"c": {"class_type": "Const", "inputs": inputs}, "o": out("c")}, registry())
        assert ("c", "invalid_prompt") in [(e.node_id, e.code) for e in errors]


def test_int_strings_keep_every_digit():
    prompt = {"c": {"class_type": "Seed", "inputs": {"seed": "123456789012345678"}}, "o": out("c")}
    assert check(prompt, registry()).constants["c"] == {"seed": 123456789012345678}
