"""Importing this module is the failure the security tests look for: nothing may import it
because a store's metadata names it."""

raise RuntimeError("tests.evil_on_import was imported: a store's metadata must never be imported")
