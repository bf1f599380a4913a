"""Record what each example prints, for the docs' examples page (docs/example_output/).

    .venv/bin/python tests/record_example_outputs.py [SCRIPT ...]

Each script runs with the arguments its entry in ``test_examples.CHECKS`` gives, as the tests run
it. ``test_examples.test_recorded_output_passes_the_checks`` applies the same checks to the
recorded file, so a recorded output that no longer matches what the script prints fails the
tests: the page never shows a stale copy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_examples import CHECKS, EXAMPLES, OUTPUTS


def record(script: str) -> None:
    expect = CHECKS[script]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *expect.args],
        capture_output=True,
        text=True,
        timeout=expect.timeout,
        check=True,
    )
    command = " ".join(["python", f"examples/{script}", *expect.args])
    (OUTPUTS / f"{Path(script).stem}.txt").write_text(f"$ {command}\n{proc.stdout}")
    print(f"recorded {script}")  # noqa: T201 - a command-line tool


if __name__ == "__main__":
    OUTPUTS.mkdir(exist_ok=True)
    for name in sys.argv[1:] or sorted(CHECKS):
        record(name)
