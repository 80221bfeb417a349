"""A Pacemaker configuration as data, rendered to crm shell text and to CIB XML.

Rules:
- One model, two renderings: `to_crm` and `to_cib_configuration` read the same frozen values and
  add no decisions of their own, so crm.txt and the CIB cannot drift. What goes into the model is
  decided once, in `kemi.core.cluster_resources`.
- Every value is a string as Pacemaker stores it ("0", "20s", "INFINITY"); crm's `inf` spelling is
  the only translation.
- Role names are Pacemaker 2.1's (Promoted/Unpromoted).
- CIB ids are derived the way they always were: `<rsc>-params`, `<rsc>-<param>`,
  `<rsc>-<op>-<interval>[-<role>]`, `<clone>-meta`, `<location>-rule`, `<location>-expr`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

Pairs = tuple[tuple[str, str], ...]
PROPERTY_SET = "cib-bootstrap-options"
RSC_DEFAULTS_SET = "rsc-options"


@dataclass(frozen=True, slots=True)
class Op:
    """A resource operation (monitor with an interval; start/stop/... with interval "0")."""

    name: str
    interval: str
    timeout: str
    role: str | None = None
    on_fail: str | None = None


@dataclass(frozen=True, slots=True)
class Primitive:
    """A resource agent instance, e.g. ocf:heartbeat:IPaddr2 with its params and ops."""

    id: str
    cls: str
    provider: str | None
    type: str
    params: Pairs = ()
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True, slots=True)
class Clone:
    """A clone (promotable when its meta says promotable=true) of one primitive."""

    id: str
    primitive: Primitive
    meta: Pairs = ()


@dataclass(frozen=True, slots=True)
class Colocation:
    """`rsc` (in `rsc_role`, if given) runs where `with_rsc` (in `with_rsc_role`) runs."""

    id: str
    rsc: str
    with_rsc: str
    score: str
    with_rsc_role: str | None = None
    rsc_role: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """`then:then_action` waits for `first:first_action`."""

    id: str
    first: str
    first_action: str
    then: str
    then_action: str
    kind: str


@dataclass(frozen=True, slots=True)
class UnameRule:
    """A location rule: applies to `rsc` in `role` on the node whose #uname equals `uname`."""

    role: str
    uname: str


@dataclass(frozen=True, slots=True)
class Location:
    """A preference for a node: either a plain `node` or a role `rule`."""

    id: str
    rsc: str
    score: str
    node: str | None = None
    rule: UnameRule | None = None

    def __post_init__(self) -> None:
        if (self.node is None) == (self.rule is None):
            raise ValueError(f"location {self.id}: give exactly one of node and rule")


Resource = Primitive | Clone
Constraint = Colocation | Order | Location


@dataclass(frozen=True, slots=True)
class PacemakerConfig:
    """Cluster properties, resource defaults, resources and constraints."""

    properties: Pairs
    rsc_defaults: Pairs
    resources: tuple[Resource, ...]
    constraints: tuple[Constraint, ...]


# crm shell ---------------------------------------------------------------------------------------

_CRM_PLAIN = re.compile(r"[A-Za-z0-9_./:@#+,=-]*")


def _crm_value(value: str) -> str:
    """crmsh splits on blanks: quote values that need it, shell style (crmsh and shlex agree)."""
    if _CRM_PLAIN.fullmatch(value) and value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _crm_pairs(pairs: Pairs) -> str:
    return " ".join(f"{k}={_crm_value(v)}" for k, v in pairs)


def _crm_score(score: str) -> str:
    return {"INFINITY": "inf", "-INFINITY": "-inf"}.get(score, score)


def _crm_op(op: Op) -> str:
    fields: Pairs = (("interval", op.interval), ("timeout", op.timeout))
    if op.role:
        fields += (("role", op.role),)
    if op.on_fail:
        fields += (("on-fail", op.on_fail),)
    return f"op {op.name} {_crm_pairs(fields)}"


def _crm_primitive(p: Primitive) -> str:
    agent = ":".join(x for x in (p.cls, p.provider, p.type) if x)
    parts = [f"primitive {p.id} {agent}"]
    if p.params:
        parts.append(f"params {_crm_pairs(p.params)}")
    parts += [_crm_op(op) for op in p.ops]
    return " \\\n\t".join(parts)


def _crm_constraint(c: Constraint) -> str:
    if isinstance(c, Colocation):
        rsc_role = f":{c.rsc_role}" if c.rsc_role else ""
        role = f":{c.with_rsc_role}" if c.with_rsc_role else ""
        return f"colocation {c.id} {_crm_score(c.score)}: {c.rsc}{rsc_role} {c.with_rsc}{role}"
    if isinstance(c, Order):
        return f"order {c.id} {c.kind}: {c.first}:{c.first_action} {c.then}:{c.then_action}"
    if c.rule is not None:
        return (
            f"location {c.id} {c.rsc} rule role={c.rule.role} {_crm_score(c.score)}: "
            f"#uname eq {_crm_value(c.rule.uname)}"
        )
    return f"location {c.id} {c.rsc} {_crm_score(c.score)}: {c.node}"


def to_crm(config: PacemakerConfig) -> str:
    """crm shell text for `crm configure load update crm.txt`."""
    lines = [
        "# Rendered by kemi-ha render. Load with: crm configure load update crm.txt",
        f"property {PROPERTY_SET}: {_crm_pairs(config.properties)}",
        f"rsc_defaults {RSC_DEFAULTS_SET}: {_crm_pairs(config.rsc_defaults)}",
    ]
    for r in config.resources:
        if isinstance(r, Clone):
            lines.append(_crm_primitive(r.primitive))
            lines.append(f"clone {r.id} {r.primitive.id} \\\n\tmeta {_crm_pairs(r.meta)}")
        else:
            lines.append(_crm_primitive(r))
    lines += [_crm_constraint(c) for c in config.constraints]
    return "\n".join(lines) + "\n"


# CIB XML -----------------------------------------------------------------------------------------


def _tag(tag: str, *attrs: tuple[str, str | None], body: str | None = None) -> str:
    """One XML element; attributes whose value is None are left out."""
    text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs if v is not None)
    return f"<{tag}{text}/>" if body is None else f"<{tag}{text}>{body}</{tag}>"


def _nvpairs(set_tag: str, set_id: str, prefix: str, pairs: Pairs) -> str:
    body = "".join(
        _tag("nvpair", ("id", f"{prefix}-{k}"), ("name", k), ("value", v)) for k, v in pairs
    )
    return _tag(set_tag, ("id", set_id), body=body)


def _cib_op(rid: str, op: Op) -> str:
    oid = f"{rid}-{op.name}-{op.interval}" + (f"-{op.role}" if op.role else "")
    return _tag(
        "op",
        ("id", oid),
        ("name", op.name),
        ("interval", op.interval),
        ("timeout", op.timeout),
        ("role", op.role),
        ("on-fail", op.on_fail),
    )


def _cib_primitive(p: Primitive) -> str:
    params = _nvpairs("instance_attributes", f"{p.id}-params", p.id, p.params) if p.params else ""
    ops = _tag("operations", body="".join(_cib_op(p.id, op) for op in p.ops))
    return _tag(
        "primitive",
        ("id", p.id),
        ("class", p.cls),
        ("provider", p.provider),
        ("type", p.type),
        body=params + ops,
    )


def _cib_resource(r: Resource) -> str:
    if isinstance(r, Primitive):
        return _cib_primitive(r)
    meta = _nvpairs("meta_attributes", f"{r.id}-meta", r.id, r.meta)
    return _tag("clone", ("id", r.id), body=meta + _cib_primitive(r.primitive))


def _cib_constraint(c: Constraint) -> str:
    if isinstance(c, Colocation):
        return _tag(
            "rsc_colocation",
            ("id", c.id),
            ("rsc", c.rsc),
            ("rsc-role", c.rsc_role),
            ("with-rsc", c.with_rsc),
            ("with-rsc-role", c.with_rsc_role),
            ("score", c.score),
        )
    if isinstance(c, Order):
        return _tag(
            "rsc_order",
            ("id", c.id),
            ("first", c.first),
            ("first-action", c.first_action),
            ("then", c.then),
            ("then-action", c.then_action),
            ("kind", c.kind),
        )
    if c.rule is None:
        return _tag("rsc_location", ("id", c.id), ("rsc", c.rsc), ("node", c.node),
                    ("score", c.score))  # fmt: skip
    expr = _tag(
        "expression",
        ("id", f"{c.id}-expr"),
        ("attribute", "#uname"),
        ("operation", "eq"),
        ("value", c.rule.uname),
    )
    rule = _tag("rule", ("id", f"{c.id}-rule"), ("role", c.rule.role), ("score", c.score),
                body=expr)  # fmt: skip
    return _tag("rsc_location", ("id", c.id), ("rsc", c.rsc), body=rule)


def _configuration(config: PacemakerConfig, nodes: str) -> str:
    return (
        "<configuration><crm_config>"
        + _nvpairs("cluster_property_set", PROPERTY_SET, PROPERTY_SET, config.properties)
        + "</crm_config><rsc_defaults>"
        + _nvpairs("meta_attributes", RSC_DEFAULTS_SET, RSC_DEFAULTS_SET, config.rsc_defaults)
        + f"</rsc_defaults>{nodes}<resources>"
        + "".join(_cib_resource(r) for r in config.resources)
        + "</resources><constraints>"
        + "".join(_cib_constraint(c) for c in config.constraints)
        + "</constraints></configuration>"
    )


def to_cib_configuration(config: PacemakerConfig) -> str:
    """The <configuration> element for `cibadmin --replace --scope configuration`."""
    return _configuration(config, "")


def to_cib(config: PacemakerConfig, nodes: list[tuple[int, str]]) -> str:
    """A whole initial CIB (nodes known up front): seeds cib.xml so a fresh cluster elects fast."""
    node_xml = "".join(_tag("node", ("id", str(i)), ("uname", n)) for i, n in nodes)
    return (
        '<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">'
        + _configuration(config, f"<nodes>{node_xml}</nodes>")
        + "<status/></cib>\n"
    )
