"""The local stack: moto server, gateway, runtimes and agents as processes on 127.0.0.1."""
