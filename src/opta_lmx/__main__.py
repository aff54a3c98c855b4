from opta_lmx.cli import main

raise SystemExit(main())
