"""Golden tests of the pure translation: a desired state in, Envoy resources out.

Each directory under testdata/ holds `in.json` (store documents, the node group, and
private keys by ref) and one expected JSON file per resource kind, plus `problems.json`
when the translation reports any. `pytest --update-golden` regenerates them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, symbol_database
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict

from l7.translate import translate
from l7.translate.common import KIND_NAMES, LISTENER
from slb.model import StoredObject, parse
from slb.resolve import resolve
from slb.snapshot import Snapshot, Stored, namespace_labels
from tests.golden import Golden

TESTDATA = Path(__file__).parent / "testdata"
CASES = sorted(p.name for p in TESTDATA.iterdir() if (p / "in.json").exists())


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    spec: dict[str, Any]


class Case(BaseModel):
    """An input file; unknown fields are errors, so a typo cannot pass silently."""

    model_config = ConfigDict(extra="forbid")
    node_group: str = "default"
    revision: int = 1
    objects: list[Document]
    keys: dict[str, str] = {}

    def snapshot(self) -> Snapshot:
        objects: dict[str, dict[str, Stored[StoredObject]]] = {}
        for doc in self.objects:
            obj = parse(doc.kind, doc.spec)
            objects.setdefault(doc.kind, {})[obj.key] = Stored(obj, self.revision)
        return Snapshot(self.revision, objects)


def load_case(name: str) -> Case:
    return Case.model_validate_json((TESTDATA / name / "in.json").read_text())


def outputs(case: Case) -> dict[str, Any]:
    snapshot = case.snapshot()
    resources = translate(resolve(snapshot), case.node_group, case.keys, namespace_labels(snapshot))
    out: dict[str, Any] = {
        f"{KIND_NAMES[type_url]}.json": {
            name: MessageToDict(message, preserving_proto_field_name=True)
            for name, message in by_name.items()
        }
        for type_url, by_name in resources.by_type.items()
    }
    if resources.problems:
        out["problems.json"] = resources.problems
    return out


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, golden: Golden) -> None:
    golden.check(TESTDATA / name, outputs(load_case(name)), inputs=("in.json",))


def test_the_cases_cover_every_kind_and_the_inputs_are_strict() -> None:
    assert len(CASES) >= 5
    with pytest.raises(ValueError, match="colour"):
        Case.model_validate_json(json.dumps({"objects": [], "colour": "red"}))


def test_translation_is_deterministic() -> None:
    case = load_case(CASES[0])
    first = translate(resolve(case.snapshot()), case.node_group, case.keys)
    second = translate(resolve(case.snapshot()), case.node_group, case.keys)
    for type_url, by_name in first.by_type.items():
        assert {n: m.SerializeToString(deterministic=True) for n, m in by_name.items()} == {
            n: m.SerializeToString(deterministic=True) for n, m in second.by_type[type_url].items()
        }


def _packed(message: Message) -> list[any_pb2.Any]:
    """Every Any inside `message`, at any depth."""
    found = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        values = value if field.is_repeated else [value]
        if field.message_type.GetOptions().map_entry:
            values = [v for v in value.values() if isinstance(v, Message)]
        for item in values:
            if isinstance(item, any_pb2.Any):
                found.append(item)
                inner = symbol_database.Default().GetSymbol(item.TypeName())()
                item.Unpack(inner)
                found += _packed(inner)
            else:
                found += _packed(item)
    return found


@pytest.mark.parametrize("name", CASES)
def test_every_packed_config_is_in_canonical_form(name: str) -> None:
    """Some packed configurations are assembled from bytes for speed: they must be exactly
    what serializing the message gives, or equal configurations could hash differently."""
    case = load_case(name)
    resources = translate(resolve(case.snapshot()), case.node_group, case.keys)
    packed = [a for by_name in resources.by_type.values() for m in by_name.values()
              for a in _packed(m)]  # fmt: skip
    for item in packed:
        inner = symbol_database.Default().GetSymbol(item.TypeName())()
        item.Unpack(inner)
        assert inner.SerializeToString(deterministic=True) == item.value, item.TypeName()
    if resources.by_type[LISTENER]:
        assert packed


@pytest.mark.parametrize("scheduler", ["rr", "wrr"])
def test_endpoints_encoded_to_the_wire_equal_the_messages(scheduler: str) -> None:
    """The endpoint encoder gives exactly the bytes of the ClusterLoadAssignment message."""
    from envoy.config.endpoint.v3 import endpoint_pb2

    from l7.translate.endpoint import encode
    from slb.model import Backend, Listener

    listener = Listener.model_validate({
        "name": "web", "load_balancer": "lb", "protocol": "HTTP", "port": 80,
        "scheduler": scheduler, "selector": {"match_labels": {"a": "b"}}, "target_port": 80,
        "owner": {"kind": "Operator", "name": "t"},
    })  # fmt: skip
    backends = tuple(
        Backend.model_validate({"address": a, "port": p, "weight": w})
        for a, p, w in [
            ("198.18.0.1", 80, 1), ("198.18.255.254", 65535, 65535), ("2001:db8::1", 16384, 7),
            ("198.18.0.2", 8080, 0), ("2001:db8::ffff:c612:3", 1, 16383),
        ]
    )  # fmt: skip
    expected = endpoint_pb2.ClusterLoadAssignment(cluster_name="web/" + "x" * 200)
    locality = expected.endpoints.add()
    for b in backends:
        if b.weight == 0:
            continue
        e = locality.lb_endpoints.add()
        e.endpoint.address.socket_address.address = str(b.address)
        e.endpoint.address.socket_address.port_value = b.port
        if scheduler == "wrr":
            e.load_balancing_weight.value = b.weight
    raw = encode(listener, "web/" + "x" * 200, backends)
    assert raw == expected.SerializeToString(deterministic=True)
    empty = endpoint_pb2.ClusterLoadAssignment(cluster_name="none")
    assert encode(listener, "none", ()) == empty.SerializeToString(deterministic=True)
