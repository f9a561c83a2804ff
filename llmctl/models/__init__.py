"""Models: Hub metadata, verified downloads, the store and lockfile, the GGUF header reader."""
