"""Number rewriting: pure functions on strings, decided per trunk and per route.

Rules (RewriteSpec in the policy, compiled into a Rewrite):
- the R-URI user goes through, in this order: `strip` (characters cut from the start, e.g.
  an access code), E.164 normalisation (`international_prefix` -> '+', `national_prefix` ->
  '+' country code; a user already starting with '+' is kept), the `plus` choice (keep or drop
  a leading '+'), `prefix` (e.g. a carrier's technical prefix);
- P-Asserted-Identity and Diversion are kept, removed, or normalised: the user part of the URI
  in the header value gets E.164 and `plus` only (strip and prefix are the trunk's dialling
  rules for the R-URI, not an identity);
- something that is not a number (a name, a user with letters) is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NUMBER = re.compile(r"^\+?[0-9]+$")
HeaderRule = Literal["keep", "remove", "normalise"]


@dataclass(frozen=True, slots=True)
class Rewrite:
    e164: bool = False
    country_code: str = ""
    national_prefix: str = "0"
    international_prefix: str = "00"
    strip_plus: bool = False
    strip: int = 0
    prefix: str = ""
    pai: HeaderRule = "keep"
    diversion: HeaderRule = "keep"

    @property
    def touches_headers(self) -> bool:
        return self.pai != "keep" or self.diversion != "keep"


def normalise(number: str, rw: Rewrite) -> str:
    """E.164 (when asked) then the `plus` choice; anything but a number is returned as it is."""
    if not NUMBER.match(number):
        return number
    if rw.e164 and not number.startswith("+"):
        intl, national = rw.international_prefix, rw.national_prefix
        if intl and number.startswith(intl):
            number = "+" + number[len(intl) :]
        elif national and number.startswith(national):
            number = f"+{rw.country_code}{number[len(national) :]}"
    if rw.strip_plus and number.startswith("+"):
        number = number[1:]
    return number


def rewrite_user(user: str, rw: Rewrite) -> str:
    """The R-URI user after this rewrite: strip, normalise, prefix."""
    if rw.strip:
        user = user[rw.strip :]
    return rw.prefix + normalise(user, rw)


_URI_USER = re.compile(r"(?P<scheme>sips?:|tel:)(?P<user>[^@;>\s]+)")


def rewrite_identity(value: str, rw: Rewrite) -> str:
    """A P-Asserted-Identity or Diversion value with the number of its URI normalised:
    '"A" <sip:030123@h>;x' -> '"A" <sip:+4930123@h>;x' (tel: URIs too)."""
    start = value.find("<")
    match = _URI_USER.search(value, start + 1 if start >= 0 else 0)
    if match is None:
        return value
    user = match.group("user")
    if match.group("scheme") != "tel:" and "@" not in value[match.end() : match.end() + 1]:
        return value  # a sip: URI without a user part: nothing to normalise
    new = normalise(user, rw)
    return value[: match.start("user")] + new + value[match.end("user") :]


def header_action(rules: tuple[Rewrite, ...], header: Literal["pai", "diversion"]) -> str:
    """What the rewrites of a call (trunk, then route) do to one header: 'remove' if one
    removes it (a removed header has nothing left to normalise), else 'normalise' if one
    normalises it, else 'keep'."""
    rules_of = {rw.pai if header == "pai" else rw.diversion for rw in rules}
    for action in ("remove", "normalise"):
        if action in rules_of:
            return action
    return "keep"


def split_values(value: str) -> list[str]:
    """A header value holding a comma-separated list, split outside quotes and <...>."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def rewrite_header(
    value: str, rules: tuple[Rewrite, ...], header: Literal["pai", "diversion"]
) -> str:
    """Normalise every entry of a header value through each rule that normalises that
    header, in order (trunk, then route)."""
    normalising = [
        rw for rw in rules if (rw.pai if header == "pai" else rw.diversion) == "normalise"
    ]
    entries = []
    for entry in split_values(value):
        for rw in normalising:
            entry = rewrite_identity(entry, rw)
        entries.append(entry)
    return ",".join(entries)
