"""Workflow files: ComfyUI's UI ("workflow") format converted to the API format, format detection, `--set` overrides.

Three formats are read (docs/workflows.md):

* API format, what `/prompt` executes: `{node_id: {"class_type", "inputs", "_meta": {"title"}}}`.
* UI format, what the ComfyUI frontend saves and templates hold: `{"nodes": [...], "links": [...], ...}`. Widget values
  are positional, so converting it needs each node's schema: this module does what the frontend's `graphToPrompt`
  does (mute, bypass, reroutes, primitive nodes, subgraph flattening) from the schemas of a `Registry`.
* Athena's own: `{"format": "athena/1", "prompt": <API format>, "workflow": <UI format, optional>}`; the prompt is
  what runs, the workflow rides along so that a UI can show the graph again.

The module is generic: it knows node schemas and the frontend's UI-only node types, nothing about diffusion.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from athena.errors import ConfigError
from athena.graph.node import Registry
from athena.graph.schema import ANY, Input, Schema

ApiPrompt = dict[str, dict[str, Any]]
ATHENA_FORMAT = "athena/1"
MUTED, BYPASSED = 2, 4  # LiteGraph node modes (0 runs; 2 "never"; 4 bypass)
SUBGRAPH_INPUT = -10  # the id of a subgraph's input node inside its definition
UI_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})  # frontend-only node types
CONTROL_WORDS = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
SEED_NAMES = ("seed", "noise_seed")  # INT widgets the frontend gives a control value even without the flag
MAX_DEPTH = 32  # nested subgraph instances


# ---- links and values ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    id: int
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str


@dataclass(frozen=True)
class Source:
    """A resolved link: output `slot` of the API node `node`."""

    node: str
    slot: int


@dataclass(frozen=True)
class Const:
    """A resolved link that ends in a value (a PrimitiveNode, or a subgraph's widget)."""

    value: Any


Resolved = Source | Const | None


def parse_link(raw: Any) -> Link:
    """A link from the root graph's array form `[id, from, from_slot, to, to_slot, type]` or the dict form subgraphs
    use (`{id, origin_id, origin_slot, target_id, target_slot, type}`)."""
    try:
        if isinstance(raw, dict):
            return Link(int(raw["id"]), str(raw["origin_id"]), int(raw["origin_slot"]), str(raw["target_id"]),
                        int(raw["target_slot"]), str(raw.get("type", "")))
        lid, origin, oslot, target, tslot, *rest = raw
        return Link(int(lid), str(origin), int(oslot), str(target), int(tslot), str(rest[0]) if rest else "")
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"workflow link {str(raw)[:80]} is malformed ({e}); a link is [id, from_node, from_slot, "
                          f"to_node, to_slot, type]") from None


def compatible(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: "*" or empty matches anything; otherwise a shared part of comma lists, any case."""
    if a in (None, "", ANY, 0) or b in (None, "", ANY, 0) or a == b:
        return True
    return bool(set(str(a).lower().split(",")) & set(str(b).lower().split(",")))


def api_value(value: Any) -> Any:
    """A widget value for the API format; a list is boxed as the frontend does, so that it cannot pass for a link."""
    return {"__value__": value} if isinstance(value, list) else value


# ---- widget values ----------------------------------------------------------------------------------------------

def has_control(inp: Input) -> bool:
    return inp.control_after_generate or (inp.type == "INT" and inp.name in SEED_NAMES)


def widget_values(node: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """A node's `widgets_values` by input name: positional over the schema's widget inputs, skipping the frontend's
    UI-only values (the control word after a seed, an upload button's value); a dict is taken by name. Widgets the
    workflow has no value for (added to the node after it was saved) get their default, as the frontend does."""
    widgets = [i for i in schema.inputs if i.is_widget]
    values = node.get("widgets_values")
    out: dict[str, Any] = {}
    if isinstance(values, dict):
        return {i.name: values[i.name] for i in widgets if i.name in values}
    values = values if isinstance(values, list) else []
    k = 0
    for n, inp in enumerate(widgets):
        if k >= len(values):
            if inp.default is not None:
                out[inp.name] = inp.default
            continue
        out[inp.name] = values[k]
        k += 1
        surplus = len(values) - k > len(widgets) - n - 1  # more values left than widgets: a UI-only one follows
        follows = values[k] if k < len(values) else None
        if isinstance(follows, str) and follows in CONTROL_WORDS and (has_control(inp) or surplus) and \
                inp.type in ("INT", "FLOAT", "COMBO"):
            k += 1
        elif inp.image_upload and surplus:
            k += 1
    return out


# ---- graph scopes -------------------------------------------------------------------------------------------------

@dataclass
class Scope:
    """One level of the graph: the root workflow, or one instance of a subgraph definition. Node ids are prefixed by
    the instance path (`"outer:inner"`), as the current frontend names them."""

    nodes: dict[str, dict[str, Any]]
    links: dict[int, Link]
    path: tuple[str, ...] = ()
    instance: dict[str, Any] | None = None  # the subgraph node this scope expands
    parent: Scope | None = None
    definition: dict[str, Any] | None = None
    overrides: dict[tuple[str, str], Any] = field(default_factory=dict)  # (inner id, widget) -> promoted value

    def exec_id(self, node_id: Any) -> str:
        return ":".join((*self.path, str(node_id)))


def make_scope(graph: dict[str, Any], **kw: Any) -> Scope:
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        raise ConfigError("a UI-format workflow needs a list of nodes under 'nodes'")
    links = {}
    for raw in graph.get("links") or []:
        if raw is not None:
            link = parse_link(raw)
            links[link.id] = link
    by_id = {}
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node or "type" not in node:
            raise ConfigError(f"workflow node {str(node)[:80]} has no id or type; each node is {{id, type, inputs, "
                              f"outputs, widgets_values, ...}}")
        by_id[str(node["id"])] = node
    return Scope(by_id, links, **kw)


@dataclass
class Conversion:
    """`to_api`'s result with what it noticed: node types the registry lacks, and links it could not follow."""

    prompt: ApiPrompt
    missing: list[str]
    notes: list[str]


class Converter:
    """UI format -> API format over one workflow (holds the per-conversion caches; build one per workflow)."""

    def __init__(self, workflow: dict[str, Any], registry: Registry) -> None:
        self.registry = registry
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        self.definitions = {s["id"]: s for s in subgraphs if isinstance(s, dict) and "id" in s}
        self.ui_only = UI_ONLY | registry.ignored
        self.prompt: ApiPrompt = {}
        self.missing: set[str] = set()
        self.notes: list[str] = []
        self.root = make_scope(workflow)
        self.promoted: dict[str, list[str]] = {}

    def run(self) -> Conversion:
        self.emit(self.root)
        for spec in self.prompt.values():  # links to removed (muted) nodes are dropped, as in the frontend
            for name, value in list(spec["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in self.prompt:
                    del spec["inputs"][name]
        return Conversion(self.prompt, sorted(self.missing), self.notes)

    # -- nodes --
    def emit(self, scope: Scope) -> None:
        for node in scope.nodes.values():
            ntype, mode = node["type"], node.get("mode", 0)
            if mode in (MUTED, BYPASSED) or ntype in self.ui_only:
                continue
            if ntype in self.definitions:
                self.emit(self.child(scope, node))
            else:
                self.prompt[scope.exec_id(node["id"])] = self.entry(scope, node)

    def entry(self, scope: Scope, node: dict[str, Any]) -> dict[str, Any]:
        ntype = node["type"]
        cls = self.registry.nodes.get(ntype)
        inputs: dict[str, Any] = {}
        if cls is None:
            self.missing.add(ntype)
        else:
            inputs.update(widget_values(node, cls.schema))
        for (inner, widget), value in scope.overrides.items():
            if inner == str(node["id"]):
                inputs[widget] = value
        inputs = {k: api_value(v) for k, v in inputs.items()}
        for entry in node.get("inputs") or []:
            if not isinstance(entry, dict) or entry.get("link") is None:
                continue
            name = str((entry.get("widget") or {}).get("name") or entry.get("name"))
            got = self.resolve_link(scope, entry["link"], entry.get("type"), set())
            if isinstance(got, Source):
                inputs[name] = [got.node, got.slot]
            elif isinstance(got, Const):
                inputs[name] = api_value(got.value)
        title = node.get("title") or (cls.schema.display_name if cls else None) or ntype
        return {"inputs": inputs, "class_type": ntype, "_meta": {"title": title}}

    def child(self, scope: Scope, node: dict[str, Any]) -> Scope:
        if len(scope.path) >= MAX_DEPTH:
            raise ConfigError(f"subgraphs nest deeper than {MAX_DEPTH} levels at node {scope.exec_id(node['id'])}; "
                              f"a subgraph probably contains itself")
        definition = self.definitions[node["type"]]
        overrides = {}
        proxies = (node.get("properties") or {}).get("proxyWidgets") or []
        values = node.get("widgets_values")
        if isinstance(values, list) and len(values) == len(proxies):
            overrides = {(str(p[0]), str(p[1])): v for p, v in zip(proxies, values)
                         if isinstance(p, list) and len(p) == 2 and str(p[0]) != "-1"}
        return make_scope(definition, path=(*scope.path, str(node["id"])), instance=node, parent=scope,
                          definition=definition, overrides=overrides)

    # -- links --
    def resolve_link(self, scope: Scope, link_id: Any, type: Any, seen: set[tuple[Any, ...]]) -> Resolved:
        link = scope.links.get(link_id) if isinstance(link_id, int) else None
        if link is None:
            self.notes.append(f"link {link_id} in {'/'.join(scope.path) or 'the root graph'} does not exist; ignored")
            return None
        key = (scope.path, link.id)
        if key in seen:
            raise ConfigError(f"link {link.id} loops through reroutes or bypassed nodes back to itself; break the loop")
        seen.add(key)
        if link.origin == str(SUBGRAPH_INPUT):
            return self.from_subgraph_input(scope, link.origin_slot, type, seen)
        origin = scope.nodes.get(link.origin)
        if origin is None:
            self.notes.append(f"link {link.id} comes from node {link.origin}, which is not in the workflow; ignored")
            return None
        return self.resolve_output(scope, origin, link.origin_slot, type or link.type, seen)

    def resolve_output(self, scope: Scope, node: dict[str, Any], slot: int, type: Any,
                       seen: set[tuple[Any, ...]]) -> Resolved:
        ntype, mode = node["type"], node.get("mode", 0)
        entries = [e for e in node.get("inputs") or [] if isinstance(e, dict)]
        if mode == BYPASSED:
            i = bypass_slot(node, slot, type)
            if i is None or entries[i].get("link") is None:
                return None
            return self.resolve_link(scope, entries[i]["link"], entries[i].get("type"), seen)
        if ntype in self.definitions and mode != MUTED:
            inner = self.child(scope, node)
            outputs = inner.definition.get("outputs") or [] if inner.definition else []
            link_ids = outputs[slot].get("linkIds") or [] if slot < len(outputs) else []
            return self.resolve_link(inner, link_ids[0], type, seen) if link_ids else None
        if ntype == "Reroute":
            return self.resolve_link(scope, entries[0]["link"], type, seen) if entries and \
                entries[0].get("link") is not None else None
        if ntype == "PrimitiveNode":
            values = node.get("widgets_values")
            return Const(values[0]) if isinstance(values, list) and values else None
        if ntype in self.ui_only:
            return None
        return Source(scope.exec_id(node["id"]), slot)

    def from_subgraph_input(self, scope: Scope, slot: int, type: Any, seen: set[tuple[Any, ...]]) -> Resolved:
        """Inside a subgraph, input `slot` of its instance: the outer link, else the instance's widget value, else
        nothing (the inner node keeps its own widget value)."""
        inst, definition = scope.instance, scope.definition
        if inst is None or definition is None or scope.parent is None:
            return None
        dinputs = definition.get("inputs") or []
        if slot >= len(dinputs):
            return None
        name = dinputs[slot].get("name")
        entries = [e for e in inst.get("inputs") or [] if isinstance(e, dict)]
        entry = next((e for e in entries if e.get("name") == name), None)
        if entry is None and len(entries) == len(dinputs):
            entry = entries[slot]
        if entry is not None and entry.get("link") is not None:
            return self.resolve_link(scope.parent, entry["link"], entry.get("type") or type, seen)
        found, value = self.instance_value(inst, definition, name)
        return Const(value) if found else None

    def instance_value(self, inst: dict[str, Any], definition: dict[str, Any], name: str) -> tuple[bool, Any]:
        """The value a subgraph instance gives its input `name`: by name when stored as a dict, by `proxyWidgets`
        position (["-1", name] entries) when present, else by position over the promoted widget inputs."""
        values, named = inst.get("widgets_values"), inst.get("widgets_values_named")
        if isinstance(values, dict):
            return name in values, values.get(name)
        if isinstance(named, dict) and name in named:
            return True, named[name]
        if not isinstance(values, list) or not values:
            return False, None
        proxies = (inst.get("properties") or {}).get("proxyWidgets")
        if proxies:
            if len(proxies) == len(values):
                for p, v in zip(proxies, values):
                    if isinstance(p, list) and len(p) == 2 and str(p[0]) == "-1" and p[1] == name:
                        return True, v
            return False, None
        order = self.promoted_inputs(definition)
        if len(order) == len(values) and name in order:
            return True, values[order.index(name)]
        return False, None

    def promoted_inputs(self, definition: dict[str, Any]) -> list[str]:
        """The subgraph inputs that feed a widget inside it, in order: the instance's widgets, one value each."""
        if definition["id"] not in self.promoted:
            scope = make_scope(definition)
            names = []
            for dinput in definition.get("inputs") or []:
                link = next((scope.links[i] for i in dinput.get("linkIds") or [] if i in scope.links), None)
                target = scope.nodes.get(link.target) if link else None
                entries = (target or {}).get("inputs") or []
                if link and link.target_slot < len(entries) and entries[link.target_slot].get("widget"):
                    names.append(dinput.get("name"))
            self.promoted[definition["id"]] = names
        return self.promoted[definition["id"]]


def bypass_slot(node: dict[str, Any], slot: int, type: Any) -> int | None:
    """The input a bypassed node passes to its output `slot` for a consumer of `type`, as the frontend picks it: the
    same index when compatible, else the first input of exactly that type, else the first compatible one."""
    inputs = [e for e in node.get("inputs") or [] if isinstance(e, dict)]
    outputs = node.get("outputs") or []
    if not inputs:
        return None
    out_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else type
    if type in (None, "", ANY):
        return slot if slot < len(inputs) else 0
    if slot < len(inputs) and compatible(inputs[slot].get("type"), out_type) and \
            compatible(inputs[slot].get("type"), type):
        return slot
    for i, e in enumerate(inputs):
        if e.get("type") == type:
            return i
    for i, e in enumerate(inputs):
        if compatible(e.get("type"), out_type) and compatible(e.get("type"), type):
            return i
    return None


# ---- public API -----------------------------------------------------------------------------------------------------

def convert(workflow: dict[str, Any], registry: Registry) -> Conversion:
    """The UI-format `workflow` as an API prompt, with the node types `registry` lacks (kept in the prompt with
    their links only, so that validation reports them as unknown_node)."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise ConfigError("a UI-format workflow is a JSON object with 'nodes' and 'links' lists")
    return Converter(workflow, registry).run()


def to_api(workflow: dict[str, Any], registry: Registry) -> ApiPrompt:
    """The UI-format `workflow` as an API prompt (`convert(...).prompt`)."""
    return convert(workflow, registry).prompt


def detect(data: Any) -> str:
    """"api", "ui", "athena", or "request" (ComfyUI's `/prompt` body, `{"prompt": <API>, ...}`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a workflow is a JSON object, not a {type(data).__name__}; "
                          f"export it from ComfyUI with Save or Export (API)")
    if "format" in data:
        if data["format"] != ATHENA_FORMAT:
            raise ConfigError(f"workflow format {data['format']!r} is not supported; this Athena reads "
                              f"{ATHENA_FORMAT!r}, ComfyUI's API format and its UI format")
        return "athena"
    if isinstance(data.get("nodes"), list) and "links" in data:
        return "ui"
    if isinstance(data.get("prompt"), dict) and not isinstance(data["prompt"].get("class_type"), str):
        return "request"
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    keys = ", ".join(list(map(str, data))[:6]) or "none"
    raise ConfigError(f"not a workflow (keys: {keys}); expected ComfyUI's API format ({{id: {{class_type, inputs}}}}), "
                      f"its UI format (an object with 'nodes' and 'links') or Athena's "
                      f"({{\"format\": \"{ATHENA_FORMAT}\", \"prompt\": ...}})")


def load(data: Any, registry: Registry) -> ApiPrompt:
    """The API prompt in `data` (a parsed JSON object, or JSON text) in any of the three formats."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise ConfigError(f"the workflow is not valid JSON ({e}); check that the file is a saved workflow") from None
    kind = detect(data)
    if kind == "ui":
        return to_api(data, registry)
    if kind == "request":
        return api_prompt(data["prompt"])
    if kind == "athena":
        if isinstance(data.get("prompt"), dict):
            return api_prompt(data["prompt"])
        if isinstance(data.get("workflow"), dict):
            return to_api(data["workflow"], registry)
        raise ConfigError(f"an {ATHENA_FORMAT!r} file needs a 'prompt' (API format) or a 'workflow' (UI format)")
    return api_prompt(data)


def api_prompt(data: dict[str, Any]) -> ApiPrompt:
    """A checked copy of an API-format prompt with string ids."""
    out: ApiPrompt = {}
    for nid, spec in data.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("class_type"), str):
            raise ConfigError(f"prompt node {nid!r} has no class_type; each node is {{\"class_type\": ..., "
                              f"\"inputs\": {{...}}}}")
        if not isinstance(spec.get("inputs", {}), dict):
            raise ConfigError(f"prompt node {nid!r} inputs must be an object of name -> value or [node_id, output]")
        out[str(nid)] = copy.deepcopy({**spec, "inputs": spec.get("inputs", {})})
    return out


def athena_document(prompt: ApiPrompt, workflow: dict[str, Any] | None = None) -> dict[str, Any]:
    """Athena's file format: the prompt that runs, and optionally the UI workflow it came from."""
    doc: dict[str, Any] = {"format": ATHENA_FORMAT, "prompt": prompt}
    if workflow is not None:
        doc["workflow"] = workflow
    return doc


def set_value(prompt: ApiPrompt, assignment: str, registry: Registry | None = None) -> ApiPrompt:
    """A copy of `prompt` with one input set, from `athena run --set NODE.INPUT=VALUE`. NODE is an id or a node's
    title; VALUE is read as JSON when it parses (numbers, true, [..]) and as a string otherwise."""
    target, eq, text = assignment.partition("=")
    node_ref, dot, name = target.rpartition(".")
    if not eq or not dot or not node_ref or not name:
        raise ConfigError(f"--set {assignment!r} is not NODE.INPUT=VALUE (e.g. --set 3.steps=30 or "
                          f"--set \"KSampler.seed=7\")")
    nid = find_node(prompt, node_ref.strip())
    spec = prompt[nid]
    known = list(spec.get("inputs", {}))
    cls = registry.nodes.get(spec["class_type"]) if registry is not None else None
    if cls is not None:
        known += [i.name for i in cls.schema.inputs if i.name not in known]
    name = name.strip()
    if name not in known:
        raise ConfigError(f"node {nid} ({spec['class_type']}) has no input {name!r}; its inputs: "
                          f"{', '.join(known) or 'none'}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    out = dict(prompt)
    out[nid] = {**spec, "inputs": {**spec.get("inputs", {}), name: value}}
    return out


def find_node(prompt: ApiPrompt, ref: str) -> str:
    """The id of the node named `ref`: an id, else a unique `_meta.title`, else a unique class_type."""
    if ref in prompt:
        return ref
    for key in ("title", "class_type"):
        hits = [nid for nid, s in prompt.items()
                if (s.get("_meta", {}).get("title") if key == "title" else s.get("class_type")) == ref]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"{len(hits)} nodes are named {ref!r} (ids {', '.join(hits)}); use the id instead")
    listed = ", ".join(f"{nid} ({s.get('_meta', {}).get('title') or s.get('class_type')})"
                       for nid, s in list(prompt.items())[:20])
    raise ConfigError(f"no node {ref!r} in the prompt; nodes: {listed}")
