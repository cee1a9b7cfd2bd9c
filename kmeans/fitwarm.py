"""Imported by the fork server of local fits (its preload list) before it forks any of them.

Every fit process then starts with scikit-learn's first-fit costs already paid; see
:func:`kmeans.engine.warm_up`. Nothing else imports this module.
"""

import logging

from kmeans import engine

try:
    engine.warm_up()
except Exception:  # the fork server must start anyway: fits then pay those costs themselves
    logging.getLogger(__name__).exception("warming up scikit-learn in the fork server failed")
