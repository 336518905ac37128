"""The seed team's baseline: Flask under gunicorn (2 workers) computing the
same top-20 with numpy from the same recsys model files, and appending one
CSV line per answer. Routes users to the models like the shipped 1:1
config would (a split by user id; the cost is what matters here).

Environment: RECSYS_BENCH_MODELS (comma-separated model files),
RECSYS_BENCH_LOG (CSV log path).
"""
import json
import os
import time

import numpy as np
from flask import Flask, Response

DTYPES = {"f32": np.float32, "u32": np.uint32, "u64": np.uint64}


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    nl = raw.index(b"\n")
    magic, version, hlen = raw[:nl].split(b" ")
    assert magic == b"RECSYS-MODEL" and version == b"1"
    hlen = int(hlen)
    header = json.loads(raw[nl + 1 : nl + 1 + hlen])
    body = raw[nl + 1 + hlen + 1 :]
    sections, off = {}, 0
    for s in header["body"]["sections"]:
        dt = DTYPES[s["dtype"]]
        n = int(s["len"])
        sections[s["name"]] = np.frombuffer(body, dtype=dt, count=n, offset=off)
        off += n * np.dtype(dt).itemsize
    k = int(header["factors"])
    n_items = int(header["n_items"])
    counts = sections["item_counts"].astype(np.int64)
    popular = sorted(range(n_items), key=lambda i: (-counts[i], i))[:20]
    return {
        "name": os.path.basename(path).rsplit(".", 1)[0],
        "names": header["item_names"],
        "uindex": {u: i for i, u in enumerate(header["user_ids"])},
        "users": sections["user_factors"].reshape(-1, k) if k else None,
        "items": sections["item_factors"].reshape(-1, k) if k else None,
        "offsets": sections["seen_offsets"].astype(np.int64),
        "seen": sections["seen_items"].astype(np.int64),
        "popular": popular,
    }


MODELS = [load(p) for p in os.environ["RECSYS_BENCH_MODELS"].split(",")]
LOG = open(os.environ["RECSYS_BENCH_LOG"], "a")
app = Flask(__name__)


@app.route("/recommend/<uid>")
def recommend(uid):
    start = time.perf_counter()
    if not uid.isdigit():
        return Response("bad user id\n", status=400, mimetype="text/plain")
    u = int(uid)
    m = MODELS[u % len(MODELS)]
    idx = m["uindex"].get(u)
    if idx is None or m["users"] is None:
        items = m["popular"]
    else:
        scores = m["items"] @ m["users"][idx]
        scores[m["seen"][m["offsets"][idx] : m["offsets"][idx + 1]]] = -np.inf
        top = np.argpartition(-scores, 20)[:20]
        items = top[np.argsort(-scores[top], kind="stable")]
    body = ",".join(m["names"][i] for i in items)
    ms = (time.perf_counter() - start) * 1000
    LOG.write(f"{time.time():.3f},{u},{m['name']},200,{ms:.3f},{body.replace(',', ';')}\n")
    LOG.flush()
    return Response(body, mimetype="text/plain")
