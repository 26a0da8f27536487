"""Per-page error isolation: a page that makes a stage raise fails alone, with its reason.

Ray Data runs with `max_errored_blocks=0`, so an exception escaping a stage fails the whole
run, and with it every innocent page (and every source) that shared the run. Every stage
therefore hands its per-page work to this module instead of writing its own try/except:

  * `run_page` for stages that work page by page (clean, chunk): the page's function runs,
    an exception becomes that page's failure reason, the loop goes on;
  * `bisect` for stages that do a whole batch in one call (embed: one model call for all
    the batch's texts; write and skip-unchanged: one transaction or query per batch): when
    the batch call raises, it is called again on each half, and so on, until the page that
    raises is alone; that page is failed and every other page comes out as if nothing happened.

What counts as a whole-batch outage (the database unreachable) is not a page's fault: the
caller says which exceptions are one (`outage`, a predicate: for the database,
`db.is_outage`, which reads the SQLSTATE) and those propagate as before. An error the stage
already expects from a page (clean's NoMainText) keeps its own message; anything else is an
internal error, reported as "internal error in <stage>: <Type>: <message>" and logged with
its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa

from pipelines import schema

log = logging.getLogger(__name__)

T = TypeVar("T")

# A failure reason is stored in website_pages.error: one page's reason, not an exception's
# whole repr (some quote kilobytes of the offending data).
MAX_REASON_CHARS = 1000
# Statuses a failure overrides: a page already failed keeps the reason it failed for first.
NOT_FAILED = (schema.PageStatus.COMPLETED, schema.PageStatus.UNCHANGED)


def failure_reason(stage: str, exc: BaseException, expected: bool = False) -> str:
    """What a page's error column says about `exc`: the message of an error the stage expects
    from some pages, else "internal error in <stage>: <Type>: <message>". PostgreSQL text
    holds no NUL, and the error column is stored, so a NUL in a message is spelled out; the
    reason is one line (PostgreSQL's messages add DETAIL and HINT lines)."""
    reason = str(exc) if expected else f"internal error in {stage}: {type(exc).__name__}: {exc}"
    reason = " ".join(reason.replace("\x00", "\\x00").split())
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason


def run_page(
    stage: str,
    url: str,
    work: Callable[..., T],
    /,
    *args: object,
    expected: tuple[type[Exception], ...] = (),
) -> tuple[T, None] | tuple[None, str]:
    """`work(*args)` for the page at `url`: (its result, None), or (None, the failure reason)
    when it raises an Exception. `expected` errors are a page's own (no main text) and keep
    their message; any other is an internal error, logged with its traceback."""
    try:
        return work(*args), None
    except expected as exc:
        log.info("%s.failed url=%s reason=%s", stage, url, exc)
        return None, failure_reason(stage, exc, expected=True)
    except Exception as exc:
        log.error("%s.internal_error url=%s", stage, url, exc_info=True)
        return None, failure_reason(stage, exc)


def fail_rows(batch: pa.Table, reasons: Sequence[str | None]) -> pa.Table:
    """`batch` with row i failed for reasons[i] (None leaves the row as it was). A row already
    failed keeps its own, earlier reason."""
    statuses = batch.column(schema.STATUS).to_pylist()
    errors = batch.column(schema.ERROR).to_pylist()
    for i, reason in enumerate(reasons):
        if reason is not None and statuses[i] in NOT_FAILED:
            statuses[i], errors[i] = schema.PageStatus.FAILED, reason
    for name, values in ((schema.STATUS, statuses), (schema.ERROR, errors)):
        index = batch.schema.get_field_index(name)
        batch = batch.set_column(
            index, batch.schema.field(index), pa.array(values, batch.schema.field(index).type)
        )
    return batch


def bisect(
    stage: str,
    batch: pa.Table,
    call: Callable[[pa.Table], pa.Table],
    fail: Callable[[pa.Table, str], pa.Table],
    *,
    outage: Callable[[Exception], bool] = lambda exc: False,
    label: str = schema.URL,
) -> pa.Table:
    """`call(batch)`; when it raises (an exception `outage` says is one excepted: that
    propagates, unbisected), the same for each half of the batch, and so on down to single
    pages: a page that raises alone is handed to `fail(page, reason)`, whose rows (same schema
    as `call`'s) stand for it in the output. The output keeps the batch's row order. `label`
    names the column that says which row it was, in the log.

    Bisecting rather than page by page: the batch call is the expensive unit (a model call, a
    transaction with locks, a staging table and a COPY), and one poison page among n costs
    about 2·log2(n) extra calls this way against n one by one: the N+1 pattern the batching
    exists to avoid. A call that fails for every page alike (a bug in the stage) costs 2n - 1
    calls and fails every page, each with the reason. A failure that needs the whole batch
    (memory for a large one) goes away in the halves, and then no page fails at all.
    """
    try:
        return call(batch)
    except Exception as exc:
        if outage(exc):
            raise
        if batch.num_rows <= 1:
            names = batch.column(label).to_pylist()
            log.error("%s.internal_error %s=%s", stage, label, names[0] if names else None, exc_info=True)
            return fail(batch, failure_reason(stage, exc))
        log.warning("%s.bisect pages=%d reason=%s", stage, batch.num_rows, failure_reason(stage, exc))
    middle = batch.num_rows // 2
    halves = (batch.slice(0, middle), batch.slice(middle))
    return pa.concat_tables([bisect(stage, half, call, fail, outage=outage, label=label) for half in halves])
