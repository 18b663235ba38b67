"""The emulator: virtual nodes and networks built on reserved pnodes (Distem, rebuilt)."""
