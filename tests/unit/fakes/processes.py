"""What the tests ask of the operating system about processes a run started (Linux /proc)."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a zombie has ended for every purpose here).

    Read from ``/proc/<pid>/stat``: its state is the first field after the command name in
    parentheses, which may itself hold spaces or parentheses.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
