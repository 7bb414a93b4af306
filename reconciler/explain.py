"""Probable cause of each drift, with the entry ids that show it: cheap, deterministic, batched.

Sign convention everywhere: ``drift = stored_balance - ledger_sum``. "The chain" is the sequence of a
customer's entries in id order with their ``balance_after``; an honest entry continues it
(``balance_after = previous balance_after + amount``, the previous balance being 0 before the first
entry) and the stored balance equals the last ``balance_after``. A *gap* is where an entry breaks it
(``gap = balance_after - amount - previous balance_after``), the *end gap* is
``stored_balance - last balance_after``. These add up exactly: ``drift = end gap + sum(gaps)``.

Chain anchors: when the balance core reconciled the customer (``reconciler.balance_reconciliations``),
the chain restarts there: only entries after its ``chain_entry_id`` are judged, and the balance before
the first of them is the reconciliation's ``balance_after`` (the history before it was settled then, so
an old break that a correction already accounted for is not counted again). The balance equal to that
anchor balance, with entries after it, counts as "an earlier balance_after" for ``unapplied_entry``.

Rules, tried in this order; the first that holds names the cause (each is a pure function over
:class:`CustomerFacts`, fetched for all the drifts of a batch in ONE query):

When every entry of the customer has a ``balance_after`` (the chain is complete):

1. ``duplicated_entry``: exactly one gap, no end gap, and the entry at the gap is an identical copy
   of the entry before it (amount, kind, reference, balance_after) with ``amount == -drift``: the
   ledger counts it twice, the balance once. Evidence: the original and the copy.
2. ``sign_flipped_entry``: exactly one gap, no end gap, and the entry at the gap has
   ``-2 * amount == drift``: the balance applied ``-amount``, the ledger recorded ``amount``.
3. ``missing_entry``: exactly one gap, no end gap, otherwise: the balance (and every later
   ``balance_after``) includes an amount equal to the drift that the ledger never recorded, between
   the two entries around the gap. (A balance written around the ledger *before* later honest
   entries looks exactly the same; either way the ledger lacks an entry of that amount.)
4. ``unapplied_entry``: no gap, an end gap, and the stored balance equals the ``balance_after`` of an
   earlier entry (or the anchor balance): the entries after it were recorded but never applied.
5. ``balance_written_around_ledger``: no gap, an end gap, and the balance equals no earlier
   ``balance_after`` (also: a customer with no entries, or none since its anchor, whose balance moved):
   the balance was written without a ledger entry.
6. ``unknown``: several gaps, or a gap together with an end gap (several things happened), or the
   drift vanished between the comparison and this query.

When some ``balance_after`` is missing (an adopted ledger), only amounts can speak:

1. ``duplicated_entry``: an entry with ``amount == -drift`` has an identical earlier twin.
2. ``sign_flipped_entry``: an entry has ``-2 * amount == drift``.
3. ``unapplied_entry``: an entry has ``amount == -drift`` (the ledger has it, the balance not).
4. ``missing_entry``: an entry has ``amount == drift`` (the balance holds that amount once more than
   the ledger: applied twice, or its ledger entry lost).
5. ``unknown`` otherwise.

When the guard (``reconciler.guard``) recorded writes around the core for the customer since its balance
was last settled, the explanation names them (``evidence["writers"]``: application, role, time,
fingerprint) and its sentence says who wrote around the core.

Where several entries match, the latest (highest id) is named. Evidence always has ``entry_ids``
(a list, possibly empty) plus rule-specific keys; decimals are strings, so it is JSON-able.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, text

from reconciler.compare import Drift
from reconciler.money import ZERO, format_money
from reconciler.vocabulary import EXPLAINED_CAUSES, Cause
from reconciler.writers import seen_writes, with_writers

#: The causes explain may name (:class:`reconciler.vocabulary.Cause`, all but the real-time one).
CAUSES = EXPLAINED_CAUSES
#: Drifts explained per query.
DEFAULT_BATCH = 1_000
#: Entries kept per customer as evidence (the counts are always exact).
MAX_EVIDENCE_ENTRIES = 20


@dataclass(frozen=True)
class Explanation:
    """A probable cause (one of :data:`CAUSES`), its evidence (JSON-able) and one readable sentence."""

    cause: Cause
    evidence: Mapping[str, object]
    summary: str


@dataclass(frozen=True)
class EntryFact:
    """One entry of a drifting customer, with what the chain says about it."""

    id: int
    position: int  # 1-based, in id order
    amount: Decimal
    kind: str
    reference: str | None
    balance_after: Decimal | None
    prev_id: int | None
    gap: Decimal | None  # balance_after - amount - previous balance_after (0 before the first); None if unknown
    twin_of_prev: bool  # identical to the previous entry (amount, kind, reference, balance_after)
    first_twin_id: int  # the lowest id among the customer's identical entries (itself if none)


@dataclass(frozen=True)
class CustomerFacts:
    """What the rules look at for one drifting customer. ``entries`` holds the interesting entries
    only (gaps, amount matches, the balance match and what follows it, the last entry), by position."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal
    entry_count: int
    chain_complete: bool
    gap_count: int
    match_position: int | None  # latest position < entry_count whose balance_after == stored_balance (0: anchor)
    entries: tuple[EntryFact, ...]
    #: The chain's start: the latest reconciliation's balance and the entry it settled (None: before any).
    opening_balance: Decimal = ZERO
    anchor_entry_id: int | None = None
    anchored: bool = False

    @property
    def last(self) -> EntryFact | None:
        return next((e for e in self.entries if e.position == self.entry_count), None)

    @property
    def end_gap(self) -> Decimal:
        last = self.last
        if last is None:
            return self.stored_balance - self.opening_balance
        return self.stored_balance - (last.balance_after if last.balance_after is not None else ZERO)

    @property
    def gaps(self) -> list[EntryFact]:
        return [e for e in self.entries if e.gap is not None and e.gap != 0]


def facts_from_entries(customer_id: int, stored_balance: Decimal,
                       entries: Sequence[tuple[int, Decimal, str, str | None, Decimal | None]],
                       anchor: tuple[int | None, Decimal] | None = None) -> CustomerFacts:
    """The facts for one customer from ALL its entries ``(id, amount, kind, reference, balance_after)`` and
    its latest reconciliation ``anchor`` ``(chain_entry_id, balance_after)`` if any (pure; the SQL in
    :func:`fetch_facts` computes the same, keeping only the interesting entries)."""
    ledger_sum = sum((entry[1] for entry in entries), ZERO)
    anchor_entry_id, opening = anchor if anchor is not None else (None, ZERO)
    ordered = sorted(e for e in entries if anchor_entry_id is None or e[0] > anchor_entry_id)
    facts: list[EntryFact] = []
    first_twin: dict[tuple[object, ...], int] = {}
    previous: tuple[int, Decimal, str, str | None, Decimal | None] | None = None
    for position, (eid, amount, kind, reference, after) in enumerate(ordered, start=1):
        prev_after = opening if previous is None else previous[4]
        gap = None if after is None or prev_after is None else after - amount - prev_after
        twin_key = (amount, kind, reference, after)
        first_twin.setdefault(twin_key, eid)
        facts.append(EntryFact(
            id=eid, position=position, amount=amount, kind=kind, reference=reference, balance_after=after,
            prev_id=None if previous is None else previous[0], gap=gap,
            twin_of_prev=previous is not None and previous[1:] == (amount, kind, reference, after),
            first_twin_id=first_twin[twin_key]))
        previous = (eid, amount, kind, reference, after)
    matches = [e.position for e in facts[:-1] if e.balance_after == stored_balance]
    if anchor is not None and facts and opening == stored_balance:
        matches.append(0)
    return CustomerFacts(
        customer_id=customer_id, stored_balance=stored_balance, ledger_sum=ledger_sum,
        drift=stored_balance - ledger_sum, entry_count=len(facts),
        chain_complete=all(e.balance_after is not None for e in facts),
        gap_count=sum(1 for e in facts if e.gap is not None and e.gap != 0),
        match_position=max(matches) if matches else None, entries=tuple(facts),
        opening_balance=opening, anchor_entry_id=anchor_entry_id, anchored=anchor is not None)


# --------------------------------------------------------------------------------------------------
# Rules (pure)

Rule = Callable[[CustomerFacts], "Explanation | None"]


def _money(value: Decimal) -> str:
    return format_money(value)


def _single_gap(facts: CustomerFacts) -> EntryFact | None:
    """The one entry that breaks a complete chain whose end agrees with the balance, else None."""
    if not facts.chain_complete or facts.gap_count != 1 or facts.end_gap != 0:
        return None
    gaps = facts.gaps
    return gaps[0] if len(gaps) == 1 else None


def rule_duplicated_entry(facts: CustomerFacts) -> Explanation | None:
    """Chain: the single gap is an identical copy of the entry before it, and ``amount == -drift``."""
    entry = _single_gap(facts)
    if entry is None or not entry.twin_of_prev or entry.amount != -facts.drift or entry.prev_id is None:
        return None
    return Explanation(Cause.DUPLICATED_ENTRY, {
        "entry_ids": [entry.prev_id, entry.id], "original_entry_id": entry.prev_id,
        "duplicate_entry_id": entry.id, "amount": str(entry.amount)},
        f"entry {entry.id} repeats entry {entry.prev_id} ({_money(entry.amount)}, same reference and "
        f"balance_after): the ledger counts it twice, the balance once")


def rule_sign_flipped_entry(facts: CustomerFacts) -> Explanation | None:
    """Chain: the single gap is an entry with ``-2 * amount == drift``."""
    entry = _single_gap(facts)
    if entry is None or -2 * entry.amount != facts.drift:
        return None
    return Explanation(Cause.SIGN_FLIPPED_ENTRY, {
        "entry_ids": [entry.id], "recorded_amount": str(entry.amount), "applied_amount": str(-entry.amount)},
        f"entry {entry.id} is recorded as {_money(entry.amount)} but the balance applied {_money(-entry.amount)} "
        f"(its balance_after agrees with the balance): the sign is flipped in the ledger")


def rule_missing_entry(facts: CustomerFacts) -> Explanation | None:
    """Chain: a single gap with the end agreeing: an amount equal to the drift never reached the ledger."""
    entry = _single_gap(facts)
    if entry is None:
        return None
    ids = [i for i in (entry.prev_id, entry.id) if i is not None]
    where = f"between entries {entry.prev_id} and {entry.id}" if entry.prev_id else f"before entry {entry.id}"
    return Explanation(Cause.MISSING_ENTRY, {
        "entry_ids": ids, "before_entry_id": entry.prev_id, "after_entry_id": entry.id,
        "missing_amount": str(facts.drift)},
        f"the balance includes {_money(facts.drift)} that the ledger never recorded: an entry is missing {where} "
        f"(entry {entry.id}'s balance_after jumps by that amount)")


def _end_gap_only(facts: CustomerFacts) -> bool:
    return facts.chain_complete and facts.gap_count == 0 and facts.end_gap != 0


def rule_unapplied_entry(facts: CustomerFacts) -> Explanation | None:
    """Chain: no gap, and the balance equals an earlier entry's balance_after: later entries never applied."""
    if not _end_gap_only(facts) or facts.match_position is None:
        return None
    matched = next((e for e in facts.entries if e.position == facts.match_position), None)
    after = [e for e in facts.entries if e.position > facts.match_position][:MAX_EVIDENCE_ENTRIES]
    count = facts.entry_count - facts.match_position
    where = (f"the balance_after of entry {matched.id}" if matched is not None
             else "the balance its last reconciliation set")
    return Explanation(Cause.UNAPPLIED_ENTRY, {
        "entry_ids": [e.id for e in after], "balance_matches_entry_id": None if matched is None else matched.id,
        "unapplied_count": count, "unapplied_amount": str(-facts.drift)},
        f"the balance equals {where}: the {count} later entr{'y' if count == 1 else 'ies'} "
        f"({_money(-facts.drift)}) {'was' if count == 1 else 'were'} recorded but never applied to the balance")


def rule_balance_written_around_ledger(facts: CustomerFacts) -> Explanation | None:
    """Chain: no gap, an end gap, no matching balance_after: the balance was written without an entry."""
    if not _end_gap_only(facts):
        return None
    last = facts.last
    if last is not None:
        after = _money(last.balance_after or ZERO)
        story = f"the ledger's chain is intact up to entry {last.id} (balance_after {after})"
    elif facts.anchored:
        story = f"no entry since the last reconciliation, which set the balance to {_money(facts.opening_balance)},"
    else:
        story = "the customer has no ledger entries"
    return Explanation(Cause.BALANCE_WRITTEN_AROUND_LEDGER, {
        "entry_ids": [] if last is None else [last.id], "last_entry_id": None if last is None else last.id,
        "last_balance_after": None if last is None or last.balance_after is None else str(last.balance_after),
        "stored_balance": str(facts.stored_balance)},
        f"{story} but the balance is {_money(facts.stored_balance)}: it was written around the ledger "
        f"({_money(facts.end_gap)} without an entry)")


def _latest(entries: Sequence[EntryFact], test: Callable[[EntryFact], bool]) -> EntryFact | None:
    matching = [e for e in entries if test(e)]
    return max(matching, key=lambda e: e.id) if matching else None


def rule_amounts_only(facts: CustomerFacts) -> Explanation | None:
    """No complete chain: name the cause from entry amounts alone (see the module docstring)."""
    if facts.chain_complete:
        return None
    d = facts.drift
    twin = _latest(facts.entries, lambda e: e.amount == -d and e.first_twin_id < e.id)
    if twin is not None:
        return Explanation(Cause.DUPLICATED_ENTRY, {
            "entry_ids": [twin.first_twin_id, twin.id], "original_entry_id": twin.first_twin_id,
            "duplicate_entry_id": twin.id, "amount": str(twin.amount)},
            f"entry {twin.id} repeats entry {twin.first_twin_id} ({_money(twin.amount)}): "
            "the ledger counts it twice, the balance once")
    flipped = _latest(facts.entries, lambda e: -2 * e.amount == d)
    if flipped is not None:
        return Explanation(Cause.SIGN_FLIPPED_ENTRY, {
            "entry_ids": [flipped.id], "recorded_amount": str(flipped.amount),
            "applied_amount": str(-flipped.amount)},
            f"the drift is twice entry {flipped.id} with the opposite sign: the balance probably applied "
            f"{_money(-flipped.amount)} where the ledger recorded {_money(flipped.amount)}")
    unapplied = _latest(facts.entries, lambda e: e.amount == -d)
    if unapplied is not None:
        return Explanation(Cause.UNAPPLIED_ENTRY, {
            "entry_ids": [unapplied.id], "balance_matches_entry_id": None, "unapplied_count": 1,
            "unapplied_amount": str(unapplied.amount)},
            f"the ledger holds entry {unapplied.id} ({_money(unapplied.amount)}) that the balance does not")
    extra = _latest(facts.entries, lambda e: e.amount == d)
    if extra is not None:
        return Explanation(Cause.MISSING_ENTRY, {
            "entry_ids": [extra.id], "before_entry_id": None, "after_entry_id": None,
            "missing_amount": str(d)},
            f"the balance holds {_money(d)} more than the ledger, the amount of entry {extra.id}: "
            "applied twice to the balance, or a second entry is missing from the ledger")
    return None


RULES: tuple[Rule, ...] = (rule_duplicated_entry, rule_sign_flipped_entry, rule_missing_entry,
                           rule_unapplied_entry, rule_balance_written_around_ledger, rule_amounts_only)


def unknown(facts: CustomerFacts) -> Explanation:
    """The fallback: what was seen, so a person can take it from there."""
    gaps = facts.gaps[:MAX_EVIDENCE_ENTRIES]
    if facts.drift == 0:
        reason = "the drift was gone when its entries were read (changed since the comparison)"
    elif facts.chain_complete:
        reason = (f"{facts.gap_count} break(s) in the balance_after chain and an end gap of "
                  f"{_money(facts.end_gap)}: more than one thing happened")
    else:
        reason = "the balance_after chain is incomplete and no entry amount matches the drift"
    return Explanation(Cause.UNKNOWN, {
        "entry_ids": [e.id for e in gaps], "gap_count": facts.gap_count, "end_gap": str(facts.end_gap),
        "chain_complete": facts.chain_complete, "chain_starts_after_entry_id": facts.anchor_entry_id},
        f"no single cause explains {_money(facts.drift)}: {reason}")


def explain(facts: CustomerFacts) -> Explanation:
    """The first rule that holds, else :func:`unknown` (pure)."""
    for rule in RULES:
        found = rule(facts)
        if found is not None:
            return found
    return unknown(facts)


# --------------------------------------------------------------------------------------------------
# Facts from the database: one statement for a batch of drifting customers

_FACTS_SQL = """
with drifting as materialized (
    select d.customer_id, d.stored, d.drift, a.chain_entry_id as anchor_entry_id, a.balance_after as anchor_balance,
           a.balance_after is not null as anchored
    from unnest(cast(:ids as bigint[]), cast(:stored as numeric[]), cast(:drifts as numeric[]))
         as d (customer_id, stored, drift)
    left join lateral (
        select r.chain_entry_id, r.balance_after from reconciler.balance_reconciliations r
        where r.customer_id = d.customer_id order by r.id desc limit 1) a on true
),
chain as (
    select e.customer_id, e.id, e.amount, e.kind, e.reference, e.balance_after, d.stored, d.drift, d.anchored,
           coalesce(d.anchor_balance, 0.00) as opening,
           row_number() over w as position,
           count(*) over p as entry_count,
           count(e.balance_after) over p as with_balance_after,
           lag(e.id) over w as prev_id,
           e.balance_after - e.amount - lag(e.balance_after, 1, coalesce(d.anchor_balance, 0.00)) over w as gap,
           coalesce(e.amount = lag(e.amount) over w and e.kind = lag(e.kind) over w
                    and e.reference is not distinct from lag(e.reference) over w
                    and e.balance_after is not distinct from lag(e.balance_after) over w, false) as twin_of_prev,
           min(e.id) over twins as first_twin_id
    from drifting d
    join customer_ledger_entries e
      on e.customer_id = d.customer_id and (d.anchor_entry_id is null or e.id > d.anchor_entry_id)
    window w as (partition by e.customer_id order by e.id),
           p as (partition by e.customer_id),
           twins as (partition by e.customer_id, e.amount, e.kind, e.reference, e.balance_after)
),
flagged as (
    select chain.*,
           count(*) filter (where gap <> 0) over whole as gap_count,
           count(*) filter (where gap <> 0) over upto as gap_rank,
           count(*) filter (where amount in (drift, -drift) or -2 * amount = drift) over whole
             - count(*) filter (where amount in (drift, -drift) or -2 * amount = drift) over upto as later_matches,
           coalesce(max(position) filter (where balance_after = stored and position < entry_count) over whole,
                    case when anchored and opening = stored then 0 end) as match_position
    from chain
    window whole as (partition by customer_id),
           upto as (partition by customer_id order by position rows unbounded preceding)
)
select d.customer_id, d.anchor_entry_id, d.anchor_balance, f.id, f.position, f.amount, f.kind, f.reference,
       f.balance_after, f.prev_id, f.gap, f.twin_of_prev, f.first_twin_id, f.entry_count, f.with_balance_after,
       f.gap_count, f.match_position
from drifting d
left join flagged f
  on f.customer_id = d.customer_id
 and (f.position = f.entry_count
      or f.position = f.match_position
      or (f.position > f.match_position and f.position <= f.match_position + :max_evidence)
      or (f.gap <> 0 and f.gap_rank <= :max_evidence)
      or ((f.amount in (f.drift, -f.drift) or -2 * f.amount = f.drift) and f.later_matches < :max_evidence))
order by d.customer_id, f.position
"""


def fetch_facts(conn: Connection, drifts: Sequence[Drift]) -> dict[int, CustomerFacts]:
    """The facts of these drifting customers, in ONE statement (every customer gets facts, with no entries
    when it has none since its anchor)."""
    if not drifts:
        return {}
    rows = conn.execute(text(_FACTS_SQL), {
        "ids": [d.customer_id for d in drifts], "stored": [d.stored_balance for d in drifts],
        "drifts": [d.drift for d in drifts], "max_evidence": MAX_EVIDENCE_ENTRIES})
    anchors: dict[int, tuple[int | None, Decimal | None]] = {}
    grouped: dict[int, list[tuple[EntryFact, int, int, int, int | None]]] = {}
    for r in rows:
        customer_id = int(r.customer_id)
        anchors[customer_id] = (None if r.anchor_entry_id is None else int(r.anchor_entry_id),
                                None if r.anchor_balance is None else Decimal(r.anchor_balance))
        if r.id is None:
            continue
        fact = EntryFact(
            id=int(r.id), position=int(r.position), amount=Decimal(r.amount), kind=str(r.kind),
            reference=r.reference, balance_after=None if r.balance_after is None else Decimal(r.balance_after),
            prev_id=None if r.prev_id is None else int(r.prev_id), gap=None if r.gap is None else Decimal(r.gap),
            twin_of_prev=bool(r.twin_of_prev), first_twin_id=int(r.first_twin_id))
        grouped.setdefault(customer_id, []).append(
            (fact, int(r.entry_count), int(r.with_balance_after), int(r.gap_count),
             None if r.match_position is None else int(r.match_position)))
    facts = {}
    for d in drifts:
        found = grouped.get(d.customer_id, [])
        entry_count, with_after, gap_count, match = found[0][1:] if found else (0, 0, 0, None)
        anchor_entry_id, anchor_balance = anchors.get(d.customer_id, (None, None))
        facts[d.customer_id] = CustomerFacts(
            customer_id=d.customer_id, stored_balance=d.stored_balance, ledger_sum=d.ledger_sum, drift=d.drift,
            entry_count=entry_count, chain_complete=with_after == entry_count, gap_count=gap_count,
            match_position=match, entries=tuple(f[0] for f in found),
            opening_balance=ZERO if anchor_balance is None else anchor_balance, anchor_entry_id=anchor_entry_id,
            anchored=anchor_balance is not None)
    return facts


def explain_drifts(conn: Connection, drifts: Sequence[Drift], *, batch: int = DEFAULT_BATCH) -> dict[int, Explanation]:
    """The probable cause of each drift, keyed by customer id; one query per ``batch`` drifts.

    Read-only. Call it on the connection (and transaction) that ran the comparison; under REPEATABLE READ
    both see one snapshot, otherwise a write committed in between can make a cause ``unknown``.
    """
    result: dict[int, Explanation] = {}
    for start in range(0, len(drifts), batch):
        for customer_id, facts in fetch_facts(conn, drifts[start:start + batch]).items():
            result[customer_id] = explain(facts)
        # The writer, when the guard saw one: the bypass writes of these customers since their last settlement.
        for customer_id, writes in seen_writes(conn, [d.customer_id for d in drifts[start:start + batch]]).items():
            found = result[customer_id]
            evidence, summary = with_writers(found.evidence, found.summary, writes)
            result[customer_id] = Explanation(found.cause, evidence, summary)
    return result
