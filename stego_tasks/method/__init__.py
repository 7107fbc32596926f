"""STEGO's method, arrays in and arrays out: backbone, head, loss, probes, metrics, the model's files."""
