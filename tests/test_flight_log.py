"""The notebooks' log of simulations in flight (`analysis.FlightLog`) and the tables and figure
made from it: which walks each slot ran on the flow's logical clock."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raintools import RainSearch
from raintools.views import analysis as A

from test_parallel import BIG, FlowLog
from test_search import letter_embedder, vowel_judge


def frame(rows):
    """A hand-made log: (walk, slot, start tick, end tick)."""
    return pd.DataFrame([dict(walk=w, simulation=w, slot=s, step=0, start_tick=a, end_tick=b, start_pass=a,
                              end_pass=b, leaf="x", value=0.0) for w, s, a, b in rows])


HAND = frame([(0, 0, 0, 5), (1, 1, 0, 8), (2, 0, 5, 9), (3, 1, 8, 12), (4, 0, 10, 12), (5, 2, 9, 9),
              (6, 2, 12, 14), (7, 0, 12, 13)])


def test_in_flight_lists_the_walks_of_each_slot_after_every_tick():
    t = A.in_flight(HAND).set_index("tick")
    assert list(t.index) == [0, 5, 8, 9, 10, 12, 13, 14]
    assert list(t.busy) == [2, 2, 2, 1, 2, 2, 1, 0]
    assert (t.loc[5, "slot 0"], t.loc[5, "slot 1"]) == ("walk 2", "walk 1")
    assert t.loc[9, "slot 2"] == "" and t.loc[12, "slot 2"] == "walk 6"   # walk 5 took no tick
    assert t.loc[12, "slot 0"] == "walk 7" and t.loc[12, "slot 1"] == ""


def test_freed_slot_starts_are_new_walks_beside_older_ones_still_in_flight():
    f = A.freed_slot_starts(HAND)
    # walk 2 (slot 0 at 5, walk 1 still running) and walk 3 (slot 1 at 8, walk 2 running). Not:
    # walk 4 (starts at 10, not at its slot's last back-up, 9), walk 6 (follows walk 5 at 12? no:
    # walk 5 ended at 9), walk 7 (slot 0 at 12: walk 3 ended then, walk 6 started then, not earlier)
    assert list(f.walk) == [2, 3]
    assert f.iloc[0].to_dict() == dict(slot=0, walk=2, tick=5, after=0, waiting_on="walk 1")
    assert f.iloc[1].waiting_on == "walk 2"


def test_flight_log_of_a_search_with_slots(tiny_lm):
    """One row per simulation; each slot runs its walks one after another on the clock; the
    walks in flight never exceed K and reach it; the log's starts and back-ups come in the order
    the search emits them (a test_parallel FlowLog beside it), and a freed slot is found."""
    k, log, events = 4, A.FlightLog(), FlowLog()
    s = RainSearch(tiny_lm, "hello", BIG.replace(parallel_simulations=k), evaluator=vowel_judge,
                   embedder=letter_embedder, observers=[log, events])
    r = s.run()
    f = log.frame()
    assert len(f) == r.stats["simulations"] and list(f.walk) == list(range(len(f)))
    assert sorted(f.simulation) == list(range(len(f))) and set(f.slot) == set(range(k))
    assert (f.start_tick <= f.end_tick).all() and (f.start_pass <= f.end_pass).all()
    assert f.end_pass.max() == s.flow.passes and f.end_tick.max() <= s.flow.now
    for _, g in f.sort_values("start_tick", kind="stable").groupby("slot"):
        assert (g.start_tick.to_numpy()[1:] >= g.end_tick.to_numpy()[:-1]).all()
    ends = [w for kind, w, _, _ in events.events if kind == "end"]
    assert list(f.set_index("walk").loc[ends].simulation) == list(range(len(f)))   # back-up order
    assert A.in_flight(f).busy.max() == k
    assert len(A.freed_slot_starts(f))
    assert all(d["slot"] in range(k) for d in log.drops)


def test_flight_figure_draws_each_walk_at_its_ticks(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from raintools.views.plots import plot_flight

    ax = plot_flight(HAND, 3)
    bars = sorted((p.get_x(), p.get_width(), p.get_y() + p.get_height() / 2) for p in ax.patches)
    want = sorted((r.start_tick, r.end_tick - r.start_tick, r.slot) for r in HAND.itertuples()
                  if r.end_tick > r.start_tick)
    assert len(bars) == len(want) and np.allclose(bars, want)
    marks = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1 and line.get_xdata()[0] == 9]
    assert len(marks) == 1                     # walk 5: no request, a tick mark at 9
