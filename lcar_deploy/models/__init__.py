"""The networks: backbone registry, heads, the exportable model, safe loading of weight files."""
