# kemi-ha: the two commands are `make run` and `make test` (as root on Debian 12/13).
# Both install what is missing first: Debian packages and a venv made from
# Debian's /usr/bin/python3 (the interpreter Kamailio embeds), whatever python3 PATH finds.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
KEMI_HA := $(VENV)/bin/kemi-ha
RUN_DIR ?= run
APT_PACKAGES := kamailio kamailio-python3-modules kamailio-extra-modules kamailio-redis-modules \
	rtpengine-daemon redis-server sip-tester python3-venv iproute2 procps iputils-arping \
	pacemaker corosync crmsh resource-agents libxml2-utils tshark rtpengine-utils iptables \
	corosync-qdevice corosync-qnetd fence-agents kamailio-tls-modules openssl
PYTEST_ARGS ?=

.PHONY: run test unit integration lint deps venv api-list schema bench bench-cpu bench-cache drill drill-all clean
NODES ?= 2
SCENARIO ?= power-off
LINKS ?= 1
TRANSIENT ?= 0
CALLS ?= 10
PROFILE ?= tuned
REPEAT ?= 1

run: deps venv
	$(KEMI_HA) run --run-dir $(RUN_DIR)

test: deps venv lint
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q tests/unit

integration: deps venv
	$(PY) -m pytest -q -rs tests/integration

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Debian packages: installed only when one is missing (no network otherwise).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# A venv made by another Python (pyenv, conda, a Debian upgrade 3.11 -> 3.13) holds packages
# Kamailio's embedded Python cannot load: rebuilt when its base prefix or version is not
# /usr/bin/python3's. (A make recipe cannot drop a prerequisite it has already judged, hence
# the check in venv's recipe and the sub-make.)
PYID := import sys; print(sys.base_prefix, *sys.version_info[:2])
venv:
	@if [ "$$(/usr/bin/python3 -I -c '$(PYID)')" != "$$(env -u PYTHONHOME $(PY) -c '$(PYID)' 2>/dev/null)" ]; then \
		if [ -e $(VENV) ]; then echo "$(VENV) was not made by /usr/bin/python3 (see $(VENV)/pyvenv.cfg): rebuilding"; fi; \
		rm -rf $(VENV); \
	fi
	@$(MAKE) --no-print-directory $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Failover drill: NODES nodes under Corosync+Pacemaker in namespaces, installed from what
# `kemi-ha render` wrote; one node powered off per run (each in turn), calls on every VIP.
drill: deps venv
	$(PY) -m kemi.lab drill --nodes $(NODES) --calls $(CALLS) --profile $(PROFILE) --repeat $(REPEAT) \
		--scenario $(SCENARIO) --links $(LINKS) --transient $(TRANSIENT)

# Every scenario at sizes CI has no time for (~50 min, 500 calls for the power-off): writes docs/drill-all.md.
drill-all: deps venv
	$(PY) -m kemi.lab drill-all --out docs/drill-all.md

# Refresh the KEMI export list the fake KSR is built from (starts a throwaway Kamailio).
api-list: deps venv
	$(KEMI_HA) api-list tests/fakes/kemi_api.json

bench: deps venv
	$(PY) bench/decide_bench.py
	$(PY) bench/cdr_write.py
	$(PY) bench/dmq_lag.py 100
	$(PY) bench/flood_setup.py
	$(PY) bench/routes_bench.py

# Kamailio CPU per call, kemi-ha vs bench/native.cfg (issue 18), in a network namespace of its
# own (loopback, make run's ports): ~25 min (5 pairs). BENCH_CPU_ARGS e.g. "--pairs 3 --ramp ''".
BENCH_NETNS ?= khw-cpu-bench
BENCH_CPU_ARGS ?=
bench-cpu: deps venv
	@created=; if ! ip netns list | grep -qw '$(BENCH_NETNS)'; then \
		ip netns add $(BENCH_NETNS) && created=1; fi; \
	ip -n $(BENCH_NETNS) link set lo up; \
	ip netns exec $(BENCH_NETNS) $(PY) bench/cpu_bench.py $(BENCH_CPU_ARGS); rc=$$?; \
	if [ -n "$$created" ]; then ip netns del $(BENCH_NETNS); fi; exit $$rc

# Cache misses of the routes per call from cold caches, simulated by cachegrind (issue 18):
# deterministic, for before/after comparisons `make bench-cpu` is too noisy to make (~3 min).
bench-cache: venv
	@command -v valgrind >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind; }
	$(PY) bench/routes_cachegrind.py

clean:
	rm -rf $(VENV) $(RUN_DIR) *.egg-info .pytest_cache .ruff_cache
