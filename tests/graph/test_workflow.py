"""UI -> API conversion rules, each on a small hand-built workflow over a tiny registry; format detection; `--set`;
and every installed ComfyUI template converting into a structurally sound prompt."""

from __future__ import annotations

import json

import pytest

from athena.errors import ConfigError
from athena.graph.node import Node, Registry
from athena.graph.schema import Combo, Float, Int, Link, Output, Schema, String
from athena.graph.validate import is_link, validate
from athena.graph.workflow import (
    athena_document,
    bypass_slot,
    convert,
    detect,
    load,
    parse_link,
    set_value,
    to_api,
)
from tests.graph.templates import installed_templates

# ---- a tiny node library ----------------------------------------------------------------------------------------

def node(id: str, inputs=(), outputs=(), output_node=False) -> type[Node]:
    schema = Schema(id=id, category="test", inputs=tuple(inputs), outputs=tuple(Output(t) for t in outputs),
                    output_node=output_node)
    return type(id, (Node,), {"schema": schema, "run": classmethod(lambda cls, **kw: ())})


REGISTRY = Registry([
    node("Loader", [Combo("ckpt_name", ("a.ckpt", "b.ckpt"))], ["MODEL", "CLIP"]),
    node("Encode", [String("text", multiline=True), Link("clip", "CLIP")], ["CONDITIONING"]),
    node("Empty", [Int("width", 512), Int("height", 512)], ["LATENT"]),
    node("Sampler", [Link("model", "MODEL"), Int("seed", control_after_generate=True), Int("steps", 20),
                     Float("cfg", 7.0), Combo("sampler_name", ("euler", "heun")), Link("positive", "CONDITIONING"),
                     Link("latent_image", "LATENT"), Float("denoise", 1.0)], ["LATENT"]),
    node("Scale", [Link("samples", "LATENT"), Float("factor", 1.5)], ["LATENT"]),
    node("Mix", [Link("model", "MODEL"), Link("latent", "LATENT")], ["LATENT", "MODEL"]),
    node("Counter", [Int("value"), String("label")], ["INT"]),
    node("LoadImg", [Combo("image", ("x.png", "y.png"), image_upload=True), Combo("channel", ("alpha", "red"))],
         ["IMAGE"]),
    node("Save", [Link("images", "LATENT"), String("filename_prefix", "out")], [], output_node=True),
], ignored=("Note", "MarkdownNote"))


def ui(nodes, links, **extra):
    """A UI-format workflow; nodes are (id, type, widgets_values, inputs, outputs, extra) in short form."""
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "version": 0.4,
            **extra}


def n(id, type, widgets=None, inputs=(), outputs=(), **extra):
    """One UI node; inputs are (name, type, link) or (name, type, link, "widget")."""
    ins = [{"name": i[0], "type": i[1], "link": i[2], **({"widget": {"name": i[0]}} if len(i) > 3 else {})}
           for i in inputs]
    outs = [{"name": t, "type": t, "links": []} for t in outputs]
    return {"id": id, "type": type, "mode": 0, "inputs": ins, "outputs": outs, "properties": {},
            **({"widgets_values": widgets} if widgets is not None else {}), **extra}


def txt2img(**sampler_extra):
    """Loader(1) -> Encode(2) -> Sampler(4) <- Empty(3); Sampler -> Save(5)."""
    return ui([
        n(1, "Loader", ["a.ckpt"], outputs=["MODEL", "CLIP"]),
        n(2, "Encode", ["a fox"], [("clip", "CLIP", 2)], ["CONDITIONING"]),
        n(3, "Empty", [64, 48], outputs=["LATENT"]),
        n(4, "Sampler", [5, "randomize", 2, 7.5, "heun", 0.8],
          [("model", "MODEL", 1), ("positive", "CONDITIONING", 3), ("latent_image", "LATENT", 4)], ["LATENT"],
          **sampler_extra),
        n(5, "Save", ["fox"], [("images", "LATENT", 5)]),
    ], [[1, 1, 0, 4, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 0, 4, 1, "CONDITIONING"],
        [4, 3, 0, 4, 2, "LATENT"], [5, 4, 0, 5, 0, "LATENT"]])


# ---- widgets ----------------------------------------------------------------------------------------------------------

def test_widgets_follow_schema_order_and_skip_the_control_value():
    prompt = to_api(txt2img(), REGISTRY)
    assert prompt["4"] == {"class_type": "Sampler", "_meta": {"title": "Sampler"}, "inputs": {
        "seed": 5, "steps": 2, "cfg": 7.5, "sampler_name": "heun", "denoise": 0.8,
        "model": ["1", 0], "positive": ["2", 0], "latent_image": ["3", 0]}}
    assert prompt["2"]["inputs"] == {"text": "a fox", "clip": ["1", 1]}
    assert prompt["5"]["inputs"] == {"filename_prefix": "fox", "images": ["4", 0]}
    assert validate(prompt, REGISTRY) == []


def test_control_value_is_optional_and_detected_on_undeclared_ints():
    wf = txt2img()
    wf["nodes"][3]["widgets_values"] = [5, 2, 7.5, "heun", 0.8]  # saved without the control widget
    assert to_api(wf, REGISTRY)["4"]["inputs"]["steps"] == 2
    counter = ui([n(1, "Counter", [3, "increment", "x"])], [])  # no flag, but one value too many
    assert to_api(counter, REGISTRY)["1"]["inputs"] == {"value": 3, "label": "x"}
    exact = ui([n(1, "Counter", [3, "fixed"])], [])  # as many values as widgets: "fixed" is the label
    assert to_api(exact, REGISTRY)["1"]["inputs"] == {"value": 3, "label": "fixed"}


def test_dict_widgets_upload_value_and_defaults():
    wf = ui([n(1, "Empty", {"height": 32, "width": 16}), n(2, "LoadImg", ["y.png", "image", "red"]),
             n(3, "Empty", [8]), n(4, "Empty")], [])
    prompt = to_api(wf, REGISTRY)
    assert prompt["1"]["inputs"] == {"width": 16, "height": 32}
    assert prompt["2"]["inputs"] == {"image": "y.png", "channel": "red"}
    assert prompt["3"]["inputs"] == {"width": 8, "height": 512}  # a widget added since: its default
    assert prompt["4"]["inputs"] == {"width": 512, "height": 512}


def test_widget_converted_to_input_takes_the_link_and_keeps_its_position():
    wf = txt2img()
    wf["nodes"].append(n(6, "Counter", [9, "fixed", "s"], outputs=["INT"]))
    wf["nodes"][3]["inputs"].append({"name": "seed", "type": "INT", "link": 6, "widget": {"name": "seed"}})
    wf["links"].append([6, 6, 0, 4, 3, "INT"])
    inputs = to_api(wf, REGISTRY)["4"]["inputs"]
    assert inputs["seed"] == ["6", 0] and inputs["steps"] == 2 and inputs["denoise"] == 0.8


def test_list_values_are_boxed_so_they_cannot_pass_for_links():
    wf = ui([n(1, "Counter", [3, ["1", 0]])], [])
    assert to_api(wf, REGISTRY)["1"]["inputs"]["label"] == {"__value__": ["1", 0]}


# ---- virtual nodes, mute, bypass ------------------------------------------------------------------------------------------

def test_reroute_chains_are_followed():
    wf = txt2img()
    wf["nodes"] += [n(10, "Reroute", None, [("", "*", 2)], ["CLIP"]), n(11, "Reroute", None, [("", "*", 10)], ["CLIP"])]
    wf["nodes"][1]["inputs"][0]["link"] = 11
    wf["links"][1] = [2, 1, 1, 10, 0, "CLIP"]
    wf["links"] += [[10, 10, 0, 11, 0, "CLIP"], [11, 11, 0, 2, 0, "CLIP"]]
    prompt = to_api(wf, REGISTRY)
    assert prompt["2"]["inputs"]["clip"] == ["1", 1] and "10" not in prompt and "11" not in prompt


def test_primitive_node_value_becomes_the_constant_of_every_target():
    wf = txt2img()
    wf["nodes"].append(n(7, "PrimitiveNode", [42, "fixed"], outputs=["INT"]))
    wf["nodes"].append(n(8, "Counter", [1, "c"], [("value", "INT", 8, "widget")], ["INT"]))
    wf["nodes"][3]["inputs"].append({"name": "seed", "type": "INT", "link": 7, "widget": {"name": "seed"}})
    wf["links"] += [[7, 7, 0, 4, 3, "INT"], [8, 7, 0, 8, 0, "INT"]]
    prompt = to_api(wf, REGISTRY)
    assert prompt["4"]["inputs"]["seed"] == 42 and prompt["8"]["inputs"]["value"] == 42 and "7" not in prompt


def test_muted_nodes_are_removed_with_the_links_into_them():
    wf = txt2img()
    wf["nodes"][1]["mode"] = 2
    prompt = to_api(wf, REGISTRY)
    assert "2" not in prompt and "positive" not in prompt["4"]["inputs"]
    assert [e.code for e in validate(prompt, REGISTRY)] == ["required_input_missing"]


def test_bypassed_node_passes_its_input_of_the_same_type():
    wf = txt2img()  # Sampler(4) -> Scale(6, bypassed) -> Save(5)
    wf["nodes"].append(n(6, "Scale", [2.0], [("samples", "LATENT", 5)], ["LATENT"], mode=4))
    wf["nodes"][4]["inputs"][0]["link"] = 6
    wf["links"][4] = [5, 4, 0, 6, 0, "LATENT"]
    wf["links"].append([6, 6, 0, 5, 0, "LATENT"])
    prompt = to_api(wf, REGISTRY)
    assert "6" not in prompt and prompt["5"]["inputs"]["images"] == ["4", 0]


def test_bypass_matches_by_type_not_by_position():
    """Mix(model, latent) -> (LATENT, MODEL): output 0 passes the latent input, output 1 the model input."""
    wf = ui([
        n(1, "Loader", ["a.ckpt"], outputs=["MODEL", "CLIP"]),
        n(3, "Empty", [64, 64], outputs=["LATENT"]),
        n(4, "Mix", None, [("model", "MODEL", 1), ("latent", "LATENT", 2)], ["LATENT", "MODEL"], mode=4),
        n(5, "Save", ["x"], [("images", "LATENT", 3)]),
        n(6, "Sampler", [1, 2, 3.0, "euler", 1.0], [("model", "MODEL", 4), ("latent_image", "LATENT", 5)], ["LATENT"]),
    ], [[1, 1, 0, 4, 0, "MODEL"], [2, 3, 0, 4, 1, "LATENT"], [3, 4, 0, 5, 0, "LATENT"], [4, 4, 1, 6, 0, "MODEL"],
        [5, 3, 0, 6, 1, "LATENT"]])
    prompt = to_api(wf, REGISTRY)
    assert prompt["5"]["inputs"]["images"] == ["3", 0] and prompt["6"]["inputs"]["model"] == ["1", 0]
    mix = wf["nodes"][2]
    assert bypass_slot(mix, 0, "LATENT") == 1 and bypass_slot(mix, 1, "MODEL") == 0
    assert bypass_slot(mix, 0, "IMAGE") is None and bypass_slot(mix, 1, "*") == 1


def test_notes_and_groups_are_dropped_and_unknown_types_reported():
    wf = txt2img(title="My sampler")
    wf["nodes"] += [n(20, "Note", ["hello"]), n(21, "MarkdownNote", ["# hi"]),
                    n(22, "FancyUpscale", [2, "lanczos"], [("samples", "LATENT", 20)], ["LATENT"])]
    wf["links"].append([20, 4, 0, 22, 0, "LATENT"])
    wf["groups"] = [{"title": "Step 1", "bounding": [0, 0, 10, 10]}]
    conv = convert(wf, REGISTRY)
    assert conv.missing == ["FancyUpscale"] and "20" not in conv.prompt and "21" not in conv.prompt
    assert conv.prompt["22"] == {"class_type": "FancyUpscale", "inputs": {"samples": ["4", 0]},
                                 "_meta": {"title": "FancyUpscale"}}
    assert conv.prompt["4"]["_meta"]["title"] == "My sampler"
    assert "unknown_node" in {e.code for e in validate(conv.prompt, REGISTRY)}


# ---- subgraphs ----------------------------------------------------------------------------------------------------------

def subgraph(id, inputs, outputs, nodes, links):
    """A subgraph definition; inputs/outputs are (name, type, [link ids]); links use the dict form."""
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    return {"id": id, "name": id, "inputNode": {"id": -10}, "outputNode": {"id": -20},
            "inputs": [{"name": a, "type": t, "linkIds": ids} for a, t, ids in inputs],
            "outputs": [{"name": a, "type": t, "linkIds": ids} for a, t, ids in outputs],
            "widgets": [], "nodes": nodes, "links": [dict(zip(keys, link)) for link in links]}


def nested(instance_widgets=None, **instance_extra):
    """Empty(1) -> outer instance 7 [-> inner instance 3 [-> Scale 4]] -> Save(9); factor is promoted twice."""
    inner = subgraph("inner-id", [("samples", "LATENT", [1]), ("factor", "FLOAT", [2])], [("LATENT", "LATENT", [3])],
                     [n(4, "Scale", [1.25], [("samples", "LATENT", 1), ("factor", "FLOAT", 2, "widget")], ["LATENT"])],
                     [(1, -10, 0, 4, 0, "LATENT"), (2, -10, 1, 4, 1, "FLOAT"), (3, 4, 0, -20, 0, "LATENT")])
    outer = subgraph("outer-id", [("samples", "LATENT", [1]), ("factor", "FLOAT", [2])], [("LATENT", "LATENT", [3])],
                     [n(3, "inner-id", [], [("samples", "LATENT", 1), ("factor", "FLOAT", 2, "widget")], ["LATENT"])],
                     [(1, -10, 0, 3, 0, "LATENT"), (2, -10, 1, 3, 1, "FLOAT"), (3, 3, 0, -20, 0, "LATENT")])
    instance = n(7, "outer-id", instance_widgets, [("samples", "LATENT", 1), ("factor", "FLOAT", None, "widget")],
                 ["LATENT"], **instance_extra)
    return ui([n(1, "Empty", [64, 64], outputs=["LATENT"]), instance, n(9, "Save", ["s"], [("images", "LATENT", 2)])],
              [[1, 1, 0, 7, 0, "LATENT"], [2, 7, 0, 9, 0, "LATENT"]],
              definitions={"subgraphs": [outer, inner]})


def test_nested_subgraphs_are_flattened_with_path_ids():
    prompt = to_api(nested([2.5]), REGISTRY)
    assert set(prompt) == {"1", "7:3:4", "9"}
    assert prompt["7:3:4"]["inputs"] == {"samples": ["1", 0], "factor": 2.5}
    assert prompt["9"]["inputs"]["images"] == ["7:3:4", 0]
    assert validate(prompt, REGISTRY) == []


def test_subgraph_widget_values_by_proxy_and_fallback_to_the_inner_value():
    proxied = nested([3.0], properties={"proxyWidgets": [["-1", "factor"]]})
    assert to_api(proxied, REGISTRY)["7:3:4"]["inputs"]["factor"] == 3.0
    assert to_api(nested([], widgets_values_named={"factor": 5.0}), REGISTRY)["7:3:4"]["inputs"]["factor"] == 5.0
    assert to_api(nested([]), REGISTRY)["7:3:4"]["inputs"]["factor"] == 1.25  # no value: the inner widget's own


def test_subgraph_input_fed_by_an_outer_link_and_bypassed_instance():
    wf = nested([2.5])
    wf["nodes"].append(n(8, "PrimitiveNode", [4.0], outputs=["FLOAT"]))
    wf["nodes"][1]["inputs"][1]["link"] = 3
    wf["links"].append([3, 8, 0, 7, 1, "FLOAT"])
    assert to_api(wf, REGISTRY)["7:3:4"]["inputs"]["factor"] == 4.0
    wf["nodes"][1]["mode"] = 4
    prompt = to_api(wf, REGISTRY)
    assert set(prompt) == {"1", "9"} and prompt["9"]["inputs"]["images"] == ["1", 0]


def test_links_in_both_forms():
    assert parse_link([3, 1, 0, 2, 1, "CLIP"]) == parse_link(
        {"id": 3, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 1, "type": "CLIP"})
    wf = txt2img()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    wf["links"] = [dict(zip(keys, link)) for link in wf["links"]]
    assert to_api(wf, REGISTRY) == to_api(txt2img(), REGISTRY)
    with pytest.raises(ConfigError, match="malformed"):
        parse_link([1, 2])


# ---- formats and --set --------------------------------------------------------------------------------------------

def test_load_detects_every_format():
    wf = txt2img()
    prompt = to_api(wf, REGISTRY)
    assert load(wf, REGISTRY) == prompt
    assert load(json.dumps(prompt), REGISTRY) == prompt
    assert load({"prompt": prompt, "client_id": "x"}, REGISTRY) == prompt
    assert load(athena_document(prompt, wf), REGISTRY) == prompt
    assert load({"format": "athena/1", "workflow": wf}, REGISTRY) == prompt
    assert load({3: {"class_type": "Empty", "inputs": {"width": 8}}}, REGISTRY) == {
        "3": {"class_type": "Empty", "inputs": {"width": 8}}}
    assert [detect(x) for x in (wf, prompt, athena_document(prompt))] == ["ui", "api", "athena"]


@pytest.mark.parametrize("data, words", [
    ([1, 2], "not a list"), ({"foo": 1}, "not a workflow"), ("{nope", "not valid JSON"),
    ({"format": "athena/9", "prompt": {}}, "athena/1"), ({"format": "athena/1"}, "needs a 'prompt'"),
    ({"1": {"class_type": "Empty", "inputs": 3}, "2": {"class_type": "Empty"}}, "inputs must be"),
    ({"nodes": [{"id": 1}], "links": []}, "no id or type"),
])
def test_load_errors_name_the_problem(data, words):
    with pytest.raises(ConfigError, match=words):
        load(data, REGISTRY)


def test_set_value_by_id_title_and_class():
    prompt = to_api(txt2img(title="Main sampler"), REGISTRY)
    out = set_value(prompt, "4.steps=30", REGISTRY)
    assert out["4"]["inputs"]["steps"] == 30 and prompt["4"]["inputs"]["steps"] == 2  # a copy
    assert set_value(prompt, "Main sampler.cfg=3.5")["4"]["inputs"]["cfg"] == 3.5
    assert set_value(prompt, "Encode.text=a cat, 4k")["2"]["inputs"]["text"] == "a cat, 4k"
    assert set_value(prompt, "Save.filename_prefix=[1,2]")["5"]["inputs"]["filename_prefix"] == [1, 2]
    with pytest.raises(ConfigError, match="its inputs: seed, steps"):
        set_value(prompt, "4.stepz=3", REGISTRY)
    with pytest.raises(ConfigError, match="no node 'KSampler'.*4 \\(Main sampler\\)"):
        set_value(prompt, "KSampler.seed=1")
    with pytest.raises(ConfigError, match="NODE.INPUT=VALUE"):
        set_value(prompt, "steps=3")


# ---- every installed template ----------------------------------------------------------------------------------

def test_every_installed_template_converts_into_a_sound_prompt():
    """Every link ends at a node of the prompt, at an output its schema has (or, where a template was saved by a newer
    version of a node with more outputs than ours, one its UI node declares: a library gap, not a conversion one)."""
    from athena.nodes import registry
    reg = registry()
    templates = installed_templates()
    assert len(templates) > 600
    for name, wf in templates.items():
        prompt = convert(wf, reg).prompt
        assert prompt, name
        ui_outputs: dict[str, int] = {}
        for graph in [wf, *(wf.get("definitions") or {}).get("subgraphs", [])]:
            for node in graph["nodes"]:
                ui_outputs[node["type"]] = max(ui_outputs.get(node["type"], 0), len(node.get("outputs") or []))
        for nid, spec in prompt.items():
            assert spec["class_type"] not in ("Reroute", "PrimitiveNode", "Note", "MarkdownNote"), (name, nid)
            for value in spec["inputs"].values():
                if not is_link(value):
                    continue
                assert value[0] in prompt, (name, nid, value)
                source = prompt[value[0]]["class_type"]
                known = len(reg[source].schema.outputs) if source in reg else 0
                assert value[1] < max(known, ui_outputs[source]), (name, nid, value)
