"""Hostile and damaged inputs, built from bytes: archives that lie, break or hang,
pages that are costly to parse, and the helpers that judge what a reader made of
them. Used by the tests (and nothing else depends on it)."""
