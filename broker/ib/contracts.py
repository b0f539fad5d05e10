"""Contracts on IB: qualification of the bot's instruments (cached by key, and conId → instrument
for what IB reports back), and option chains from ``reqSecDefOptParams`` (cached for the day)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date

from ib_async import Contract

from broker.base import BrokerError, Instrument, OptionChain, StockContract
from broker.clock import Clock
from broker.ib import convert as cv
from broker.ib.connection import IBConnection
from strategy.calendar import NY

log = logging.getLogger(__name__)


class IBContracts:
    """The bot's instruments as qualified IB contracts, and option chains."""

    def __init__(self, conn: IBConnection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock
        self._qualified: dict[str, Contract] = {}  # instrument key → contract
        self._instruments: dict[int, Instrument] = {}  # conId → instrument
        self._chain: dict[tuple[str, date], OptionChain] = {}

    async def qualify(self, instruments: Sequence[Instrument]) -> dict[str, Contract]:
        """Qualified IB contracts by instrument key; unknown instruments are left out. One request
        for those not qualified yet, none when all are."""
        missing = [i for i in dict.fromkeys(instruments) if i.key not in self._qualified]
        if missing:
            contracts = [cv.to_ib(i) for i in missing]
            self._conn.stats["qualify"] += len(contracts)
            result = await self._conn.call(lambda: self._conn.ib.qualifyContractsAsync(*contracts), "contract lookup")
            for ins, c in zip(missing, result, strict=True):
                if isinstance(c, Contract) and c.conId:
                    self._qualified[ins.key] = c
                    self._instruments[c.conId] = ins
        return {i.key: self._qualified[i.key] for i in instruments if i.key in self._qualified}

    async def contract(self, ins: Instrument) -> Contract:
        found = await self.qualify([ins])
        c = found.get(ins.key)
        if c is None:
            raise BrokerError(f"ib: {ins.key} is not a known contract")
        return c

    async def instrument_of(self, con_id: int) -> Instrument | None:
        """The instrument of a conId IB reported (e.g. a combo's leg), asking IB when unknown."""
        ins = self._instruments.get(con_id)
        if ins is None:
            details = await self._conn.call(
                lambda: self._conn.ib.reqContractDetailsAsync(Contract(conId=con_id)), "contract lookup")
            if details and details[0].contract is not None:
                ins = cv.from_ib(details[0].contract)
                if ins is not None:
                    self._instruments[con_id] = ins
                    self._qualified[ins.key] = details[0].contract
        return ins

    async def requalify(self) -> None:
        """After a (re)connect: qualify again every instrument qualified before (a failure is
        logged; the contracts are then qualified again when next needed)."""
        instruments = list({c.conId: self._instruments[c.conId] for c in self._qualified.values()
                            if c.conId in self._instruments}.values())
        self._qualified.clear()
        if instruments:
            try:
                await self.qualify(instruments)
            except BrokerError as e:
                log.warning("ib: re-qualifying contracts failed: %s", e)

    async def option_chain(self, symbol: str) -> OptionChain:
        """Expiries from today and strikes of the SMART chain of ``symbol``'s own trading class."""
        today = self._clock.now().astimezone(NY).date()
        cached = self._chain.get((symbol, today))
        if cached is not None:
            return cached
        und = await self.contract(StockContract(symbol))
        chains = await self._conn.call(lambda: self._conn.ib.reqSecDefOptParamsAsync(symbol, "", "STK", und.conId),
                                       f"option chain of {symbol}")
        picked = [ch for ch in chains if ch.exchange == "SMART" and ch.tradingClass == symbol] or \
            [ch for ch in chains if ch.tradingClass == symbol] or list(chains)
        if not picked:
            raise BrokerError(f"ib: IB lists no options on {symbol}")
        ch = picked[0]
        expiries = tuple(sorted({d for e in ch.expirations if (d := cv.ib_date(e)) >= today}))
        strikes = tuple(sorted({k for s in ch.strikes if (k := cv.dec(s)) is not None and k > 0}))
        chain = OptionChain(symbol, expiries, strikes)
        self._chain = {(symbol, today): chain}
        return chain
