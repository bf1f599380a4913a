"""Property tests: random token graphs, random cancel orders, random scope bindings.

The model is deliberately naive: a token is cancelled by the first cancel() (in program order)
issued on itself or on any node it can be reached from; every scope bound to it is cancelled
exactly then, and reads the same reason.
"""

from __future__ import annotations

from contextlib import ExitStack

import trio
from hypothesis import given, settings, strategies as st

import trio_cancel as tc


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[tuple[int, ...]], list[int], list[int], list[int]]:
    n = draw(st.integers(min_value=1, max_value=25))
    parents: list[tuple[int, ...]] = [()]
    for i in range(1, n):
        kind = draw(st.sampled_from(["root", "child", "any"]))
        if kind == "root":
            parents.append(())
        elif kind == "child":
            parents.append((draw(st.integers(0, i - 1)),))
        else:
            ins = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True))
            parents.append(tuple(ins))
    bindings = draw(st.lists(st.integers(0, n - 1), max_size=30))
    cancels = draw(st.lists(st.integers(0, n - 1), max_size=n))
    early = draw(st.lists(st.integers(0, n - 1), max_size=3))
    return parents, bindings, cancels, early


def model(parents: list[tuple[int, ...]], early: list[int], cancels: list[int]) -> dict[int, str]:
    """Reasons by node after: build node i (then issue the early cancels aimed at it), then
    issue ``cancels``. A node built from cancelled inputs is born cancelled with the reason of
    the first cancelled input in argument order (as ``AbortSignal.any`` does)."""
    reason: dict[int, str] = {}
    children: dict[int, list[int]] = {i: [] for i in range(len(parents))}

    def cancel(node: int, why: str) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n in reason:
                continue
            reason[n] = why
            stack.extend(children[n])

    for i, ps in enumerate(parents):
        born = next((reason[p] for p in ps if p in reason), None)
        if born is not None:
            reason[i] = born
        else:
            for p in ps:
                children[p].append(i)
        for k, c in enumerate(early):
            if c == i:
                cancel(c, f"cancel-{k}")
    for k, c in enumerate(cancels, start=len(early)):
        cancel(c, f"cancel-{k}")
    return reason


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_token_graph_cancels_exactly_the_expected_scopes(
    scenario: tuple[list[tuple[int, ...]], list[int], list[int], list[int]],
) -> None:
    parents, bindings, cancels, early = scenario
    # "early" cancels are issued while the graph is built, right after their target exists,
    # so later nodes made from a cancelled token are born cancelled.
    expected = model(parents, early, cancels)

    async def main() -> None:
        tokens: list[tc.CancellationToken] = []
        for i, ps in enumerate(parents):
            if not ps:
                tokens.append(tc.CancellationToken())
            elif len(ps) == 1 and i % 2:
                tokens.append(tokens[ps[0]].child_token())
            else:
                tokens.append(tc.CancellationToken.any(*(tokens[p] for p in ps)))
            for k, c in enumerate(early):
                if c == i:
                    tokens[c].cancel(f"cancel-{k}")
        with ExitStack() as stack:
            scopes = [(b, stack.enter_context(tokens[b].cancel_scope())) for b in bindings]
            for k, c in enumerate(cancels, start=len(early)):
                tokens[c].cancel(f"cancel-{k}")
            for b, cs in scopes:
                assert cs.cancel_called == (b in expected), (b, expected)
            for i, tok in enumerate(tokens):
                assert tok.is_cancelled() == (i in expected)
                assert tok.reason == expected.get(i)
            # nothing owned by a cancelled token remains registered
            for i, tok in enumerate(tokens):
                if i in expected:
                    assert repr(tok).startswith("<CancellationToken cancelled")
        # every exited scope is unregistered
        for tok in tokens:
            assert "scope" not in repr(tok)

    trio.run(main)


def _reachable(parents: list[tuple[int, ...]], start: int) -> set[int]:
    """``start`` and every node built from it, directly or not."""
    found = {start}
    for i, ps in enumerate(parents):  # parents come before their children
        if any(p in found for p in ps):
            found.add(i)
    return found


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_foreign_cancel_is_refused_exactly_for_trees_the_live_run_used(
    scenario: tuple[list[tuple[int, ...]], list[int], list[int], list[int]],
) -> None:
    """A node whose subtree holds a node used in the live run (here: a scope bound, then left)
    refuses cancel() from a worker thread and changes nothing; any other node is cancelled
    from there with its subtree, whatever the order of the calls."""
    parents, used, cancels, _ = scenario
    used_set = set(used)

    async def main() -> None:
        tokens: list[tc.CancellationToken] = []
        for i, ps in enumerate(parents):
            if not ps:
                tokens.append(tc.CancellationToken())
            elif len(ps) == 1 and i % 2:
                tokens.append(tokens[ps[0]].child_token())
            else:
                tokens.append(tc.CancellationToken.any(*(tokens[p] for p in ps)))
        for u in used:
            with tokens[u].cancel_scope():
                pass
        cancelled: set[int] = set()
        for c in cancels:
            before = [tok.is_cancelled() for tok in tokens]
            try:
                await trio.to_thread.run_sync(tokens[c].cancel, "foreign")
            except RuntimeError:
                assert c not in cancelled
                assert _reachable(parents, c) & used_set
                assert [tok.is_cancelled() for tok in tokens] == before
            else:
                assert c in cancelled or not (_reachable(parents, c) & used_set)
                cancelled |= _reachable(parents, c)
            assert {i for i, tok in enumerate(tokens) if tok.is_cancelled()} == cancelled

    trio.run(main)
