"""ocf:kemi-ha:rtpengine reads `rtpengine-ctl list sessions own` to know when every call is in
its own DB before it flushes the old owner's. rtpengine 12.x changed that listing: the agent,
reading nothing, flushed the old copies at once ("sync: 0 own calls") on Debian 13."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "deploy" / "ocf" / "rtpengine"

# The printf formats of daemon/cli.c's `list sessions`, filled as rtpengine fills them.
LISTING_10_5 = (
    "callid: {cid:>60} | deletionmark:   no | created:  1796650303 | proxy:10.96.0.11:2223 "
    "| redis_keyspace:{db} | foreign:no\n"
)
LISTING_12_5 = (
    "ID: {cid:>60} | del:n | creat:  1796650303 | prx:10.96.0.11:2223 | redis:{db:>2} "
    "| frgn:n | rec:n\n"
)
CALLS = {"a84b4c76e66710@pc33.example.org": 18, "1-2345@10.0.0.1": 17, "x": -1, "yy": 3}


def agent_function(name: str) -> str:
    """The function's text as the agent has it (up to its closing brace at column 0)."""
    match = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", AGENT.read_text(), re.M | re.S)
    assert match, f"{name}() not found in {AGENT}"
    return match.group(0)


def own_calls(listing: str) -> tuple[int, dict[str, int]]:
    """The agent's own_calls on `listing`: its status and the calls it read."""
    script = f"{agent_function('own_calls')}own_calls <<'EOF'\n{listing}EOF\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    calls = {cid: int(db) for cid, db in (line.split() for line in out.stdout.splitlines())}
    return out.returncode, calls


@pytest.mark.parametrize("line", [LISTING_10_5, LISTING_12_5], ids=["rtpengine-10.5", "12.x"])
def test_own_calls_reads_the_listing_of_each_rtpengine(line: str) -> None:
    listing = "".join(line.format(cid=cid, db=db) for cid, db in CALLS.items())
    assert own_calls(listing) == (0, CALLS)


def test_no_call_is_read_from_a_listing_without_calls() -> None:
    assert own_calls("No own sessions on this media relay.\n") == (0, {})


@pytest.mark.parametrize(
    "listing",
    [
        "",  # rtpengine-ctl answered nothing
        "Connection refused\n",
        "CALL: abc | deleted:no | created:1796650303 | redis_db:18\n",  # a format to come
        LISTING_12_5.format(cid="abc", db="x"),
    ],
    ids=["no-answer", "error", "unknown-format", "no-db"],
)
def test_a_listing_it_cannot_read_is_never_no_call(listing: str) -> None:
    """The sync after a promote flushes the old owner's DB once no own call is left outside
    the own DB: an unread listing must fail, not read as empty."""
    status, _calls = own_calls(listing)
    assert status != 0
