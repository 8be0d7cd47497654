"""Reference code vendored for the tests (see each module's header for source and licence)."""
