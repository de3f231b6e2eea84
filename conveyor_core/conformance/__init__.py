"""The conformance suite: prove that a store behaves like every Conveyor store.

A store author writes one small test file::

    import pytest
    from conveyor_core.conformance import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        async def store(self):
            async with MyStore(...) as store:
                yield store

and pytest runs every behavioural test of the suite against that store, through the
public API (``Queue``, ``Worker``, ``FlowProducer``, ``QueueEvents``) with real workers.
``run("package.module:make_store")`` does the same from a store factory (the
``conveyor conformance`` command uses it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from conveyor_core.store import StoreInterface

# Detailed assertion messages in the suite's own modules, like in any test module.
pytest.register_assert_rewrite(
    "conveyor_core.conformance._support",
    "conveyor_core.conformance.cancelling",
    "conveyor_core.conformance.capabilities",
    "conveyor_core.conformance.events",
    "conveyor_core.conformance.flow_policies",
    "conveyor_core.conformance.flow_structure",
    "conveyor_core.conformance.groups",
    "conveyor_core.conformance.inputs",
    "conveyor_core.conformance.large_flows",
    "conveyor_core.conformance.operating",
    "conveyor_core.conformance.queue_management",
    "conveyor_core.conformance.schedulers",
    "conveyor_core.conformance.seed_examples",
    "conveyor_core.conformance.telemetry",
    "conveyor_core.conformance.transitions",
    "conveyor_core.conformance.working",
)

from ._support import Harness  # noqa: E402
from .cancelling import CancellingTests  # noqa: E402
from .capabilities import CapabilityTests  # noqa: E402
from .dag import DagTests  # noqa: E402
from .edges import EdgeTests  # noqa: E402
from .events import EventTests  # noqa: E402
from .flow_control import (  # noqa: E402
    DeduplicationTests,
    FlowDeduplicationTests,
    GlobalConcurrencyTests,
    ManualRateLimitTests,
)
from .flow_policies import FlowPolicyTests  # noqa: E402
from .flow_structure import FlowStructureTests  # noqa: E402
from .groups import GroupTests  # noqa: E402
from .inputs import InputTests  # noqa: E402
from .large_flows import DependencyCountTests, LargeFlowTests, LeavingFlowTests  # noqa: E402
from .operating import OperatingTests  # noqa: E402
from .queue_management import QueueManagementTests  # noqa: E402
from .runner import run  # noqa: E402
from .schedulers import SchedulerTests  # noqa: E402
from .seed_examples import SeedExampleTests  # noqa: E402
from .step_jobs import StepJobTests  # noqa: E402
from .telemetry import TraceContextTests  # noqa: E402
from .transitions import TransitionTests  # noqa: E402
from .working import WorkingTests  # noqa: E402

__all__ = ["Harness", "StoreConformance", "run"]


class StoreConformance(
    FlowPolicyTests,
    FlowStructureTests,
    WorkingTests,
    QueueManagementTests,
    EventTests,
    InputTests,
    SeedExampleTests,
    CapabilityTests,
    OperatingTests,
    TransitionTests,
    EdgeTests,
    SchedulerTests,
    LargeFlowTests,
    DependencyCountTests,
    LeavingFlowTests,
    DagTests,
    CancellingTests,
    StepJobTests,
    TraceContextTests,
    DeduplicationTests,
    FlowDeduplicationTests,
    GlobalConcurrencyTests,
    ManualRateLimitTests,
    GroupTests,
):
    """Every behaviour a Conveyor store must show. Subclass it in a test module.

    Fixtures a subclass provides:

    ``store`` (required)
        A connected store on a fresh (or at least private) database, closed after the
        test: typically ``async with MyStore(...) as store: yield store``.

    ``second_store`` (optional)
        A *second* store object on the same database as ``store``, connected and closed
        like it. Tests of cross-process behaviour use it: events published through one
        object reach listeners on the other, and workers on both objects race for the
        same jobs. The default returns ``store`` itself, which is right for a store that
        cannot be shared between objects (``MemoryStore``); a shareable store should
        override it, e.g. ``SQLiteStore(same_path)`` or a second connection pool to the
        same schema, so the suite proves the sharing too. A store that declares the
        ``shared`` capability must override it (the suite fails otherwise).

    Tests only use queues whose names carry a per-test suffix, so several tests (or
    several runs) may share one database. Each test is quick: workers use short lock
    and stall intervals where a test needs them, and every wait is on a condition with
    a deadline of ``timeout`` seconds (raise it for a slow remote store).
    """

    pytestmark = pytest.mark.anyio

    timeout: ClassVar[float] = 10.0
    """Seconds a test waits for any one condition before it fails."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Stores run on asyncio (their drivers do)."""
        return "asyncio"

    @pytest.fixture
    def store(self) -> StoreInterface:
        """Override in the subclass: yield a connected store on a private database."""
        raise pytest.UsageError(
            f"{type(self).__name__} must define a 'store' fixture yielding a connected store"
        )

    @pytest.fixture
    def second_store(self, store: StoreInterface) -> StoreInterface:
        """Override to yield another store object on the same database as ``store``."""
        return store

    @pytest.fixture
    async def env(
        self, store: StoreInterface, second_store: StoreInterface
    ) -> AsyncIterator[Harness]:
        """The per-test harness: unique queue names, queues, workers, waiting helpers."""
        harness = Harness(store, second_store, timeout=self.timeout)
        try:
            yield harness
        finally:
            await harness.aclose()
