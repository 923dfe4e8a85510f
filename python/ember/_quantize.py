"""sentence-transformers' ``quantize_embeddings``, with its exact rules, on numpy arrays."""

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize_embeddings(embeddings, precision, ranges=None, calibration_embeddings=None):
    """Float embeddings ``[n, dim]`` to ``precision``:

    - ``int8`` / ``uint8``: each dimension's range (``ranges``, ``[2, dim]`` minima then maxima;
      else the minima and maxima of ``calibration_embeddings``; else of ``embeddings``) cut into
      255 steps; ``uint8`` is the step index, ``int8`` the index minus 128;
    - ``ubinary``: the sign bits (> 0) packed 8 to a byte, ``binary`` the same bytes minus 128 as
      int8 (so that Hamming distance is preserved by signed storage);
    - ``float32``: unchanged values as float32.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise ValueError("Embeddings to quantize must be float rather than int8 or uint8.")
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if precision in ("int8", "uint8"):
        if ranges is None:
            source = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings)
            ranges = np.vstack((np.min(source, axis=0), np.max(source, axis=0)))
        ranges = np.asarray(ranges)
        starts = ranges[0, :]
        steps = (ranges[1, :] - ranges[0, :]) / 255
        if precision == "uint8":
            return ((embeddings - starts) / steps).astype(np.uint8)
        return ((embeddings - starts) / steps - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(embeddings > 0).reshape(embeddings.shape[0], -1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(embeddings > 0).reshape(embeddings.shape[0], -1)
    raise ValueError(f"Precision {precision!r} is not supported (one of {', '.join(PRECISIONS)})")
