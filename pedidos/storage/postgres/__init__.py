"""The PostgreSQL backend: many servers (nodes) sharing one database.

`sql` holds every statement but the schema's, `schema` the tables and their
migration, `rows` a row as the contract's order, `settings` what every
connection is (libpq defaults, session settings, time limits), `link` the
connections that survive a database restart, `intake` the group commit of new
orders, `nodes` the leases that tell live nodes from dead ones, `agreement` the
options every node must share, `listen` and `hints` the LISTEN/NOTIFY hints,
`worker` a worker process's claim and finish, and `backend` ties them behind
the storage interface (storage/base.py). psycopg 3 is an optional extra: nothing outside
this package imports it, and importing this package itself does not.
"""
