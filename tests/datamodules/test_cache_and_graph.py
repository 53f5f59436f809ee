from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import CATEGORICAL, CONTINUOUS, CausalGraph, Variable
from datamodules.cache import load_or_build


def make_graph() -> CausalGraph:
    return CausalGraph(
        variables=(
            Variable("a", CONTINUOUS, support=(0.0, 1.0)),
            Variable("b", CONTINUOUS, parents=("a",), support=(-5.0, 5.0)),
            Variable("c", CATEGORICAL, parents=("b",), num_classes=3),
            Variable("d", CATEGORICAL, num_classes=2),
        ),
        image_parents=("b", "c", "d"),
    )


def test_graph_structure_and_round_trip():
    graph = make_graph()
    assert graph.descendants("a") == ("b", "c")
    assert graph.descendants("d") == ()
    assert graph.children("b") == ("c",)
    assert CausalGraph.from_dict(graph.to_dict()) == graph


def test_graph_rejects_cycles_and_unknown_parents():
    with pytest.raises(ValueError, match="topological order"):
        CausalGraph((Variable("a", CONTINUOUS, parents=("b",), support=(0, 1)),), ())
    with pytest.raises(ValueError, match="topological order"):
        CausalGraph((Variable("a", CONTINUOUS, parents=("a",), support=(0, 1)),), ())
    with pytest.raises(ValueError, match="image parent 'z'"):
        CausalGraph((Variable("a", CONTINUOUS, support=(0, 1)),), ("z",))
    with pytest.raises(ValueError, match="num_classes"):
        Variable("c", CATEGORICAL)


def test_resolve_interventions():
    graph = make_graph()
    pa = {"a": torch.tensor([0.2, 0.4]), "b": torch.zeros(2), "c": torch.tensor([0, 2])}
    resolved = graph.resolve(pa, {"a": lambda v: v * 2, "c": 1, "b": torch.tensor([1.0, -1.0])})
    assert torch.allclose(resolved["a"], torch.tensor([0.4, 0.8]))
    assert resolved["c"].dtype == torch.int64 and resolved["c"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="class ids"):
        graph.resolve(pa, {"c": 1.5})
    with pytest.raises(ValueError, match="integer classes 0..2"):
        graph.resolve(pa, {"c": 3})
    with pytest.raises(ValueError, match="support"):
        graph.resolve(pa, {"a": float("nan")})


def test_cache_detects_corruption_and_staleness(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"values": np.arange(1000, dtype=np.int64)}

    first, path = load_or_build(tmp_path, "toy", {"n": 1000}, build)
    again, _ = load_or_build(tmp_path, "toy", {"n": 1000}, build)
    assert len(calls) == 1 and np.array_equal(first["values"], again["values"])
    # flip bytes inside the stored array: the checksum catches it
    raw = bytearray(path.read_bytes())
    offset = raw.find(np.arange(1000, dtype=np.int64).tobytes()[800:816])
    raw[offset : offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    repaired, _ = load_or_build(tmp_path, "toy", {"n": 1000}, build)
    assert len(calls) == 2 and np.array_equal(repaired["values"], np.arange(1000))
    # garbage is rebuilt too
    path.write_bytes(b"not a zip file")
    load_or_build(tmp_path, "toy", {"n": 1000}, build)
    assert len(calls) == 3


def test_a_failed_output_write_keeps_the_old_file_and_names_the_setting(tmp_path):
    import errno

    from datamodules.cache import write_output

    path = tmp_path / "run" / "report.md"
    write_output(path, lambda temporary: Path(temporary).write_text("the old report"))

    def full_disk(temporary):
        Path(temporary).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"No space left.*paths.log_dir \(or hydra.run.dir\)"):
        write_output(path, full_disk)
    assert path.read_text() == "the old report"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]
