from opta_lmx.supervisor.main import main

raise SystemExit(main())
