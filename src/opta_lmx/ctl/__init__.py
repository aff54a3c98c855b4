"""``lmxctl``, the operator's command line (``main.py``): the local control socket's client
(``local.py``), the admin API's (``remote.py``), and how replies are printed (``render.py``)."""

from opta_lmx.ctl.local import Client, NotRunning
from opta_lmx.ctl.main import main

__all__ = ["Client", "NotRunning", "main"]
