"""Add N synthetic logged requests to a lineage.db (one segment, the
served row and items of a real logged request), in one transaction, with
time-ordered UUIDv7-shaped ids like the server's."""
import sqlite3
import sys

db, n = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(db)
served, items = conn.execute("SELECT served, items FROM requests LIMIT 1").fetchone()
if n <= 0:
    (count,) = conn.execute("SELECT count(*) FROM requests").fetchone()
    print(conn.execute("SELECT id FROM requests LIMIT 1 OFFSET ?", (count // 2,)).fetchone()[0])
    sys.exit(0)
conn.execute("BEGIN")
conn.execute(
    "INSERT OR IGNORE INTO segments(name, host, opened) VALUES ('seg-bench-synthetic', 'bench', 0)"
)
seg = conn.execute("SELECT id FROM segments WHERE name = 'seg-bench-synthetic'").fetchone()[0]
conn.execute(
    """WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
       INSERT INTO requests(id, time, user, served, route, status, latency_us, items, segment)
       SELECT printf('%08x-%04x-7%03x-8%03x-%012x', 1600000000 + x / 65536, x % 65536, x % 4096,
                     (x * 7) % 4096, (x * 2654435761) % 281474976710656),
              1600000000000 + x * 10, 1 + x % 943, ?, 'rules[0] ab split[0]', 'ok', 900, ?, ?
       FROM c""",
    (n, served, items, seg),
)
conn.commit()
mid = n // 2
print(
    "%08x-%04x-7%03x-8%03x-%012x"
    % (1600000000 + mid // 65536, mid % 65536, mid % 4096, (mid * 7) % 4096, (mid * 2654435761) % 281474976710656)
)
