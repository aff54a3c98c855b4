"""``lmxctl``, the operator's command line (``main.py``): the local control socket's client
(``local.py``) and how replies are printed (``render.py``)."""

from opta_lmx.ctl.local import Client, NotRunning
from opta_lmx.ctl.main import main

__all__ = ["Client", "NotRunning", "main"]
