"""Whole-graph validation with ComfyUI's error types, every error at once.

A prompt is ComfyUI's API format: `{node_id: {"class_type": str, "inputs": {name: constant | [node_id, index]}}}`.
`check` walks back from every output node, converts constants (INT, FLOAT, ...), and collects every problem. Outputs
whose ancestry holds an error are dropped and the others still run, as in ComfyUI.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from athena.graph.node import Node, Registry
from athena.graph.schema import WIDGETS, Input, types_match

Code = Literal["required_input_missing", "bad_linked_input", "return_type_mismatch", "invalid_input_type",
               "value_smaller_than_min", "value_bigger_than_max", "value_not_in_list", "custom_validation_failed",
               "exception_during_validation", "prompt_no_outputs", "unknown_node", "dependency_cycle",
               "invalid_prompt"]


@dataclass(frozen=True)
class NodeError:
    node_id: str | None  # None for errors of the whole prompt (prompt_no_outputs)
    code: Code
    message: str  # one sentence for humans, with the fix
    input_name: str | None = None
    class_type: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id is not None else "prompt"
        if self.input_name:
            where += f" input {self.input_name!r}"
        return f"{where}: {self.code}: {self.message}"


@dataclass
class Checked:
    """The outcome of `check`: the outputs that can run, every error, and the converted constants per node."""

    outputs: list[str]
    errors: list[NodeError]
    constants: dict[str, dict[str, Any]]
    dependent_outputs: dict[str, list[str]] = field(default_factory=dict)  # failing node -> outputs it blocks


def is_link(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def validate(prompt: dict[str, Any], registry: Registry, services: Any = None) -> list[NodeError]:
    """Every error in `prompt`; empty means every output node can run."""
    return check(prompt, registry, services).errors


def check(prompt: dict[str, Any], registry: Registry, services: Any = None,
          targets: list[str] | None = None) -> Checked:
    errors: list[NodeError] = []
    if not isinstance(prompt, dict):
        return Checked([], [NodeError(None, "invalid_prompt", f"a prompt is a JSON object of nodes by id, not "
                                      f"{type(prompt).__name__}")], {})
    nodes: dict[str, dict[str, Any]] = {}
    for nid, spec in prompt.items():
        nid = str(nid)
        ctype = spec.get("class_type") if isinstance(spec, dict) else None
        if not isinstance(ctype, str):
            errors.append(NodeError(nid, "invalid_prompt", "the node has no class_type; each node is "
                                    "{\"class_type\": ..., \"inputs\": {...}}"))
        elif ctype in registry.ignored:
            continue
        elif ctype not in registry:
            errors.append(NodeError(nid, "unknown_node", f"no node type {ctype!r} is installed; remove the node or "
                                    f"install what provides it", class_type=ctype))
        elif not isinstance(spec.get("inputs", {}), dict):
            errors.append(NodeError(nid, "invalid_prompt", "inputs must be an object of name -> value",
                                    class_type=ctype))
        else:
            nodes[nid] = spec
    outputs = [nid for nid, s in nodes.items() if registry[s["class_type"]].schema.output_node]
    if targets is not None:
        outputs = [o for o in outputs if o in set(map(str, targets))]
    if not outputs:
        errors.append(NodeError(None, "prompt_no_outputs", "the prompt has no output node (SaveImage, PreviewImage, "
                                "...); add one so that something is produced"))
        return Checked([], errors, {})
    reachable: set[str] = set(outputs)
    for out in outputs:
        reachable |= ancestors(out, nodes)
    constants: dict[str, dict[str, Any]] = {}
    node_errors = {nid: check_node(nid, nodes[nid], nodes, registry, services, constants)
                   for nid in sorted(reachable, key=order_key)}
    cycle = find_cycle(nodes, outputs)
    for nid in cycle:
        errors.append(NodeError(nid, "dependency_cycle", f"node {nid} depends on itself through "
                                f"{' -> '.join(cycle)}; break the loop", class_type=nodes[nid]["class_type"]))
    good: list[str] = []
    dependent: dict[str, list[str]] = {}
    for out in outputs:
        above = ancestors(out, nodes) | {out}
        broken = [a for a in above if node_errors.get(a) or a in cycle]
        if not broken:
            good.append(out)
        for a in broken:
            dependent.setdefault(a, []).append(out)
    for errs in node_errors.values():
        errors.extend(errs)
    return Checked(good, errors, constants, dependent)


def order_key(nid: str) -> tuple[int, str]:
    return (0, f"{int(nid):012d}") if nid.isdigit() else (1, nid)


def check_node(nid: str, spec: dict[str, Any], nodes: dict[str, dict[str, Any]], registry: Registry, services: Any,
               constants: dict[str, dict[str, Any]]) -> list[NodeError]:
    ctype = spec["class_type"]
    cls = registry[ctype]
    inputs = spec.get("inputs", {})
    if not isinstance(inputs, dict):
        return [NodeError(nid, "invalid_prompt", "inputs must be an object of name -> value", class_type=ctype)]
    errs: list[NodeError] = []
    clean: dict[str, Any] = {}
    own = custom_checked(cls)  # inputs the node's validate_inputs checks itself (ComfyUI skips their list check)

    def err(code: Code, inp: Input, message: str, received: Any = None) -> None:
        errs.append(NodeError(nid, code, message, inp.name, ctype,
                              {"received_value": received, "input_config": inp.info(services)}))

    for inp in cls.schema.inputs:
        if inp.name not in inputs:
            if not inp.optional:
                err("required_input_missing", inp, f"required input {inp.name!r} is missing; connect it or give a value")
            continue
        value = inputs[inp.name]
        if is_link(value):
            src = str(value[0])
            if src not in nodes:
                err("bad_linked_input", inp, f"{inp.name!r} links to node {src}, which is not in the prompt", value)
                continue
            out_types = registry[nodes[src]["class_type"]].schema.outputs
            if not 0 <= value[1] < len(out_types):
                err("bad_linked_input", inp, f"{inp.name!r} links to output {value[1]} of node {src}, which has "
                    f"{len(out_types)} outputs", value)
                continue
            given = out_types[value[1]].type
            if not types_match(given, "COMBO" if inp.type == "COMBO" else inp.type) and not (
                    inp.type == "COMBO" and given in ("STRING", "*")):
                err("return_type_mismatch", inp, f"{inp.name!r} takes {inp.type} but node {src} output {value[1]} "
                    f"gives {given}", given)
            continue
        converted = convert(inp, value, services, err, checks=inp.name not in own)
        if converted is not _BAD:
            clean[inp.name] = converted
    if not errs:
        try:
            message = cls.validate_inputs(services, **clean)
        except Exception as e:  # a node's own check must not take validation down
            errs.append(NodeError(nid, "exception_during_validation", f"{type(e).__name__}: {e}", class_type=ctype))
        else:
            if message:
                errs.append(NodeError(nid, "custom_validation_failed", message, class_type=ctype))
    constants[nid] = clean
    return errs


_BAD = object()


def custom_checked(cls: Any) -> set[str]:
    """The inputs named in a node's own `validate_inputs` signature; as in ComfyUI, the schema's checks skip them."""
    fn = getattr(cls, "validate_inputs", None)
    if fn is None or getattr(fn, "__func__", None) is getattr(Node.validate_inputs, "__func__", None):
        return set()
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return {i.name for i in cls.schema.inputs}  # `**inputs`: the node checks them all (ComfyUI's rule)
    return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "services"}


def convert(inp: Input, value: Any, services: Any, err: Any, *, checks: bool = True) -> Any:
    """A constant converted to the input's type and checked against its bounds and options (unless the node checks
    them itself), or `_BAD`."""
    kind = inp.type
    if isinstance(value, dict) and set(value) == {"__value__"}:  # the frontend boxes list-valued widgets
        value = value["__value__"]
    if kind not in WIDGETS:
        if kind != "*":
            err("invalid_input_type", inp, f"{inp.name!r} takes a {kind} link from another node, not the constant "
                f"{str(value)[:60]!r}", value)
            return _BAD
        return value  # "*" takes anything
    try:
        if isinstance(value, (list, dict)):
            raise TypeError
        if kind == "INT":
            if isinstance(value, str):
                try:
                    value = int(value)  # exact, even past 2**53 (seeds)
                except ValueError:
                    value = float(value)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
            value = int(value)
        elif kind == "FLOAT":
            value = float(value)
            if math.isnan(value):
                raise ValueError
        elif kind == "STRING":
            value = str(value)
        elif kind == "BOOLEAN":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif not isinstance(value, (bool, int)):
                raise TypeError
            value = bool(value)
    except (TypeError, ValueError):
        err("invalid_input_type", inp, f"{inp.name!r} takes {kind}, and {str(value)[:60]!r} is not one", value)
        return _BAD
    if not checks:
        return value
    if kind in ("INT", "FLOAT"):
        if inp.min is not None and value < inp.min:
            err("value_smaller_than_min", inp, f"{inp.name!r} is {value}, below its minimum {inp.min}", value)
            return _BAD
        if inp.max is not None and value > inp.max:
            err("value_bigger_than_max", inp, f"{inp.name!r} is {value}, above its maximum {inp.max}", value)
            return _BAD
    if kind == "COMBO":
        choices = inp.choices(services)
        if value not in choices:
            shown = ", ".join(map(str, choices[:12])) + (" ..." if len(choices) > 12 else "")
            err("value_not_in_list", inp, f"{inp.name!r} is {str(value)[:80]!r}, not one of: {shown or 'nothing'}",
                value)
            return _BAD
    return value


def ancestors(nid: str, nodes: dict[str, dict[str, Any]]) -> set[str]:
    seen: set[str] = set()
    stack = [nid]
    while stack:
        for value in nodes.get(stack.pop(), {}).get("inputs", {}).values():
            if is_link(value) and str(value[0]) in nodes and str(value[0]) not in seen:
                seen.add(str(value[0]))
                stack.append(str(value[0]))
    return seen


def find_cycle(nodes: dict[str, dict[str, Any]], roots: list[str]) -> list[str]:
    """The nodes of one dependency cycle reachable from `roots`, in order, or [] (iterative: graphs run deep)."""
    colour: dict[str, int] = {}
    for root in roots:
        if root in colour:
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(root, parents(root, nodes))]
        colour[root] = 1
        path.append(root)
        while stack:
            nid, todo = stack[-1]
            if not todo:
                colour[nid] = 2
                stack.pop()
                path.pop()
                continue
            m = todo.pop()
            if colour.get(m) == 1:
                return path[path.index(m):]
            if m not in colour:
                colour[m] = 1
                path.append(m)
                stack.append((m, parents(m, nodes)))
    return []


def parents(nid: str, nodes: dict[str, dict[str, Any]]) -> list[str]:
    return [str(v[0]) for v in nodes[nid].get("inputs", {}).values() if is_link(v) and str(v[0]) in nodes]


def comfy_node_errors(checked: Checked, prompt: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's `node_errors` object: {node_id: {errors: [{type, message, details, extra_info}], dependent_outputs,
    class_type}} (prompt-level errors are not in it)."""
    out: dict[str, Any] = {}
    for e in checked.errors:
        if e.node_id is None:
            continue
        entry = out.setdefault(e.node_id, {"errors": [], "dependent_outputs": checked.dependent_outputs.get(e.node_id, []),
                                           "class_type": e.class_type or prompt.get(e.node_id, {}).get("class_type")})
        extra = {"input_name": e.input_name} if e.input_name else {}
        extra.update({k: v for k, v in e.details.items() if k in ("input_config", "received_value")})
        entry["errors"].append({"type": e.code, "message": e.message, "details": e.input_name or "",
                                "extra_info": extra})
    return out
