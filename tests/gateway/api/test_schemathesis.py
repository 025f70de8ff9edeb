"""Schemathesis (a third-party OpenAPI fuzzer) against the live management API.

The server is the real admin listener (``build_listeners``) on a loopback port over the
session's Valkey, with the bootstrapped admin's token; Schemathesis runs as a subprocess
(its own warnings stay out of this process's ``filterwarnings = error``), bounded in
examples per operation and in wall time. It checks that nothing answers 5xx, that every
status is documented, every body matches its schema and every request the document calls
invalid is refused (issue 9, item 2). It authenticates with a stand-in secret that the
test's :class:`RenewingAdmin` swaps for a live admin token, since the fuzzer revokes and
regenerates whatever tokens it finds, its own included.

``DELETE /v1/tokens`` is left out: it deletes the caller's own tokens, the admin token
the run authenticates with included, and everything after would be a 401.
``tests/gateway/api/test_routes.py`` covers it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from patgate.gateway.settings import Settings

from ._live import FUZZ_SECRET, live_api

#: the checks the run enforces (``schemathesis run --checks``).
CHECKS = (
    "not_a_server_error",
    # what the document says is invalid must be refused: it is no stricter than the code
    "negative_data_rejection",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 25
MAX_TIME = 45  # seconds of fuzzing; the whole test stays well under a minute and a half


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:  # pragma: no cover - the test extra installs it
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return [exe]


@pytest.mark.anyio
@pytest.mark.timeout(110)
async def test_schemathesis_finds_nothing(settings: Settings, tmp_path: Path) -> None:
    command = _schemathesis()
    async with live_api(settings.evolve(durable_writes=False)) as api:
        args = [
            *command,
            "run",
            f"{api.url}/v1/openapi.json",
            "--url",
            api.url,
            "--header",
            f"Authorization: Bearer {FUZZ_SECRET}",
            "--checks",
            ",".join(CHECKS),
            "--exclude-name",
            "DELETE /v1/tokens",
            "--generation-database",
            "none",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(MAX_TIME),
            "--seed",
            "9",
            # One worker: CPython 3.11's ast.parse is not thread-safe and Schemathesis
            # builds code there ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--report",
            "ndjson",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), MAX_TIME + 45)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        elapsed = time.monotonic() - started
    text = out.decode(errors="replace")
    print(text)  # shown by pytest -s, or with the failure
    assert proc.returncode == 0, text[-12_000:]
    assert elapsed < MAX_TIME + 40, f"schemathesis took {elapsed:.0f} s"
    # It really ran: every operation but the excluded one, and many cases.
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", text)
    tested = re.search(r"Tested:\s+(\d+)", text)
    generated = re.search(r"(\d+) generated", text)
    assert selected is not None, text[-4_000:]
    assert tested is not None, text[-4_000:]
    assert generated is not None, text[-4_000:]
    assert int(selected[1]) == int(selected[2]) - 1 == int(tested[1]), text[-4_000:]
    assert int(generated[1]) >= 500, text[-4_000:]
