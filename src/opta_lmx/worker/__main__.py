from opta_lmx.worker.main import main

raise SystemExit(main())
