"""A user's own project for the tests of ``kiwi-optim init``: not the bundled task."""
