"""asyncio runtime: sockets, timers and the admin server around the sans-IO proxy core."""
