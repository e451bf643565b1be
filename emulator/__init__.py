"""A pure-Python emulator of an artifact manager's OCI store.

It keeps metadata in SQLite with the tables and columns of the artifact
manager's PostgreSQL schema, and blobs in a filesystem blob store keyed the
same way, so ocilayout can be tested and benchmarked without a registry or a
database server.
"""
