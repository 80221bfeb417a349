"""The CDR store: a Redis stream on the cluster's Redis master (through the Redis VIP).

Rules (docs/cdr.md):
- a record is written with WRITE_ONCE_LUA (kemi.core.cdr): SET NX of its Call-ID + From-tag
  marker and XADD in one script, atomic on the master, so a second writer of the same call
  (replicated copy timing out, spool retry, sweep and BYE racing) writes nothing; the end of
  an answered call (every call, in a SIP worker) goes with WRITE_ENDED_LUA, the same entry
  built by Redis from the facts' JSON as the dialog holds them (`write_ended`);
- a write never holds a SIP worker for long: connect and read timeouts of `timeout` s (100 ms by
  default); after a failure the process does not try Redis again for `pause_s` s;
- a record Redis did not take is never dropped silently: it goes to the node's spool directory
  (one JSON file per record, written then renamed), the caller counts and logs it, and `drain()`
  (Kamailio's timer process, every tick) writes the spool in order once Redis answers; the
  exactly-once marker makes a replay harmless;
- the end of an answered call is written by kamailio.cfg itself (ndb_redis, the same script by
  its SHA1, the server in Kamailio's environment: `RedisAddress.ndb_redis_server`); this store
  writes it only when that failed, and loads the script with EVAL after a NOSCRIPT;
- one client per process, made after the fork (Kamailio forks its workers after mod_init).
"""

from __future__ import annotations

import csv
import datetime
import enum
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kemi.core.cdr import (
    BAD_ARGS,
    BAD_FACTS,
    COLUMNS,
    STREAM,
    WRITE_ENDED_LUA,
    WRITE_ONCE_LUA,
    CallEnd,
    Cdr,
    write_ended_command,
    write_once_command,
)
from kemi.ops.resp import RespClient, RespError

PASSWORD_CHARS = re.compile(r"[A-Za-z0-9._~-]+")  # what kemi-ha render accepts, too
WRITE_ONCE_SHA = hashlib.sha1(WRITE_ONCE_LUA.encode()).hexdigest()  # what EVALSHA names it
WRITE_ENDED_SHA = hashlib.sha1(WRITE_ENDED_LUA.encode()).hexdigest()
STORE_ERRORS = (RespError, OSError, redis.RedisError)  # a write that did not happen


class Written(enum.Enum):
    WRITTEN = "written"
    DUPLICATE = "duplicate"  # the call's marker was already there: another writer was first
    SPOOLED = "spooled"  # Redis did not take it: kept in the spool for drain()
    LOST = "lost"  # neither Redis nor the spool took it (logged by the caller)


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0

    @staticmethod
    def parse(text: str) -> RedisAddress:
        """'host:port/db' (port and db optional)."""
        hostport, _, db = text.partition("/")
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        return RedisAddress(host or "127.0.0.1", int(port or 6379), int(db or 0))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"

    def ndb_redis_server(self, password: str | None) -> str:
        """ndb_redis's `server` parameter for this store (kamailio.cfg's server "cdr")."""
        if password and not PASSWORD_CHARS.fullmatch(password):  # ';' '=' end a field there
            raise ValueError("the CDR store's password must be of A-Z a-z 0-9 . _ ~ -")
        auth = f";pass={password}" if password else ""
        return f"name=cdr;addr={self.host};port={self.port};db={self.db}{auth}"


def read_password(path: str | Path | None) -> str | None:
    """The password in `path` (the cluster's redis.pass: one line), None for no file."""
    if not path:
        return None
    return Path(path).read_text().strip() or None


def client(address: RedisAddress, timeout: float, password: str | None = None) -> redis.Redis:
    """No retries: redis-py 8 retries a failed command 3 times with backoff by default
    (measured: 3.2 s for a refused connection), which would hold a SIP worker that long."""
    return redis.Redis(
        host=address.host,
        port=address.port,
        db=address.db,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


class WriteOnceClient:
    """WRITE_ONCE_LUA over kemi.ops.resp (not redis-py: ~200 us of a SIP worker's CPU per
    record, issue 18): EVALSHA, and EVAL of the script's text on a Redis that does not have it
    yet (a restart, a new master: EVAL caches it for the next EVALSHA)."""

    def __init__(self, address: RedisAddress, timeout: float, password: str | None = None) -> None:
        self.resp = RespClient(address.host, address.port, address.db, password, timeout)

    def write_once(self, record: Cdr) -> bool:
        """True: written; False: the call's marker was there (a duplicate)."""
        try:
            reply = self.resp.call(write_once_command(record, WRITE_ONCE_SHA))
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            reply = self.resp.call(write_once_command(record, WRITE_ONCE_LUA, "EVAL"))
        return reply is not None

    def write_ended(self, end: CallEnd) -> bool | None:
        """WRITE_ENDED_LUA: True written, False a duplicate, None: facts the script does not
        take (nothing written)."""
        try:
            try:
                reply = self.resp.call(write_ended_command(WRITE_ENDED_SHA, end))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                reply = self.resp.call(write_ended_command(WRITE_ENDED_LUA, end, "EVAL"))
        except RespError as exc:
            if str(exc).startswith((BAD_FACTS, BAD_ARGS)):  # refused, not a store failure
                return None
            raise
        return reply is not None


class RedisCdrStore:
    def __init__(
        self,
        address: RedisAddress,
        spool_dir: Path,
        timeout: float = 0.1,
        pause_s: float = 5.0,
        make_client: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        password: str | None = None,
    ) -> None:
        """`make_client()`: an object with `write_once(record) -> bool` (WriteOnceClient)."""
        self.address = address
        self.spool_dir = spool_dir
        self.timeout = timeout
        self.pause_s = pause_s
        self._make_client = make_client or (
            lambda: WriteOnceClient(self.address, timeout, password)
        )
        self._clock = clock
        self._pid = -1
        self._client: Any = None
        self._paused_until = 0.0
        self._seq = 0
        self.last_error = ""

    def _send(self, cdr: Cdr) -> bool:
        """True: written; False: a duplicate. Raises on any Redis or socket failure."""
        if self._pid != os.getpid():  # never a connection inherited over fork
            self._pid = os.getpid()
            self._client = self._make_client()
        return bool(self._client.write_once(cdr))

    def available(self) -> bool:
        return self._clock() >= self._paused_until

    def write(self, cdr: Cdr) -> Written:
        if self._clock() >= self._paused_until:  # available(), inline (every call)
            try:
                return Written.WRITTEN if self._send(cdr) else Written.DUPLICATE
            except STORE_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._paused_until = self._clock() + self.pause_s
        else:
            self.last_error = "Redis paused after a failure"
        return self.spool(cdr)

    def write_ended(self, end: CallEnd) -> Written | None:
        """The record of a call that ended, from its facts as the dialog holds them (JSON,
        decoded by Redis: no Cdr built in the SIP worker). None: not written, for `write()`
        to decide (facts the script does not take; Redis failed, paused: spool)."""
        if self._clock() < self._paused_until:
            self.last_error = "Redis paused after a failure"
            return None
        try:
            if self._pid != os.getpid():  # never a connection inherited over fork
                self._pid = os.getpid()
                self._client = self._make_client()
            written = self._client.write_ended(end)
        except STORE_ERRORS as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._paused_until = self._clock() + self.pause_s
            return None
        if written is None:
            return None
        return Written.WRITTEN if written else Written.DUPLICATE

    def spool(self, cdr: Cdr) -> Written:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            name = f"{cdr.end_ms:015d}-{os.getpid()}-{self._seq}"
            tmp = self.spool_dir / f".{name}.tmp"
            tmp.write_text(json.dumps(cdr.fields()))
            tmp.rename(self.spool_dir / f"{name}.json")
            return Written.SPOOLED
        except OSError as exc:
            self.last_error = f"spool: {exc}"
            return Written.LOST

    def spooled(self) -> list[Path]:
        try:
            return sorted(self.spool_dir.glob("*.json"))
        except OSError:
            return []

    def drain(self, limit: int = 500) -> tuple[int, int]:
        """Write spooled records in order; stops at the first Redis failure.
        Returns (records written or found already there, records left)."""
        files = self.spooled()
        done = 0
        if not files or not self.available():
            return 0, len(files)
        for path in files[:limit]:
            try:
                cdr = Cdr.from_fields(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError):
                path.rename(path.with_suffix(".bad"))  # kept for a human, never retried
                continue
            try:
                self._send(cdr)
            except STORE_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._paused_until = self._clock() + self.pause_s
                break
            path.unlink(missing_ok=True)
            done += 1
        return done, len(files) - done


# ----- reading (kemi-ha cdr) ---------------------------------------------------------------


def read_cdrs(
    conn: Any, start_ms: int, end_ms: int | None, batch: int = 1000
) -> Iterator[dict[str, str]]:
    """Records whose call ended in [start_ms, end_ms), in stream order. A record is added at or
    after its end (later when it waited in a spool), so the scan starts at start_ms's id."""
    cursor = f"{start_ms}-0"
    while True:
        entries = conn.xrange(STREAM, min=cursor, max="+", count=batch)
        for _entry_id, raw in entries:
            data = {text(k): text(v) for k, v in raw.items()}
            ended = int(data.get("end_ms", 0))
            if ended >= start_ms and (end_ms is None or ended < end_ms):
                yield {name: data.get(name, "") for name in COLUMNS}
        if len(entries) < batch:
            return
        cursor = "(" + text(entries[-1][0])


def text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def parse_time_ms(text: str) -> int:
    """Unix seconds, or ISO 8601 (a date, or date and time; UTC unless it names its zone)."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time (unix seconds or ISO 8601): {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def export(rows: Iterable[dict[str, str]], fmt: str, out: TextIO) -> int:
    """CSV (header = COLUMNS) or JSON lines; returns the number of records written."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    else:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
    return count
