"""A fake IB Gateway speaking the TWS socket protocol, for testing the `ib` broker with the real
`ib_async` client over loopback TCP."""

from tests.fake_gateway.market import FakeMarket
from tests.fake_gateway.server import FakeGateway, FillMode, GwExecution, GwOrder, session_now

__all__ = ["FakeGateway", "FakeMarket", "FillMode", "GwExecution", "GwOrder", "session_now"]
