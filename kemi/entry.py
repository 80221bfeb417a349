"""The script app_python3 loads (modparam "load"): builds the Router Kamailio calls.

Kamailio runs mod_init() once in its main process, before forking the workers, so the policy
is read and compiled here, once, never on the message path. The policy path and the other
node values come from the environment the launcher (kemi-ha run) sets.
"""

from __future__ import annotations

import os

import KSR  # type: ignore[import-not-found]  # provided by app_python3 inside Kamailio

from kemi.policyfile import load_policy
from kemi.shell import log as kamailio_log
from kemi.shell.routes import Router

POLICY_ENV = "KEMI_HA_POLICY"


def mod_init() -> Router:
    kamailio_log.install(KSR)
    policy = load_policy(os.environ[POLICY_ENV])
    return Router(KSR, lambda: policy)
