"""The policy in force in one Kamailio process, and its hot reload.

A reload is asked once (HTTP POST /policy/reload, answered by one worker): that worker reads
and validates the file. Refused: the reasons are logged and counted once, the last good
policy stays. Accepted: what lives outside Python is brought in step first (`publish`: the
dispatcher's gateway list; refused there, the reload is refused), then the compiled policy is
written as a snapshot (atomic rename) and the shared generation `$shv(kha_policy_gen)` is
bumped. Every process compares that generation before each message and, when it moved,
swaps in the snapshot: one reference assignment, so a message sees the old or the new
policy, never a mix.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kemi.core.policy import Policy
from kemi.core.structure import SpecError

log = logging.getLogger("kemi.policy")

GEN_SHV = "kha_policy_gen"
VERSION_SHV = "kha_policy_version"  # for `kemi-ha status` (RPC pv.shvGet)


class PolicyHolder:
    def __init__(
        self,
        ksr: Any,
        policy_path: Path,
        snapshot_dir: Path,
        initial: Policy,
        load: Callable[[Path], Policy],
        on_reload: Callable[[bool], None] = lambda accepted: None,
        publish: Callable[[Policy, Policy], str | None] = lambda old, new: None,
    ) -> None:
        self.ksr = ksr
        self.policy_path = policy_path
        self.snapshot_dir = snapshot_dir
        self.policy = initial
        self.load = load  # file -> validated Policy; raises SpecError (kemi.policyfile)
        self.generation = 0
        self.on_reload = on_reload
        self.publish = publish  # (old, new) -> None, or why the new one cannot be used

    def current(self) -> Policy:
        """The policy for this message; picks up a newer generation first (hot path: one read)."""
        gen = self.ksr.pvx.shv_get(GEN_SHV)
        if gen != self.generation and isinstance(gen, int):
            self._swap(gen)
        return self.policy

    def _swap(self, gen: int) -> None:
        path = self.snapshot_path(gen)
        try:
            with open(path, "rb") as f:
                policy = pickle.load(f)
        except (OSError, pickle.PickleError, EOFError) as exc:
            log.error("policy generation %d: cannot read %s (%s); keeping %s",
                      gen, path, exc, self.policy.version)  # fmt: skip
            self.generation = gen  # do not retry on every message
            return
        self.policy, self.generation = policy, gen
        log.info("policy generation %d in force: version %s", gen, policy.version)

    def snapshot_path(self, gen: int) -> Path:
        return self.snapshot_dir / f"policy-{gen}.pickle"

    def reload(self) -> tuple[bool, list[str]]:
        """Validate the policy file; if good, publish it to every process."""
        self.current()  # this process may not have seen the last generation yet
        try:
            policy = self.load(self.policy_path)
        except SpecError as exc:
            log.error("policy reload refused, %s stays in force: %s",
                      self.policy.version, "; ".join(exc.messages))  # fmt: skip
            self.on_reload(False)
            return False, exc.messages
        problem = self.publish(self.policy, policy)
        if problem is not None:
            log.error("policy reload refused, %s stays in force: %s", self.policy.version, problem)
            self.on_reload(False)
            return False, [problem]
        current = self.ksr.pvx.shv_get(GEN_SHV)
        gen = (current if isinstance(current, int) else 0) + 1
        tmp = self.snapshot_dir / f".policy-{gen}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(policy, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.rename(self.snapshot_path(gen))
        self.ksr.pvx.shv_sets(VERSION_SHV, policy.version)
        self.ksr.pvx.shv_seti(GEN_SHV, gen)
        self.on_reload(True)
        log.info("policy reload accepted: version %s is generation %d", policy.version, gen)
        return True, [f"version {policy.version} accepted as generation {gen}"]
