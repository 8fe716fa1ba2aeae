"""``replay-proxy check`` (validate scenario files) and ``replay-proxy schema`` (print their JSON Schema)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.scenario import schema
from proxy.scenario.loader import check_scenarios

EXIT_OK = 0
EXIT_INVALID = 2


def check_main(paths: Sequence[Path]) -> int:
    """Validate ``paths``: 0 and ``ok: N scenario files valid`` on stdout, or 2 with one line per problem
    (``file:line:column: message``) on stderr and a summary on stdout."""
    loaded, problems = check_scenarios(paths)
    if not problems:
        n = len(loaded)
        print(f"ok: {n} scenario file{'' if n == 1 else 's'} valid", flush=True)
        return EXIT_OK
    for file_problems in problems:
        for line in file_problems:
            print(line, file=sys.stderr)
    sys.stderr.flush()
    count = sum(len(p) for p in problems)
    print(
        f"invalid: {count} problem{'' if count == 1 else 's'} in {len(problems)} of {len(paths)} "
        f"scenario file{'' if len(paths) == 1 else 's'}",
        flush=True,
    )
    return EXIT_INVALID


def schema_text() -> str:
    """The JSON Schema of scenario files, as shipped in scenarios/scenario.schema.json."""
    return json.dumps(schema.json_schema(), indent=2) + "\n"
