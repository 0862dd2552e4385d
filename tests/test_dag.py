from __future__ import annotations

import pytest

from analysis.dag import (
    CostModel,
    CycleError,
    DuplicateNode,
    DuplicateProducer,
    Edge,
    Node,
    SessionGraph,
    estimate_cost,
)
from common.errors import Conflict, DependencyCycle


def graph(*nodes: Node) -> SessionGraph:
    g = SessionGraph()
    for n in nodes:
        g.add(n)
    return g


def chain() -> SessionGraph:
    return graph(
        Node("a", ("doc",), "x", prompt_tokens=1000, max_tokens=100),
        Node("b", ("x",), "y", prompt_tokens=500, max_tokens=50),
        Node("c", ("y",), "z", prompt_tokens=200, max_tokens=10),
    )


def map_reduce(n: int = 16) -> SessionGraph:
    g = SessionGraph()
    for i in range(n):
        g.add(Node(f"map-{i}", (f"chunk{i}",), f"s{i}", criteria="throughput", max_tokens=50))
    g.add(Node("reduce", tuple(f"s{i}" for i in range(n)), "summary", max_tokens=200))
    return g


def test_chain_structure() -> None:
    g = chain()
    assert [n.id for n in g.nodes] == ["a", "b", "c"]
    assert g.producer("x") == "a" and g.producer("doc") is None
    assert g.consumers("x") == ["b"] and g.consumers("nope") == []
    assert g.edges() == [Edge("a", "b", "x"), Edge("b", "c", "y")]
    assert g.topological_order() == ["a", "b", "c"]
    assert g.ancestors("c") == ["b", "a"]


def test_out_of_order_submission() -> None:
    # consumer first, producer later: edges and order still follow the data
    g = graph(Node("c", ("y",), None), Node("b", ("x",), "y"), Node("a", (), "x"))
    assert g.topological_order() == ["a", "b", "c"]
    assert g.edges() == [Edge("b", "c", "y"), Edge("a", "b", "x")]


def test_diamond() -> None:
    g = graph(
        Node("a", ("q",), "x"),
        Node("b", ("x",), "l"),
        Node("c", ("x",), "r"),
        Node("d", ("l", "r"), "ans"),
    )
    assert g.topological_order() == ["a", "b", "c", "d"]
    assert set(g.consumers("x")) == {"b", "c"}
    groups = g.task_groups()
    assert set(groups) == {"b", "c"} and groups["b"] == groups["c"]
    assert groups["b"].startswith("grp:d:")


def test_cycle_detection_names_the_cycle_and_leaves_graph_unchanged() -> None:
    g = graph(Node("req-a", ("y",), "x"))
    before = (g.nodes, g.edges())
    with pytest.raises(CycleError) as ei:
        g.add(Node("req-b", ("x",), "y"))
    assert ei.value.cycle == ["req-b", "y", "req-a", "x", "req-b"]
    assert isinstance(ei.value, DependencyCycle) and ei.value.status == 400
    assert ei.value.code == "dependency_cycle"
    assert "req-b -> y -> req-a -> x -> req-b" in ei.value.message
    assert (g.nodes, g.edges()) == before and g.producer("y") is None and g.consumers("x") == []


def test_longer_cycle_is_shortest_through_new_node() -> None:
    g = graph(
        Node("a", ("w",), "x"),
        Node("b", ("x",), "y"),
        Node("c", ("y",), "z"),
        Node("side", ("x",), "w2"),
    )
    with pytest.raises(CycleError) as ei:
        g.check(Node("d", ("z",), "w"))
    assert ei.value.cycle == ["d", "w", "a", "x", "b", "y", "c", "z", "d"]
    assert "d" not in g


def test_self_loop() -> None:
    g = SessionGraph()
    with pytest.raises(CycleError) as ei:
        g.add(Node("me", ("v", "other"), "v"))
    assert ei.value.cycle == ["me", "v", "me"]
    assert len(g) == 0


def test_duplicate_producer_and_node() -> None:
    g = chain()
    with pytest.raises(DuplicateProducer) as ei:
        g.add(Node("b2", ("doc",), "x"))
    assert ei.value.var == "x" and ei.value.producer == "a"
    assert isinstance(ei.value, Conflict) and ei.value.status == 409
    with pytest.raises(DuplicateNode):
        g.add(Node("a", (), "fresh"))
    assert len(g) == 3 and g.producer("fresh") is None
    g.check(Node("d", ("z",), "w"))  # valid: check passes and does not add
    assert "d" not in g


def test_cost_model() -> None:
    n = Node("a", (), None, prompt_tokens=1000, max_tokens=100)
    assert estimate_cost(n) == pytest.approx(0.05 + 0.6)
    m = CostModel(prefill_s_per_token=0.001, decode_s_per_token=0.01, overhead_s=1.0)
    assert estimate_cost(n, m) == pytest.approx(1.0 + 1.0 + 1.0)
    cached = Node("a", (), None, prompt_tokens=1000, cached_tokens=800, max_tokens=100)
    assert m(cached) == pytest.approx(1.0 + 0.2 + 1.0)
    unbounded = Node("a", (), None, prompt_tokens=0, max_tokens=0)
    assert m(unbounded) == pytest.approx(1.0 + 256 * 0.01)


def test_critical_path_values() -> None:
    path, total = chain().critical_path()
    assert path == ["a", "b", "c"]
    assert total == pytest.approx((1700 * 0.00005) + 160 * 0.006)

    g = map_reduce(4)
    g.get("map-2").max_tokens = 500  # type: ignore[union-attr]
    path, total = g.critical_path()
    assert path == ["map-2", "reduce"]
    assert total == pytest.approx(500 * 0.006 + 200 * 0.006)

    path, total = g.critical_path(cost=lambda n: 1.0)
    assert path == ["map-0", "reduce"] and total == 2.0  # ties: first in topological order
    assert SessionGraph().critical_path() == ([], 0.0)


def test_critical_path_picks_the_longer_branch() -> None:
    costs = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0, "e": 10.0}
    g = graph(
        Node("a", (), "x"),
        Node("b", ("x",), "l"),
        Node("c", ("x",), "r"),
        Node("d", ("l", "r"), "ans"),
        Node("e", (), "lonely"),
    )
    path, total = g.critical_path(cost=lambda n: costs[n.id])
    assert path == ["e"] and total == 10.0
    costs["e"] = 1.0
    path, total = g.critical_path(cost=lambda n: costs[n.id])
    assert path == ["a", "b", "d"] and total == 7.0


def test_objective_deduction() -> None:
    g = graph(
        Node("bg", ("doc",), "notes", criteria="throughput"),
        Node("t1", ("notes",), "draft", criteria="throughput"),
        Node("final", ("draft",), "answer"),  # default criteria: latency
        Node("indep", (), "stats", criteria="throughput"),
        Node("indep2", ("stats",), None, criteria="throughput"),
        Node("sink_t", ("notes",), None, criteria="throughput"),
    )
    assert g.deduce_objectives() == {
        "bg": "latency",  # feeds final through t1
        "t1": "latency",
        "final": "latency",
        "indep": "throughput",
        "indep2": "throughput",
        "sink_t": "throughput",
    }
    obj = map_reduce(16).deduce_objectives()
    assert set(obj.values()) == {"latency"}  # every map feeds the latency reduce


def test_task_groups_16_way_map() -> None:
    g = map_reduce(16)
    groups = g.task_groups()
    assert set(groups) == {f"map-{i}" for i in range(16)}
    (gid,) = set(groups.values())
    assert gid.startswith("grp:reduce:")
    assert map_reduce(16).task_groups() == groups  # deterministic
    # a chain feeding the same consumer is not a group: a is an earlier stage than b
    g2 = graph(Node("a", (), "x"), Node("b", ("x",), "y"), Node("c", ("x", "y"), None))
    assert g2.task_groups() == {}
    # but independent siblings next to it are
    g2.add(Node("e", (), "w"))
    g2.add(Node("f", ("y", "w", "x"), None))
    assert set(g2.task_groups()) == {"b", "e"}
    # one node, one group: the larger stage wins
    g3 = map_reduce(4)
    g3.add(Node("pair", ("s0", "s1"), None))
    assert set(g3.task_groups().values()) == {g3.task_groups()["map-0"]}
    assert chain().task_groups() == {}


def test_node_validation() -> None:
    with pytest.raises(ValueError):
        Node("x", (), None, criteria="fast")  # type: ignore[arg-type]
    assert Node("x", ("a", "b", "a"), None).inputs == ("a", "b")


def test_downstream_work_is_the_longest_path_after_each_node() -> None:
    g = map_reduce(3)
    cost = {n.id: 1.0 for n in g.nodes}
    cost["reduce"] = 2.0
    after = g.downstream(lambda n: cost[n.id])
    assert after["reduce"] == 0.0
    assert all(after[f"map-{i}"] == 2.0 for i in range(3))
    chained = chain()
    after = chained.downstream(lambda n: 1.0)
    assert (after["a"], after["b"], after["c"]) == (2.0, 1.0, 0.0)
