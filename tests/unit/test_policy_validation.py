# ruff: noqa: E501  (expected messages are kept whole, one per line)
"""Every validation error names file:line:col, the field and the reason; all at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kemi.core.schema import json_schema
from kemi.core.structure import SpecError
from kemi.policyfile import load_policy, parse_policy

REPO = Path(__file__).resolve().parents[2]

BASE = """\
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:10.0.0.1:2223"]
tenants:
  - name: acme
    sources: ["10.1.0.0/16"]
    domains: [acme.example]
routes:
  - name: default
    destinations: ["sip:10.9.0.1:5060"]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_policy(text, "p.yaml")
    return info.value.messages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "colour: red\n", "p.yaml:12:1: colour: unknown key"),
        (BASE.replace("destinations:", "destination:"),
         "p.yaml:11:5: routes[0].destination: unknown key (did you mean 'destinations'?)"),
        (BASE.replace('    rtpengine: ["udp:10.0.0.1:2223"]\n', ""),
         "p.yaml:3:5: vips[0].rtpengine: is required"),
        (BASE.replace('["udp:10.0.0.1:2223"]', "[]"),
         "p.yaml:4:5: vips[0].rtpengine: a VIP needs at least one rtpengine ng socket"),
        (BASE.replace("10.0.0.1\n", "10.0.0.300\n"),
         "p.yaml:3:5: vips[0].address: not an IP address: '10.0.0.300'"),
        (BASE.replace("10.1.0.0/16", "10.1.0.1/16"),
         "p.yaml:7:15: tenants[0].sources[0]: bad CIDR '10.1.0.1/16': 10.1.0.1/16 has host bits set"),
        (BASE + '    tenant: nobody\n', "p.yaml:12:5: routes[0].tenant: unknown tenant 'nobody'"),
        (BASE.replace("sip:10.9.0.1:5060", "http://x"),
         "p.yaml:11:20: routes[0].destinations[0]: not a SIP URI: 'http://x'"),
        (BASE + "global_limit: {max: -5}\n",
         "p.yaml:12:16: global_limit.max: must not be negative (got -5)"),
        (BASE + "global_limit: {max: 5, code: 486, retry_after: 3}\n",
         "p.yaml:12:35: global_limit.retry_after: Retry-After goes with code 503 only"),
        (BASE + "global_limit: {max: 5, code: 404}\n",
         "p.yaml:12:24: global_limit.code: must be one of 486, 503"),
        (BASE + "global_limit: {max: many}\n", "p.yaml:12:16: global_limit.max: must be an integer"),
        (BASE.replace("routes:", "  - name: other\n    sources: [10.1.0.0/16]\nroutes:"),
         "p.yaml:10:15: tenants[1].sources[0]: 10.1.0.0/16 also belongs to tenant 'acme': ambiguous"),
        (BASE.replace("routes:", "  - name: acme\nroutes:"),
         "p.yaml:9:5: tenants[1].name: duplicate tenant name 'acme'"),
        (BASE + "  - name: again\n    destinations: ['sip:a.example']\n",
         "p.yaml:12:5: routes[1]: same tenant, domain and prefix as route 'default'"),
        ("vips: [\n", "p.yaml:2:1: not valid YAML"),
        ("", "p.yaml:1:1: (top level): the file is empty"),
    ],
)  # fmt: skip
def test_each_error_names_file_line_field_and_reason(text: str, expected: str) -> None:
    assert any(line.startswith(expected) for line in errors_of(text)), errors_of(text)


def test_all_errors_at_once() -> None:
    text = BASE.replace("10.0.0.1\n", "bad\n").replace("sip:10.9", "tel:10.9") + "x: 1\n"
    messages = errors_of(text)
    assert len(messages) == 3, messages
    assert [m.split(":")[1] for m in messages] == ["3", "11", "12"]  # in file order


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_committed_schema_is_the_generated_one() -> None:
    committed = json.loads((REPO / "policies" / "policy.schema.json").read_text())
    assert committed == json_schema(), "run: kemi-ha policy schema policies/policy.schema.json"


@pytest.mark.parametrize("path", sorted((REPO / "policies").rglob("*.yaml")), ids=str)
def test_shipped_policies_are_valid_and_name_the_schema(path: Path) -> None:
    load_policy(path)
    assert path.read_text().startswith("# yaml-language-server: $schema=")


def test_docs_describe_every_field() -> None:
    import dataclasses

    from kemi.core import spec

    text = (REPO / "docs" / "policies.md").read_text()
    for cls in (spec.PolicySpec, spec.VipSpec, spec.MediaSpec, spec.TenantSpec, spec.TrunkSpec,
                spec.RouteSpec, spec.LimitSpec, spec.SdpSpec, spec.FloodSpec,
                spec.NatSpec, spec.CallsSpec):  # fmt: skip
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"docs/policies.md lacks {cls.__name__}.{f.name}"
