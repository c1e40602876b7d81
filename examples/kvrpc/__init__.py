"""KV-RPC, the example protocol: see kvrpc_codec.py."""
