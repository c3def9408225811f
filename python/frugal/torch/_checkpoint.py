"""Per-rank error-feedback state in checkpoints: each rank restores its
own residuals, never another rank's."""
from typing import Any, Dict

import frugal

__all__ = ["own_entry"]


def own_entry(state: Any, fmt: str, rank: int, size: int,
              what: str) -> Dict[str, Any]:
    """This rank's entry of a state dict holding either one rank's state
    ({"format", "rank", "world_size", ...}) or every rank's ({"format",
    "ranks": [...]}), or InvalidArgumentError saying what is wrong."""
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise frugal.InvalidArgumentError(
            "%s.load_state_dict: not a state_dict() of %s (format %r)"
            % (what, what, fmt))
    if "ranks" in state:
        entries = [e for e in state["ranks"] if e["rank"] == rank]
        if len(state["ranks"]) != size or not entries:
            raise frugal.InvalidArgumentError(
                "%s.load_state_dict: saved by %d ranks, this job has %d"
                % (what, len(state["ranks"]), size))
        return entries[0]
    if state["world_size"] != size:
        raise frugal.InvalidArgumentError(
            "%s.load_state_dict: saved by %d ranks, this job has %d"
            % (what, state["world_size"], size))
    if state["rank"] != rank:
        raise frugal.InvalidArgumentError(
            "%s.load_state_dict: these are rank %d's error-feedback "
            "residuals and this is rank %d; each rank restores its own "
            "(save one file per rank, or state_dict(all_ranks=True))"
            % (what, state["rank"], rank))
    return state
