#!/usr/bin/env python3
"""Per-test verdicts from an `iscsi-test-cu -v` log: prints "passed failed skipped" and one
line per non-passing test on stderr.

A test fails if CUnit says so or if it logged a "[FAILED]" line, except the tests listed in
EXPECTS_FAILED_LINES whose bodies deliberately provoke failures through helpers that always
log "[FAILED]" (see tests/conformance-skips.md). A passing test that logged "[SKIPPED]" counts
as skipped. Lines printed by the suite's own set-up probes ("PERSISTENT RESERVE IN is not
implemented") belong to no test and are ignored, and so is what the suite's clean-up prints after
the last test's "passed" (its PERSISTENT RESERVE IN on a session that a test left with a pending
reset unit attention)."""
import re
import sys

EXPECTS_FAILED_LINES = {"iSCSIDataSnInvalid"}
PROBE = re.compile(r"\[SKIPPED\] PERSISTENT RESERVE IN is not implemented\.")

text = PROBE.sub("", open(sys.argv[1], errors="replace").read())
passed = failed = skipped = 0
starts = list(re.finditer(r"^\s+Test: (\S+) \.\.\.", text, re.M))
for i, m in enumerate(starts):
    end = starts[i + 1].start() if i + 1 < len(starts) else text.find("Run Summary:", m.end())
    body = text[m.end():end if end >= 0 else len(text)]
    name = m.group(1)
    # CUnit prints "passed" at the start of a line once the test is over; anything after it
    # before the next test is the suite's clean-up, not this test.
    verdict = re.search(r"^passed\b", body, re.M)
    if verdict:
        body = body[:verdict.start()]
    cunit_failed = re.search(r"(^|\.\.\.)FAILED\b|^\s*FAILED\b", body, re.M) is not None
    logged_failed = "[FAILED]" in body and name not in EXPECTS_FAILED_LINES
    if cunit_failed or logged_failed:
        failed += 1
        lines = [l.strip() for l in body.splitlines() if "[FAILED]" in l or re.match(r"\s+\d+\. ", l)]
        print(f"    FAILED {name}: " + " | ".join(lines[:4]), file=sys.stderr)
    elif "[SKIPPED]" in body:
        skipped += 1
        why = next(l.strip() for l in body.splitlines() if "[SKIPPED]" in l)
        print(f"    skipped {name}: {why}", file=sys.stderr)
    else:
        passed += 1
print(passed, failed, skipped)
