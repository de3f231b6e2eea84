"""A worker process for the crash tests: ``python -m reliability.worker CONFIG_JSON``.

Runs one :class:`~conveyor_core.Worker` per workload queue against the store the config
names, and appends one line per handler run (``queue, job id, attempt, children values
seen, time``) to its own run log, flushed at once, so the runs survive a ``SIGKILL``.
``SIGTERM`` or ``SIGINT`` closes the workers gracefully: active handlers finish, then
the process exits 0.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import signal
import sys
import time
from typing import Any

import anyio

from conveyor_core import Worker
from reliability.stores import make_store
from reliability.workload import QUEUES, handle


def dump_tasks() -> None:
    """On SIGUSR1: print where every task is waiting (for a close that hangs)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()}", flush=True)
        task.print_stack(file=sys.stdout)
    sys.stdout.flush()


async def main(config: dict[str, Any]) -> None:
    faulthandler.register(signal.SIGUSR2)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    # Written synchronously and flushed per run, so a SIGKILL loses no finished line.
    log = open(config["log"], "a", encoding="utf-8")  # noqa: ASYNC230, SIM115
    store = make_store(config["location"], **config.get("store_options", {}))

    async def recorded(job: Any) -> Any:
        try:
            seen = len(await job.get_children_values())
        except Exception:
            seen = -1  # the store was unreachable: the attempt fails, and is still a run
            raise
        finally:
            log.write(
                f"{job.queue_name}\t{job.id}\t{job.attempts_made + 1}\t{seen}\t{time.time()}\n"
            )
            log.flush()
        return await handle(job)

    async with store:
        workers = [
            Worker(
                queue,
                recorded,
                store=store,
                concurrency=config.get("concurrency", 4),
                lock_duration=config.get("lock_duration", 1.0),
                stalled_interval=config.get("stalled_interval", 0.5),
                max_stalled_count=1_000_000,
                drain_delay=0.5,
            )
            for queue in QUEUES
        ]
        for worker in workers:
            worker.on("error", lambda error: print(f"worker error: {error!r}", flush=True))
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as group:
                for worker in workers:
                    await group.start(worker.run)
                print("ready", flush=True)
                async for _ in signals:
                    break
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as closing:
                        for worker in workers:
                            closing.start_soon(worker.close)
    log.close()
    print("closed", flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
