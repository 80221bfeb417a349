"""What a Pacemaker configuration means, read back from crm text or CIB XML, ids of parts aside.

Both readers produce the same plain structure, so a test can say "crm.txt and the CIB configure
the same cluster" with one `==`. Kept: resource, clone and constraint ids, class/provider/type,
params, ops (name, interval, timeout, role, on-fail), clone meta, constraints, cluster properties
and resource defaults. Left out: the ids of nvpairs, attribute sets, ops, rules and expressions
(crmsh invents its own), element order, comments and `<nodes>`.
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from typing import Any

Shape = dict[str, Any]
OpShape = tuple[str, str, str, str | None, str | None]


def empty_shape() -> Shape:
    return {"properties": {}, "rsc_defaults": {}, "resources": {}, "clones": {}, "constraints": {}}


# CIB XML -----------------------------------------------------------------------------------------


def _nvpairs(element: ET.Element | None) -> dict[str, str]:
    if element is None:
        return {}
    return {nv.attrib["name"]: nv.attrib["value"] for nv in element.iter("nvpair")}


def _xml_primitive(p: ET.Element) -> dict[str, Any]:
    ops = [
        (o.attrib["name"], o.attrib.get("interval", "0"), o.attrib["timeout"],
         o.attrib.get("role"), o.attrib.get("on-fail"))
        for o in p.iter("op")
    ]  # fmt: skip
    return {
        "agent": (p.attrib["class"], p.attrib.get("provider"), p.attrib["type"]),
        "params": _nvpairs(p.find("instance_attributes")),
        "ops": sorted(ops, key=str),
    }


def _xml_constraint(c: ET.Element) -> tuple[str, dict[str, Any]]:
    a = dict(c.attrib)
    cid = a.pop("id")
    if c.tag == "rsc_location" and (rule := c.find("rule")) is not None:
        expr = rule.find("expression")
        assert expr is not None and expr.attrib["attribute"] == "#uname", cid
        assert expr.attrib["operation"] == "eq", cid
        a |= {"rule-role": rule.attrib["role"], "score": rule.attrib["score"]}
        a["rule-uname"] = expr.attrib["value"]
    return cid, {"kind-of": c.tag, **a}


def cib_shape(xml_text: str) -> Shape:
    """Read a <cib> or a bare <configuration>."""
    root = ET.fromstring(xml_text)
    config = root if root.tag == "configuration" else root.find("configuration")
    assert config is not None, "no <configuration>"
    shape = empty_shape()
    shape["properties"] = _nvpairs(config.find("crm_config/cluster_property_set"))
    shape["rsc_defaults"] = _nvpairs(config.find("rsc_defaults/meta_attributes"))
    for r in config.iterfind("resources/*"):
        if r.tag == "clone":
            p = r.find("primitive")
            assert p is not None, r.attrib["id"]
            meta = _nvpairs(r.find("meta_attributes"))
            shape["clones"][r.attrib["id"]] = {"primitive": p.attrib["id"], "meta": meta}
        else:
            p = r
        shape["resources"][p.attrib["id"]] = _xml_primitive(p)
    for c in config.iterfind("constraints/*"):
        cid, body = _xml_constraint(c)
        shape["constraints"][cid] = body
    return shape


# crm shell text (the subset kemi-ha renders) -----------------------------------------------------


def _pairs(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words)


def _score(word: str) -> str:
    """crm writes `inf:`; the CIB stores INFINITY."""
    score = word.removesuffix(":")
    return {"inf": "INFINITY", "-inf": "-INFINITY"}.get(score, score)


def _crm_primitive(words: list[str]) -> dict[str, Any]:
    cls, *provider, typ = words[0].split(":")
    params: list[str] = []
    ops: list[OpShape] = []
    section: list[str] = []
    for word in [*words[1:], "op"]:
        if word in ("params", "op") and section:
            if section[0] == "params":
                params = section[1:]
            else:
                o = _pairs(section[2:])
                ops.append((section[1], o.get("interval", "0"), o["timeout"],
                            o.get("role"), o.get("on-fail")))  # fmt: skip
            section = []
        section.append(word)
    return {
        "agent": (cls, provider[0] if provider else None, typ),
        "params": _pairs(params),
        "ops": sorted(ops, key=str),
    }


def _crm_constraint(kind: str, w: list[str]) -> dict[str, Any]:
    if kind == "colocation":
        rsc, _, rsc_role = w[1].partition(":")
        with_rsc, _, role = w[2].partition(":")
        body = {"kind-of": "rsc_colocation", "score": _score(w[0]), "rsc": rsc}
        body |= {"rsc-role": rsc_role} if rsc_role else {}
        return body | {"with-rsc": with_rsc} | ({"with-rsc-role": role} if role else {})
    if kind == "order":
        (first, first_action), (then, then_action) = w[1].split(":"), w[2].split(":")
        return {"kind-of": "rsc_order", "kind": w[0].removesuffix(":"), "first": first,
                "first-action": first_action, "then": then, "then-action": then_action}  # fmt: skip
    if w[1] == "rule":
        assert w[2].startswith("role=") and w[4:6] == ["#uname", "eq"], w
        return {"kind-of": "rsc_location", "rsc": w[0], "rule-role": w[2].removeprefix("role="),
                "score": _score(w[3]), "rule-uname": w[6]}  # fmt: skip
    return {"kind-of": "rsc_location", "rsc": w[0], "score": _score(w[1]), "node": w[2]}


def crm_shape(text: str) -> Shape:
    """Read `crm configure` text: one statement per line, backslash continues a line."""
    shape = empty_shape()
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, name, *rest = shlex.split(line)
        if kind in ("property", "rsc_defaults"):
            shape["properties" if kind == "property" else "rsc_defaults"] |= _pairs(rest)
        elif kind == "primitive":
            shape["resources"][name] = _crm_primitive(rest)
        elif kind == "clone":
            assert rest[1] == "meta", line
            shape["clones"][name] = {"primitive": rest[0], "meta": _pairs(rest[2:])}
        elif kind in ("colocation", "order", "location"):
            shape["constraints"][name] = _crm_constraint(kind, rest)
        else:
            raise AssertionError(f"unexpected crm statement: {line}")
    return shape
