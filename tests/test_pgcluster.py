"""The PostgreSQL fixture itself: a real server, databases of the test's own."""

import psycopg


def test_each_test_gets_an_empty_database_of_its_own(pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0].startswith("pedidos_test_")
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_cluster_of_its_own_stops_and_starts_again(pg_cluster):
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    pid = pg_cluster.pid
    pg_cluster.halt()
    try:
        psycopg.connect(pg_cluster.url(), connect_timeout=2).close()
        raise AssertionError("connected to a stopped cluster")
    except psycopg.OperationalError:
        pass
    pg_cluster.boot()
    assert pg_cluster.pid != pid
    with psycopg.connect(pg_cluster.url()) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_machine_without_postgresql_fails_the_tests_with_what_to_do(monkeypatch):
    import pgcluster
    import pytest

    monkeypatch.setattr(pgcluster.glob, "glob", lambda pattern: [])
    with pytest.raises(pgcluster.PostgresMissing, match="bash scripts/test"):
        pgcluster.bin_dir()
