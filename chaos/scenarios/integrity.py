"""Whether an acknowledged write is really there: COMMITs lost on the way (commit-cut), and
a deliberately broken service that the checker must catch (broken-checker)."""

from __future__ import annotations

from chaos.bank import run_load
from chaos.harness import Harness, ScenarioResult
from chaos.proxy import ProxyMode
from chaos.scenarios.common import Options, committed_transfer_keys

COMMIT_CUT_EVERY = 3


async def commit_cut(db: str, options: Options) -> ScenarioResult:
    """Every third COMMIT is dropped by the proxy and its connection cut: the service may
    never answer 2xx for such a transfer, and its row must not exist."""
    # One attempt per transfer: a retry would make the transfer's fate depend on the next
    # COMMIT instead of the dropped one.
    load = {"clients": 16, "max_attempts": 1, "total_read_share": 0.1}
    async with Harness(
        "commit-cut", db, options.work_dir, load=load, progress=options.progress
    ) as harness:
        assert harness.proxy is not None
        harness.proxy.set_mode(ProxyMode.CUT_ON_COMMIT, commit_cut_every=COMMIT_CUT_EVERY)
        await run_load(harness.bank, options.duration_s)
        harness.proxy.set_mode(ProxyMode.PASS)
        dropped = harness.proxy.stats.commits_dropped
        harness.result.notes.append(f"{dropped} COMMITs dropped by the proxy")
        if dropped == 0:
            harness.result.violations.append("no COMMIT was dropped: the fault was not injected")
        await harness.settle()
        await harness.check(harness.settings.deadline_s)
        rows = await committed_transfer_keys(harness)
        committed_but_failed = [
            f"key={op.key[:12]} status={op.status}"
            for op in harness.log.operations
            if op.op == "transfer" and op.outcome == "unknown" and op.key in rows
        ]
        harness.result.add_violations(
            "request answered as failed but its row is committed", committed_but_failed
        )
        return harness.result


async def broken_checker(db: str, options: Options) -> ScenarioResult:
    """The ledger with an unlocked read-modify-write transfer (``chaos.broken_ledger``): the
    checker must report violations, so the scenario passes when it does."""
    async with Harness(
        "broken-checker",
        db,
        options.work_dir,
        use_proxy=False,
        module="chaos.broken_ledger",
        progress=options.progress,
    ) as harness:
        harness.result.expect_violations = True
        await run_load(harness.bank, options.duration_s)
        await harness.settle()
        await harness.check(harness.settings.deadline_s, server_state=False)
        return harness.result
