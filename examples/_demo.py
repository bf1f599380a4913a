"""Run the examples `make demo` shows: a few at a time, each one's output printed in order.

    python examples/_demo.py SCRIPT[:ARG,ARG...] ...

Most examples spend their time waiting (timeouts, grace periods), so six run at once; each
script's output is printed whole, under a ``[i/N]`` header, as soon as it and the ones before
it have finished. Exits with the first failing script's status, after printing its output.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
AT_ONCE = 6


def run(spec: str) -> tuple[list[str], int, str, float]:
    name, _, args = spec.partition(":")
    argv = [f"examples/{name}.py", *(a for a in args.split(",") if a)]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return argv, proc.returncode, proc.stdout, time.perf_counter() - started


def main() -> int:
    specs = sys.argv[1:]
    started = time.perf_counter()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        futures = [pool.submit(run, spec) for spec in specs]
        for i, future in enumerate(futures, 1):
            argv, code, output, took = future.result()
            print(f"\n===== [{i}/{len(specs)}] {' '.join(argv)}  ({took:.1f} s)", flush=True)
            print(output, end="", flush=True)
            if code != 0:
                print(f"===== {argv[0]} failed with exit status {code}", flush=True)
                for other in futures:
                    other.cancel()
                return code
    print(f"\n===== {len(specs)} examples in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
