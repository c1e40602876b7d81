"""Load generator, upstream responder and side-by-side harness for measuring metamesh vs Envoy.

See benchmarks/README.md. Not part of the installed package: run the scripts from the repository.
"""
