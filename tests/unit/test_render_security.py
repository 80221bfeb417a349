"""Issue 17 part 4 in the render output: Redis locked (private binds, password from the file
the cluster names, protected mode), the password only where it must be, control sockets on
private addresses only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kemi.core.structure import SpecError
from kemi.ops.render import load_cluster, load_node_config, render
from kemi.policyfile import parse_policy
from tests.cluster_files import EXAMPLE, cluster_file, example, password
from tests.unit.test_render import assert_refused_at_its_line


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    render(example(tmp_path / "in"), out)
    return out


def test_redis_binds_loopback_its_node_and_the_redis_vip_with_a_password(
    rendered: Path, tmp_path: Path
) -> None:
    secret = password(tmp_path / "in")
    for i in (1, 2):
        conf = (rendered / f"node{i}" / "redis.conf").read_text().splitlines()
        assert f"bind 127.0.0.1 10.99.1.{i} 10.99.1.100" in conf
        assert "protected-mode yes" in conf and "0.0.0.0" not in "\n".join(conf)
        assert f"requirepass {secret}" in conf  # ocf:heartbeat:redis reads it here too
        assert f"masterauth {secret}" in conf  # a replica authenticates to the master


def test_the_password_is_only_in_the_files_that_need_it_with_tight_modes(
    rendered: Path, tmp_path: Path
) -> None:
    secret = password(tmp_path / "in")
    holders = {}
    for path in rendered.rglob("*"):
        if path.is_file() and secret in path.read_text():
            holders[str(path.relative_to(rendered))] = path.stat().st_mode & 0o777
    expected = {}
    for node in ("node1", "node2"):
        expected[f"{node}/redis.conf"] = 0o640
        expected[f"{node}/redis.pass"] = 0o600
        for vip in ("10.99.1.101", "10.99.1.102"):
            expected[f"{node}/rtpengine-{vip}.conf"] = 0o600
    assert holders == expected


def test_rtpengine_reads_its_redis_urls_with_the_password_from_a_config_file(
    rendered: Path, tmp_path: Path
) -> None:
    secret = password(tmp_path / "in")
    conf = (rendered / "node2" / "rtpengine-10.99.1.101.conf").read_text()
    assert f"redis = {secret}@127.0.0.1:6379/18\n" in conf
    assert f"redis-write = {secret}@10.99.1.100:6379/18\n" in conf
    env = (rendered / "node2" / "rtpengine-10.99.1.101.env").read_text()
    assert "CONFIG_FILE=/etc/kemi-ha/rtpengine-10.99.1.101.conf\n" in env
    assert "--redis" not in env.split("OPTIONS=")[1] and "--listen-ng=127.0.0.1:" in env
    cib = (rendered / "cib.xml").read_text()
    assert 'name="redis_password_file" value="/etc/kemi-ha/redis.pass"' in cib
    assert cib.count('name="redis_password_file"') == 2  # one per VIP's rtpengine


def test_the_cluster_file_stays_loadable_without_its_password(tmp_path: Path) -> None:
    """Only render reads the password file: validation and tooling do not need the secret."""
    assert load_cluster(EXAMPLE).redis.password_file == "redis.pass"


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (None, 0o600, "cannot read"),
        ("s3cret-but-long-enough\n", 0o644, "readable by others \\(mode 644\\): chmod 600"),
        ("short\n", 0o600, "one line of 16 to 256 characters"),
        ("has spaces in the password\n", 0o600, "one line of 16 to 256"),
        ("pass@word:with/url-chars\n", 0o600, "one line of 16 to 256"),
        ("0123456789abcdef\nsecond line\n", 0o600, "one line of 16 to 256"),
    ],
)
def test_a_bad_password_file_is_refused_at_its_line(
    tmp_path: Path, content: str | None, mode: int, message: str
) -> None:
    cluster = cluster_file(tmp_path, EXAMPLE.read_text())
    secret = tmp_path / "redis.pass"
    secret.unlink()
    if content is not None:
        secret.write_text(content)
        os.chmod(secret, mode)
    line = next(i for i, ln in enumerate(cluster.read_text().splitlines(), 1)
                if "password_file" in ln and not ln.startswith("#"))  # fmt: skip
    with pytest.raises(SpecError, match=message) as info:
        render(cluster, tmp_path / "out")
    assert all(m.startswith(f"{cluster}:{line}:") for m in info.value.messages)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("address: 10.99.1.2,", "address: 9.9.9.2,"), "9.9.9.2 is a public address"),
        (("vip: 10.99.1.100,", "vip: 9.9.9.100,"), "9.9.9.100 is a public address"),
        (("vip: 10.99.1.100,", "vip: 10.99.1.101,"), "must differ"),  # Redis on a SIP VIP
    ],
)
def test_dmq_and_redis_on_a_public_or_sip_address_are_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert_refused_at_its_line(EXAMPLE.read_text(), change, message, tmp_path / "c.yaml",
                               load_cluster)  # fmt: skip


def test_a_public_sip_vip_is_fine(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("address: 10.99.1.101,", "address: 203.0.113.10,")
    render(cluster_file(tmp_path, text), tmp_path / "out")
    assert "listen=udp:203.0.113.10:5060" in (tmp_path / "out/node1/kemi-ha-node.cfg").read_text()


@pytest.mark.parametrize(
    "socket",
    ["udp:9.9.9.5:2223", "udp:rtp.example.net:2223", "udp:0.0.0.0:2223"],
)
def test_an_ng_socket_off_private_addresses_is_refused(socket: str) -> None:
    text = f"version: x\nvips:\n  - {{address: 10.0.0.1, rtpengine: ['{socket}']}}\n"
    text += "routes: [{name: r, destinations: ['sip:10.0.0.9']}]\n"
    with pytest.raises(SpecError, match="ng has no authentication") as info:
        parse_policy(text, "p.yaml")
    assert info.value.messages[0].startswith("p.yaml:3:")


def test_a_node_yaml_with_dmq_on_a_public_address_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(example(tmp_path / "in"), out)
    text = (out / "node1" / "node.yaml").read_text()
    change = ("node_address: 10.99.1.1", "node_address: 9.9.9.1")
    assert_refused_at_its_line(text, change, "DMQ listens here", tmp_path / "node.yaml",
                               load_node_config)  # fmt: skip
