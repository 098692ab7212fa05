"""The executor: runs a validated prompt from a cache, exactly what changed and nothing else.

- Signatures. A node's cache key hashes its class, its constant inputs, its `fingerprint` (ComfyUI's IS_CHANGED)
  and, for each link, the signature of the node it comes from. Equal sub-graphs share results whatever their ids;
  changing one value re-runs that node and its descendants only.
- Scheduling. Starting from the output nodes, ancestors whose signature is not cached are pulled in; a node runs once
  all its (non-lazy) inputs are available. Output nodes go first among the ready ones, so results appear early.
- Lazy inputs. A node with lazy inputs runs `check_lazy_status` with what is available (missing lazy inputs are
  None); the inputs it names are then computed and the node is asked again, so a switch never runs the branch it
  does not take.
- Expansion. A node may return `NodeOutput(expand=subgraph)`: the sub-graph's nodes join the run as `parent.child`
  ids (deterministic, so they cache like any other) and `values` may link into them.
- Lists. Each output holds a list of values. A node runs once per element, repeating the last element of shorter
  lists, unless its schema takes whole lists; outputs declared `is_list` are concatenated.
- Async nodes. A coroutine `run` is started as a task and other ready nodes keep running meanwhile.
- Memory. The run drops its own reference to an intermediate as soon as its last consumer has finished; what stays
  between runs is the cache policy's choice (`athena.graph.cache`).
- Isolation. An exception in a node fails the job with an `ExecutionError` event; the cache holds only finished
  nodes, and the executor stays usable. `Cancelled` (the `CancelToken`) ends the job as interrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from athena.cancel import CancelToken
from athena.errors import AthenaError, Cancelled
from athena.graph import events as ev
from athena.graph.cache import Cache, Entry, LastRun, nbytes
from athena.graph.node import Context, ExecutionBlocker, NodeOutput, Registry
from athena.graph.validate import NodeError, order_key, check, check_node, is_link


class NodeFailed(AthenaError):
    """A node raised; the job stops and reports it."""


@dataclass
class RunResult:
    prompt_id: str
    status: Literal["success", "error", "interrupted", "invalid"]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # UI outputs by node (cached ones included)
    executed: list[str] = field(default_factory=list)  # nodes that ran this time, in order
    cached: list[str] = field(default_factory=list)  # nodes whose results came from the cache
    errors: list[NodeError] = field(default_factory=list)  # validation errors (their outputs were dropped)
    error: ev.ExecutionError | None = None


class Executor:
    """Runs prompts one at a time against a cache that lives as long as the executor."""

    def __init__(self, registry: Registry, services: Any = None, cache: Cache | None = None) -> None:
        self.registry, self.services = registry, services
        self.cache: Cache = cache if cache is not None else LastRun()
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        """Forget every cached result (waits for a running prompt to finish first)."""
        with self._lock:
            self.cache.clear()

    def run(self, prompt: dict[str, Any], *, prompt_id: str | None = None, sink: ev.Sink | None = None,
            cancel: CancelToken | None = None, extra: dict[str, Any] | None = None,
            targets: list[str] | None = None) -> RunResult:
        """Validate and run `prompt` (API format). `extra` is ComfyUI's `extra_data` ({"extra_pnginfo": ...});
        `targets` restricts the outputs (ComfyUI's partial_execution_targets)."""
        with self._lock:
            return asyncio.run(self.run_async(prompt, prompt_id=prompt_id, sink=sink, cancel=cancel, extra=extra,
                                              targets=targets))

    async def run_async(self, prompt: dict[str, Any], *, prompt_id: str | None = None, sink: ev.Sink | None = None,
                        cancel: CancelToken | None = None, extra: dict[str, Any] | None = None,
                        targets: list[str] | None = None) -> RunResult:
        pid = prompt_id or uuid.uuid4().hex
        checked = check(prompt, self.registry, self.services, targets)
        if not checked.outputs:
            return RunResult(pid, "invalid", errors=checked.errors)
        job = _Run(self, pid, prompt, checked.outputs, checked.constants, sink or (lambda e: None),
                   cancel or CancelToken(), (extra or {}).get("extra_pnginfo") or {})
        result = RunResult(pid, "success", errors=checked.errors)
        job.emit(ev.ExecutionStart(pid))
        self.cache.begin(job.plan())
        try:
            await job.execute()
        except Cancelled:
            job.cancel_tasks()
            result.status = "interrupted"
            job.emit(ev.ExecutionInterrupted(pid, job.current, job.class_of(job.current), tuple(job.executed)))
        except NodeFailed as e:
            job.cancel_tasks()
            result.status, result.error = "error", e.args[0]
            job.emit(e.args[0])
        else:
            job.emit(ev.ExecutionSuccess(pid))
        finally:
            self.cache.end()
        result.outputs, result.executed, result.cached = job.ui, job.executed, job.cached
        return result


class _Run:
    """The state of one run: the dynamic graph (prompt plus expanded nodes), what is waiting on what, the values."""

    def __init__(self, ex: Executor, pid: str, prompt: dict[str, Any], outputs: list[str],
                 constants: dict[str, dict[str, Any]], sink: ev.Sink, cancel: CancelToken,
                 pnginfo: dict[str, Any]) -> None:
        self.ex, self.reg, self.pid, self.sink, self.cancel, self.pnginfo = ex, ex.registry, pid, sink, cancel, pnginfo
        self.prompt = prompt
        self.nodes: dict[str, dict[str, Any]] = {
            str(k): v for k, v in prompt.items() if isinstance(v, dict) and str(v.get("class_type")) in ex.registry
            and isinstance(v.get("inputs", {}), dict)}
        self.outputs = outputs
        self.constants = constants
        self.sigs: dict[str, str] = {}
        self._links: dict[str, list[tuple[str, str, int, bool]]] = {}
        self.values: dict[str, list[list[Any]]] = {}
        self.waiting: dict[str, set[str]] = {}  # staged node -> parents not yet available
        self.children: dict[str, set[str]] = {}  # parent -> staged nodes waiting on it
        self.consumers: dict[str, set[str]] = {}  # parent -> staged nodes that still need its value
        self.ready: deque[str] = deque()
        self.ready_outputs: deque[str] = deque()
        self.requested: dict[str, set[str]] = {}  # node -> lazy inputs asked for
        self.expansions: dict[str, tuple[Any, ...]] = {}  # node -> its values, with links into its sub-graph
        self.sub_links: dict[str, list[str]] = {}  # expanded node -> the sub-graph nodes its values come from
        self.display: dict[str, str] = {}
        self.tasks: dict[asyncio.Task[Any], str] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.cached: list[str] = []
        self.current: str | None = None
        self.planned = False
        self.early_executed: list[ev.Executed] = []  # cached outputs found while planning, reported after the plan

    def emit(self, event: Any) -> None:
        self.sink(event)

    def class_of(self, nid: str | None) -> str | None:
        return self.nodes[nid]["class_type"] if nid in self.nodes else None

    # ---------------------------------------------------------------- signatures

    def links(self, nid: str, *, lazy: bool = True) -> list[tuple[str, str, int]]:
        """(input name, parent, output index) of each link; lazy inputs only if `lazy` or requested."""
        parsed = self._links.get(nid)
        if parsed is None:
            schema = self.reg[self.nodes[nid]["class_type"]].schema
            parsed = self._links[nid] = [
                (name, str(v[0]), int(v[1]), bool(schema.by_name[name].lazy) if name in schema.by_name else False)
                for name, v in self.nodes[nid].get("inputs", {}).items() if is_link(v)]
        if lazy:
            return [(n, p, i) for n, p, i, _ in parsed]
        asked = self.requested.get(nid, ())
        return [(n, p, i) for n, p, i, is_lazy in parsed if not is_lazy or n in asked]

    def signature(self, root: str) -> str:
        """The cache key of `root`, computed iteratively (graphs may be thousands of nodes deep)."""
        stack, on_stack = [root], {root}
        while stack:
            nid = stack[-1]
            if nid in self.sigs:
                stack.pop()
                on_stack.discard(nid)
                continue
            missing = [p for _, p, _ in self.links(nid) if p not in self.sigs and p in self.nodes and p not in on_stack]
            if missing:
                stack.extend(missing)
                on_stack.update(missing)
                continue
            stack.pop()
            on_stack.discard(nid)
            self.sigs[nid] = self._hash(nid)
        return self.sigs[root]

    def _hash(self, nid: str) -> str:
        spec = self.nodes[nid]
        cls = self.reg[spec["class_type"]]
        consts = self.constants.get(nid, {})
        try:
            fp = cls.fingerprint(self.ex.services, **consts)
        except Exception:  # cannot tell whether it changed: run it
            fp = math.nan
        if isinstance(fp, float) and math.isnan(fp):
            fp = uuid.uuid4().hex  # ComfyUI: NaN means "changed every time"
        parts: list[Any] = [spec["class_type"], repr(fp)]
        if cls.schema.not_idempotent or "UNIQUE_ID" in cls.schema.hidden:
            parts.append(("id", nid))
        for name in sorted(spec.get("inputs", {})):
            v = spec["inputs"][name]
            if is_link(v):  # a link to a node that is not there (an invalid part of the prompt) still hashes
                parts.append((name, self.sigs.get(str(v[0]), f"missing:{v[0]}"), int(v[1])))
            elif name in cls.schema.by_name:  # undeclared constants (ComfyUI's "upload": "image") are ignored
                parts.append((name, repr(consts.get(name, v))))
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    # ---------------------------------------------------------------- planning

    def plan(self) -> set[str]:
        """Stage the outputs (pulling uncached ancestors), report every cached node of the prompt as ComfyUI does,
        and return the prompt's signatures."""
        reachable, todo = list(self.outputs), list(self.outputs)
        seen = set(reachable)
        while todo:
            for _, parent, _ in self.links(todo.pop()):
                if parent not in seen and parent in self.nodes:
                    seen.add(parent)
                    reachable.append(parent)
                    todo.append(parent)
        for out in self.outputs:
            self.stage(out)
        staged = set(self.cached)
        self.cached += [n for n in reachable if n not in staged and n not in self.waiting
                        and self.ex.cache.get(self.signature(n)) is not None]
        self.emit(ev.ExecutionCached(self.pid, tuple(sorted(self.cached, key=order_key))))
        for event in self.early_executed:  # ComfyUI re-sends a cached output's UI result, so clients show it
            self.emit(event)
        self.planned = True
        # every node of the prompt keeps its cached result (not only the targeted or valid outputs' ancestry)
        return {self.signature(n) for n in self.nodes}

    def stage(self, root: str) -> None:
        """Make `root` available: from the cache, or by scheduling it and its missing ancestors."""
        order, todo = [], [root]
        while todo:
            nid = todo.pop()
            if nid in self.values or nid in self.waiting:
                continue
            entry = self.ex.cache.get(self.signature(nid))
            if entry is not None:
                self.values[nid] = entry.outputs
                self.cached.append(nid)
                if entry.ui:
                    self.ui[nid] = entry.ui
                    self.report_cached(nid, entry.ui)
                continue
            self.waiting[nid] = set()
            order.append(nid)
            todo.extend(parent for _, parent, _ in self.links(nid, lazy=False))
        for nid in order:  # parents are now cached values or staged nodes
            for _, parent, _ in self.links(nid, lazy=False):
                self.need(nid, parent)
            strong = {p for _, p, _ in self.links(nid, lazy=False)}
            for _, parent, _ in self.links(nid):  # an undecided lazy input keeps its value alive until nid is done
                if parent not in strong:
                    self.consumers.setdefault(parent, set()).add(nid)
        for nid in order:
            self.wake(nid)

    def report_cached(self, nid: str, ui: dict[str, Any]) -> None:
        if not self.reg[self.nodes[nid]["class_type"]].schema.output_node:
            return
        event = ev.Executed(self.pid, nid, self.display.get(nid, nid), ui)
        if self.planned:
            self.emit(event)
        else:
            self.early_executed.append(event)

    def need(self, nid: str, parent: str) -> None:
        self.consumers.setdefault(parent, set()).add(nid)
        if parent not in self.values:
            self.waiting[nid].add(parent)
            self.children.setdefault(parent, set()).add(nid)

    def wake(self, nid: str) -> None:
        if not self.waiting.get(nid, True):
            is_output = self.reg[self.nodes[nid]["class_type"]].schema.output_node
            (self.ready_outputs if is_output else self.ready).append(nid)

    # ---------------------------------------------------------------- the loop

    async def execute(self) -> None:
        while self.waiting:
            self.cancel.raise_if_cancelled()
            if self.ready_outputs or self.ready:
                nid = (self.ready_outputs or self.ready).popleft()
                if self.reg[self.nodes[nid]["class_type"]].schema.id in self.reg.is_async:
                    task = asyncio.ensure_future(self.run_node(nid))
                    self.tasks[task] = nid
                    await asyncio.sleep(0)
                else:
                    await self.run_node(nid)
                self.reap([t for t in self.tasks if t.done()])
                continue
            if not self.tasks:
                stuck = sorted(self.waiting)
                raise NodeFailed(self.failure(stuck[0], f"nothing can run: nodes {stuck[:10]} wait on each other "
                                              f"(a dependency cycle created at run time)", "DependencyCycleError", {}))
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            self.reap(list(done))

    def reap(self, done: list[asyncio.Task[Any]]) -> None:
        """Forget finished async nodes; re-raise the first failure (every exception is retrieved)."""
        failures = []
        for task in done:
            del self.tasks[task]
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())
        if failures:
            raise failures[0]  # type: ignore[misc]

    def cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def run_node(self, nid: str) -> None:
        """Run `nid`; anything a node's own hooks raise (lazy status, expansion, results) fails the job cleanly."""
        try:
            await self._run_node(nid)
        except (Cancelled, NodeFailed):
            raise
        except Exception as e:
            raise NodeFailed(self.failure(nid, str(e) or type(e).__name__, type(e).__name__, {}, e)) from e

    async def _run_node(self, nid: str) -> None:
        self.current = nid
        spec, cls = self.nodes[nid], self.reg[self.nodes[nid]["class_type"]]
        schema = cls.schema
        if nid in self.expansions:  # its sub-graph finished: resolve the links it returned
            self.finish(nid, [self.resolve(v) for v in self.expansions.pop(nid)], None)
            return
        entry = self.ex.cache.get(self.signature(nid))
        if entry is not None:  # an equal node (same class, inputs and ancestry) ran earlier in this run
            self.cached.append(nid)
            self.finish(nid, entry.outputs, entry.ui, ran=False)
            return
        inputs = self.gather(nid)
        blocked = [v for vals in inputs.values() if vals is not None for v in vals if isinstance(v, ExecutionBlocker)]
        if blocked:
            if any(b.message for b in blocked):
                msg = next(b.message for b in blocked if b.message)
                raise NodeFailed(self.failure(nid, msg or "", "ExecutionBlocked", inputs))
            self.finish(nid, [[blocked[0]] for _ in schema.outputs], None, ran=False)
            return
        if self.lazy_pending(nid, inputs):
            return
        self.emit(ev.Executing(self.pid, nid, self.display.get(nid, nid)))
        try:
            results = await self.call(nid, cls, inputs)
        except Cancelled:
            raise
        except NodeFailed:
            raise
        except Exception as e:
            raise NodeFailed(self.failure(nid, f"{e}" or type(e).__name__, type(e).__name__, inputs, e)) from e
        expands = [r for r in results if isinstance(r, NodeOutput) and r.expand]
        if expands:
            if len(results) != 1:
                raise NodeFailed(self.failure(nid, "a node that expands into a sub-graph must not be mapped over a "
                                              "list", "ExpansionError", inputs))
            self.expand(nid, expands[0])
            return
        outputs, ui = self.collect(nid, results)
        self.finish(nid, outputs, ui)

    def gather(self, nid: str) -> dict[str, list[Any] | None]:
        """Each input as a list of values; a lazy input not computed (yet) is None."""
        consts = self.constants.get(nid, {})
        declared = self.reg[self.nodes[nid]["class_type"]].schema.by_name
        out: dict[str, list[Any] | None] = {}
        for name, v in self.nodes[nid].get("inputs", {}).items():
            if is_link(v):
                vals = self.values.get(str(v[0]))
                out[name] = None if vals is None else vals[int(v[1])]
            elif name in declared:  # ComfyUI drops constants a node does not declare ("upload": "image")
                out[name] = [consts.get(name, v)]
        return out

    def lazy_pending(self, nid: str, inputs: dict[str, list[Any] | None]) -> bool:
        """Ask the node which lazy inputs it needs; stage the missing ones and return True if it must wait."""
        cls = self.reg[self.nodes[nid]["class_type"]]
        lazy = [i.name for i in cls.schema.inputs if i.lazy and i.name in inputs]
        if not lazy or not any(inputs[n] is None for n in lazy):
            return False
        first = {k: (v[0] if v else None) if v is not None else None for k, v in inputs.items()}
        wanted = [n for n in cls.check_lazy_status(**first) if n in lazy and inputs.get(n) is None]
        if not wanted:
            return False
        self.requested.setdefault(nid, set()).update(wanted)
        links = {name: parent for name, parent, _ in self.links(nid)}
        for name in wanted:
            self.stage(links[name])
            self.need(nid, links[name])
        self.wake(nid)
        return True

    async def call(self, nid: str, cls: Any, inputs: dict[str, list[Any] | None]) -> list[Any]:
        """Run the node once per list element (or once with whole lists)."""
        kwargs = {k: v for k, v in inputs.items() if v is not None}
        ctx = Context(nid, self.ex.services, self.cancel, lambda value, total, preview: self.emit(
            ev.ProgressEvent(self.pid, nid, value, total, preview)), self.prompt, self.pnginfo)
        head = (ctx,) if cls.schema.id in self.reg.context_nodes else ()
        if cls.schema.input_is_list:
            calls = [kwargs]
        else:
            n = max((len(v) for v in kwargs.values()), default=1)
            if any(len(v) == 0 for v in kwargs.values()):
                n = 0
            calls = [{k: v[min(i, len(v) - 1)] for k, v in kwargs.items()} for i in range(n)]
        if cls.schema.id in self.reg.is_async:
            return list(await asyncio.gather(*(cls.run(*head, **kw) for kw in calls)))
        if self.tasks:  # let async nodes progress while this one computes
            return await asyncio.to_thread(lambda: [cls.run(*head, **kw) for kw in calls])
        return [cls.run(*head, **kw) for kw in calls]

    def collect(self, nid: str, results: list[Any]) -> tuple[list[list[Any]], dict[str, Any] | None]:
        schema = self.reg[self.nodes[nid]["class_type"]].schema
        outputs: list[list[Any]] = [[] for _ in schema.outputs]
        ui: dict[str, Any] | None = None
        for r in results:
            values = r.values if isinstance(r, NodeOutput) else r
            if isinstance(r, NodeOutput) and r.ui:
                ui = ui or {}
                for k, v in r.ui.items():
                    ui.setdefault(k, []).extend(v if isinstance(v, list) else [v])
            if values is None:
                values = ()
            if not isinstance(values, tuple):
                values = (values,)
            if len(values) != len(schema.outputs):
                raise NodeFailed(self.failure(nid, f"{schema.id} returned {len(values)} values for its "
                                              f"{len(schema.outputs)} outputs", "NodeContractError", {}))
            for i, (o, v) in enumerate(zip(schema.outputs, values, strict=True)):
                outputs[i].extend(v if o.is_list else [v])
        return outputs, ui

    def finish(self, nid: str, outputs: list[list[Any]], ui: dict[str, Any] | None, *, ran: bool = True) -> None:
        self.values[nid] = outputs
        del self.waiting[nid]
        if ran:
            self.executed.append(nid)
            root = self.display.get(nid)  # a sub-graph node lives as long as the workflow node that made it
            self.ex.cache.put(self.signature(nid), Entry(outputs, ui, nbytes(outputs),
                                                         self.sigs.get(root) if root else None))
        if ui:
            self.ui[nid] = ui
            if ran:
                self.emit(ev.Executed(self.pid, nid, self.display.get(nid, nid), ui))
            else:
                self.report_cached(nid, ui)
        for child in self.children.pop(nid, set()):
            self.waiting[child].discard(nid)
            self.wake(child)
        for _, parent, _ in self.links(nid) + [("", p, 0) for p in self.sub_parents(nid)]:
            users = self.consumers.get(parent)
            if users is not None:
                users.discard(nid)
                if not users:
                    self.release(parent)
        if not self.consumers.get(nid):
            self.release(nid)

    def release(self, nid: str) -> None:
        """Drop the run's reference to a value no staged node needs any more (the cache may still hold it)."""
        if nid not in self.waiting and not self.consumers.get(nid):
            self.values.pop(nid, None)
            self.consumers.pop(nid, None)

    # ---------------------------------------------------------------- expansion

    def expand(self, nid: str, out: NodeOutput) -> None:
        graph = out.expand or {}
        rename = {str(k): f"{nid}.{k}" for k in graph}
        for sub, spec in graph.items():
            new = rename[str(sub)]
            if not isinstance(spec, dict) or not isinstance(spec.get("inputs", {}), dict):
                raise NodeFailed(self.failure(nid, f"its sub-graph node {sub!r} is not "
                                              f"{{\"class_type\": ..., \"inputs\": {{...}}}}", "ExpansionError", {}))
            if str(spec.get("class_type")) not in self.reg:
                raise NodeFailed(self.failure(nid, f"its sub-graph uses unknown node type {spec.get('class_type')!r}",
                                              "ExpansionError", {}))
            inputs = {k: ([rename.get(str(v[0]), str(v[0])), v[1]] if is_link(v) else v)
                      for k, v in spec.get("inputs", {}).items()}
            self.nodes[new] = {"class_type": spec["class_type"], "inputs": inputs}
            self.display[new] = self.display.get(nid, nid)
            errs = check_node(new, self.nodes[new], self.nodes, self.reg, self.ex.services, self.constants)
            if errs:
                raise NodeFailed(self.failure(nid, f"its sub-graph is invalid: {errs[0]}", "ExpansionError", {}))
        values = tuple([rename.get(str(v[0]), str(v[0])), v[1]] if is_link(v) else v for v in out.values)
        for v in values:
            if is_link(v):
                target = self.nodes.get(str(v[0]))
                count = len(self.reg[target["class_type"]].schema.outputs) if target else 0
                if not 0 <= int(v[1]) < count:
                    raise NodeFailed(self.failure(nid, f"it returned a link to output {v[1]} of node {v[0]}, which "
                                                  f"{'has ' + str(count) + ' outputs' if target else 'does not exist'}",
                                                  "ExpansionError", {}))
        self.expansions[nid] = values
        self.sub_links[nid] = [str(v[0]) for v in values if is_link(v)]
        for parent in self.sub_links[nid]:
            self.stage(parent)
            self.need(nid, parent)
        for new in rename.values():  # output nodes inside the sub-graph run too, as in ComfyUI
            if self.reg[self.nodes[new]["class_type"]].schema.output_node:
                self.stage(new)
        self.wake(nid)

    def sub_parents(self, nid: str) -> list[str]:
        return self.sub_links.pop(nid, [])

    def resolve(self, v: Any) -> list[Any]:
        if is_link(v):
            return list(self.values[str(v[0])][int(v[1])])
        return [v]

    # ---------------------------------------------------------------- errors

    def failure(self, nid: str, message: str, kind: str, inputs: dict[str, Any],
                exc: BaseException | None = None) -> ev.ExecutionError:
        tb = tuple(traceback.format_exception(exc)) if exc is not None else ()
        current = {k: ev.summary(v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in inputs.items()}
        return ev.ExecutionError(self.pid, nid, self.class_of(nid) or "", message, kind, tb, current,
                                 tuple(self.executed))

