"""``kiwi-optim sweep``: an Optuna study whose trials are DVC experiments of the workspace's
pipeline and MLflow runs under one parent run.

:mod:`.spec` reads the sweep file, :mod:`.study` holds the Optuna side, :mod:`.trial` is what the
stage of a trial uses, :mod:`.driver` runs trials, :mod:`.results` shows them. Nothing here is
imported unless a sweep runs (the stage imports :mod:`.trial` only inside one).
"""
