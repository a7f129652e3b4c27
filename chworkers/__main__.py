from chworkers.cli import main

raise SystemExit(main())
