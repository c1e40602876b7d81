"""Schema models of the static proxy YAML config, one module per resource kind (see
:mod:`metamesh.proxy.config_yaml`, the loader that uses them)."""
