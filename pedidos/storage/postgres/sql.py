"""Every SQL statement of the PostgreSQL backend.

Times come from the database's clock (`statement_timestamp()`,
`clock_timestamp()`), never a node's: leases are compared across hosts, and
one clock cannot disagree with itself.

The claim token is `intento`, bumped by every claim: a worker's `finish`
names the ids *and* the `intento` it claimed, so a row handed back (or taken
again elsewhere) since then is not overwritten.
"""

from __future__ import annotations

NEW_CHANNEL = "pedidos_nuevos"  # a hint: there are new pending orders
DONE_CHANNEL = "pedidos_fin"  # a hint: these ids (comma-separated) reached a final state
MAX_PAYLOAD_IDS = 500  # beyond this a DONE hint carries no ids: "look again at every waiter"

# `resultado` as its JSON text, passed on unparsed (domain.RawJSON): jsonb's
# text is always valid JSON, on one line.
COLUMNS = (
    "id, cliente, productos, direccion, referencia, estado, fecha_recibido, fecha_inicio, "
    "fecha_fin, worker, intentos, fallos, resultado::text, error, reintentar_despues, nodo"
)

# --- intake -------------------------------------------------------------------------

# A batch arrives as one JSON document, an array of {"c": cliente, "p":
# productos, "d": direccion, "r": referencia, "o": propietario}: one
# json.dumps costs the node less than half the CPU of five arrays adapted value
# by value. Rows are taken in input order (ORDINALITY), so that identity
# values are drawn in that order too: the ids RETURNED, sorted, belong to
# the inserted orders in order.
_BATCH = """ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (c text, p jsonb, d text, r text, o text))
         WITH ORDINALITY AS t(c, p, d, r, o, n)"""
INSERT = f"""
WITH inserted AS (
    INSERT INTO pedidos (cliente, productos, direccion, referencia, propietario, estado, fecha_recibido)
    SELECT c, p, d, r, o, 'pendiente', statement_timestamp()
    FROM {_BATCH}
    ORDER BY n
    RETURNING id
)
SELECT array_agg(id ORDER BY id) FROM inserted
"""
# (A batch without referencias cannot conflict. Its ids come back as one
# array, already sorted: one value for the driver to load instead of a row per
# order.)
# A batch carrying referencias, in one statement (one round trip): the rows
# already stored with them (`stored`, read in the statement's snapshot) and
# the insert of the rest, each referencia's first order only, so that a
# referencia already stored draws no id. Inserted rows come back as
# (true, id, referencia), stored ones as (false, id, referencia, estado,
# cliente, productos, direccion, propietario). A row another transaction
# committed after the snapshot is met by ON CONFLICT alone: the caller looks
# it up with BY_REFERENCIA.
INSERT_WITH_REFERENCIAS = f"""
WITH input AS (
    SELECT c, p, d, r, o, n, row_number() OVER (PARTITION BY r ORDER BY n) AS k
    FROM {_BATCH}
), stored AS (
    SELECT id, referencia, estado, cliente, productos, direccion, propietario
    FROM pedidos WHERE referencia IN (SELECT r FROM input)
), inserted AS (
    INSERT INTO pedidos (cliente, productos, direccion, referencia, propietario, estado, fecha_recibido)
    SELECT c, p, d, r, o, 'pendiente', statement_timestamp()
    FROM input
    WHERE r IS NULL OR (k = 1 AND r NOT IN (SELECT referencia FROM stored))
    ORDER BY n
    ON CONFLICT (referencia) DO NOTHING
    RETURNING id, referencia
)
SELECT true, id, referencia, NULL, NULL, NULL::jsonb, NULL, NULL FROM inserted
UNION ALL
SELECT false, id, referencia, estado, cliente, productos, direccion, propietario FROM stored
"""
BY_REFERENCIA = (
    "SELECT referencia, id, estado, cliente, productos, direccion, propietario "
    "FROM pedidos WHERE referencia = ANY(%s)"
)

# --- reads and commands -----------------------------------------------------------------

GET = f"SELECT {COLUMNS} FROM pedidos WHERE id = %s"
GET_OWNED = f"SELECT {COLUMNS} FROM pedidos WHERE id = %s AND propietario = %s"
BY_REF = f"SELECT {COLUMNS} FROM pedidos WHERE referencia = %s"
BY_REF_OWNED = f"SELECT {COLUMNS} FROM pedidos WHERE referencia = %s AND propietario = %s"
COUNTS = "SELECT estado, count(*) FROM pedidos GROUP BY estado"
# A pending order may be taken now: no retry waits, or its time has come.
_DUE = "(reintentar_despues IS NULL OR reintentar_despues <= clock_timestamp())"
PENDING_IDS = (
    f"SELECT id FROM pedidos WHERE estado = 'pendiente' AND {_DUE} AND id >= %s ORDER BY id LIMIT %s"
)
# A cancelled order waits for no retry: its `reintentar_despues` is cleared.
CANCEL = (
    "UPDATE pedidos SET estado = 'cancelado', reintentar_despues = NULL "
    f"WHERE id = %s AND estado = 'pendiente' RETURNING {COLUMNS}"
)
CANCEL_OWNED = (
    "UPDATE pedidos SET estado = 'cancelado', reintentar_despues = NULL "
    f"WHERE id = %s AND estado = 'pendiente' AND propietario = %s RETURNING {COLUMNS}"
)
# `reintentar`: a `fallido` order back to `pendiente` with a fresh set of
# attempts; its last `error` stays until an attempt replaces it.
_RETRY = """
UPDATE pedidos SET estado = 'pendiente', intentos = 0, fallos = 0, reintentar_despues = NULL,
    fecha_inicio = NULL, fecha_fin = NULL, worker = NULL, nodo = NULL, resultado = NULL
WHERE id = %s AND estado = 'fallido'"""
RETRY = f"{_RETRY} RETURNING {COLUMNS}"
RETRY_OWNED = f"{_RETRY} AND propietario = %s RETURNING {COLUMNS}"

# --- processing ----------------------------------------------------------------------

# One statement: lock what is still pending among the ids (skipping rows
# another node is locking), and only while this node's lease is valid: a node
# declared dead (paused, cut off) cannot take work even if its workers run on.
CLAIM = f"""
UPDATE pedidos p
SET estado = 'en proceso', nodo = %(nodo)s, worker = %(worker)s,
    fecha_inicio = statement_timestamp(), intento = p.intento + 1, reintentar_despues = NULL
FROM (
    SELECT id FROM pedidos
    WHERE id = ANY(%(ids)s) AND estado = 'pendiente' AND {_DUE}
      AND EXISTS (SELECT 1 FROM nodos
                  WHERE nodo = %(nodo)s AND token = %(token)s AND vence > clock_timestamp())
    ORDER BY id
    FOR UPDATE SKIP LOCKED
) c
WHERE p.id = c.id
RETURNING p.id, p.intento, p.fecha_inicio
"""
# A claim whose answer was lost (the connection broke around its commit) may
# have taken rows: the worker, which holds nothing else between two chunks,
# puts back whatever this node's worker of that number still holds.
UNCLAIM = """
UPDATE pedidos SET estado = 'pendiente', nodo = NULL, worker = NULL, fecha_inicio = NULL
WHERE estado = 'en proceso' AND nodo = %s AND worker = %s
RETURNING id
"""
FINISH = """
UPDATE pedidos p SET estado = 'listo', fecha_fin = statement_timestamp(),
    resultado = c.resultado, reintentar_despues = NULL
FROM unnest(%s::bigint[], %s::bigint[], %s::jsonb[]) AS c(id, intento, resultado)
WHERE p.id = c.id AND p.intento = c.intento AND p.estado = 'en proceso'
RETURNING p.id, p.fecha_fin
"""
# After a FINISH whose answer was lost (the connection broke around its
# commit), and FINISH once more: every order of the claim that is `listo`
# under this very claim token, each with its own `fecha_fin`. Only then:
# `listo` under this token can only be this worker's own finish, but asking
# costs every finish a second statement. A statement of its own, not a CTE
# beside the FINISH: the first FINISH may still be alive on the server and
# commit while the second waits for its row locks, and only a later
# statement's snapshot sees what it wrote.
FINISHED = """
SELECT p.id, p.fecha_fin FROM pedidos p, unnest(%s::bigint[], %s::bigint[]) AS c(id, intento)
WHERE p.id = c.id AND p.intento = c.intento AND p.estado = 'listo'
"""
# A failed attempt: `intentos` and `fallos` + 1, `error` recorded; back to
# `pendiente` until %(retry_at)s, or (retry_at NULL) `fallido`, keeping who
# held it and since when, as after crashes.
_FAIL_SET = """
    intentos = p.intentos + 1, fallos = p.fallos + 1, error = %(error)s,
    reintentar_despues = %(retry_at)s::timestamptz,
    estado = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN 'fallido' ELSE 'pendiente' END,
    nodo = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN p.nodo END,
    worker = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN p.worker END,
    fecha_inicio = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN p.fecha_inicio END
"""
# From the worker: the claim token of each order, as FINISH.
FAIL = f"""
UPDATE pedidos p SET {_FAIL_SET}
FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS c(id, intento)
WHERE p.id = c.id AND p.intento = c.intento AND p.estado = 'en proceso'
RETURNING p.id, p.estado
"""
# From the server, for a worker it stopped: the claim is this node's worker
# with the claim's `fecha_inicio`, which a later claim would have replaced.
FAIL_STOPPED = f"""
UPDATE pedidos p SET {_FAIL_SET}
WHERE p.id = ANY(%(ids)s) AND p.estado = 'en proceso' AND p.nodo = %(nodo)s
  AND p.worker = %(worker)s AND p.fecha_inicio = %(at)s::timestamptz
RETURNING p.id, p.estado
"""

# What handing back does to a row; %(cuenta)s is 1 when the attempt ended by
# a crash (it counts), 0 at a graceful stop. The last counted attempt makes
# the order `fallido`, keeping who held it, with %(crash)s as its `error`;
# failures of the task (`fallos`) have their own limit, so only
# `intentos - fallos` counts toward this one.
_LAST = "p.intentos + %(cuenta)s - p.fallos >= %(max)s"
_HAND_BACK_SET = f"""
    intentos = p.intentos + %(cuenta)s,
    estado = CASE WHEN {_LAST} THEN 'fallido' ELSE 'pendiente' END,
    nodo = CASE WHEN {_LAST} THEN p.nodo END,
    worker = CASE WHEN {_LAST} THEN p.worker END,
    fecha_inicio = CASE WHEN {_LAST} THEN p.fecha_inicio END,
    error = CASE WHEN {_LAST} THEN %(crash)s ELSE p.error END
"""
# This node's orders in process: of one worker, or (worker NULL) of all.
HAND_BACK = f"""
UPDATE pedidos p SET {_HAND_BACK_SET}
WHERE p.estado = 'en proceso' AND p.nodo = %(nodo)s
  AND (%(worker)s::integer IS NULL OR p.worker = %(worker)s)
RETURNING p.id, p.estado
"""
# Other nodes whose lease ran out: forget them and hand back what they held,
# and what any node that is no longer registered still holds. Safe when two
# nodes run it at once: the row locks make each order change once (the second
# skips locked rows, and sees the others no longer `en proceso`).
# Only while the reaper's own lease holds (see also nodes.py), only if this
# statement did not wait (for a lock on `nodos`) longer than %(fresh)s
# seconds, and only rows it can lock now. When something held every node's
# renewals up, each lease ran out alike, and a reap that had waited with them
# declared the others dead when the lock went, their renewals queued right
# behind it: a reap that waited decides nothing, the next one does. (Measured
# from the transaction's start, which is the statement's own in autocommit:
# `statement_timestamp()` is taken again at Bind and Execute, after the table
# locks that Parse waited for.)
REAP = f"""
WITH me AS (
    SELECT 1 FROM nodos WHERE nodo = %(nodo)s AND token = %(token)s AND vence > clock_timestamp()
      AND clock_timestamp() - transaction_timestamp() < make_interval(secs => %(fresh)s)
), dead AS (
    DELETE FROM nodos WHERE nodo IN (
        SELECT nodo FROM nodos
        WHERE vence < clock_timestamp() AND nodo <> %(nodo)s AND EXISTS (SELECT 1 FROM me)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING nodo
), orphans AS (
    SELECT p.id, p.nodo AS held_by FROM pedidos p
    WHERE p.estado = 'en proceso' AND p.nodo <> %(nodo)s AND EXISTS (SELECT 1 FROM me)
      AND (p.nodo IN (SELECT nodo FROM dead)
           OR NOT EXISTS (SELECT 1 FROM nodos n WHERE n.nodo = p.nodo))
    FOR UPDATE OF p SKIP LOCKED
), moved AS (
    UPDATE pedidos p SET {_HAND_BACK_SET}
    FROM orphans o WHERE p.id = o.id
    RETURNING p.id, p.estado, o.held_by
)
SELECT nodo, NULL::bigint, NULL::text FROM dead
UNION ALL
SELECT held_by, id, estado FROM moved
"""

# --- nodes ------------------------------------------------------------------------------

_LEASE = "clock_timestamp() + make_interval(secs => %(lease)s)"
# Take the name unless a live node holds it; a row whose lease ran out, ours
# (same token), or a dead process of this same host (by pid) may be replaced.
REGISTER = f"""
INSERT INTO nodos AS n (nodo, host, pid, token, iniciado, visto, vence, workers, conexiones, ajustes)
VALUES (%(nodo)s, %(host)s, %(pid)s, %(token)s, clock_timestamp(), clock_timestamp(), {_LEASE}, 0, 0,
        %(ajustes)s)
ON CONFLICT (nodo) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, token = EXCLUDED.token,
    iniciado = EXCLUDED.iniciado, visto = EXCLUDED.visto, vence = EXCLUDED.vence,
    ajustes = EXCLUDED.ajustes
WHERE n.vence < clock_timestamp() OR n.token = EXCLUDED.token
   OR (n.host = EXCLUDED.host AND n.pid = %(stale_pid)s)
RETURNING n.token
"""
# Starting nodes take their names and compare their options one at a time
# (nodes.py: Nodes.register), the lock held until the transaction ends; a node
# paused or cut off in the middle must not hold every other start up until
# TCP gives its connection up (hours): its session ends after 5 s idle.
JOIN_LOCK = "SELECT pg_advisory_xact_lock(7311014002)"  # next to schema.SCHEMA_LOCK's key
JOIN_IDLE = "SET LOCAL idle_in_transaction_session_timeout = '5s'"
HOLDER = "SELECT host, pid, vence > clock_timestamp() FROM nodos WHERE nodo = %s"
# The other live nodes' processing options (NULL: a node of a version that did not publish them).
OTHERS_AJUSTES = """
SELECT nodo, host, pid, ajustes, extract(epoch FROM clock_timestamp() - visto)::float8 FROM nodos
WHERE nodo <> %s AND vence > clock_timestamp() AND ajustes IS NOT NULL ORDER BY nodo
"""
RENEW = f"""
UPDATE nodos SET visto = clock_timestamp(), vence = {_LEASE},
    workers = %(workers)s, conexiones = %(conexiones)s
WHERE nodo = %(nodo)s AND token = %(token)s
RETURNING 1
"""
LEAVE = "DELETE FROM nodos WHERE nodo = %s AND token = %s"
LIVE_NODES = """
SELECT n.nodo, n.workers, n.conexiones, n.visto,
       (SELECT count(*) FROM pedidos p WHERE p.estado = 'en proceso' AND p.nodo = n.nodo)
FROM nodos n WHERE n.vence > clock_timestamp() ORDER BY n.nodo
"""
