from opta_lmx.gateway.main import main

raise SystemExit(main())
