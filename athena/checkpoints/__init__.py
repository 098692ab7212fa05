"""Checkpoint I/O: safetensors, safe pickles, layout and family detection, key maps, load and convert."""
