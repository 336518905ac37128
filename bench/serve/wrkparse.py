"""Parse wrk's --latency output into JSON: rps, p99 (ms), non-2xx, socket errors."""
import json
import re
import sys

text = sys.stdin.read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * unit[m.group(2)] if m else None


out = {"rps": None, "p99_ms": None, "p50_ms": None, "non_2xx": 0, "socket_errors": 0, "requests": None}
m = re.search(r"Requests/sec:\s+([\d.]+)", text)
out["rps"] = float(m.group(1)) if m else None
m = re.search(r"(\d+) requests in", text)
out["requests"] = int(m.group(1)) if m else None
for pct, key in (("99", "p99_ms"), ("50", "p50_ms")):
    m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, text, re.M)
    out[key] = ms(m.group(1)) if m else None
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
out["non_2xx"] = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
print(json.dumps(out))
