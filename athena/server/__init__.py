"""The server: HTTP and WebSocket APIs (native and ComfyUI-compatible), the durable job store, security and workers."""
