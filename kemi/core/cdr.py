"""Call records (CDRs) and call hygiene: pure decisions, no KSR, no I/O, no clock.

Rules:
- one record per call attempt that got past the policy (a tenant or trunk identified, a route
  found): answered, busy, cancelled, failed, refused by a channel limit. Requests refused
  before that (403 untrusted, 404 no route, 400 garbled) are counted in metrics only: a
  scanner must not fill the store;
- a record is identified by Call-ID + From-tag (`once_key`): the store writes it only if that
  key is new (SET NX + XADD in one Lua script, atomic on the Redis master), so any number of
  writers (the node that saw the BYE, a replicated copy timing out, a sweep, a retry from the
  spool) produce exactly one record; the first writer's reason wins;
- what the node that ends a call needs to write it travels with the dialog: `SetupFacts`,
  encoded as one dialog variable at the INVITE (dialog variables are replicated over DMQ with
  the dialog, Kamailio 5.6 dlg_dmq.c), plus the answer time (a dialog variable set at
  the INVITE's first 2xx where it passed, else the dialog's replicated `start_ts`, whole seconds);
- reasons (`EndReason`) are decided here from what the shell read: the BYE's From-tag, the
  final status, the dialog event, the sweep's verdict (`sweep_verdict`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

STREAM = "kha:cdr"  # the Redis stream of records (one entry per call attempt)
ONCE_PREFIX = "kha:cdr:once:"  # + from-tag + ":" + Call-ID: the exactly-once marker
# The marker outlives any retry: a call ends once; a spool can hold a record for days when Redis
# is unreachable, and a replicated dialog copy may time out much later than the call ended (its
# own dialog timer, at most the max duration / default timeout after the answer).
ONCE_TTL_S = 14 * 24 * 3600


class EndReason(enum.Enum):
    BYE_CALLER = "bye_caller"
    BYE_CALLEE = "bye_callee"
    CANCEL = "cancel"
    FAILED = "failed"  # a final failure of the INVITE (4xx-6xx, 408 no answer, 500 relay)
    LIMIT = "limit"  # refused by a channel limit, before any media
    REFUSED = "refused"  # refused after the policy admitted it (488 SDP bounds, 503 media)
    MEDIA_TIMEOUT = "media_timeout"  # no RTP either way for the call's media_timeout
    MAX_DURATION = "max_duration"  # the policy's maximum call duration reached
    DIALOG_TIMEOUT = "dialog_timeout"  # the dialog module's own timer ended it (no BYE seen)


# SetupFacts and Cdr are built for every call (a SIP worker's hot path): not frozen, as a
# frozen dataclass's __init__ costs ~6x (one object.__setattr__ per field; issue 18). Nothing
# mutates them.
@dataclass(slots=True)
class SetupFacts:
    """What the node that set the call up knows at the INVITE (one dialog variable)."""

    caller: str  # From user@host
    callee: str  # R-URI user@host
    tenant: str
    trunk: str
    vip: str
    node: str  # the node that set it up (its node address)
    invite_ms: int  # unix ms of the initial INVITE
    media_timeout: int  # seconds, 0: off
    max_duration: int  # seconds, 0: off

    def encode(self) -> str:
        """JSON of the fields in order (what asdict gives: every field is a str or an int, so
        no deep copy is needed; this runs for every INVITE)."""
        return _COMPACT.encode({name: getattr(self, name) for name in _SETUP_FIELDS})

    @staticmethod
    def decode(text: str) -> SetupFacts | None:
        """None for an empty or foreign value (a dialog set up before this version)."""
        if not text:
            return None
        try:
            data, end = _SCAN(text, 0)  # json.loads without its Python layers (every call end)
            if text[end:].strip():
                return None
            return SetupFacts(
                str(data["caller"]), str(data["callee"]), str(data["tenant"]),
                str(data["trunk"]), str(data["vip"]), str(data["node"]),
                int(data["invite_ms"]), int(data["media_timeout"]), int(data["max_duration"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, StopIteration):
            return None


_SETUP_FIELDS = tuple(f.name for f in fields(SetupFacts))
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call


class SetupTemplate:
    """`SetupFacts.encode()` with every field but caller, callee and the INVITE's time encoded
    once (they depend on the call's tenant, trunk, VIP and node only): built with an INVITE's
    plan (kemi.core.plan), two string escapes and one format per call. Byte-equal to encode()."""

    __slots__ = ("head", "max_duration", "middle", "tail")

    def __init__(self, tenant: str, trunk: str, vip: str, node: str, media_timeout: int,
                 max_duration: int) -> None:  # fmt: skip
        enc = _COMPACT.encode
        self.head = '{"caller":'
        self.middle = (f',"tenant":{enc(tenant)},"trunk":{enc(trunk)},"vip":{enc(vip)},'
                       f'"node":{enc(node)},"invite_ms":')  # fmt: skip
        self.tail = f',"media_timeout":{media_timeout},"max_duration":{max_duration}}}'
        self.max_duration = max_duration

    def encode(self, caller: str, callee: str, invite_ms: int) -> str:
        enc = _ESCAPE
        return f'{self.head}{enc(caller)},"callee":{enc(callee)}{self.middle}{invite_ms}{self.tail}'


_ESCAPE = json.encoder.encode_basestring_ascii  # what _COMPACT.encode does with a str (C)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner json.loads ends in


@dataclass(slots=True)
class Cdr:
    """One call attempt, as stored (every field a string in the stream entry)."""

    call_id: str
    from_tag: str
    caller: str
    callee: str
    tenant: str
    trunk: str
    vip: str
    setup_node: str
    end_node: str
    invite_ms: int
    answer_ms: int  # 0: never answered
    end_ms: int
    duration_s: float  # answered time (end - answer), 0 if never answered
    code: int  # final SIP code of the INVITE (200 for answered calls)
    reason: EndReason

    def fields(self) -> dict[str, str]:
        out = {name: str(getattr(self, name)) for name in COLUMNS}
        out["reason"] = self.reason.value
        return out

    @staticmethod
    def from_fields(data: Mapping[str, str]) -> Cdr:
        values: dict[str, Any] = {}
        for f in fields(Cdr):
            raw = data[f.name]
            if f.name == "reason":
                values[f.name] = EndReason(raw)
            elif f.name == "duration_s":
                values[f.name] = float(raw)
            elif f.name in ("invite_ms", "answer_ms", "end_ms", "code"):
                values[f.name] = int(raw)
            else:
                values[f.name] = raw
        return Cdr(**values)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Cdr))


def once_key(call_id: str, from_tag: str) -> str:
    return f"{ONCE_PREFIX}{from_tag}:{call_id}"


def build_cdr(
    facts: SetupFacts,
    call_id: str,
    from_tag: str,
    end_node: str,
    end_ms: int,
    reason: EndReason,
    code: int,
    answer_ms: int = 0,
) -> Cdr:
    """The record of a call that ended at `end_ms` (answer_ms 0: never answered)."""
    return Cdr(
        call_id=call_id,
        from_tag=from_tag,
        caller=facts.caller,
        callee=facts.callee,
        tenant=facts.tenant,
        trunk=facts.trunk,
        vip=facts.vip,
        setup_node=facts.node,
        end_node=end_node,
        invite_ms=facts.invite_ms,
        answer_ms=answer_ms,
        end_ms=end_ms,
        duration_s=answered_seconds(answer_ms, end_ms),
        code=code,
        reason=reason,
    )


def answered_seconds(answer_ms: int, end_ms: int) -> float:
    """Answered time in seconds, to the ms (0.0 when never answered)."""
    return round(max(0, end_ms - answer_ms) / 1000, 3) if answer_ms > 0 else 0.0


def answer_time_ms(answer_var: str, start_ts: int) -> int:
    """The answer time: the dialog variable set at the first 2xx (ms) where the 200 passed; on a
    node that only holds the replicated copy, the middle of the dialog's start_ts second (whole
    seconds, truncated: the answer was within it), so the duration is off by 0.5 s at most (the
    drill saw 1.0 s with the start of the second)."""
    answered = answer_from_var(answer_var)
    if answered is not None:
        return answered
    return start_ts * 1000 + 500 if start_ts > 0 else 0


def answer_from_var(answer_var: str) -> int | None:
    """The answer time the dialog variable holds (ms); None: none, start_ts decides."""
    if answer_var.isdigit() and int(answer_var) > 0:
        return int(answer_var)
    return None


def bye_reason(bye_from_tag: str, dialog_from_tag: str) -> EndReason:
    """The BYE's From-tag is the dialog's From-tag when the caller hung up (RFC 3261 12.2.1.1:
    the callee's requests carry the dialog's tags swapped)."""
    return EndReason.BYE_CALLER if bye_from_tag == dialog_from_tag else EndReason.BYE_CALLEE


def failure_reason(status: int, cancelled: bool) -> EndReason:
    if cancelled or status == 487:
        return EndReason.CANCEL
    return EndReason.FAILED


def reject_reason(why: str) -> EndReason:
    """A refusal after the policy admitted the call: limits are their own reason."""
    return EndReason.LIMIT if why.startswith("limit_") else EndReason.REFUSED


# ----- the sweep: media timeout and maximum duration ------------------------------------


@dataclass(frozen=True, slots=True)
class SweepFacts:
    """One confirmed dialog on a VIP this node holds, as the sweep reads it."""

    answer_ms: int
    media_timeout: int  # s, 0: off
    max_duration: int  # s, 0: off
    last_media_s: float | None  # latest "last packet" of any stream; None: no session


def sweep_verdict(facts: SweepFacts, now_ms: int, session_grace_s: int = 5) -> EndReason | None:
    """Checked in order: maximum duration, then media.

    Media is dead when no stream received a packet for `media_timeout` s (counted from the
    answer when no packet came at all). A dialog whose rtpengine session is gone (rtpengine's
    own --timeout deleted it, or it was lost) is dead media too once `session_grace_s` after
    the answer has passed (the session is created at the offer, before the answer)."""
    if facts.answer_ms <= 0:
        return None
    age_s = (now_ms - facts.answer_ms) / 1000
    if facts.max_duration and age_s >= facts.max_duration:
        return EndReason.MAX_DURATION
    if not facts.media_timeout:
        return None
    if facts.last_media_s is None:
        return EndReason.MEDIA_TIMEOUT if age_s >= session_grace_s else None
    last_ms = max(facts.last_media_s * 1000, facts.answer_ms)
    if (now_ms - last_ms) / 1000 >= facts.media_timeout:
        return EndReason.MEDIA_TIMEOUT
    return None


def last_media_s(query: Mapping[str, Any]) -> float | None:
    """The latest `last packet` (unix s) of any stream of an rtpengine ng `query` answer;
    None when the call is unknown to rtpengine. 0.0 when no stream ever received a packet."""
    if query.get("result") != "ok":
        return None
    latest = 0.0
    for tag in (query.get("tags") or {}).values():
        for media in tag.get("medias", ()) if isinstance(tag, dict) else ():
            for stream in media.get("streams", ()):
                value = stream.get("last packet", 0)
                if isinstance(value, (int, float)) and value > latest:
                    latest = float(value)
    return latest


def dialog_variables(entry: Mapping[str, Any]) -> dict[str, str]:
    """`dlg.list` gives a dialog's variables as a list of one-key objects."""
    out: dict[str, str] = {}
    raw = entry.get("variables") or []
    items: Iterable[Any] = raw if isinstance(raw, list) else [raw]
    for item in items:
        if isinstance(item, dict):
            out.update({str(k): str(v) for k, v in item.items()})
    return out


# Writes the record only if its marker is new; returns the stream id, or false (already there).
# Atomic on the master: no crash leaves a marker without its record, or the reverse.
WRITE_ONCE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
return false
"""


def write_args(cdr: Cdr, ttl_s: int = ONCE_TTL_S) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of WRITE_ONCE_LUA for this record."""
    argv = [cdr.end_node, str(ttl_s)]
    for name, value in cdr.fields().items():
        argv += [name, value]
    return [once_key(cdr.call_id, cdr.from_tag), STREAM], argv


def resp_command(*args: str) -> bytes:
    """One Redis command in RESP, built in one pass: redis-py's generic packer type-checks and
    encodes each of a record's ~40 arguments on its own, which took most of kemi-ha's Python per
    call in bench-cpu's profile (docs/performance.md)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def evalsha_command(sha: str, keys: list[str], argv: list[str]) -> bytes:
    """EVALSHA of WRITE_ONCE_LUA (by its SHA1) with this record's KEYS and ARGV."""
    return resp_command("EVALSHA", sha, str(len(keys)), *keys, *argv)


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


_STREAM_BULK = _bulk(STREAM.encode())
_TTL_BULK = _bulk(str(ONCE_TTL_S).encode())
_FIELD_BULKS = tuple(_bulk(name.encode()) for name in COLUMNS)
_WRITE_ARGS = 7 + 2 * len(COLUMNS)  # verb, script, numkeys, 2 keys, node, ttl, the fields


def write_once_command(record: Cdr, script: str, verb: str = "EVALSHA") -> bytes:
    """The RESP bytes of `evalsha_command(script, *write_args(record))` (or EVAL with the
    script's text), built with the field names and constants encoded once at import: the one
    command every ended call sends from a SIP worker (issue 18: no helper call per argument)."""
    values = (record.call_id, record.from_tag, record.caller, record.callee, record.tenant,
              record.trunk, record.vip, record.setup_node, record.end_node,
              str(record.invite_ms), str(record.answer_ms), str(record.end_ms),
              str(record.duration_s), str(record.code), record.reason._value_)  # fmt: skip
    verb_b, script_b, node_b = verb.encode(), script.encode(), record.end_node.encode()
    key_b = f"{ONCE_PREFIX}{record.from_tag}:{record.call_id}".encode()  # once_key()
    parts = [b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n2\r\n$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s"
             % (_WRITE_ARGS, len(verb_b), verb_b, len(script_b), script_b, len(key_b), key_b,
                _STREAM_BULK, len(node_b), node_b, _TTL_BULK)]  # fmt: skip
    for head, value in zip(_FIELD_BULKS, values, strict=True):
        data = value.encode()
        parts.append(head)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# The end of an answered call (`dialog:end`, every call) with the call's facts as the dialog
# holds them: the SetupFacts JSON is decoded here, by Redis, and the answer time, end time and
# duration are worked out here too, so that kamailio.cfg's event_route[dialog:end] sends it
# with one ndb_redis command and no Python runs for the call's end (issue 18; docs/cdr.md).
# The entry is WRITE_ONCE_LUA's for the same record, field for field and byte for byte.
# KEYS: the once key (once_key(): the From-tag is read back from it), the stream. ARGV: end
# node, marker TTL, facts, Call-ID, answer ms as the dialog variable holds it (digits; 0 or
# empty: none), the dialog's start_ts (s; stands in as answer_time_ms() says), the end time
# "<s>.<us>" (Kamailio's $TV(Sn)), code, reason. Facts it does not take (not JSON, a field
# missing or of another type, a time past 2^53) get an error reply starting with BADFACTS,
# before any write: the caller then decodes them itself (SetupFacts.decode, which decides) and
# writes with WRITE_ONCE_LUA; a key not of that shape, or a time past 2^53 ms, gets BADARGS.
WRITE_ENDED_LUA = """
local ok, f = pcall(cjson.decode, ARGV[3])
if not ok or type(f) ~= 'table' then
  return redis.error_reply('BADFACTS not a JSON object')
end
for _, k in ipairs({'caller', 'callee', 'tenant', 'trunk', 'vip', 'node'}) do
  if type(f[k]) ~= 'string' then return redis.error_reply('BADFACTS ' .. k) end
end
for _, k in ipairs({'invite_ms', 'media_timeout', 'max_duration'}) do
  local n = f[k]
  if type(n) ~= 'number' or n ~= math.floor(n) or math.abs(n) >= 2^53 then
    return redis.error_reply('BADFACTS ' .. k)
  end
end
local key, call_id = KEYS[1], ARGV[4]
local tag_end = #key - #call_id - 1
if tag_end < 13 or key:sub(1, 13) ~= 'kha:cdr:once:' or key:sub(tag_end + 1) ~= ':' .. call_id then
  return redis.error_reply('BADARGS once key')
end
local s, us = string.match(ARGV[7], '^(%d+)%.(%d%d%d%d%d%d)$')
local ended = s and tonumber(s) * 1000 + math.floor(tonumber(us) / 1000)
local answer = string.match(ARGV[5], '^%d+$') and tonumber(ARGV[5]) or 0
if answer <= 0 then
  local start = string.match(ARGV[6], '^%d+$') and tonumber(ARGV[6]) or 0
  answer = start > 0 and start * 1000 + 500 or 0
end
if not ended or ended >= 2^53 or answer >= 2^53 then
  return redis.error_reply('BADARGS times')
end
local d = answer > 0 and math.max(0, ended - answer) or 0
local ms = d % 1000
local frac = ms == 0 and '0' or string.gsub(string.format('%03d', ms), '0+$', '')
if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', 'call_id', call_id, 'from_tag', key:sub(14, tag_end),
    'caller', f['caller'], 'callee', f['callee'], 'tenant', f['tenant'],
    'trunk', f['trunk'], 'vip', f['vip'], 'setup_node', f['node'], 'end_node', ARGV[1],
    'invite_ms', string.format('%d', f['invite_ms']), 'answer_ms', string.format('%d', answer),
    'end_ms', string.format('%d', ended), 'duration_s',
    string.format('%d', (d - ms) / 1000) .. '.' .. frac, 'code', ARGV[8], 'reason', ARGV[9])
end
return false
"""
BAD_FACTS = "BADFACTS"  # WRITE_ENDED_LUA's error reply for facts it does not take
BAD_ARGS = "BADARGS"  # and for a once key or times it cannot store exactly
_ENDED_ARGS = 14  # verb, script, numkeys, 2 keys, node, ttl, facts, 6 values


# An answered call's end as `dialog:end` reads it: (the facts' JSON as the dialog holds it,
# Call-ID, From-tag, end node, answer ms (0: never answered), end ms, reason, code). A plain
# tuple: built for every call in a SIP worker, where a class's __init__ is one more frame.
CallEnd = tuple[str, str, str, str, int, int, EndReason, int]


def write_ended_command(script: str, end: CallEnd, verb: str = "EVALSHA") -> bytes:
    """The RESP bytes of WRITE_ENDED_LUA (by SHA1 or, with verb EVAL, its text) for `end`:
    what kamailio.cfg's event_route[dialog:end] sends, from Python (its fallback: Redis did
    not answer it, or facts the script refused)."""
    facts, call_id, from_tag, end_node, answer_ms, end_ms, reason, code = end
    verb_b, script_b = verb.encode(), script.encode()
    head = b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n2\r\n" % (
        _ENDED_ARGS, len(verb_b), verb_b, len(script_b), script_b)  # fmt: skip
    values = (facts, call_id, str(answer_ms), "0", f"{end_ms // 1000}.{end_ms % 1000:03d}000",
              str(code), reason._value_)  # fmt: skip
    return b"".join((
        head, _bulk(once_key(call_id, from_tag).encode()), _STREAM_BULK,
        _bulk(end_node.encode()), _TTL_BULK, *(_bulk(v.encode()) for v in values),
    ))  # fmt: skip
