from opta_lmx.ctl.main import main

raise SystemExit(main())
