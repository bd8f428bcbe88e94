"""Node configuration: defaults every phone accepts, and secrets kept private."""

import os
import socket
import stat

import pytest

from actors.config import ConfigError, load_config, parse_config
from loadtest.harness import NodeProcess
from store.files import InsecureFileError, check_private, create_private, write_private

MINIMAL = {"node": {"id": "n1"}, "sip": {"domain": "example.test"}}


def test_challenges_offer_md5_only_by_default():
    # Debian 12's baresip rejects a whole 401 when any challenge is not MD5.
    assert parse_config(MINIMAL).auth_algorithms == ["MD5"]
    sha = parse_config({**MINIMAL, "auth": {"algorithms": ["SHA-256", "MD5"]}})
    assert sha.auth_algorithms == ["SHA-256", "MD5"]


def test_a_real_node_challenges_with_one_md5_header(tmp_path):
    node = NodeProcess(str(tmp_path)).start()
    try:
        msg = (
            b"REGISTER sip:example.test SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKmd5only;rport\r\n"
            b"From: <sip:alice@example.test>;tag=1\r\nTo: <sip:alice@example.test>\r\n"
            b"Call-ID: md5only\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            b"Contact: <sip:alice@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(msg, (node.address, node.port))
            reply = s.recv(65535).decode()
    finally:
        node.stop()
    assert reply.startswith("SIP/2.0 401")
    challenges = [line for line in reply.split("\r\n") if line.startswith("WWW-Authenticate")]
    assert len(challenges) == 1 and "algorithm=MD5" in challenges[0]


def test_private_files_are_owner_only(tmp_path):
    path = str(tmp_path / "secret")
    write_private(path, "s3cret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    check_private(path, "secret")
    os.chmod(path, 0o644)
    with pytest.raises(InsecureFileError, match="chmod 600"):
        check_private(path, "secret")
    write_private(path, "again")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    db = str(tmp_path / "x.db")
    create_private(db)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_world_readable_config_with_secrets_is_refused(tmp_path):
    node = NodeProcess(str(tmp_path))
    assert stat.S_IMODE(os.stat(node.config).st_mode) == 0o600
    load_config(node.config)
    os.chmod(node.config, 0o644)
    with pytest.raises(ConfigError, match="other users of this host can read it"):
        load_config(node.config)
    out = node.run_cli("user", "add", "zed", "--password", "zed-secret")
    assert out.returncode == 2 and "chmod 600" in out.stderr
    assert "00" * 32 not in out.stderr, "the secret itself is never printed"


def test_store_creates_sqlite_files_private(tmp_path):
    node = NodeProcess(str(tmp_path))
    out = node.run_cli("user", "add", "zed", "--password", "zed-secret")
    assert out.returncode == 0, out.stderr
    for name in os.listdir(node.dir):
        if name.startswith("tandem.db"):
            mode = stat.S_IMODE(os.stat(os.path.join(node.dir, name)).st_mode)
            assert mode == 0o600, f"{name} has mode {mode:04o}"


def test_security_defaults_and_bad_values_refused():
    cfg = parse_config(MINIMAL)
    assert (cfg.require_qop, cfg.max_failures, cfg.ban_time, cfg.ban_response) == (
        True,
        10,
        600.0,
        "403",
    )
    assert (cfg.udp_rate, cfg.udp_burst, cfg.tcp_max_per_source) == (200.0, 400, 32)
    for section, key, bad in (
        ("auth", "ban_response", "teapot"),
        ("auth", "max_failures", -1),
        ("auth", "require_qop", "yes"),
        ("auth", "ban_time", "long"),
        ("limits", "udp_rate", -5),
        ("limits", "max_message_size", 100),
        ("limits", "nonsense", 1),
    ):
        with pytest.raises(ConfigError):
            parse_config({**MINIMAL, section: {key: bad}})


def test_dialogs_settings_default_and_bad_values_refused():
    cfg = parse_config(MINIMAL)
    assert (cfg.record_route, cfg.max_dialogs, cfg.probe_timeout) == ("", 100_000, 4.0)
    cfg = parse_config({**MINIMAL, "dialogs": {"record_route": "example.test:5060", "max_age": 60}})
    assert (cfg.record_route, cfg.dialog_max_age) == ("example.test:5060", 60)
    from actors.config import cluster_addresses
    from sipcore.uri import parse_uri

    assert cluster_addresses(cfg).points_here(parse_uri("sip:example.test:5060"))
    for key, bad in (
        ("record_route", "<sip:x>"),
        ("record_route", "a;lr"),
        ("record_route", "x" * 300),
        ("record_route", 5),
        ("max_dialogs", -1),
        ("probe_timeout", "soon"),
        ("nonsense", 1),
    ):
        with pytest.raises(ConfigError):
            parse_config({**MINIMAL, "dialogs": {key: bad}})


def test_nat_handling_defaults_to_auto_and_takes_three_values():
    assert parse_config(MINIMAL).nat_handling == "auto"
    for mode in ("auto", "always", "never"):
        assert (
            parse_config(
                {**MINIMAL, "sip": {**MINIMAL.get("sip", {}), "nat_handling": mode}}
            ).nat_handling
            == mode
        )
    with pytest.raises(ConfigError, match="nat_handling takes one of auto, always, never"):
        parse_config({**MINIMAL, "sip": {**MINIMAL.get("sip", {}), "nat_handling": "yes"}})


def test_keepalive_interval_is_off_by_default_and_refuses_a_bad_value():
    assert parse_config(MINIMAL).keepalive_interval == 0
    assert parse_config({**MINIMAL, "nat": {"keepalive_interval": 25}}).keepalive_interval == 25
    for bad in (-1, "25", True):
        with pytest.raises(ConfigError, match="keepalive_interval"):
            parse_config({**MINIMAL, "nat": {"keepalive_interval": bad}})
