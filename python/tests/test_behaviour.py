"""Errors, the GIL and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kiln

# A query that runs for seconds on any machine, and one that would run for
# hours: long enough to be cancelled.
LONG = "SELECT sum(value % 7) AS s FROM generate_series(1, 150000000)"
ENDLESS = "SELECT sum(value % 7) AS s FROM generate_series(1, 1000000000000)"


def test_errors_are_kiln_errors_with_one_line(session: kiln.Session) -> None:
    with pytest.raises(kiln.UserError) as sql_error:
        session.sql("SELEC 1")
    assert "\n" not in str(sql_error.value)
    assert isinstance(sql_error.value, kiln.KilnError)
    with pytest.raises(kiln.UserError, match="not found"):
        session.sql("SELECT * FROM no_such_table")
    with pytest.raises(kiln.UserError, match="no-such-file.parquet"):
        session.read_parquet("/nonexistent/no-such-file.parquet")
    with pytest.raises(kiln.KilnError, match="unknown device"):
        kiln.Session(device="tpu")
    with pytest.raises(kiln.UserError, match="target_partitions"):
        kiln.Session(target_partitions=0)
    with pytest.raises(kiln.UserError, match="one statement"):
        session.sql("SELECT 1; SELECT 2")
    assert issubclass(kiln.ResourceError, kiln.KilnError)
    assert issubclass(kiln.InternalError, kiln.KilnError)


def test_gil_is_released_while_a_query_runs(session: kiln.Session) -> None:
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    thread = threading.Thread(target=count)
    thread.start()
    start = time.monotonic()
    try:
        result = session.sql(LONG).to_arrow()
    finally:
        done.set()
        thread.join()
    elapsed = time.monotonic() - start
    assert result.num_rows == 1
    # The thread ran all along: a tick per 50 ms of the query at least (a
    # held GIL would leave it a tick or two, before and after), leaving room
    # for a loaded machine's scheduling.
    assert elapsed > 0.3, f"the query took {elapsed:.2f}s: too short to tell"
    assert ticks >= elapsed * 20, (ticks, elapsed)


@pytest.mark.parametrize("how", ["to_arrow", "stream"])
def test_ctrl_c_cancels_a_running_query(how: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time, kiln, pyarrow as pa
        s = kiln.Session(device="cpu")
        df = s.sql({ENDLESS!r})
        print("running", flush=True)
        start = time.monotonic()
        try:
            if {how!r} == "to_arrow":
                df.to_arrow()
            else:
                pa.table(df)
        except KeyboardInterrupt:
            print(f"cancelled after {{time.monotonic() - start:.1f}}s", flush=True)
            sys.exit(0)
        except pa.ArrowException as e:
            # A C stream's reader raises its own error type, with Kiln's words.
            if "cancelled (Ctrl-C)" in str(e):
                print(f"cancelled after {{time.monotonic() - start:.1f}}s", flush=True)
                sys.exit(0)
            raise
        print("finished?!", flush=True)
        sys.exit(3)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert child.stdout.readline().strip() == "running"
    time.sleep(1.5)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    try:
        out, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail("the query did not stop within 30 s of Ctrl-C")
    waited = time.monotonic() - sent
    assert child.returncode == 0, (child.returncode, out, err)
    assert out.startswith("cancelled"), out
    assert waited < 10, f"took {waited:.1f}s to stop"
    assert "panicked" not in err


def _stderr_of(script: str, tty: bool) -> bytes:
    """The child's stderr, through a terminal (a pty) or a pipe."""
    import pty

    if not tty:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120).stderr
    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", script], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    child.wait(timeout=120)
    os.close(master)
    return b"".join(chunks)


def test_progress_shows_on_a_terminal_only() -> None:
    # Runs a few seconds: progress starts after one.
    query = "SELECT value FROM generate_series(1, 40000000) WHERE value % 1000 = 0"
    script = f"import kiln; kiln.Session(device='cpu').sql({query!r}).to_arrow()"
    shown = _stderr_of(script, tty=True)
    assert b"kiln: " in shown and b" rows, " in shown, shown[-300:]
    assert shown.rstrip(b"\n").endswith(b"\x1b[2K"), "the line is cleared at the end"
    assert b"kiln: " not in _stderr_of(script, tty=False)
