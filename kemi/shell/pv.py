"""Reading PVs as text, safe for any bytes a peer can put in a SIP message.

app_python3 (Kamailio 5.6.3) turns a string PV into Python with a strict UTF-8 decode: when
the bytes are not UTF-8, KSR.pv.get, gete, getw and getvs all raise UnicodeDecodeError inside
the route (measured: an R-URI user b"1\\xff00" raised from every one of them). The
transformation $(pv{s.encode.hexa}) always comes back as ASCII hex.

Policy (the one place it is decided):
- a value that is valid UTF-8 is returned as it is (the common case: one KSR call);
- a value that is not is read again through the hexa transformation and decoded with
  backslashreplace: an ASCII-safe str (loggable, never raising again), marked Garbled so that
  a route can refuse it (400) where the grammar allows no such bytes;
- an unset PV ($null) is "".
"""

from __future__ import annotations

from typing import Any


class Garbled(str):
    """A PV value whose bytes were not UTF-8 (decoded with backslashreplace)."""

    __slots__ = ()


def hexa_name(name: str) -> str:
    """'$rU' -> '$(rU{s.encode.hexa})': the same PV through the hexa transformation."""
    return f"$({name[1:]}{{s.encode.hexa}})"


class Pv:
    """Text reads of PVs for one KSR; built once per process."""

    __slots__ = ("ksr",)

    def __init__(self, ksr: Any) -> None:
        self.ksr = ksr

    def text(self, name: str) -> str:
        try:
            value = self.ksr.pv.get(name)
        except UnicodeDecodeError:
            return Garbled(self.raw(name).decode("utf-8", "backslashreplace"))
        return "" if value is None else str(value)

    def number(self, name: str) -> int:
        """An integer PV (ours: counters, profile sizes); 0 when unset or not a number."""
        text = self.text(name)
        return int(text) if text.isascii() and text.isdigit() else 0

    def raw(self, name: str) -> bytes:
        """The bytes of a PV, whatever they are ("" for $null or a bad hexa answer)."""
        hexa = self.ksr.pv.get(hexa_name(name))
        try:
            return bytes.fromhex(str(hexa or ""))
        except ValueError:
            return b""
