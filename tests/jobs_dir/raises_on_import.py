"""A module that raises when imported: a job naming it must fail with the import error."""

raise RuntimeError("this module refuses to be imported")
