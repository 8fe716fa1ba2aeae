"""replay-proxy: record HTTP traffic to vcrpy cassettes and replay it offline, through mitmproxy."""

__version__ = "0.1.0"
