"""Demo material: ``make demo`` (:mod:`.run`), the stand-in Task008 source model (:mod:`.standin`) and
the writer of v1-layout zips it uses (:mod:`.v1_export`). Nothing in the library imports this package."""
