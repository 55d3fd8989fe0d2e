"""Embedded-model load time: cold (parse + dequantise the GGUF, write the safetensors cache) vs warm (cache).

Usage: ``python benchmarks/load_time.py [--cache-dir DIR] [--device cpu]``. Without ``--cache-dir`` a fresh
temporary cache is used, so the first load is truly cold. Both loads run in this process after transformers
is imported, so import time is counted in neither.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a fresh temporary directory)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch  # imported up front so neither timing includes it
    import transformers  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)

    from fst_env.models import embedded_gguf_path, gguf_cache_entry, is_cache_entry, load_policy

    with tempfile.TemporaryDirectory(prefix="fst-load-") as tmp:
        cache = args.cache_dir or tmp
        entry = gguf_cache_entry(embedded_gguf_path(), Path(cache))
        if is_cache_entry(entry):
            raise SystemExit(f"{entry} already exists: the cold load would be warm; pass an empty --cache-dir")
        start = time.perf_counter()
        load_policy("embedded", device=args.device, cache_dir=cache)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        policy = load_policy("embedded", device=args.device, cache_dir=cache)
        warm = time.perf_counter() - start
    print(f"model: {policy.name} ({sum(p.numel() for p in policy.model.parameters()) / 1e6:.1f} M params) "
          f"on {policy.device}, {policy.dtype}")
    print(f"cold (GGUF -> safetensors cache): {cold:6.2f} s")
    print(f"warm (safetensors cache):         {warm:6.2f} s")
    print(f"ratio cold / warm:                {cold / warm:6.1f} x")


if __name__ == "__main__":
    main()
