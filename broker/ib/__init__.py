"""The `ib` broker: Interactive Brokers through `ib_async` 2.1.0 and IB Gateway/TWS.

Runs inside the bot's asyncio loop: only `ib_async`'s ``*Async`` requests and its non-blocking
calls (``placeOrder``, ``cancelOrder``, ``reqMarketDataType``) are used, and every wait is bounded
by ``asyncio.wait_for``. `IBBroker` (``broker.py``) builds one collaborator per concern and
forwards the `Broker` methods to them:

- ``connection.py`` `IBConnection`, the one owner of the `ib_async.IB` client and the shared
  state: paper/live detection (a live account is refused unless ``allow_live``), a reconnect loop
  with capped exponential backoff on ``disconnectedEvent``, recovery on IB's connectivity errors
  1100/1101/1102/2110, the switch to delayed data on the no-subscription errors
  (354/10089/10167/10168, reported as DEGRADED), the listener, bounded requests and waits;
- ``contracts.py`` `IBContracts`: qualification (re-done after every reconnect) and option chains
  from ``reqSecDefOptParams``;
- ``market_data.py`` `IBMarketData`: snapshots (``reqTickersAsync``) in paced batches, quotes,
  option quotes with IB's model greeks (delta and IV are None when IB sends none: the strategy
  computes a missing delta, `strategy.selection.quote_delta`), previous close, daily bars;
- ``orders.py`` `IBOrders`: DAY limit orders with the bot's order reference in ``orderRef``,
  combos (BAG) for rolls, and the mapping of IB's order status, executions and (possibly late)
  commission reports to the `BrokerListener` events, each execution id once; after every
  (re)connect orders re-bound by order reference and missed executions replayed;
- ``account.py`` `IBAccount`: positions and the account summary;
- ``convert.py``: pure conversions between `ib_async` objects and the broker interface's types.
"""

from broker.ib.broker import IBBroker

__all__ = ["IBBroker"]
