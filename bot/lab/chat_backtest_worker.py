"""The separate process of a chat backtest: a pickled `bot.chat_backtest.Job` on stdin, its pickled
`Outcome` on stdout (run by `bot.chat_backtest.run_in_process`, never by hand)."""

from __future__ import annotations

import logging
import pickle
import sys

from bot.lab.chat_backtest import Job, run_job


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    job = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(job, Job):
        print("not a backtest job", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(pickle.dumps(run_job(job)))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
