#!/usr/bin/env python3
"""Regenerate cases.json: malformed configurations and environments for
wg-cni, each with the CNI error code it must be answered with.

    python3 wg-cni/tests/malformed/generate.py > wg-cni/tests/malformed/cases.json
"""
import copy
import json

KEY = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E="
PEER = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0="
BASE = {"cniVersion": "1.0.0", "name": "wg", "type": "wg-cni", "address": "10.13.13.210/24",
        "privateKey": KEY, "stateDir": "/tmp/wgcni-malformed",
        "peers": [{"endpoint": "192.0.2.1:51820", "publicKey": PEER,
                   "allowedIPs": ["10.13.13.0/24"], "persistentKeepalive": "25s"}]}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/wgcni-none",
       "CNI_IFNAME": "eth0", "CNI_ARGS": ""}
cases = []


def case(name, code, env=None, stdin=None, conf=None):
    e = dict(ENV)
    e.update(env or {})
    e = {k: v for k, v in e.items() if v is not None}
    if stdin is None:
        stdin = json.dumps(conf if conf is not None else BASE)
    cases.append({"name": name, "env": e, "stdin": stdin, "code": code})


def field(path, value, code=7):
    conf = copy.deepcopy(BASE)
    target = conf
    parts = path.split(".")
    for p in parts[:-1]:
        target = target[int(p)] if p.isdigit() else target[p]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    case(f"{path}={json.dumps(value) if value is not DELETE else 'deleted'}", code, conf=conf)


DELETE = object()

# --- environment (code 4, 2 for unknown CNI_ARGS keys) ---
case("no CNI_COMMAND", 4, env={"CNI_COMMAND": None})
for c in ["", "add", "Add", "DELETE", "GET", "ADD ", " ADD", "RESET", "VERSIONS", "CHECK\n"]:
    case(f"CNI_COMMAND={c!r}", 4, env={"CNI_COMMAND": c})
for cmd in ["ADD", "DEL", "CHECK"]:
    case(f"{cmd} without CNI_CONTAINERID", 4, env={"CNI_COMMAND": cmd, "CNI_CONTAINERID": None})
    case(f"{cmd} with empty CNI_CONTAINERID", 4, env={"CNI_COMMAND": cmd, "CNI_CONTAINERID": ""})
    case(f"{cmd} without CNI_IFNAME", 4, env={"CNI_COMMAND": cmd, "CNI_IFNAME": None})
for cid in ["a/b", "a b", "../x", "c;d", "c$", "c\\d", "ü", "c:d", "c*"]:
    case(f"CNI_CONTAINERID={cid!r}", 4, env={"CNI_CONTAINERID": cid})
for ifn in ["", "a-very-long-interface-name", "eth/0", "eth:0", "eth 0", ".", "..", "abcdefghijklmnop"]:
    case(f"CNI_IFNAME={ifn!r}", 4, env={"CNI_IFNAME": ifn})
for cmd in ["ADD", "CHECK"]:
    case(f"{cmd} without CNI_NETNS", 4, env={"CNI_COMMAND": cmd, "CNI_NETNS": None})
for args in ["novalue", "=x", "K8S_POD_NAME", ";=;", "a=b;c"]:
    case(f"CNI_ARGS={args!r}", 4, env={"CNI_ARGS": args})
for args in ["FOO=bar", "K8S_POD_NAME=x;FOO=1", "IgnoreUnknown=0;FOO=1", "IgnoreUnknown=no;X=1"]:
    case(f"CNI_ARGS={args!r}", 2, env={"CNI_ARGS": args})

# --- decoding (code 6) ---
for s in ["", " ", "{", "}", "[", "[]", "[{}]", "null", "true", "42", "\"string\"", "{\"a\":}",
          "{\"cniVersion\": \"1.0.0\",}", "{'cniVersion': '1.0.0'}", "{\"cniVersion\": \"1.0.0\"", "\x00\x01\x02",
          "{\"a\": 1} trailing", "{\"a\": NaN}", "{\"a\": 1e999999}", "\ufeff{}x"]:
    case(f"stdin={s[:20]!r}", 6, stdin=s)
for prev in [[], "x", 5, True]:
    conf = copy.deepcopy(BASE)
    conf["prevResult"] = prev
    case(f"prevResult={json.dumps(prev)}", 6, conf=conf)

# --- versions (code 1; 7 when missing or not a string) ---
for v in ["0.1.0", "0.2.0", "0.3.0", "0.4.1", "1.0", "1.0.1", "1.2.0", "2.0.0", "", "latest", "v1.0.0"]:
    field("cniVersion", v, 1)
for v in [DELETE, 1, 1.0, None, ["1.0.0"], {"v": "1.0.0"}]:
    field("cniVersion", v, 7)

# --- fields (code 7) ---
for v in [DELETE, "", "wg/1", "..", 5, None, ["wg"]]:
    if v is None or v is DELETE or v == "":
        field("name", v, 7)
    else:
        field("name", v, 7)
for v in ["10.13.13.210", "10.13.13.210/33", "10.13.13/24", "x/24", "10.13.13.210/-1", "fd00::1/129",
          "fd00::1", 5, ["10.0.0.1/24"], "10.13.13.210 /24", "10.13.13.256/24"]:
    field("address", v)
for v in ["10.0.0.1/24", [5], ["10.0.0.1"], ["10.0.0.1/24", "bad"], [None], {"a": 1}, [["10.0.0.1/24"]]]:
    field("addresses", v)
for v in ["", "short", KEY[:-1], KEY + "=", KEY[:-2] + "F=", KEY.replace("/", "_"), " " * 44,
          "A" * 44, 5, [KEY], {"k": KEY}]:
    field("privateKey", v)
for v in ["relative/key", "key", 5, ["/k"]]:
    field("privateKeyFile", v)
conf = copy.deepcopy(BASE)
conf["privateKeyFile"] = "/etc/wg/key"
case("privateKey and privateKeyFile", 7, conf=conf)
for v in [DELETE, "", "short", PEER[:-1], "not base64 at all, no, not this one, no!!", 5, None]:
    field("peers.0.publicKey", v)
# (No case here may look like HOST:PORT with a valid port: it would be resolved.)
for v in ["1.2.3.4", "1.2.3.4:", ":51820", "1.2.3.4:70000", "1.2.3.4:-1", "[fd00::1]", "fd00::1:51820x",
          "1.2.3.4:port", 51820, ["1.2.3.4:1"], "[fd00::1]:", "1.2.3.4:51820x"]:
    field("peers.0.endpoint", v)
for v in ["10.0.0.0/24", ["10.0.0.0"], ["x"], [5], ["10.0.0.0/33"], [None], {"a": "b"}, ["fd00::/129"],
          ["10.0.0.0/24", "nope"], [["10.0.0.0/24"]]]:
    field("peers.0.allowedIPs", v)
for v in ["25", "25x", "s", "-5s", "1.5s", "1500ms", "70000s", "19h", 70000, -1, 2.5, [25], {"s": 25},
          "25 s", "1d"]:
    field("peers.0.persistentKeepalive", v)
for v in ["", "short", KEY[:-2] + "F=", 5, [KEY]]:
    field("peers.0.presharedKey", v)
for v in ["x", 5, {"a": 1}, [5], ["x"]]:
    field("peers", v)
conf = copy.deepcopy(BASE)
conf["peers"].append(copy.deepcopy(conf["peers"][0]))
case("duplicate peer", 7, conf=conf)
conf = copy.deepcopy(BASE)
conf["peers"][0]["publicKey"] = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0="
case("peer is our own key", 7, conf=conf)
for v in [-1, 65536, 70000, "x", "51820x", 1.5, [51820], True]:
    field("listenPort", v)
for v in [-1, 4294967296, "0xZZ", "x", 1.5, [1]]:
    field("fwmark", v)
for v in [0, 100, 575, 65536, "Auto", "max", -1, 1.5, [1400], True]:
    field("mtu", v)
for v in ["x", {"dst": "10.0.0.0/8"}, [5], [{}], [{"dst": "x"}], [{"dst": "10.0.0.0/8", "gw": "x"}],
          [{"dst": 5}], [{"gw": "10.0.0.1"}], [{"dst": "10.0.0.0/33"}], [{"dst": "10.0.0.0/8", "gw": 5}]]:
    field("routes", v)
for v in [0, -1, 4294967296, "x", 1.5]:
    field("table", v)
for v in ["pod", "Host", "", 5]:
    field("socketNamespace", v)
for v in ["", "a-very-long-interface-name", "wg/0", "wg 0", ".", 5, "wg:0", "abcdefghijklmnop"]:
    field("interfaceName", v)
for v in ["magic", "Kernel", "", 5]:
    field("backend", v)
for v in ["relative", "", 5, ["/x"]]:
    if v == "":
        continue
    field("stateDir", v)
for v in ["merge", "", 5]:
    field("chainedResult", v)
for v in ["yes", 1, None]:
    if v is None:
        continue
    field("allowInsecureKeyFile", v)
for v in ["no", 0]:
    field("routesFromAllowedIPs", v)

print(json.dumps(cases, indent=1, ensure_ascii=False))
