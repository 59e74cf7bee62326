"""Ranks: the specs users give, the rank space each layer class describes, the one resolver, and
the whole-model budget allocator.

A rank spec is one of

* ``int``: a ceiling for every mode (capped at each mode's full rank, with a note);
* ``tuple``: one rank per mode (Tucker-2 ``(out, in)``, Tucker-3 ``(out, in, spatial)``, one per
  tensor-train bond), each at most its full rank;
* ``float`` in (0, 1]: the fraction of the layer's weight parameters to keep (bias excluded);
* a rule: ``EVBMF(weaken)``, ``Energy(threshold)``, ``Tolerance(eps)``, read from the spectra of
  the unfoldings each layer class names in its ``rank_space``;
* ``Budget(macs=f)`` / ``Budget(params=f)``: a whole-model rule, allocated across layers first.

For a grouped conv, ranks are per group (every group gets the same ranks). See ``resolve`` for
the exact convention.
"""
from factorch.decompositions.evbmf import evbmf
from factorch.rank.budget import Item, Pool, allocate
from factorch.rank.resolve import Resolution, resolve
from factorch.rank.rules import EVBMF, Budget, Energy, RankRule, RankSpec, Spectrum, Tolerance, validate_rank
from factorch.rank.space import Mode, RankSpace

__all__ = ["Budget", "EVBMF", "Energy", "Item", "Mode", "Pool", "RankRule", "RankSpace", "RankSpec", "Resolution",
           "Spectrum", "Tolerance", "allocate", "evbmf", "resolve", "validate_rank"]
