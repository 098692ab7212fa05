"""The executor on trivial nodes: caching, memory policies, lazy inputs, expansion, lists, async, events, failures."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from athena.cancel import CancelToken
from athena.graph import events as ev
from athena.graph.cache import LRU, FreeEarly, LastRun
from athena.graph.execute import Executor
from tests.graph.toy import Log, registry


def chain(value: int = 1, adds: int = 3) -> dict:
    g = {"c": {"class_type": "Const", "inputs": {"value": value}}}
    prev = "c"
    for i in range(adds):
        g[f"a{i}"] = {"class_type": "Add", "inputs": {"a": [prev, 0], "b": 1}}
        prev = f"a{i}"
    g["out"] = {"class_type": "Out", "inputs": {"value": [prev, 0]}}
    return g


def executor(cache=None) -> tuple[Executor, Log]:
    log = Log()
    return Executor(registry(), log, cache), log


def test_same_graph_twice_runs_nothing_the_second_time():
    ex, log = executor()
    first = ex.run(chain())
    assert first.status == "success" and first.outputs["out"] == {"values": [4]}
    assert log.runs == ["c", "a0", "a1", "a2", "out"]
    sink = ev.Collect()
    second = ex.run(chain(), sink=sink)
    assert log.runs == ["c", "a0", "a1", "a2", "out"]  # nothing new
    assert second.executed == [] and second.outputs["out"] == {"values": [4]}
    assert set(sink.of(ev.ExecutionCached)[0].nodes) == {"c", "a0", "a1", "a2", "out"}
    assert isinstance(sink.events[-1], ev.ExecutionSuccess)


def test_changing_one_value_reruns_that_node_and_its_descendants_only():
    ex, log = executor()
    ex.run(chain())
    g = chain()
    g["a1"]["inputs"]["b"] = 5
    result = ex.run(g)
    assert result.executed == ["a1", "a2", "out"]
    assert result.outputs["out"] == {"values": [8]}


def test_equal_subgraphs_share_one_result_whatever_their_ids():
    ex, log = executor()
    g = {"x": {"class_type": "Const", "inputs": {"value": 7}}, "y": {"class_type": "Const", "inputs": {"value": 7}},
         "o1": {"class_type": "Out", "inputs": {"value": ["x", 0]}}, "o2": {"class_type": "Out", "inputs": {"value": ["y", 0]}}}
    ex.run(g)
    assert log.calls["Const"] == 1 and log.calls["Out"] == 1


def big_chain(n: int, mb: int = 8) -> dict:
    g = {"b": {"class_type": "Big", "inputs": {"mb": mb, "value": 0.0}}}
    prev = "b"
    for i in range(n):
        g[f"s{i}"] = {"class_type": "Step", "inputs": {"x": [prev, 0]}}
        prev = f"s{i}"
    g["out"] = {"class_type": "Out", "inputs": {"value": [prev, 0]}}
    return g


def peak_mb(ex: Executor, g: dict) -> float:
    tracemalloc.start()
    try:
        assert ex.run(g).status == "success"
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_free_early_holds_no_more_than_one_link_of_the_chain():
    """10 steps of 8 MB arrays: freeing each as soon as its consumer ran peaks at one input plus one output (16 MB),
    where keeping the last run's results holds all eleven (88 MB)."""
    ex, _ = executor(FreeEarly())
    free_peak = peak_mb(ex, big_chain(10))
    assert free_peak <= 2 * 8 + 2, free_peak
    ex, _ = executor(LastRun())
    keep_peak = peak_mb(ex, big_chain(10))
    assert keep_peak >= 11 * 8 - 1, keep_peak


def test_budget_bounds_the_cache_and_the_newest_results_stay():
    cache = LastRun(budget=3 * 8 * 2**20 + 1024)
    ex, log = executor(cache)
    ex.run(big_chain(10))
    assert cache.size <= cache.budget
    assert len(cache.items) == 4  # the output's entry (no tensors) and the three newest arrays
    ex.run(big_chain(10))  # the output and its nearest ancestors are still cached
    assert log.calls["Big"] == 1


def test_last_run_forgets_what_the_new_graph_cannot_use_and_lru_keeps_it():
    for cache, reruns in ((LastRun(), 3), (LRU(), 0)):
        ex, log = executor(cache)
        ex.run(chain(1))
        ex.run(chain(2))
        before = len(log.runs)
        ex.run(chain(1))
        assert len(log.runs) - before == (5 if reruns else 0)
    cache = LastRun()
    ex, _ = executor(cache)
    ex.run(chain(1))
    ex.run(chain(2))
    assert len(cache.items) == 5  # only the second graph's results


def test_lazy_switch_runs_only_the_branch_it_takes():
    g = {"x": {"class_type": "Const", "inputs": {"value": 1}}, "y": {"class_type": "Const", "inputs": {"value": 2}},
         "ax": {"class_type": "Add", "inputs": {"a": ["x", 0], "b": 10}},
         "ay": {"class_type": "Add", "inputs": {"a": ["y", 0], "b": 20}},
         "s": {"class_type": "Switch", "inputs": {"choose_a": True, "a": ["ax", 0], "b": ["ay", 0]}},
         "out": {"class_type": "Out", "inputs": {"value": ["s", 0]}}}
    ex, log = executor()
    assert ex.run(g).outputs["out"] == {"values": [11]}
    assert set(log.runs) == {"x", "ax", "s", "out"}
    g["s"]["inputs"]["choose_a"] = False
    assert ex.run(g).outputs["out"] == {"values": [22]}
    assert sorted(log.runs[4:]) == ["ay", "out", "s", "y"]  # each once


def test_expansion_adds_deterministic_nodes_that_cache_like_any_other():
    g = {"c": {"class_type": "Const", "inputs": {"value": 5}},
         "r": {"class_type": "Repeat", "inputs": {"a": ["c", 0], "times": 3}},
         "out": {"class_type": "Out", "inputs": {"value": ["r", 0]}}}
    ex, log = executor()
    result = ex.run(g)
    assert result.outputs["out"] == {"values": [8]}
    assert [n for n in result.executed if n.startswith("r.")] == ["r.add0", "r.add1", "r.add2"]
    assert "r.c" in result.cached  # Const(5) inside the sub-graph equals node "c", which ran already
    assert ex.run(g).executed == []


def test_lists_map_a_node_per_element_and_whole_list_inputs_see_them_all():
    g = {"n": {"class_type": "Count", "inputs": {"n": 3}},
         "a": {"class_type": "Add", "inputs": {"a": ["n", 0], "b": 10}},
         "t": {"class_type": "Total", "inputs": {"values": ["a", 0]}},
         "out": {"class_type": "Out", "inputs": {"value": ["t", 0]}}}
    ex, log = executor()
    assert ex.run(g).outputs["out"] == {"values": [33]}
    assert log.calls["Add"] == 3 and log.calls["Total"] == 1


def test_async_nodes_run_concurrently():
    g = {"c": {"class_type": "Const", "inputs": {"value": 1}},
         "w1": {"class_type": "Wait", "inputs": {"a": ["c", 0], "seconds": 0.4}},
         "w2": {"class_type": "Wait", "inputs": {"a": ["c", 0], "seconds": 0.41}},
         "o1": {"class_type": "Out", "inputs": {"value": ["w1", 0]}},
         "o2": {"class_type": "Out", "inputs": {"value": ["w2", 0]}}}
    ex, log = executor()
    assert ex.run(g).status == "success"
    starts = [t for k, t in log.events if k == "start"]
    ends = [t for k, t in log.events if k == "end"]
    assert max(starts) < min(ends)  # the second started before the first finished


def test_a_failing_node_fails_the_job_with_its_details_and_leaves_the_engine_usable():
    g = chain()
    g["f"] = {"class_type": "Fail", "inputs": {"a": ["a0", 0]}}
    g["out2"] = {"class_type": "Out", "inputs": {"value": ["f", 0]}}
    ex, log = executor()
    sink = ev.Collect()
    result = ex.run(g, sink=sink)
    assert result.status == "error"
    err = sink.of(ev.ExecutionError)[0]
    assert (err.node_id, err.node_type, err.exception_type) == ("f", "Fail", "RuntimeError")
    assert err.message == "cannot handle 2" and err.current_inputs == {"a": "2"}
    assert any("cannot handle" in line for line in err.traceback)
    del g["f"], g["out2"]
    again = ex.run(g)  # what finished before the failure stayed cached
    assert again.status == "success" and "c" not in again.executed and "a0" not in again.executed


def test_interrupt_stops_at_the_next_step_and_keeps_finished_nodes_cached():
    g = chain(adds=1)
    g["s"] = {"class_type": "Steps", "inputs": {"a": ["a0", 0], "n": 5, "cancel_at": 2}}
    g["out"]["inputs"]["value"] = ["s", 0]
    ex, log = executor()
    sink = ev.Collect()
    result = ex.run(g, sink=sink, cancel=CancelToken())
    assert result.status == "interrupted"
    assert [p.value for p in sink.of(ev.ProgressEvent)] == [1, 2]
    assert sink.of(ev.ExecutionInterrupted)[0].node_id == "s"
    g["s"]["inputs"]["cancel_at"] = -1
    result = ex.run(g)
    assert result.status == "success" and result.executed == ["s", "out"]


def test_cancel_before_a_node_runs_nothing():
    token = CancelToken()
    token.cancel()
    ex, log = executor()
    assert ex.run(chain(), cancel=token).status == "interrupted" and log.runs == []


def test_blockers_skip_consumers_silently_or_fail_with_their_message():
    g = chain(adds=1)
    g["b"] = {"class_type": "Block", "inputs": {"a": ["a0", 0], "message": ""}}
    g["out"]["inputs"]["value"] = ["b", 0]
    ex, log = executor()
    assert ex.run(g).status == "success" and log.calls["Out"] == 0
    g["b"]["inputs"]["message"] = "no face found in the image"
    sink = ev.Collect()
    assert ex.run(g, sink=sink).status == "error"
    assert sink.of(ev.ExecutionError)[0].message == "no face found in the image"


def test_fingerprint_reruns_a_loader_when_its_file_changes(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("one")
    g = {"r": {"class_type": "ReadFile", "inputs": {"path": str(f)}}, "out": {"class_type": "Out", "inputs": {"value": ["r", 0]}}}
    ex, log = executor()
    assert ex.run(g).outputs["out"] == {"values": ["one"]}
    assert ex.run(g).executed == []
    f.write_text("two")
    assert ex.run(g).outputs["out"] == {"values": ["two"]}


def test_outputs_with_broken_ancestry_are_dropped_and_the_rest_run():
    g = chain()
    g["bad"] = {"class_type": "Add", "inputs": {"a": ["c", 0], "b": "many"}}
    g["out2"] = {"class_type": "Out", "inputs": {"value": ["bad", 0]}}
    ex, log = executor()
    result = ex.run(g)
    assert result.status == "success" and "out" in result.outputs and "out2" not in result.outputs
    assert [(e.node_id, e.code) for e in result.errors] == [("bad", "invalid_input_type")]


def test_progress_events_name_their_node_and_the_run_order_is_reported():
    g = chain(adds=1)
    g["s"] = {"class_type": "Steps", "inputs": {"a": ["a0", 0], "n": 3, "cancel_at": -1}}
    g["out"]["inputs"]["value"] = ["s", 0]
    sink = ev.Collect()
    Executor(registry(), Log()).run(g, sink=sink, prompt_id="p1")
    kinds = [type(e).__name__ for e in sink.events]
    assert kinds[:2] == ["ExecutionStart", "ExecutionCached"] and kinds[-1] == "ExecutionSuccess"
    assert [(p.node, p.value, p.max, p.prompt_id) for p in sink.of(ev.ProgressEvent)] == [("s", i, 3, "p1") for i in (1, 2, 3)]
    assert [e.node for e in sink.of(ev.Executing)] == ["c", "a0", "s", "out"]
    assert sink.of(ev.Executed)[0].output == {"values": [2]}


def test_a_two_thousand_node_chain_runs_and_reruns_from_cache():
    ex, log = executor()
    g = chain(adds=2000)
    t = time.perf_counter()
    assert ex.run(g).outputs["out"] == {"values": [2001]}
    assert ex.run(g).executed == []
    assert time.perf_counter() - t < 60  # a sanity bound against accidental quadratic work, not a benchmark


def test_constants_a_node_does_not_declare_are_ignored():
    g = chain()
    g["c"]["inputs"]["upload"] = "image"  # ComfyUI API exports carry LoadImage's "upload": "image"
    ex, _ = executor()
    assert ex.run(g).outputs["out"] == {"values": [4]}
    del g["c"]["inputs"]["upload"]
    assert ex.run(g).executed == []  # and they do not change the cache key


def test_errors_in_a_nodes_own_hooks_fail_the_job_cleanly():
    for node in ({"class_type": "LazyBoom", "inputs": {"a": ["c", 0]}},
                 {"class_type": "BadExpand", "inputs": {"a": ["c", 0]}}):
        g = {"c": const_node(1), "n": node, "out": {"class_type": "Out", "inputs": {"value": ["n", 0]}}}
        sink = ev.Collect()
        ex, _ = executor()
        result = ex.run(g, sink=sink)
        assert result.status == "error" and sink.of(ev.ExecutionError)[0].node_id == "n"
        assert ex.run(chain()).status == "success"  # the engine is still usable


def const_node(value: int) -> dict:
    return {"class_type": "Const", "inputs": {"value": value}}


def test_a_value_shared_with_a_lazy_input_is_computed_once_even_without_a_cache():
    g = {"x": const_node(1), "ax": {"class_type": "Add", "inputs": {"a": ["x", 0], "b": 10}},
         "s": {"class_type": "Switch", "inputs": {"choose_a": True, "a": ["ax", 0], "b": ["x", 0]}},
         "o1": {"class_type": "Out", "inputs": {"value": ["x", 0]}},
         "o2": {"class_type": "Out", "inputs": {"value": ["s", 0]}}}
    g["s"]["inputs"]["a"], g["s"]["inputs"]["b"] = ["x", 0], ["ax", 0]
    ex, log = executor(FreeEarly())
    assert ex.run(g).status == "success"
    assert log.runs.count("x") == 1


def test_running_selected_outputs_keeps_the_rest_of_the_graph_cached():
    g = chain()
    g["c2"] = const_node(50)
    g["out2"] = {"class_type": "Out", "inputs": {"value": ["c2", 0]}}
    ex, log = executor()
    ex.run(g)
    assert ex.run(g, targets=["out"]).executed == []
    assert ex.run(g).executed == []  # out2's branch survived the partial run


def test_output_nodes_inside_an_expansion_run_and_the_expansion_stays_cached():
    g = {"c": const_node(1), "e": {"class_type": "ExpandOut", "inputs": {"a": ["c", 0]}},
         "out": {"class_type": "Out", "inputs": {"value": ["e", 0]}}}
    ex, log = executor()
    result = ex.run(g)
    assert result.outputs["e.show"] == {"values": [101]} and result.outputs["out"] == {"values": [101]}
    assert ex.run(g).executed == []


def test_a_cached_output_reports_its_result_again():
    ex, _ = executor()
    ex.run(chain())
    sink = ev.Collect()
    ex.run(chain(), sink=sink)
    assert [(e.node, e.output) for e in sink.of(ev.Executed)] == [("out", {"values": [4]})]


def test_clearing_the_cache_runs_everything_again():
    ex, log = executor()
    ex.run(chain())
    ex.clear_cache()
    assert len(ex.run(chain()).executed) == 5
