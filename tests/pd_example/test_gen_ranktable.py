"""pd_example/gen_ranktable.sh against a fake hccn_tool (no Ascend hardware needed)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from free_ports import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "pd_example" / "gen_ranktable.sh"

FAKE_HCCN_TOOL = """#!/bin/sh
# Fake hccn_tool: `hccn_tool -i DEV -ip -g` prints the device's IP as the real one does.
if [ "$1" = "-i" ] && [ "$3" = "-ip" ] && [ "$4" = "-g" ]; then
    echo "ipaddr:10.0.0.$2"
    echo "netmask:255.255.255.0"
    exit 0
fi
echo "fake hccn_tool: unexpected arguments $*" >&2
exit 1
"""



@pytest.fixture
def fake_hccn(tmp_path) -> str:
    tool = tmp_path / "hccn_tool"
    tool.write_text(FAKE_HCCN_TOOL)
    tool.chmod(0o755)
    return str(tool)


def run(args, env_extra=None, timeout=60):
    env = dict(os.environ)
    env.pop("HCCN_TOOL", None)
    env.pop("NODE_IP", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_writes_the_table_for_one_node(tmp_path, fake_hccn):
    out = tmp_path / "ranktable.json"
    result = run(["--ips", "127.0.0.1", "--npus-per-node", "8", "--network-card-name", "eth0",
                  "--prefill-device-cnt", "4", "--decode-device-cnt", "4",
                  "--output", str(out)],
                 {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert table["version"] == "1.2"
    assert table["server_count"] == "1"
    assert table["status"] == "completed"
    prefill, decode = table["prefill_device_list"], table["decode_device_list"]
    assert [d["device_id"] for d in prefill] == ["0", "1", "2", "3"]
    assert [d["device_id"] for d in decode] == ["4", "5", "6", "7"]
    for entry in prefill + decode:
        assert set(entry) == {"server_id", "device_id", "device_ip", "cluster_id", "rank_id"}
        assert entry["server_id"] == "127.0.0.1"
        assert entry["device_ip"] == f"10.0.0.{entry['device_id']}"
        assert all(isinstance(value, str) for value in entry.values())
    assert [d["cluster_id"] for d in prefill + decode] == [str(i) for i in range(1, 9)]
    assert [d["rank_id"] for d in prefill] == ["0", "1", "2", "3"]
    assert [d["rank_id"] for d in decode] == ["0", "1", "2", "3"]


def test_uneven_split_leaves_the_rest_out(tmp_path, fake_hccn):
    out = tmp_path / "rt.json"
    result = run(["--ips", "127.0.0.1", "--npus-per-node", "8", "--prefill-device-cnt", "2",
                  "--decode-device-cnt", "3", "--output", str(out)],
                 {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert [d["device_id"] for d in table["prefill_device_list"]] == ["0", "1"]
    assert [d["device_id"] for d in table["decode_device_list"]] == ["2", "3", "4"]
    assert [d["cluster_id"] for d in table["decode_device_list"]] == ["3", "4", "5"]
    assert [d["rank_id"] for d in table["decode_device_list"]] == ["0", "1", "2"]


def test_local_device_ids(tmp_path, fake_hccn):
    out = tmp_path / "rt.json"
    result = run(["--ips", "127.0.0.1", "--local-device-ids", "4-5,7", "--prefill-device-cnt",
                  "1", "--decode-device-cnt", "2", "--output", str(out)],
                 {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    table = json.loads(out.read_text())
    assert [(d["device_id"], d["device_ip"]) for d in table["prefill_device_list"]] == [
        ("4", "10.0.0.4")]
    assert [d["device_id"] for d in table["decode_device_list"]] == ["5", "7"]


def test_two_nodes_over_loopback(tmp_path, fake_hccn):
    """Node 0 (127.0.0.1) collects node 1 (127.0.0.2); both write the same table."""
    port = str(free_port())
    common = ["--ips", "127.0.0.1", "127.0.0.2", "--npus-per-node", "2",
              "--prefill-device-cnt", "2", "--decode-device-cnt", "2", "--port", port,
              "--timeout", "60"]
    env = dict(os.environ, HCCN_TOOL=fake_hccn)
    node1 = subprocess.Popen(["bash", str(SCRIPT), *common, "--output", str(tmp_path / "b.json")],
                             env=dict(env, NODE_IP="127.0.0.2"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        node0 = run([*common, "--output", str(tmp_path / "a.json")],
                    {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"}, timeout=90)
        out1, err1 = node1.communicate(timeout=90)
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, err1
    table = json.loads((tmp_path / "a.json").read_text())
    assert json.loads((tmp_path / "b.json").read_text()) == table
    assert table["server_count"] == "2"
    assert [(d["server_id"], d["device_id"]) for d in table["prefill_device_list"]] == [
        ("127.0.0.1", "0"), ("127.0.0.1", "1")]
    assert [(d["server_id"], d["device_id"], d["cluster_id"], d["rank_id"])
            for d in table["decode_device_list"]] == [
        ("127.0.0.2", "0", "3", "0"), ("127.0.0.2", "1", "4", "1")]


def test_node_ip_from_the_network_card(tmp_path, fake_hccn):
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command")
    out = tmp_path / "rt.json"
    result = run(["--ips", "127.0.0.1", "--npus-per-node", "2", "--network-card-name", "lo",
                  "--prefill-device-cnt", "1", "--decode-device-cnt", "1", "--output", str(out)],
                 {"HCCN_TOOL": fake_hccn})
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["prefill_device_list"][0]["server_id"] == "127.0.0.1"


def test_missing_hccn_tool_named_by_env(tmp_path):
    result = run(["--ips", "127.0.0.1", "--prefill-device-cnt", "1", "--decode-device-cnt", "1",
                  "--output", str(tmp_path / "rt.json")],
                 {"HCCN_TOOL": str(tmp_path / "no_such_hccn_tool"), "NODE_IP": "127.0.0.1"})
    assert result.returncode == 1
    assert "hccn_tool" in result.stderr and "not an executable" in result.stderr
    assert not (tmp_path / "rt.json").exists()


def test_missing_hccn_tool_on_this_host(tmp_path):
    if (shutil.which("hccn_tool") or os.path.exists("/usr/local/Ascend/driver/tools/hccn_tool")
            or os.path.exists("/usr/bin/hccn_tool")):
        pytest.skip("this host has an hccn_tool")
    result = run(["--ips", "127.0.0.1", "--network-card-name", "lo", "--prefill-device-cnt",
                  "1", "--decode-device-cnt", "1", "--output", str(tmp_path / "rt.json")])
    assert result.returncode == 1
    assert "hccn_tool not found" in result.stderr
    assert "Ascend" in result.stderr
    assert not (tmp_path / "rt.json").exists()


def test_hccn_tool_without_ipaddr(tmp_path):
    tool = tmp_path / "hccn_tool"
    tool.write_text("#!/bin/sh\necho 'link status: UP'\n")
    tool.chmod(0o755)
    result = run(["--ips", "127.0.0.1", "--npus-per-node", "2", "--prefill-device-cnt", "1",
                  "--decode-device-cnt", "1", "--output", str(tmp_path / "rt.json")],
                 {"HCCN_TOOL": str(tool), "NODE_IP": "127.0.0.1"})
    assert result.returncode == 1
    assert "no ipaddr" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--prefill-device-cnt", "1", "--decode-device-cnt", "1"], "--ips needs at least one"),
    (["--ips", "127.0.0.1", "--decode-device-cnt", "1"], "--prefill-device-cnt is required"),
    (["--ips", "127.0.0.1", "--prefill-device-cnt", "1"], "--decode-device-cnt is required"),
    (["--ips", "127.0.0.1", "--prefill-device-cnt", "x", "--decode-device-cnt", "1"],
     "must be a whole number"),
    (["--ips", "127.0.0.1", "--prefill-device-cnt", "0", "--decode-device-cnt", "1"],
     "must be at least 1"),
    (["--ips", "127.0.0.1", "--npus-per-node", "4", "--prefill-device-cnt", "3",
      "--decode-device-cnt", "2"], "more than the 4 devices"),
    (["--ips", "300.1.1.1", "--prefill-device-cnt", "1", "--decode-device-cnt", "1"],
     "not an IPv4 address"),
    (["--ips", "127.0.0.1", "127.0.0.1", "--prefill-device-cnt", "1", "--decode-device-cnt",
      "1"], "appears twice"),
    (["--ips", "127.0.0.1", "--prefill-device-cnt", "1", "--decode-device-cnt", "1",
      "--output"], "--output needs a value"),
    (["--ips", "127.0.0.1", "--local-device-ids", "a-b", "--prefill-device-cnt", "1",
      "--decode-device-cnt", "1"], "bad --local-device-ids"),
])
def test_bad_flags(tmp_path, fake_hccn, args, message):
    result = run(args, {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "--help" in result.stderr


def test_network_card_required_without_node_ip(fake_hccn):
    result = run(["--ips", "127.0.0.1", "--prefill-device-cnt", "1", "--decode-device-cnt", "1"],
                 {"HCCN_TOOL": fake_hccn})
    assert result.returncode == 2
    assert "--network-card-name is required" in result.stderr


def test_this_node_not_in_ips(tmp_path, fake_hccn):
    result = run(["--ips", "127.0.0.5", "--prefill-device-cnt", "1", "--decode-device-cnt", "1",
                  "--output", str(tmp_path / "rt.json")],
                 {"HCCN_TOOL": fake_hccn, "NODE_IP": "127.0.0.1"})
    assert result.returncode == 1
    assert "127.0.0.1" in result.stderr and "not among --ips" in result.stderr


def test_help():
    result = run(["--help"])
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "--prefill-device-cnt" in result.stdout
    assert "HCCN_TOOL" in result.stdout and "NODE_IP" in result.stdout
